"""Score memory blocks from their stored keys: a logsumexp of query-key scores per block, head and query.

Stage 1 of the gate's prefilter. For each block n, selected head h and query q, the score is
``logsumexp_t scale * dot(queries[h, q], keys[n, head_pairs[h], t])`` over the block's valid keys, in
float32 whatever the input dtypes, so a score does not depend on which path ran; a block with no valid
key scores -inf. The torch reference works on chunks of blocks so that its [chunk, Hs, Q, T] scores stay
bounded; the Triton kernel (``key_scores_triton``) streams over key tiles with an online logsumexp.
Shapes: ``contracts.check_key_score_shapes`` (re-exported here).
"""

from __future__ import annotations

import torch

from ._triton_support import run_triton_or_reference, use_triton
from .contracts import check_key_score_shapes

_REFERENCE_SCORES_PER_CHUNK = 1 << 24  # float32 scores (and gathered keys) held at once by the reference (64 MiB)


def key_logsumexp_reference(
    queries: torch.Tensor,
    keys: torch.Tensor,
    key_valid: torch.Tensor,
    head_pairs: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """float32 [N, Hs, Q]: logsumexp over valid keys of scale * q . k; queries [Hs, Q, D], keys [N, P, T, D].

    Every product and sum is float32 (low-precision inputs are upcast a chunk of blocks at a time). Works
    on CPU and CUDA tensors.
    """
    check_key_score_shapes(queries, keys, key_valid, head_pairs)
    selected_heads, query_count, head_dim = queries.shape
    blocks, _, keys_per_block, _ = keys.shape
    device = queries.device
    out = torch.empty(blocks, selected_heads, query_count, dtype=torch.float32, device=device)
    if out.numel() == 0:
        return out
    if keys_per_block == 0:
        return out.fill_(float("-inf"))
    pairs = head_pairs.to(device)
    # Heads that read the same stored pair share one upcast of its keys and one matmul: [c, H_p * Q, T].
    groups = [(pair, (pairs == pair).nonzero().flatten()) for pair in pairs.unique().tolist()]
    grouped_queries = [queries[heads].float().reshape(-1, head_dim) for _, heads in groups]
    per_block = keys.shape[1] * keys_per_block * head_dim + selected_heads * query_count * keys_per_block
    blocks_per_chunk = max(1, _REFERENCE_SCORES_PER_CHUNK // per_block)
    every_key_valid = bool(key_valid.all())
    for start in range(0, blocks, blocks_per_chunk):
        chunk = slice(start, start + blocks_per_chunk)
        chunk_valid = None if every_key_valid else key_valid[chunk][:, None, :]
        for (pair, heads), query_rows in zip(groups, grouped_queries):
            pair_keys = keys[chunk, pair].float()  # [c, T, D]
            count = pair_keys.shape[0]
            # One GEMM for the chunk: [H_p * Q, D] @ [D, c * T], viewed as [H_p * Q, c, T].
            scores = (query_rows @ pair_keys.reshape(-1, head_dim).T).mul_(float(scale)).view(-1, count, keys_per_block)
            if chunk_valid is not None:
                scores = scores.masked_fill(~chunk_valid.transpose(0, 1), float("-inf"))
            lse = torch.logsumexp(scores, dim=-1)  # [H_p * Q, c]; -inf where every key is masked
            out[chunk, heads] = lse.T.reshape(count, len(heads), query_count)
    return out


def key_logsumexp(
    queries: torch.Tensor,
    keys: torch.Tensor,
    key_valid: torch.Tensor,
    head_pairs: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Block scores float32 [N, Hs, Q]: the Triton kernel for CUDA tensors, else the torch reference.

    If the Triton path raises once (import, compile or launch error), a warning is logged and the
    reference serves every later call of the process. Bad shapes raise ValueError before either path.
    """
    check_key_score_shapes(queries, keys, key_valid, head_pairs)
    blocks, _, keys_per_block, _ = keys.shape
    if queries.numel() > 0 and blocks > 0 and keys_per_block > 0 and use_triton(queries):

        def triton_call() -> torch.Tensor:
            from .key_scores_triton import key_logsumexp_triton

            return key_logsumexp_triton(queries, keys, key_valid, head_pairs, scale)

        return run_triton_or_reference(
            "key_logsumexp",
            triton_call,
            lambda: key_logsumexp_reference(queries, keys, key_valid, head_pairs, scale),
        )
    return key_logsumexp_reference(queries, keys, key_valid, head_pairs, scale)
