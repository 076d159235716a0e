"""The shape contracts of the kernels, shared by each torch reference/dispatcher and its Triton kernel.

Both paths of a kernel check their arguments here, so they accept exactly the same inputs and neither
module imports the other to do so (the dispatchers import the Triton modules lazily, on CUDA only).
This module imports nothing but torch.

token_logprobs:
    hidden [N, H], weight [V, H] (an LM head, one row per vocabulary entry), targets [N] with values in
    [0, V), bias [V] or None. The result is float32 [N]: log softmax(hidden @ weight.T + bias)[target].

prefix_attention:
    query [B, Hq, Q, D] attends to key/value [B, Hkv, K, D], with Hq a multiple of Hkv; query head h reads
    KV head h // (Hq // Hkv). The mask is None, or float additive / bool [B or 1, Hq or 1, Q, K]. An
    additive value at or below ``blocked_threshold(mask)`` (finfo(mask.dtype).min, and so -inf) blocks its
    key; anything above is added to the score. A bool mask attends where True.
"""

from __future__ import annotations

import torch


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


def check_attention_shapes(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> None:
    """Raise ValueError unless the shapes fit the prefix_attention layout in the module docstring."""
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ValueError("query, key and value must be 4D [batch, heads, length, head_dim]")
    batch, query_heads, query_length, head_dim = query.shape
    if key.shape != value.shape or key.shape[0] != batch or key.shape[3] != head_dim:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must be [{batch}, Hkv, K, {head_dim}]")
    kv_heads, key_length = key.shape[1], key.shape[2]
    if kv_heads == 0 or query_heads % kv_heads != 0:
        raise ValueError(f"query heads ({query_heads}) must be a multiple of key/value heads ({kv_heads})")
    if mask is not None:
        if mask.dim() != 4 or mask.shape[2:] != (query_length, key_length):
            raise ValueError(f"mask must be [B, 1 or Hq, {query_length}, {key_length}], got {tuple(mask.shape)}")
        if mask.shape[0] not in (1, batch) or mask.shape[1] not in (1, query_heads):
            raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to [{batch}, {query_heads}, ...]")


def blocked_threshold(mask: torch.Tensor) -> float:
    """Additive mask values at or below this block their key (finfo(dtype).min, and so -inf)."""
    return float(torch.finfo(mask.dtype).min)
