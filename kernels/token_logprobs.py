"""Log-probability of target tokens from final hidden states, without materialising full logits.

The gate's query-likelihood rule needs log p(token) for every question and memory token of every
scored block; with a 152K vocabulary the full logits tensor of a batch is gigabytes. Both paths
here stream over the vocabulary: the torch reference in row chunks, the Triton kernel in vocab tiles
with an online log-sum-exp.
"""

from __future__ import annotations

import torch

from ._triton_support import run_triton_or_reference, use_triton

_REFERENCE_ROWS_PER_CHUNK = 256


def check_logprob_shapes(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """Raise ValueError unless hidden is [N, H], weight [V, H], targets [N] and bias [V] or None."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected targets [{hidden.shape[0]}], got {tuple(targets.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"expected bias [{weight.shape[0]}], got {tuple(bias.shape)}")


def token_logprobs_reference(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """log softmax(hidden @ weight.T + bias)[target] per row, in float32; hidden [N, H], weight [V, H]."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], _REFERENCE_ROWS_PER_CHUNK):
        rows = slice(start, start + _REFERENCE_ROWS_PER_CHUNK)
        logits = (hidden[rows] @ weight.T).float()
        if bias is not None:
            logits += bias.float()
        out[rows] = logits.gather(1, targets[rows, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    return out


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
