"""Forward hooks that read the query vectors of chosen heads out of a partial forward (stage 1's queries)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..blocks import BlockOpening
from ..kv_prefix import apply_rope, opening_cache
from ..model_loading import LoadedModel


class QueriesCaptured(Exception):
    """Raised by the query capture once the deepest chosen layer ran: the rest of the forward is not needed."""


@torch.inference_mode()
def capture_queries(
    loaded: LoadedModel,
    opening: BlockOpening | None,
    prompt_ids: list[int],
    start_position: int,
    heads: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """Query vectors [len(heads), Q, head_dim] (float32, RoPE applied) of a prompt run after the opening alone.

    The prompt takes positions ``start_position ..``, where it would sit after a full block, so q . k over a
    block's stored keys sees the relative distances the real prompt sees.
    """
    decoder = loaded.model.get_decoder()
    wanted = sorted({layer for layer, _ in heads})
    captured: dict[int, torch.Tensor] = {}

    def capture(layer_index: int):
        def hook(module, args, kwargs, output=None):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            cos, sin = kwargs["position_embeddings"]
            query = module.q_proj(hidden).view(hidden.shape[0], hidden.shape[1], -1, module.head_dim)
            if hasattr(module, "q_norm"):
                query = module.q_norm(query)
            captured[layer_index] = apply_rope(query.transpose(1, 2), cos[:, None], sin[:, None])[0].float()
            if layer_index == wanted[-1]:
                raise QueriesCaptured

        return hook

    hooks = [
        decoder.layers[layer].self_attn.register_forward_pre_hook(capture(layer), with_kwargs=True) for layer in wanted
    ]
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=loaded.device)
    positions = torch.arange(start_position, start_position + len(prompt_ids), device=loaded.device)[None]
    cache = opening_cache(loaded, opening, 1) if opening is not None and opening.num_slots else None
    try:
        decoder(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=cache is not None)
    except QueriesCaptured:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack([captured[layer][head] for layer, head in heads])
