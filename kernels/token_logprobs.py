"""Log-probability of target tokens from final hidden states, without materialising full logits.

The gate's query-likelihood rule needs log p(token) for every question and memory token of every
scored block; with a 152K vocabulary the full logits tensor of a batch is gigabytes. Both paths
stream over the vocabulary and accumulate hidden @ weight.T in float32 whatever the input dtype, so
a gate score does not depend on which path ran. The torch reference works in blocks of (vocabulary
slice x row chunk) and merges each row's log normaliser over the slices with logaddexp; the Triton
kernel works in vocab tiles with an online log-sum-exp. Shapes: ``contracts.check_logprob_shapes``
(re-exported here).
"""

from __future__ import annotations

import torch

from ._triton_support import run_triton_or_reference, use_triton
from .contracts import check_logprob_shapes

# A bfloat16 LM head of 152K x 3584 is 2.2 GB as float32, so the reference upcasts one vocabulary slice
# at a time; float32 weights are sliced without a copy. The logits of a block are bounded separately.
_REFERENCE_WEIGHT_PER_SLICE = 1 << 24  # weight elements upcast at once (64 MiB as float32)
_REFERENCE_LOGITS_PER_CHUNK = 1 << 23  # float32 logits held at once (32 MiB)


def _vocab_slice_width(hidden_size: int) -> int:
    """Vocabulary rows per slice: a power of two within the weight budget (CPU BLAS is slower on odd widths)."""
    budget = max(1, _REFERENCE_WEIGHT_PER_SLICE // max(1, hidden_size))
    return 1 << (budget.bit_length() - 1)


def token_logprobs_reference(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """log softmax(hidden @ weight.T + bias)[target] per row, float32 [N]; hidden [N, H], weight [V, H].

    Every product and sum is float32 (bf16/fp16 inputs are upcast a slice at a time, as the kernel does
    after its loads). The log normaliser of each row is merged over vocabulary slices with logaddexp.
    """
    num_rows, hidden_size = hidden.shape
    vocab_size = weight.shape[0]
    if num_rows == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    if int(targets.min()) < 0 or int(targets.max()) >= vocab_size:  # a slice would silently skip such a row
        raise ValueError(f"targets must lie in [0, {vocab_size})")
    slice_width = min(vocab_size, _vocab_slice_width(hidden_size))
    rows_per_chunk = max(1, _REFERENCE_LOGITS_PER_CHUNK // slice_width)
    log_normaliser = torch.full((num_rows,), float("-inf"), dtype=torch.float32, device=hidden.device)
    target_logit = torch.zeros(num_rows, dtype=torch.float32, device=hidden.device)
    for vocab_start in range(0, vocab_size, slice_width):
        vocab_end = min(vocab_start + slice_width, vocab_size)
        weight_t = weight[vocab_start:vocab_end].float().T  # a view, no copy, when the weight is float32
        bias_slice = None if bias is None else bias[vocab_start:vocab_end].float()
        for row_start in range(0, num_rows, rows_per_chunk):
            rows = slice(row_start, row_start + rows_per_chunk)
            hidden_rows = hidden[rows].float()
            if bias_slice is None:
                logits = hidden_rows @ weight_t
            else:
                logits = torch.addmm(bias_slice, hidden_rows, weight_t)
            log_normaliser[rows] = torch.logaddexp(log_normaliser[rows], torch.logsumexp(logits, dim=-1))
            local_targets = targets[rows] - vocab_start
            in_slice = (local_targets >= 0) & (local_targets < vocab_end - vocab_start)
            picked = logits.gather(1, local_targets.clamp(0, vocab_end - vocab_start - 1)[:, None]).squeeze(1)
            target_logit[rows] += torch.where(in_slice, picked, 0.0)
    return target_logit - log_normaliser


def token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Dispatch to the Triton kernel for CUDA tensors, else the torch reference.

    If the Triton path raises once (import, compile or launch error), a warning is logged and the
    reference serves every later call of the process. Bad shapes raise ValueError before either path.
    """
    check_logprob_shapes(hidden, weight, targets, bias)
    if hidden.shape[0] > 0 and use_triton(hidden):

        def triton_call() -> torch.Tensor:
            from .token_logprobs_triton import token_logprobs_triton

            return token_logprobs_triton(hidden, weight, targets, bias)

        return run_triton_or_reference(
            "token_logprobs", triton_call, lambda: token_logprobs_reference(hidden, weight, targets, bias)
        )
    return token_logprobs_reference(hidden, weight, targets, bias)
