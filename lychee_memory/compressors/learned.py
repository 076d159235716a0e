"""The learned compressor: memory tokens that read a chunk and keep ceil(L / ratio) KV slots (trained weights).

Layout ("aligned", "read-only", framed):

- The chunk is encoded after the engine's opening exactly as a raw read would encode it (one forward, the
  backbone untouched): raw tokens never attend to memory tokens, so the raw stream and its gate index are
  those of the raw-KV model.
- Memory token j of a chunk of L tokens summarises raw tokens [ratio*j, ratio*(j+1)) and sits at the
  position of the last of them, P + min(ratio*(j+1), L) - 1 (P = opening length). It attends, layer by
  layer, to the raw keys up to its position and to the memory tokens before it, through the model's own
  modules with low-rank deltas on q/k/v (``MemoryWeights``) and its own input embedding.
- Only the memory tokens' keys (post-RoPE, at those positions) and values are kept, so a block reads like a
  framed raw block: ``[opening | memory slots]`` and the prompt continues at P + L. The gate index is taken
  from the memory slots' keys (one key per ``ratio`` raw tokens), so it shrinks with the block.

This differs from the released checkpoint's beacon layout (memory interleaved in the raw stream, keys before
RoPE, the prompt at the slot count): both load from the same ``lychee_memory_*`` files and config keys, and
the ``pos`` key tells them apart.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..blocks import BlockOpening, MemoryBlock
from ..chunking import Chunk
from ..errors import UnsupportedModelError
from ..gate.index_format import IndexSpec
from ..kv_prefix import apply_rope
from ..model_loading import LoadedModel
from .base import Compressor, slots_for, span_of
from .memory_weights import LearnedSettings, MemoryWeights
from .selection import run_chunks

LEARNED_FAMILIES = ("llama", "qwen2", "mistral")


def memory_positions(lengths: list[int], ratio: int, prefix: int, device: torch.device) -> torch.Tensor:
    """[B, M] position of each memory token (rows past a short chunk's last slot repeat its last position)."""
    count = max(slots_for(length, ratio) for length in lengths)
    slot = torch.arange(count, device=device)
    ends = torch.tensor(lengths, device=device)[:, None]
    return prefix + torch.minimum(ratio * (slot[None, :] + 1), ends) - 1


def memory_stream(
    loaded: LoadedModel,
    weights: MemoryWeights,
    raw_keys: list[torch.Tensor],
    raw_values: list[torch.Tensor],
    lengths: list[int],
    ratio: int,
    prefix: int,
    gradient_checkpointing: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run the memory tokens of a batch over its raw KV (per layer [B, H_kv, P + L_max, D], post-RoPE).

    Returns per layer the memory tokens' keys (post-RoPE) and values [B, H_kv, M_max, D]. Differentiable in
    ``weights`` (the backbone's parameters are frozen); ``gradient_checkpointing`` recomputes each layer in
    the backward pass instead of keeping its activations (for long chunks on a GPU).
    """
    decoder = loaded.model.get_decoder()
    device = raw_keys[0].device
    positions = memory_positions(lengths, ratio, prefix, device)  # [B, M]
    batch, count = positions.shape
    raw_length = raw_keys[0].shape[2]
    raw_visible = torch.arange(raw_length, device=device)[None, None, :] <= positions[:, :, None]  # [B, M, S]
    memory_visible = torch.ones(count, count, dtype=torch.bool, device=device).tril()[None].expand(batch, -1, -1)
    mask = torch.cat([raw_visible, memory_visible], dim=-1)[:, None]  # [B, 1, M, S + M]
    hidden = weights.embedding.to(raw_keys[0].dtype)[None, None].expand(batch, count, -1)
    cos, sin = decoder.rotary_emb(hidden, positions)
    cos, sin = cos[:, None], sin[:, None]
    memory_keys, memory_values = [], []

    def run_layer(index: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        layer = decoder.layers[index]
        attention = layer.self_attn
        normed = layer.input_layernorm(hidden)
        projected = []
        for name in ("q", "k", "v"):
            out = getattr(attention, f"{name}_proj")(normed)
            delta = weights.delta(name, index, normed)
            projected.append(out if delta is None else out + delta)
        head_dim = attention.head_dim
        query, key, value = (x.view(batch, count, -1, head_dim).transpose(1, 2) for x in projected)
        query, key = apply_rope(query, cos, sin), apply_rope(key, cos, sin)
        keys = torch.cat([raw_keys[index], key], dim=2)
        values = torch.cat([raw_values[index], value], dim=2)
        output = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, scale=attention.scaling, enable_gqa=query.shape[1] != keys.shape[1]
        )
        hidden = hidden + attention.o_proj(output.transpose(1, 2).reshape(batch, count, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return hidden, key, value

    for index in range(len(decoder.layers)):
        if gradient_checkpointing and torch.is_grad_enabled():
            hidden, key, value = checkpoint(run_layer, index, hidden, use_reentrant=False)
        else:
            hidden, key, value = run_layer(index, hidden)
        memory_keys.append(key)
        memory_values.append(value)
    return memory_keys, memory_values


@dataclass
class LearnedCompressor(Compressor):
    """Trained memory tokens over a framed raw forward; ratio and chunk length bounded by what was trained."""

    name: ClassVar[str] = "learned"
    framed: ClassVar[bool] = True
    builds_gate_index: ClassVar[bool] = True
    weights: MemoryWeights
    settings: LearnedSettings
    ratio: int
    digest: str
    opening: BlockOpening | None = None  # set by the engine
    index_spec: IndexSpec | None = None  # set by the engine when the gate's prefilter is on

    @classmethod
    def for_model(cls, loaded: LoadedModel, ratio: int | None) -> LearnedCompressor:
        """The weights loaded beside the model (``--compressor-weights``, a shipped file or the checkpoint)."""
        if loaded.family not in LEARNED_FAMILIES:
            raise UnsupportedModelError(
                f"the learned compressor supports {', '.join(LEARNED_FAMILIES)} models, not {loaded.family!r}"
            )
        if not loaded.has_trained_memory:
            raise UnsupportedModelError(
                f"model {loaded.resolved.spec!r} has no learned compressor weights: pass compressor_weights=PATH "
                "(--compressor-weights) or train some with `lychee train compressor`"
            )
        settings = LearnedSettings.from_checkpoint_config(loaded.memory_config)
        ratio = settings.ratios[0] if ratio is None else ratio
        settings.check_ratio(ratio)
        weights = MemoryWeights.from_tensors(loaded.config, loaded.memory_tensors, settings)
        weights.to(device=loaded.device, dtype=loaded.dtype).requires_grad_(False)
        return cls(weights=weights, settings=settings, ratio=ratio, digest=loaded.memory_digest or "unrecorded")

    @property
    def trained(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "ratio": self.ratio, "rank": self.settings.rank, "weights_sha256": self.digest}

    def index_spec_for_slots(self) -> IndexSpec | None:
        """The gate index over memory slots: the raw spec's heads, its skipped sink tokens counted in slots."""
        if self.index_spec is None:
            return None
        return dataclasses.replace(self.index_spec, skip_tokens=math.ceil(self.index_spec.skip_tokens / self.ratio))

    @torch.inference_mode()
    def compress(self, loaded: LoadedModel, chunks: list[Chunk]) -> list[MemoryBlock]:
        opening = self.opening_for(loaded)
        prefix = opening.num_slots
        lengths = [len(chunk.token_ids) for chunk in chunks]
        longest = max(lengths)
        if longest > self.settings.window:
            raise UnsupportedModelError(
                f"chunks of {longest} tokens are longer than the {self.settings.window} tokens the compressor "
                f"weights were trained for; use chunk_tokens <= {self.settings.window}"
            )
        forward = run_chunks(
            loaded, [list(opening.token_ids) + list(chunk.token_ids) for chunk in chunks], None, prefix
        )
        keys, values = memory_stream(loaded, self.weights, forward.keys, forward.values, lengths, self.ratio, prefix)
        slot_spec = self.index_spec_for_slots()
        blocks = []
        for row, chunk in enumerate(chunks):
            slots = slots_for(lengths[row], self.ratio)
            block_keys = torch.stack([layer[row, :, :slots] for layer in keys])
            gate_keys = slot_spec.extract(keys, row, 0, slots) if slot_spec is not None else None
            blocks.append(
                MemoryBlock(
                    keys=block_keys,
                    values=torch.stack([layer[row, :, :slots] for layer in values]),
                    valid=torch.ones(slots, dtype=torch.bool),
                    next_position=prefix + lengths[row],
                    token_ids=torch.tensor(chunk.token_ids, dtype=torch.int32),
                    span=span_of(chunk),
                    compressor=self.name,
                    gate_keys=gate_keys,
                )
            )
        return blocks
