"""Triton kernel for block scores from stored keys (semantics in ``key_scores``).

One program takes one block n, one selected head h and a tile of queries. It loads the query tile
once, then streams over the block's keys of pair head_pairs[h] in tiles: scores come from ``tl.dot``
(tiles padded to at least 16 rows, so Q = 1 works), padding keys and the ragged edges are masked to
-inf, and an online logsumexp (running max and running sum of exponentials, float32) folds each tile
in. The [N, Hs, Q, T] scores never exist. Blocks go on grid axis 0, which has room for millions.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .contracts import check_key_score_shapes

_QUERIES_PER_TILE = 64
_KEYS_PER_TILE = 64


@triton.jit
def _key_logsumexp_kernel(
    queries_ptr,
    keys_ptr,
    valid_ptr,
    pairs_ptr,
    out_ptr,
    query_count,
    keys_per_block,
    head_dim,
    selected_heads,
    scale,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kn,
    stride_kp,
    stride_kt,
    stride_kd,
    stride_vn,
    stride_vt,
    DOT_PRECISION: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    block = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    query_tile = tl.program_id(2)
    pair = tl.load(pairs_ptr + head).to(tl.int64)

    rows = query_tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_valid = rows < query_count
    dims = tl.arange(0, BLOCK_D)
    dim_valid = dims < head_dim
    query = tl.load(
        queries_ptr
        + head.to(tl.int64) * stride_qh
        + rows.to(tl.int64)[:, None] * stride_qm
        + dims[None, :] * stride_qd,
        mask=row_valid[:, None] & dim_valid[None, :],
        other=0.0,
    ).to(tl.float32)
    key_base = keys_ptr + block * stride_kn + pair * stride_kp
    valid_base = valid_ptr + block * stride_vn

    running_max = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_Q], tl.float32)
    for key_start in range(0, keys_per_block, BLOCK_T):
        positions = key_start + tl.arange(0, BLOCK_T)
        in_block = positions < keys_per_block
        key_tile = tl.load(
            key_base + positions.to(tl.int64)[:, None] * stride_kt + dims[None, :] * stride_kd,
            mask=in_block[:, None] & dim_valid[None, :],
            other=0.0,
        ).to(tl.float32)
        is_key = tl.load(valid_base + positions * stride_vt, mask=in_block, other=0) != 0
        scores = tl.dot(query, tl.trans(key_tile), input_precision=DOT_PRECISION) * scale  # [BLOCK_Q, BLOCK_T]
        scores = tl.where(is_key[None, :], scores, float("-inf"))

        # Until a valid key arrives the max stays -inf; shift by 0 then so exp gives 0, not NaN.
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(scores - shift[:, None]), axis=1)
        running_max = new_max

    # The largest valid score adds exp(0) = 1 to the sum, so a zero sum means no valid key: -inf.
    has_key = running_sum > 0.0
    result = tl.where(has_key, running_max + tl.log(tl.where(has_key, running_sum, 1.0)), float("-inf"))
    out_offsets = (block * selected_heads + head) * query_count + rows
    tl.store(out_ptr + out_offsets, result, mask=row_valid)


def key_logsumexp_triton(
    queries: torch.Tensor,
    keys: torch.Tensor,
    key_valid: torch.Tensor,
    head_pairs: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """float32 [N, Hs, Q]: logsumexp over valid keys of scale * q . k; arguments as for the reference.

    Queries and keys may be float32, float16 or bfloat16 (any strides); all arithmetic is float32.
    """
    check_key_score_shapes(queries, keys, key_valid, head_pairs)
    selected_heads, query_count, head_dim = queries.shape
    blocks, _, keys_per_block, _ = keys.shape
    out = torch.empty(blocks, selected_heads, query_count, dtype=torch.float32, device=queries.device)
    if out.numel() == 0:
        return out

    block_q = min(_QUERIES_PER_TILE, max(16, triton.next_power_of_2(query_count)))
    block_d = max(16, triton.next_power_of_2(head_dim))
    keys_per_tile = _KEYS_PER_TILE if block_d <= 128 else _KEYS_PER_TILE // 2  # bound registers for wide heads
    block_t = min(keys_per_tile, max(16, triton.next_power_of_2(keys_per_block)))
    # bf16/fp16 values are exact in tf32, so tensor cores lose nothing there; float32 inputs need IEEE.
    exact_fp32 = torch.float32 in (queries.dtype, keys.dtype)
    pairs = head_pairs.to(device=queries.device).contiguous()
    grid = (blocks, selected_heads, triton.cdiv(query_count, block_q))
    _key_logsumexp_kernel[grid](
        queries,
        keys,
        key_valid.view(torch.uint8),
        pairs,
        out,
        query_count,
        keys_per_block,
        head_dim,
        selected_heads,
        float(scale),
        *queries.stride(),
        *keys.stride(),
        *key_valid.stride(),
        DOT_PRECISION="ieee" if exact_fp32 else "tf32",
        BLOCK_Q=block_q,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
        num_warps=4 if block_d <= 64 else 8,
        num_stages=2,
    )
    return out
