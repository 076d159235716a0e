"""Grouped-query attention for prompts that continue after a KV prefix (compressed memory + new tokens).

Query [B, Hq, Q, D] attends to key/value [B, Hkv, K, D] with K >= Q: the last Q keys belong to the
queries themselves and the first K - Q are the prefix. Query head h reads KV head h // (Hq // Hkv).
The mask is one of
  * None: causal aligned to the bottom right (query i sees keys 0 .. K - Q + i; all keys when Q == 1),
    or every key when ``is_causal=False``;
  * a float additive mask [B, 1 or Hq, Q, K]: 0 attends, a value at or below ``finfo(mask.dtype).min``
    (or -inf) blocks, anything else is added to the score;
  * a bool mask [B, 1 or Hq, Q, K]: True attends.
Softmax runs in float32; a query whose every key is blocked gets a zero output instead of NaN. The
torch reference here runs everywhere; the Triton kernel (``prefix_attention_triton``) on CUDA. Both check
their arguments with ``contracts.check_attention_shapes`` (re-exported here with ``blocked_threshold``).
"""

from __future__ import annotations

import torch

from ._triton_support import run_triton_or_reference, use_triton
from .contracts import blocked_threshold, check_attention_shapes

_REFERENCE_SCORES_PER_CHUNK = 1 << 24  # float32 scores held at once by the reference (64 MiB)


def _allowed_and_bias(
    mask: torch.Tensor | None, query_length: int, key_length: int, is_causal: bool, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The mask as (allowed bool or None = all, additive float32 bias or None), both [B|1, 1|Hq, Q, K]."""
    if mask is None:
        if not is_causal:
            return None, None
        query_index = torch.arange(key_length - query_length, key_length, device=device)
        key_index = torch.arange(key_length, device=device)
        return (key_index[None, :] <= query_index[:, None])[None, None], None
    if mask.dtype == torch.bool:
        return mask, None
    return mask > blocked_threshold(mask), mask.float()


def prefix_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    scaling: float | None = None,
    is_causal: bool = True,
) -> torch.Tensor:
    """softmax(q @ k^T * scaling + mask) @ v per query head, in float32, returned in the query dtype.

    Processes queries in chunks so the [.., Q, K] scores stay bounded; ``is_causal`` matters only when
    ``mask`` is None. Scaling defaults to head_dim ** -0.5.
    """
    check_attention_shapes(query, key, value, mask)
    batch, query_heads, query_length, head_dim = query.shape
    kv_heads, key_length = key.shape[1], key.shape[2]
    group = query_heads // kv_heads
    scale = head_dim**-0.5 if scaling is None else scaling
    allowed, bias = _allowed_and_bias(mask, query_length, key_length, is_causal, query.device)

    def per_kv_head(tensor: torch.Tensor) -> torch.Tensor:
        """[B|1, 1|Hq, Q, K] -> [B|1, Hkv|1, G|1, Q, K], matching queries grouped by their KV head."""
        return tensor[:, :, None] if tensor.shape[1] == 1 else tensor.unflatten(1, (kv_heads, group))

    grouped_query = query.float().unflatten(1, (kv_heads, group))  # [B, Hkv, G, Q, D]
    keys_t = key.float().transpose(-1, -2)[:, :, None]  # [B, Hkv, 1, D, K]
    values = value.float()[:, :, None]  # [B, Hkv, 1, K, D]
    out = torch.empty(batch, kv_heads, group, query_length, head_dim, dtype=torch.float32, device=query.device)
    rows_per_chunk = max(1, _REFERENCE_SCORES_PER_CHUNK // max(1, batch * query_heads * key_length))
    for start in range(0, query_length, rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        scores = grouped_query[..., rows, :] @ keys_t * scale
        if bias is not None:
            scores = scores + per_kv_head(bias)[..., rows, :]
        if allowed is None:
            weights = torch.softmax(scores, dim=-1)
        else:
            chunk_allowed = per_kv_head(allowed)[..., rows, :]
            any_allowed = chunk_allowed.any(dim=-1, keepdim=True)
            scores = scores.masked_fill(~chunk_allowed, float("-inf")).masked_fill(~any_allowed, 0.0)
            weights = torch.softmax(scores, dim=-1) * any_allowed
        out[..., rows, :] = weights @ values
    return out.flatten(1, 2).to(query.dtype)


def prefix_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    scaling: float | None = None,
    is_causal: bool = True,
) -> torch.Tensor:
    """Attention output [B, Hq, Q, D]: the Triton kernel for CUDA tensors, else the torch reference.

    If the Triton path raises once, a warning is logged and the reference serves the rest of the process.
    Bad shapes raise ValueError before either path.
    """
    check_attention_shapes(query, key, value, mask)
    if query.numel() > 0 and key.shape[2] > 0 and use_triton(query):

        def triton_call() -> torch.Tensor:
            from .prefix_attention_triton import prefix_attention_triton

            return prefix_attention_triton(query, key, value, mask, scaling, is_causal)

        return run_triton_or_reference(
            "prefix_attention",
            triton_call,
            lambda: prefix_attention_reference(query, key, value, mask, scaling, is_causal),
        )
    return prefix_attention_reference(query, key, value, mask, scaling, is_causal)
