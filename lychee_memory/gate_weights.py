"""The trained gate's adapter: a peft LoRA on the backbone, its file format, and switching it on for gate rows only.

The gate reads a block's KV (encoded without the adapter, so banks never depend on the gate), then a short
prompt with the question and the working memory, and scores ``logit(yes) - logit(no)`` at the prompt's last
token; the adapter is what training changes. It is injected into the shared model once and stays disabled
except inside :func:`GateAdapter.active`, so compression, the reasoner and the answer run the plain backbone.

File: safetensors holding peft's LoRA tensors (``...q_proj.lora_A.weight`` and so on, adapter name stripped);
the metadata holds the settings (rank, alpha, target modules, the prompt template, the yes/no tokens, the
calibrated threshold and its evidence) and the base model's geometry and fingerprint, so a file is refused by
any backbone it was not trained on.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigurationError, UnsupportedModelError
from .weight_files import (
    check_fingerprint,
    check_format,
    check_geometry,
    damaged_settings,
    describe,
    read_weight_file,
    write_weight_file,
)

FORMAT = "lychee-gate-lora"
FORMAT_VERSION = 1
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class GateAdapterSettings:
    """What a trained gate is: the LoRA shape, the prompt it was trained on, and the threshold measured for it."""

    template: str  # rendered after the block with {question} and {memory}
    yes_token: str = "yes"
    no_token: str = "no"
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    threshold: float = 0.5  # probability of "relevant"; calibrated on the training states by the trainer
    base: dict[str, Any] = field(default_factory=dict)  # base_geometry of the backbone
    base_fingerprint: str = ""  # LoadedModel.fingerprint() of the backbone it was trained on
    evidence: str = ""

    def to_metadata(self) -> dict[str, str]:
        values = {key: json.dumps(value) for key, value in asdict(self).items()}
        return {"format": FORMAT, "format_version": str(FORMAT_VERSION), **values}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str) -> GateAdapterSettings:
        check_format(metadata, source, "gate", FORMAT, FORMAT_VERSION)
        try:
            values = {key: json.loads(metadata[key]) for key in cls.__dataclass_fields__ if key in metadata}
            values["targets"] = tuple(values.get("targets", DEFAULT_TARGETS))
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise damaged_settings(source, error) from None


def read_gate_file(path: str | Path) -> tuple[dict[str, torch.Tensor], GateAdapterSettings, str]:
    """Tensors, settings and sha256 of a gate file; a specific error for a missing, damaged or foreign file."""
    read = read_weight_file(path, "gate", "gate_weights / --gate-weights")
    settings = GateAdapterSettings.from_metadata(read.metadata, describe("gate", Path(path).expanduser()))
    return read.tensors, settings, read.digest


def save_gate_file(path: str | Path, tensors: dict[str, torch.Tensor], settings: GateAdapterSettings) -> Path:
    """Write atomically (temporary file, then rename), so an interrupted save never leaves half a file."""
    return write_weight_file(path, tensors, settings.to_metadata())


class GateAdapter:
    """A LoRA adapter injected into a model under its own name, off except inside :meth:`active`."""

    def __init__(self, model: nn.Module, settings: GateAdapterSettings, name: str):
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise ConfigurationError(
                "the trained gate needs peft, a dependency of lychee-memory: pip install 'peft>=0.21,<0.22' (or choose "
                "another gate rule)"
            ) from None

        self.model, self.settings, self.name = model, settings, name
        self.digest = ""
        self.source = "untrained"
        self._lock = threading.RLock()
        self._depth = 0
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        config = LoraConfig(
            r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.targets), lora_dropout=0.0
        )
        with warnings.catch_warnings():  # several adapters in one model (one per gate file) is intended here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(config, model, adapter_name=name)
        for parameter_name, parameter in model.named_parameters():  # peft froze the rest: put it back as it was
            if parameter_name in trainable:
                parameter.requires_grad_(True)
        self._set_enabled(False)

    def layers(self) -> Iterator[nn.Module]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer) and self.name in getattr(module, "lora_A", {}):
                yield module

    def _set_enabled(self, enabled: bool) -> None:
        for module in self.layers():
            if enabled:
                module.set_adapter(self.name)
            module.enable_adapters(enabled)

    @contextmanager
    def active(self) -> Iterator[None]:
        """The adapter applies to forwards inside this block only (gate rows), never to other work."""
        with self._lock:  # re-entrant: only the outermost block switches it (a trainer's step holds it on)
            self._depth += 1
            if self._depth == 1:
                self._set_enabled(True)
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._set_enabled(False)

    def parameters(self) -> list[nn.Parameter]:
        return [
            p
            for module in self.layers()
            for n in ("lora_A", "lora_B")
            for p in getattr(module, n)[self.name].parameters()
        ]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors named without the adapter name (the file's names)."""
        marker = f".{self.name}."
        return {
            name.replace(marker, "."): tensor.detach().clone()
            for name, tensor in self.model.state_dict().items()
            if marker in name and ".lora_" in name
        }

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        own = {
            name.replace(f".{self.name}.", "."): name for name in self.model.state_dict() if f".{self.name}." in name
        }
        missing, unknown = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or unknown:
            raise UnsupportedModelError(
                f"{source} does not fit this model's layers: missing {missing[:3]}, unexpected {unknown[:3]}"
            )
        state = self.model.state_dict()
        for short, full in own.items():
            if tuple(tensors[short].shape) != tuple(state[full].shape):
                raise UnsupportedModelError(
                    f"{source}: tensor {short} has shape {tuple(tensors[short].shape)}, the model needs "
                    f"{tuple(state[full].shape)}"
                )
        with torch.no_grad():
            for short, full in own.items():
                state[full].copy_(tensors[short].to(state[full].dtype))


def check_backbone(settings: GateAdapterSettings, loaded, source: str) -> None:
    """Refuse a gate trained on another backbone: its geometry first (a clear shape error), then its identity."""
    check_geometry(settings.base, loaded.model.config, source)
    check_fingerprint(settings.base_fingerprint, loaded, source, "gate")
    yes, no = (
        loaded.tokenizer(w, add_special_tokens=False).input_ids[:1] for w in (settings.yes_token, settings.no_token)
    )
    if not yes or yes == no:
        raise UnsupportedModelError(
            f"{source}: its answers {settings.yes_token!r} / {settings.no_token!r} do not start with two different "
            "tokens for this tokenizer"
        )


def attach_gate(loaded, path: str | Path) -> GateAdapter:
    """Load a gate file beside ``loaded``'s model (once per file digest) after checking it fits that backbone."""
    tensors, settings, digest = read_gate_file(path)
    source = describe("gate", path)
    check_backbone(settings, loaded, source)
    adapters: dict[str, GateAdapter] = loaded.gate_adapters
    if digest not in adapters:
        adapter = GateAdapter(loaded.model, settings, f"lychee_gate_{digest[:12]}")
        adapter.load_tensors(tensors, source)
        adapter.digest, adapter.source = digest, str(path)
        adapters[digest] = adapter
    return adapters[digest]


def new_gate(loaded, settings: GateAdapterSettings, name: str = "lychee_gate_training") -> GateAdapter:
    """A fresh (untrained: B = 0, so scores equal the backbone's) adapter for training."""
    if settings.rank < 1:
        raise ConfigurationError(f"gate adapter rank must be at least 1, got {settings.rank}")
    return GateAdapter(loaded.model, settings, name)
