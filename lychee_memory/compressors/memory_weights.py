"""Trained memory-token weights of the learned compressor: the parameters, their file format and its checks.

Parameters (everything else is the frozen backbone): per layer and per projection in ``param`` (q, k, v), a
low-rank delta ``up @ down`` added to the model's own projection at memory-token positions only, and one
memory-token input embedding. ``up`` starts at zero, so an untrained set behaves as the model's own
projections applied to an eos-embedded token.

File: safetensors with the released checkpoint's naming, ``model.layers.{i}.self_attn.lychee_memory_{p}_proj.
lora_down`` [rank, hidden] / ``.lora_up`` [out, rank] and ``model.lychee_memory_embed_tokens.weight`` [1, hidden];
the metadata holds the config keys (``lychee_memory_ratio``, ``_window``, ``_pos``, ``_attn``, ``_rank``, ...,
each JSON-encoded) and the base model's geometry, so a file is refused by any model it was not trained for.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigurationError, UnsupportedModelError
from ..weight_files import (
    base_geometry,
    check_geometry,
    check_version,
    describe,
    file_digest,
    foreign_file,
    read_weight_file,
    write_weight_file,
)

__all__ = [  # base_geometry and file_digest live in weight_files; importable from here as before
    "FORMAT_VERSION",
    "LAYOUT",
    "LearnedSettings",
    "MemoryWeights",
    "base_geometry",
    "file_digest",
    "is_learned_layout",
    "read_memory_file",
    "save_memory_weights",
]

FORMAT_VERSION = 1
LAYOUT = {"pos": "aligned", "attn": "read-only", "frame": "opening"}  # what tells this layout from the beacon one
_DELTA_TENSOR = re.compile(r"layers\.(\d+)\.self_attn\.lychee_memory_([qkv])_proj\.lora_(down|up)$")
_EMBED_TENSOR = re.compile(r"lychee_memory_embed_tokens\.weight$")


def is_learned_layout(memory_config: dict[str, Any]) -> bool:
    """Whether checkpoint memory settings describe this layout (else the released beacon layout)."""
    return memory_config.get("pos") == LAYOUT["pos"]


@dataclass(frozen=True)
class LearnedSettings:
    """The learned layout's config keys: trained ratios, longest trained chunk, delta rank, projections."""

    ratios: tuple[int, ...]
    window: int
    rank: int
    param: tuple[str, ...] = ("q", "k", "v")
    base: dict[str, Any] | None = None

    @classmethod
    def from_checkpoint_config(cls, config: dict[str, Any]) -> LearnedSettings:
        for key, expected in LAYOUT.items():
            if config.get(key) != expected:
                raise UnsupportedModelError(
                    f"memory weights setting {key}={config.get(key)!r} does not describe the learned layout "
                    f"(expected {expected!r})"
                )
        check_version(config.get("format_version", FORMAT_VERSION), describe("compressor"), FORMAT_VERSION)
        ratio = config.get("ratio", [4])
        ratios = tuple(int(r) for r in (ratio if isinstance(ratio, list) else [ratio]))
        param = tuple(config.get("param", ["q", "k", "v"]))
        if not ratios or min(ratios) < 2 or not set(param) <= {"q", "k", "v"}:
            raise UnsupportedModelError(f"memory weights with ratios {list(ratios)} and projections {list(param)}")
        return cls(
            ratios=ratios,
            window=int(config.get("window", 1024)),
            rank=int(config.get("rank", 32)),
            param=param,
            base=config.get("base"),
        )

    def config_keys(self) -> dict[str, Any]:
        return {
            **LAYOUT,
            "format_version": FORMAT_VERSION,
            "ratio": list(self.ratios),
            "window": self.window,
            "stride": self.window,
            "rank": self.rank,
            "param": list(self.param),
            "embed_init": "eos",
            "base": self.base,
        }

    def check_ratio(self, ratio: int) -> None:
        if ratio not in self.ratios:
            raise ConfigurationError(
                f"the compressor weights were trained for ratio {', '.join(map(str, self.ratios))}, not {ratio}; "
                "choose a trained ratio or train weights for this one (lychee train compressor --ratio N)"
            )

    def check_base(self, config) -> None:
        """Refuse a model of another shape than the one these weights were trained for."""
        check_geometry(self.base, config, describe("compressor"))


