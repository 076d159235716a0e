"""The learned compressor of the released checkpoint: interleaved memory tokens (Activation-Beacon style).

A chunk is processed in windows of ``window`` raw tokens. In each window one memory token follows every
``ratio`` raw tokens (``[r r r r M] x 512`` for 2048 tokens at ratio 4; a short tail gets one more M),
under plain causal attention over the previous windows' memory plus the window itself, with positions
contiguous from 0. Memory tokens use their own q/k/v projections and embedding; o_proj, MLP and norms are
shared. Only the memory tokens' keys (before RoPE) and values are kept: ceil(L / ratio) slots. A prompt
reads them unrotated and continues at position = slot count, as the released reasoning loop does.

The decoder loop below is written out directly over the model's own modules (norms, projections, MLP)
so no modeling file is copied and the same code serves Llama and Qwen2.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..blocks import MemoryBlock
from ..chunking import Chunk
from ..errors import UnsupportedModelError
from ..kv_prefix import apply_rope
from ..model_loading import LoadedModel
from .base import Compressor, slots_for, span_of

logger = logging.getLogger(__name__)

_LAYER_TENSOR = re.compile(r"layers\.(\d+)\.self_attn\.(?:lychee_memory|beacon)_([qkv])_proj\.(weight|bias)$")
_EMBED_TENSOR = re.compile(r"(?:lychee_memory|beacon)_embed_tokens\.weight$")
BEACON_FAMILIES = ("llama", "qwen2", "mistral")


@dataclass
class BeaconSettings:
    """The checkpoint's compression geometry (config keys ``lychee_memory_*`` / ``beacon_*``)."""

    window: int = 2048
    stride: int = 2048
    ratio: int = 4
    param: tuple[str, ...] = ("q", "k", "v")
    embed_init: str = "eos"

    @classmethod
    def from_checkpoint_config(cls, config: dict[str, Any]) -> BeaconSettings:
        """Read and validate the keys; anything this implementation does not reproduce is refused."""
        ratio = config.get("ratio", [4])
        ratios = ratio if isinstance(ratio, list) else [ratio]
        checks = {
            "attn": ("full-coverage", config.get("attn", "full-coverage")),
            "pos": ("interleave", config.get("pos", "interleave")),
            "sink_size": (0, config.get("sink_size", 0)),
            "attend_prev": (True, config.get("attend_prev", True)),
        }
        for key, (expected, found) in checks.items():
            if found != expected:
                raise UnsupportedModelError(
                    f"checkpoint memory setting {key}={found!r} is not supported (only {expected!r})"
                )
        param = tuple(config.get("param", ["q", "k", "v"]))
        if not set(param) <= {"q", "k", "v"}:
            raise UnsupportedModelError(f"checkpoint memory projections {list(param)} are not supported (only q, k, v)")
        settings = cls(
            window=int(config.get("window", 2048)),
            stride=int(config.get("stride", config.get("window", 2048))),
            ratio=int(ratios[0]),
            param=param,
            embed_init=str(config.get("embed_init", "eos")),
        )
        if settings.window != settings.stride or settings.window % settings.ratio:
            raise UnsupportedModelError(
                f"checkpoint memory window {settings.window}, stride {settings.stride}, ratio {settings.ratio}: "
                "interleave needs window == stride and a ratio that divides the window"
            )
        return settings


