"""The prefix-attention kernel as a transformers attention implementation named "lychee_triton".

After ``register_triton_attention()``, ``model.set_attn_implementation("lychee_triton")`` (or
``attn_implementation="lychee_triton"`` at load) routes every attention layer here. Masks are built by
transformers' sdpa mask function, so this sees exactly what "sdpa" sees and mirrors its reading of
``attention_mask=None``. What the kernel does not cover (dropout, position bias, paged cache, softcap,
attention weights) goes to transformers' own sdpa forward.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from .prefix_attention import prefix_attention

ATTENTION_NAME = "lychee_triton"

_registration_lock = threading.Lock()
_registered = False


def _needs_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float, kwargs: dict[str, Any]
) -> bool:
    """Does this call ask for something the kernel does not implement?"""
    return (
        dropout > 0.0
        or kwargs.get("position_bias") is not None
        or kwargs.get("cache") is not None
        or kwargs.get("softcap") is not None
        or bool(kwargs.get("output_attentions", False))
        or key.shape[-1] != value.shape[-1]
        or key.shape[-1] != query.shape[-1]
    )


def lychee_triton_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Drop-in for transformers' ``sdpa_attention_forward``: returns ([B, Q, Hq, D], None).

    With ``attention_mask=None`` it follows sdpa: causal when 1 < Q (Q == K for an ordinary prefill;
    Q < K only for the first forward into an empty static cache, where the keys past Q are unused
    slots and the causal mask is aligned to the top left), and every key when Q == 1.
    """
    if _needs_sdpa(query, key, value, dropout, kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )

    query_length, key_length = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None:
        causal = bool(causal) and query_length > 1
        if causal and key_length > query_length:
            key, value = key[:, :, :query_length], value[:, :, :query_length]
    else:
        attention_mask = attention_mask[:, :, :, :key_length]
    attn_output = prefix_attention(query, key, value, attention_mask, scaling, is_causal=causal)
    return attn_output.transpose(1, 2).contiguous(), None


def register_triton_attention() -> str:
    """Register "lychee_triton" with transformers (attention function and sdpa's mask); returns the name.

    Safe to call any number of times; nothing is registered at import.
    """
    global _registered
    with _registration_lock:
        if not _registered:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

            AttentionInterface.register(ATTENTION_NAME, lychee_triton_attention_forward)
            AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
            _registered = True
    return ATTENTION_NAME
