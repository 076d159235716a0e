"""The trained gate's adapter: a LoRA on the backbone (``lora.py``), its file format, and its checks on a backbone.

The gate reads a block's KV (encoded without the adapter, so banks never depend on the gate), then a short
prompt with the question and the working memory, and scores ``logit(yes) - logit(no)`` at the prompt's last
token; the adapter is what training changes. It is injected into the shared model once and stays disabled
except inside :meth:`LoraAdapter.active`, so compression, the reasoner and the answer run the plain backbone.

File: safetensors holding peft's LoRA tensors (``...q_proj.lora_A.weight`` and so on, adapter name stripped);
the metadata holds the settings (rank, alpha, target modules, the prompt template, the yes/no tokens, the
calibrated threshold and its evidence) and the base model's geometry and fingerprint, so a file is refused by
any backbone it was not trained on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigurationError, UnsupportedModelError
from ..lora import DEFAULT_TARGETS, LoraAdapter
from ..weight_files import (
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


def refuse_overwriting(source: str | Path, out: str | Path) -> None:
    """Refuse ``out`` when it is the gate file ``source`` itself: a recalibrated file never replaces its source."""
    if Path(out).expanduser().resolve() == Path(source).expanduser().resolve():
        raise ConfigurationError(f"--gate-out {out} is the gate file being calibrated: write the new file elsewhere")


def rethresholded_gate_file(source: str | Path, out: str | Path, threshold: float, evidence: str) -> Path:
    """Write the gate file ``source`` again at ``out`` with another threshold and its evidence, so the threshold stays
    tied to the file (and digest) carrying it; ``source`` itself is never changed."""
    source, out = Path(source).expanduser(), Path(out).expanduser()
    refuse_overwriting(source, out)
    tensors, settings, digest = read_gate_file(source)
    note = f"{evidence} Recalibrated from {source.name} (sha256 {digest[:12]}, threshold {settings.threshold:.4f})."
    return save_gate_file(out, tensors, replace(settings, threshold=float(threshold), evidence=note))


class GateAdapter(LoraAdapter):
    """The trained gate's LoRA: its settings also carry the prompt, the yes/no tokens and the threshold."""

    settings: GateAdapterSettings


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