@dataclass
class BeaconWeights:
    """Per-layer memory-token projections (None = the model's own projection) and the memory embedding."""

    q: list[tuple[torch.Tensor, torch.Tensor | None] | None]
    k: list[tuple[torch.Tensor, torch.Tensor | None] | None]
    v: list[tuple[torch.Tensor, torch.Tensor | None] | None]
    embedding: torch.Tensor  # [hidden]
    trained: bool

    @classmethod
    def from_tensors(
        cls, loaded: LoadedModel, tensors: dict[str, torch.Tensor], param: tuple[str, ...]
    ) -> BeaconWeights:
        layers = loaded.num_layers
        found: dict[str, list[dict[str, torch.Tensor]]] = {name: [{} for _ in range(layers)] for name in "qkv"}
        embedding = None
        unknown = []
        for name, tensor in tensors.items():
            if match := _LAYER_TENSOR.search(name):
                layer, projection, kind = int(match.group(1)), match.group(2), match.group(3)
                if layer >= layers:
                    raise UnsupportedModelError(f"memory tensor {name!r} names layer {layer} of a {layers}-layer model")
                found[projection][layer][kind] = tensor
            elif _EMBED_TENSOR.search(name):
                embedding = tensor.reshape(-1)
            else:
                unknown.append(name)
        if unknown:
            raise UnsupportedModelError(
                f"checkpoint memory tensors not supported by this compressor: {sorted(unknown)[:5]}"
            )
        if embedding is None:
            raise UnsupportedModelError("checkpoint has memory projections but no lychee_memory_embed_tokens weight")
        if embedding.numel() != loaded.config.hidden_size:
            raise UnsupportedModelError(
                f"memory embedding has {embedding.numel()} values, model hidden size is {loaded.config.hidden_size}"
            )
        projections = {}
        for name in "qkv":
            per_layer: list[tuple[torch.Tensor, torch.Tensor | None] | None] = []
            for layer in range(layers):
                entry = found[name][layer]
                if name not in param:
                    per_layer.append(None)
                    continue
                if "weight" not in entry:
                    raise UnsupportedModelError(f"checkpoint lacks the memory {name}_proj weight of layer {layer}")
                base = getattr(loaded.model.get_decoder().layers[layer].self_attn, f"{name}_proj")
                if entry["weight"].shape != base.weight.shape:
                    raise UnsupportedModelError(
                        f"memory {name}_proj of layer {layer} has shape {tuple(entry['weight'].shape)}, "
                        f"the model's has {tuple(base.weight.shape)}"
                    )
                per_layer.append((entry["weight"], entry.get("bias")))
            projections[name] = per_layer
        return cls(q=projections["q"], k=projections["k"], v=projections["v"], embedding=embedding, trained=True)

    @classmethod
    def untrained(cls, loaded: LoadedModel, param: tuple[str, ...], embed_init: str) -> BeaconWeights:
        """Initialise as the checkpoint format describes: copies of q/k/v and the eos (or bos) embedding."""
        decoder = loaded.model.get_decoder()
        token_id = loaded.tokenizer.eos_token_id if embed_init == "eos" else loaded.tokenizer.bos_token_id
        if token_id is None:
            token_id = loaded.tokenizer.eos_token_id
        embedding = decoder.embed_tokens.weight[token_id].detach().clone()
        projections: dict[str, list] = {}
        for name in "qkv":
            projections[name] = []
            for layer in decoder.layers:
                base = getattr(layer.self_attn, f"{name}_proj")
                bias = base.bias.detach().clone() if base.bias is not None else None
                projections[name].append((base.weight.detach().clone(), bias) if name in param else None)
        return cls(q=projections["q"], k=projections["k"], v=projections["v"], embedding=embedding, trained=False)


def interleave_layout(length: int, ratio: int) -> torch.Tensor:
    """Boolean mask over the window sequence marking memory tokens: one after every ``ratio`` raw tokens."""
    memory_count = math.ceil(length / ratio)
    is_memory = torch.zeros(length + memory_count, dtype=torch.bool)
    for index in range(memory_count):
        is_memory[min((index + 1) * ratio, length) + index] = True
    return is_memory


def _causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
    """Attention where query i sees keys up to (len(key) - len(query) + i); GQA by grouping heads."""
    query_length, key_length = query.shape[2], key.shape[2]
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16):
        try:
            from flash_attn import flash_attn_func

            # flash-attn aligns the causal mask to the bottom right, as needed here.
            output = flash_attn_func(
                query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), causal=True, softmax_scale=scaling
            )
            return output.transpose(1, 2)
        except ImportError:
            pass
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if query_length == key_length:
        return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
    offset = key_length - query_length
    allowed = torch.arange(key_length, device=query.device)[None, :] <= (
        torch.arange(query_length, device=query.device)[:, None] + offset
    )
    return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling)


def _project(
    x: torch.Tensor,
    base: torch.nn.Linear,
    memory: tuple[torch.Tensor, torch.Tensor | None] | None,
    is_memory: torch.Tensor,
) -> torch.Tensor:
    out = base(x)
    if memory is not None:
        weight, bias = memory
        out[:, is_memory] = F.linear(x[:, is_memory], weight, bias)
    return out


