"""A LoRA on the shared backbone, on only where asked: what the trained gate and the reasoner's adapter both are.

peft injects the adapter into the model once, under its own name (several adapters can sit in one model); it
stays disabled except inside :meth:`LoraAdapter.active`, so every other forward runs the plain backbone. The
file formats are the owners' (``gate/adapter.py``, ``reasoner_weights.py``).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn

from .errors import ConfigurationError, UnsupportedModelError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class LoraShape(Protocol):
    """What a LoRA's injection reads: its rank, scale (alpha / rank is the multiplier) and adapted projections."""

    @property
    def rank(self) -> int: ...

    @property
    def alpha(self) -> float: ...

    @property
    def targets(self) -> tuple[str, ...]: ...


class LoraAdapter:
    """A LoRA adapter injected into a model under its own name, off except inside :meth:`active`."""

    def __init__(self, model: nn.Module, settings: LoraShape, name: str):
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise ConfigurationError(
                "a LoRA adapter (the trained gate, a trained reasoner) needs peft, a dependency of lychee-memory: "
                "pip install 'peft>=0.21,<0.22' (or choose another gate rule, and no reasoner weights)"
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
        with warnings.catch_warnings():  # several adapters in one model (one per adapter file) is intended here
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
