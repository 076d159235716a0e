"""Triton kernel for grouped-query attention after a KV prefix (semantics in ``prefix_attention``).

One program takes one (batch, KV head) and a block of rows, where a row is a (query, query head)
pair among the heads sharing that KV head, ordered query-major. Packing the group into the row
block lets a single decode query (Q == 1) still fill a 16-row ``tl.dot`` and reads every key/value
tile once per group. Key tiles stream through an online softmax in float32; under a causal mask
the loop stops at the last key any row of the block can see.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .contracts import blocked_threshold, check_attention_shapes

MASK_NONE = tl.constexpr(0)  # every key attends
MASK_CAUSAL = tl.constexpr(1)  # bottom-right causal
MASK_ADDITIVE = tl.constexpr(2)  # float mask added to the scores
MASK_BOOL = tl.constexpr(3)  # True attends

_ROWS_PER_BLOCK = 64
_KEYS_PER_TILE = 64


@triton.jit
def _prefix_attention_kernel(
    query_ptr,
    key_ptr,
    value_ptr,
    mask_ptr,
    out_ptr,
    query_length,
    key_length,
    head_dim,
    kv_heads,
    group_size,
    scale,
    blocked_at_or_below,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_mb,
    stride_mh,
    stride_mm,
    stride_mn,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,
    MASK_KIND: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row_block = tl.program_id(0)
    batch = tl.program_id(1) // kv_heads
    kv_head = tl.program_id(1) % kv_heads

    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = rows < query_length * group_size
    query_index = rows // group_size
    head = kv_head * group_size + rows % group_size
    dims = tl.arange(0, BLOCK_D)
    dim_valid = dims < head_dim
    row_dim_valid = row_valid[:, None] & dim_valid[None, :]

    query_offsets = (
        batch.to(tl.int64) * stride_qb
        + head.to(tl.int64)[:, None] * stride_qh
        + query_index.to(tl.int64)[:, None] * stride_qm
        + dims[None, :] * stride_qd
    )
    query = tl.load(query_ptr + query_offsets, mask=row_dim_valid, other=0.0).to(tl.float32)
    key_base = key_ptr + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    value_base = value_ptr + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh
    mask_rows = (
        mask_ptr
        + batch.to(tl.int64) * stride_mb
        + head.to(tl.int64)[:, None] * stride_mh
        + query_index.to(tl.int64)[:, None] * stride_mm
    )
    # Bottom-right causal: query i sees keys up to K - Q + i.
    last_visible_key = key_length - query_length + query_index

    running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    key_end = key_length
    if MASK_KIND == MASK_CAUSAL:
        last_query_in_block = tl.minimum((row_block * BLOCK_M + BLOCK_M - 1) // group_size, query_length - 1)
        key_end = tl.minimum(key_length, key_length - query_length + last_query_in_block + 1)
    for key_start in range(0, key_end, BLOCK_N):
        keys = key_start + tl.arange(0, BLOCK_N)
        key_valid = keys < key_length
        key_dim_valid = key_valid[:, None] & dim_valid[None, :]
        key_tile = tl.load(
            key_base + keys.to(tl.int64)[:, None] * stride_kn + dims[None, :] * stride_kd,
            mask=key_dim_valid,
            other=0.0,
        ).to(tl.float32)
        value_tile = tl.load(
            value_base + keys.to(tl.int64)[:, None] * stride_vn + dims[None, :] * stride_vd,
            mask=key_dim_valid,
            other=0.0,
        ).to(tl.float32)
        scores = tl.dot(query, tl.trans(key_tile), input_precision=DOT_PRECISION) * scale

        allowed = row_valid[:, None] & key_valid[None, :]
        if MASK_KIND == MASK_CAUSAL:
            allowed = allowed & (keys[None, :] <= last_visible_key[:, None])
        if MASK_KIND == MASK_ADDITIVE:
            additive = tl.load(mask_rows + keys[None, :] * stride_mn, mask=allowed, other=0.0).to(tl.float32)
            allowed = allowed & (additive > blocked_at_or_below)
            scores += tl.where(allowed, additive, 0.0)
        if MASK_KIND == MASK_BOOL:
            attend = tl.load(mask_rows + keys[None, :] * stride_mn, mask=allowed, other=0)
            allowed = allowed & (attend != 0)
        scores = tl.where(allowed, scores, float("-inf"))

        # A row with nothing allowed so far keeps max -inf; shift by 0 then so exp gives 0, not NaN.
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        probabilities = tl.exp(scores - shift[:, None])
        rescale = tl.exp(running_max - shift)
        running_sum = running_sum * rescale + tl.sum(probabilities, axis=1)
        acc = acc * rescale[:, None] + tl.dot(probabilities, value_tile, input_precision=DOT_PRECISION)
        running_max = new_max

    out = acc / tl.where(running_sum == 0.0, 1.0, running_sum)[:, None]  # fully blocked rows: 0 / 1
    out_offsets = (
        batch.to(tl.int64) * stride_ob
        + head.to(tl.int64)[:, None] * stride_oh
        + query_index.to(tl.int64)[:, None] * stride_om
        + dims[None, :] * stride_od
    )
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=row_dim_valid)


def prefix_attention_triton(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    scaling: float | None = None,
    is_causal: bool = True,
) -> torch.Tensor:
    """Attention output [B, Hq, Q, D] in the query dtype, stored as [B, Q, Hq, D] memory.

    That layout is what transformers wants after its ``transpose(1, 2)``, which then copies nothing.
    Arguments as for ``prefix_attention_reference``.
    """
    check_attention_shapes(query, key, value, mask)
    batch, query_heads, query_length, head_dim = query.shape
    kv_heads, key_length = key.shape[1], key.shape[2]
    group_size = query_heads // kv_heads
    out = torch.empty(batch, query_length, query_heads, head_dim, dtype=query.dtype, device=query.device)
    out = out.transpose(1, 2)
    if out.numel() == 0:
        return out

    if mask is None:
        mask_kind = MASK_CAUSAL if is_causal else MASK_NONE
        mask_arg, mask_strides, threshold = query, (0, 0, 0, 0), 0.0  # never read
    else:
        mask_kind = MASK_BOOL if mask.dtype == torch.bool else MASK_ADDITIVE
        threshold = 0.0 if mask.dtype == torch.bool else blocked_threshold(mask)
        mask_arg = mask.expand(batch, query_heads, query_length, key_length)  # broadcast dims get stride 0
        mask_strides = mask_arg.stride()
        if mask.dtype == torch.bool:
            mask_arg = mask_arg.view(torch.uint8)

    rows = query_length * group_size
    block_m = min(_ROWS_PER_BLOCK, max(16, triton.next_power_of_2(rows)))
    block_d = max(16, triton.next_power_of_2(head_dim))
    keys_per_tile = _KEYS_PER_TILE if block_d <= 128 else _KEYS_PER_TILE // 2  # bound registers for wide heads
    block_n = min(keys_per_tile, max(16, triton.next_power_of_2(key_length)))
    # bf16/fp16 values are exact in tf32, so tensor cores lose nothing on the q @ k^T products.
    exact_fp32 = query.dtype == torch.float32 or key.dtype == torch.float32
    grid = (triton.cdiv(rows, block_m), batch * kv_heads)
    _prefix_attention_kernel[grid](
        query,
        key,
        value,
        mask_arg,
        out,
        query_length,
        key_length,
        head_dim,
        kv_heads,
        group_size,
        head_dim**-0.5 if scaling is None else float(scaling),
        threshold,
        *query.stride(),
        *key.stride(),
        *value.stride(),
        *mask_strides,
        *out.stride(),
        MASK_KIND=mask_kind.value,
        DOT_PRECISION="ieee" if exact_fp32 else "tf32",
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        num_warps=4 if block_d <= 64 else 8,
        num_stages=2,
    )
    return out