@dataclass
class BeaconCompressor(Compressor):
    """Interleaved learned memory tokens; exact for the released checkpoint format."""

    name: ClassVar[str] = "beacon"
    weights: BeaconWeights
    ratio: int = 4
    window: int = 2048
    _warned: bool = field(default=False, repr=False)

    @classmethod
    def for_model(cls, loaded: LoadedModel, ratio: int, window: int) -> BeaconCompressor:
        """Use the checkpoint's trained memory weights, or initialise untrained ones (with a warning)."""
        if loaded.family not in BEACON_FAMILIES:
            raise UnsupportedModelError(
                f"the beacon compressor supports {', '.join(BEACON_FAMILIES)} models, not {loaded.family!r}; "
                "use compressor 'attention' or 'key_norm'"
            )
        if loaded.has_trained_memory:
            settings = BeaconSettings.from_checkpoint_config(loaded.memory_config)
            weights = BeaconWeights.from_tensors(loaded, loaded.memory_tensors, settings.param)
            return cls(weights=weights, ratio=settings.ratio, window=settings.window)
        message = (
            f"model {loaded.resolved.spec!r} has no trained memory-token weights: the beacon compressor is "
            "initialised from its q/k/v projections and eos embedding and is untrained, so expect poor answers "
            "(use compressor 'attention' or 'key_norm' for training-free compression)"
        )
        warnings.warn(message, UserWarning, stacklevel=3)
        logger.warning(message)
        return cls(weights=BeaconWeights.untrained(loaded, ("q", "k", "v"), "eos"), ratio=ratio, window=window)

    @property
    def trained(self) -> bool:
        return self.weights.trained

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "ratio": self.ratio, "window": self.window, "trained": self.weights.trained}

    def prompt_position(self, chunk_tokens: int, start_tokens: int) -> int:
        """Memory slots take compact positions 0..m-1 and the prompt continues at m (the released loop)."""
        return slots_for(chunk_tokens, self.ratio)

    @torch.inference_mode()
    def compress(self, loaded: LoadedModel, chunks: list[Chunk]) -> list[MemoryBlock]:
        return [self._compress_one(loaded, chunk) for chunk in chunks]

    def _compress_one(self, loaded: LoadedModel, chunk: Chunk) -> MemoryBlock:
        decoder = loaded.model.get_decoder()
        tokens = torch.tensor(chunk.token_ids, dtype=torch.long, device=loaded.device)
        memory_keys: list[list[torch.Tensor]] = [[] for _ in decoder.layers]
        memory_values: list[list[torch.Tensor]] = [[] for _ in decoder.layers]
        previous = 0
        for start in range(0, tokens.numel(), self.window):
            raw = tokens[start : start + self.window]
            new_keys, new_values, memory_positions = self._window_forward(
                loaded, raw, memory_keys, memory_values, previous
            )
            for layer in range(len(decoder.layers)):
                memory_keys[layer].append(new_keys[layer])
                memory_values[layer].append(new_values[layer])
            previous += memory_positions.numel()
        keys = torch.stack([torch.cat(per_layer, dim=1) for per_layer in memory_keys])
        values = torch.stack([torch.cat(per_layer, dim=1) for per_layer in memory_values])
        return MemoryBlock(
            keys=keys,
            values=values,
            valid=torch.ones(keys.shape[2], dtype=torch.bool),
            next_position=int(keys.shape[2]),
            token_ids=torch.tensor(chunk.token_ids, dtype=torch.int32),
            span=span_of(chunk),
            compressor=self.name,
        )

    def _window_forward(
        self,
        loaded: LoadedModel,
        raw: torch.Tensor,
        memory_keys: list[list[torch.Tensor]],
        memory_values: list[list[torch.Tensor]],
        previous: int,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Run one window; returns per-layer memory keys (pre-RoPE) / values [H_kv, M, D] and their positions."""
        decoder = loaded.model.get_decoder()
        is_memory = interleave_layout(raw.numel(), self.ratio).to(loaded.device)
        length = is_memory.numel()
        hidden = torch.empty(1, length, loaded.config.hidden_size, device=loaded.device, dtype=loaded.dtype)
        hidden[0, ~is_memory] = decoder.embed_tokens(raw)
        hidden[0, is_memory] = self.weights.embedding.to(loaded.dtype)
        key_positions = torch.arange(previous + length, device=loaded.device)[None]
        cos, sin = decoder.rotary_emb(hidden, key_positions)  # [1, P + T, D]
        cos_keys, sin_keys = cos[:, None], sin[:, None]
        cos_queries, sin_queries = cos_keys[:, :, previous:], sin_keys[:, :, previous:]
        new_keys, new_values = [], []
        for index, layer in enumerate(decoder.layers):
            attention = layer.self_attn
            normed = layer.input_layernorm(hidden)
            query = _project(normed, attention.q_proj, self.weights.q[index], is_memory)
            key = _project(normed, attention.k_proj, self.weights.k[index], is_memory)
            value = _project(normed, attention.v_proj, self.weights.v[index], is_memory)
            head_dim = attention.head_dim
            query = query.view(1, length, -1, head_dim).transpose(1, 2)
            key = key.view(1, length, -1, head_dim).transpose(1, 2)
            value = value.view(1, length, -1, head_dim).transpose(1, 2)
            all_keys = torch.cat([*(k[None] for k in memory_keys[index]), key], dim=2)
            all_values = torch.cat([*(v[None] for v in memory_values[index]), value], dim=2)
            output = _causal_attention(
                apply_rope(query, cos_queries, sin_queries),
                apply_rope(all_keys, cos_keys, sin_keys),
                all_values,
                attention.scaling,
            )
            output = output.transpose(1, 2).reshape(1, length, -1)
            hidden = hidden + attention.o_proj(output)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
            new_keys.append(key[0][:, is_memory])
            new_values.append(value[0][:, is_memory])
        memory_positions = previous + is_memory.nonzero().flatten()
        return new_keys, new_values, memory_positions
