"""Triton kernel for per-row target log-probabilities, streaming over vocabulary tiles.

Each program takes a block of rows and a contiguous slice of the vocabulary, computes logit tiles
with ``tl.dot``, and keeps an online log-sum-exp (running max and running sum of exponentials) plus
the target logit when its tile passes; the [N, V] logits never exist. Slices of the vocabulary run
in parallel programs so that a few hundred rows still fill a GPU; their partial (max, sum, target)
triples are merged in torch, which costs O(splits * N).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .contracts import check_logprob_shapes

_ROWS_PER_BLOCK = 64
_VOCAB_PER_TILE = 128
_HIDDEN_PER_TILE = 64
_PROGRAMS_PER_SM = 4


@triton.jit
def _token_logprobs_partial_kernel(
    hidden_ptr,
    weight_ptr,
    bias_ptr,
    targets_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    partial_target_ptr,
    num_rows,
    vocab_size,
    hidden_size,
    vocab_per_split,
    stride_hidden_row,
    stride_hidden_col,
    stride_weight_row,
    stride_weight_col,
    HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_VOCAB: tl.constexpr,
    BLOCK_HIDDEN: tl.constexpr,
):
    row_block = tl.program_id(0)
    split = tl.program_id(1)
    rows = row_block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_valid = rows < num_rows
    targets = tl.load(targets_ptr + rows, mask=row_valid, other=0)
    hidden_rows = hidden_ptr + rows.to(tl.int64)[:, None] * stride_hidden_row

    running_max = tl.full([BLOCK_ROWS], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_ROWS], tl.float32)
    target_logit = tl.zeros([BLOCK_ROWS], tl.float32)

    vocab_start = split * vocab_per_split
    vocab_end = tl.minimum(vocab_start + vocab_per_split, vocab_size)
    for tile_start in range(vocab_start, vocab_end, BLOCK_VOCAB):
        cols = tile_start + tl.arange(0, BLOCK_VOCAB)
        col_valid = cols < vocab_end
        weight_rows = weight_ptr + cols.to(tl.int64)[:, None] * stride_weight_row
        logits = tl.zeros([BLOCK_ROWS, BLOCK_VOCAB], tl.float32)
        for hidden_start in range(0, hidden_size, BLOCK_HIDDEN):
            dims = hidden_start + tl.arange(0, BLOCK_HIDDEN)
            dim_valid = dims < hidden_size
            hidden_tile = tl.load(
                hidden_rows + dims[None, :] * stride_hidden_col,
                mask=row_valid[:, None] & dim_valid[None, :],
                other=0.0,
            ).to(tl.float32)
            weight_tile = tl.load(
                weight_rows + dims[None, :] * stride_weight_col,
                mask=col_valid[:, None] & dim_valid[None, :],
                other=0.0,
            ).to(tl.float32)
            logits = tl.dot(hidden_tile, tl.trans(weight_tile), logits, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            logits += tl.load(bias_ptr + cols, mask=col_valid, other=0.0).to(tl.float32)[None, :]
        logits = tl.where(col_valid[None, :], logits, float("-inf"))

        # Every tile holds at least one valid column, so new_max is finite and exp(-inf - new_max) = 0.
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        running_max = new_max
        target_logit += tl.sum(tl.where(cols[None, :] == targets[:, None], logits, 0.0), axis=1)

    partial_offsets = split * num_rows + rows
    tl.store(partial_max_ptr + partial_offsets, running_max, mask=row_valid)
    tl.store(partial_sum_ptr + partial_offsets, running_sum, mask=row_valid)
    tl.store(partial_target_ptr + partial_offsets, target_logit, mask=row_valid)


def _default_vocab_splits(device: torch.device, row_blocks: int, vocab_tiles: int) -> int:
    """Enough vocabulary slices that row blocks x slices gives each SM a few programs."""
    if device.type == "cuda":
        sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    else:  # the Triton interpreter: a few slices, so tests exercise the merge
        sm_count = 1
    wanted = triton.cdiv(_PROGRAMS_PER_SM * sm_count, row_blocks)
    return max(1, min(wanted, vocab_tiles))


def token_logprobs_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    vocab_splits: int | None = None,
) -> torch.Tensor:
    """log softmax(hidden @ weight.T + bias)[target] per row, float32 [N]; hidden [N, H], weight [V, H].

    Inputs may be float32, bfloat16 or float16; all arithmetic is float32. Targets must lie in [0, V).
    ``vocab_splits`` (how many vocabulary slices run in parallel) defaults to filling the device.
    """
    check_logprob_shapes(hidden, weight, targets, bias)
    num_rows, hidden_size = hidden.shape
    vocab_size = weight.shape[0]
    if num_rows == 0:
        return hidden.new_zeros(0, dtype=torch.float32)

    block_rows = min(_ROWS_PER_BLOCK, max(16, triton.next_power_of_2(num_rows)))
    block_hidden = min(_HIDDEN_PER_TILE, max(16, triton.next_power_of_2(hidden_size)))
    row_blocks = triton.cdiv(num_rows, block_rows)
    vocab_tiles = triton.cdiv(vocab_size, _VOCAB_PER_TILE)
    splits = vocab_splits or _default_vocab_splits(hidden.device, row_blocks, vocab_tiles)
    splits = max(1, min(splits, vocab_tiles))
    tiles_per_split = triton.cdiv(vocab_tiles, splits)
    splits = triton.cdiv(vocab_tiles, tiles_per_split)  # no empty slice: each has a valid column

    partial_max = torch.empty(splits, num_rows, dtype=torch.float32, device=hidden.device)
    partial_sum = torch.empty_like(partial_max)
    partial_target = torch.empty_like(partial_max)
    # bf16/fp16 values are exact in tf32, so tensor cores lose nothing there; float32 inputs need IEEE.
    exact_fp32 = torch.float32 in (hidden.dtype, weight.dtype)
    targets = targets.to(device=hidden.device, dtype=torch.int64).contiguous()
    _token_logprobs_partial_kernel[(row_blocks, splits)](
        hidden,
        weight,
        bias.contiguous() if bias is not None else partial_max,  # never read without HAS_BIAS
        targets,
        partial_max,
        partial_sum,
        partial_target,
        num_rows,
        vocab_size,
        hidden_size,
        tiles_per_split * _VOCAB_PER_TILE,
        hidden.stride(0),
        hidden.stride(1),
        weight.stride(0),
        weight.stride(1),
        HAS_BIAS=bias is not None,
        DOT_PRECISION="ieee" if exact_fp32 else "tf32",
        BLOCK_ROWS=block_rows,
        BLOCK_VOCAB=_VOCAB_PER_TILE,
        BLOCK_HIDDEN=block_hidden,
        num_warps=8 if block_rows >= 64 else 4,
        num_stages=2,
    )
    overall_max = partial_max.max(dim=0).values
    total = (partial_sum * torch.exp(partial_max - overall_max)).sum(dim=0)
    return partial_target.sum(dim=0) - (overall_max + torch.log(total))