class MemoryWeights(nn.Module):
    """Low-rank memory-token deltas on q/k/v and the memory embedding: the only trained parameters."""

    def __init__(
        self, config, rank: int, param: tuple[str, ...] = ("q", "k", "v"), embedding: torch.Tensor | None = None
    ):
        super().__init__()
        geometry = base_geometry(config)
        hidden, layers = geometry["hidden_size"], geometry["num_hidden_layers"]
        outputs = {
            "q": geometry["num_attention_heads"] * geometry["head_dim"],
            "k": geometry["num_key_value_heads"] * geometry["head_dim"],
            "v": geometry["num_key_value_heads"] * geometry["head_dim"],
        }
        if rank < 1:
            raise ConfigurationError(f"memory delta rank must be at least 1, got {rank}")
        self.rank = rank
        self.param = tuple(param)
        self.num_layers = layers
        self.down = nn.ParameterDict()
        self.up = nn.ParameterDict()
        generator = torch.Generator().manual_seed(0)  # the init is part of what a seed reproduces
        for name in self.param:
            self.down[name] = nn.Parameter(torch.randn(layers, rank, hidden, generator=generator) * hidden**-0.5)
            self.up[name] = nn.Parameter(torch.zeros(layers, outputs[name], rank))
        self.embedding = nn.Parameter(
            embedding.detach().clone().float() if embedding is not None else torch.zeros(hidden)
        )

    @classmethod
    def initial(cls, loaded, rank: int, param: tuple[str, ...] = ("q", "k", "v")) -> MemoryWeights:
        """Untrained: zero deltas and the eos embedding (the released format's ``embed_init: eos``)."""
        token_id = loaded.tokenizer.eos_token_id
        embedding = loaded.model.get_input_embeddings().weight[token_id]
        weights = cls(loaded.config, rank, param, embedding)
        return weights.to(device=loaded.device, dtype=loaded.dtype)

    def delta(self, name: str, layer: int, inputs: torch.Tensor) -> torch.Tensor | None:
        """The memory tokens' correction to projection ``name`` of ``layer`` (None when it is not trained)."""
        if name not in self.down:
            return None
        down, up = self.down[name][layer].to(inputs.dtype), self.up[name][layer].to(inputs.dtype)
        return (inputs @ down.transpose(0, 1)) @ up.transpose(0, 1)

    # File format -------------------------------------------------------------------------------------

    def to_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"model.lychee_memory_embed_tokens.weight": self.embedding.detach().float().cpu()[None].contiguous()}
        for name in self.param:
            for layer in range(self.num_layers):
                stem = f"model.layers.{layer}.self_attn.lychee_memory_{name}_proj"
                tensors[f"{stem}.lora_down"] = self.down[name][layer].detach().float().cpu().contiguous()
                tensors[f"{stem}.lora_up"] = self.up[name][layer].detach().float().cpu().contiguous()
        return tensors

    @classmethod
    def from_tensors(cls, config, tensors: dict[str, torch.Tensor], settings: LearnedSettings) -> MemoryWeights:
        """Rebuild from file tensors, naming whatever is missing, extra or of the wrong shape."""
        settings.check_base(config)
        geometry = base_geometry(config)
        layers = geometry["num_hidden_layers"]
        weights = cls(config, settings.rank, settings.param)
        expected = {}
        for name in settings.param:
            for layer in range(layers):
                for part in ("down", "up"):
                    expected[f"layers.{layer}.self_attn.lychee_memory_{name}_proj.lora_{part}"] = (name, layer, part)
        embedding = None
        seen = set()
        for file_name, tensor in tensors.items():
            if _EMBED_TENSOR.search(file_name):
                embedding = tensor
                continue
            match = _DELTA_TENSOR.search(file_name)
            key = match.group(0) if match else None
            if key not in expected:
                raise UnsupportedModelError(
                    f"memory tensor {file_name!r} does not belong to learned weights of rank {settings.rank} for "
                    f"projections {list(settings.param)} of a {layers}-layer model"
                )
            name, layer, part = expected[key]
            target = (weights.down if part == "down" else weights.up)[name]
            if tuple(tensor.shape) != tuple(target.shape[1:]):
                raise UnsupportedModelError(
                    f"memory tensor {file_name!r} has shape {tuple(tensor.shape)}, this model needs "
                    f"{tuple(target.shape[1:])}"
                )
            with torch.no_grad():
                target[layer].copy_(tensor.to(target.dtype))
            seen.add(key)
        missing = sorted(set(expected) - seen)
        if missing:
            raise UnsupportedModelError(f"memory weights lack {len(missing)} tensors, e.g. {missing[0]!r}")
        if embedding is None:
            raise UnsupportedModelError("memory weights have no lychee_memory_embed_tokens.weight")
        if embedding.numel() != geometry["hidden_size"]:
            raise UnsupportedModelError(
                f"memory embedding has {embedding.numel()} values, the model's hidden size is {geometry['hidden_size']}"
            )
        with torch.no_grad():
            weights.embedding.copy_(embedding.reshape(-1).to(weights.embedding.dtype))
        return weights


def save_memory_weights(path: str | Path, weights: MemoryWeights, settings: LearnedSettings) -> str:
    """Write the weights file atomically; returns its sha256 (the compressor identity banks record)."""
    metadata = {f"lychee_memory_{key}": json.dumps(value) for key, value in settings.config_keys().items()}
    return file_digest(write_weight_file(path, weights.to_tensors(), metadata))


def read_memory_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Tensors, config keys (prefix stripped) and sha256 of a weights file, with a specific error for each fault."""
    read = read_weight_file(path, "compressor", "compressor_weights")
    config: dict[str, Any] = {}
    for key, value in read.metadata.items():
        for prefix in ("lychee_memory_", "beacon_"):
            if key.startswith(prefix):
                try:
                    config.setdefault(key.removeprefix(prefix), json.loads(value))
                except json.JSONDecodeError:
                    config.setdefault(key.removeprefix(prefix), value)
    if not any("lychee_memory_" in name or "beacon_" in name for name in read.tensors):
        raise foreign_file(describe("compressor", Path(path).expanduser()), "compressor", "no lychee_memory_* tensors")
    return read.tensors, config, read.digest
