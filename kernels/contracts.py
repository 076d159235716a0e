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

key_logsumexp:
    queries [Hs, Q, D] (float32/float16/bfloat16): the query vectors of Hs selected attention heads, RoPE
    already applied. keys [N, P, T, D] (float32/float16/bfloat16): per memory block n and per stored
    (layer, KV head) pair p, T keys, right-padded. key_valid [N, T] bool: True marks a real key, padding
    is False. head_pairs [Hs] int64 with values in [0, P): selected head h reads pair head_pairs[h]
    (it may be on another device than the rest). scale: a float. queries, keys and key_valid share one
    device. The result is float32 [N, Hs, Q]: result[n, h, q] is the logsumexp, over the t with
    key_valid[n, t], of scale * dot(queries[h, q], keys[n, head_pairs[h], t]), computed in float32; a
    block with no valid key gives -inf.
"""

from __future__ import annotations

import torch

_KEY_SCORE_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def check_key_score_shapes(
    queries: torch.Tensor, keys: torch.Tensor, key_valid: torch.Tensor, head_pairs: torch.Tensor
) -> None:
    """Raise ValueError unless the arguments fit the key_logsumexp layout in the module docstring.

    Reads head_pairs' values for the range check (a device sync when it lives on a GPU).
    """
    if queries.dim() != 3:
        raise ValueError(f"queries must be 3D [Hs, Q, D], got {tuple(queries.shape)}")
    if keys.dim() != 4:
        raise ValueError(f"keys must be 4D [N, P, T, D], got {tuple(keys.shape)}")
    selected_heads, _, head_dim = queries.shape
    blocks, pairs, keys_per_block, key_dim = keys.shape
    if key_dim != head_dim:
        raise ValueError(f"queries head_dim D={head_dim} differs from keys head_dim D={key_dim}")
    if queries.dtype not in _KEY_SCORE_FLOAT_DTYPES or keys.dtype not in _KEY_SCORE_FLOAT_DTYPES:
        raise ValueError(f"queries and keys must be float32, float16 or bfloat16, got {queries.dtype} and {keys.dtype}")
    if key_valid.dtype != torch.bool:
        raise ValueError(f"key_valid must be a bool tensor, got {key_valid.dtype}")
    if key_valid.shape != (blocks, keys_per_block):
        raise ValueError(f"key_valid must be [N, T] = [{blocks}, {keys_per_block}], got {tuple(key_valid.shape)}")
    if head_pairs.dtype != torch.int64:
        raise ValueError(f"head_pairs must be int64, got {head_pairs.dtype}")
    if head_pairs.shape != (selected_heads,):
        raise ValueError(f"head_pairs must be [Hs] = [{selected_heads}], got {tuple(head_pairs.shape)}")
    if keys.device != queries.device or key_valid.device != queries.device:
        raise ValueError(
            f"queries, keys and key_valid must share a device, got {queries.device}, {keys.device}, {key_valid.device}"
        )
    if selected_heads > 0:
        low, high = int(head_pairs.min()), int(head_pairs.max())
        if low < 0 or high >= pairs:
            raise ValueError(f"head_pairs must lie in [0, P) = [0, {pairs}), got values in [{low}, {high}]")
