"""The reasoner's trained adapter (``lychee train rl``): a LoRA on the backbone, on only inside reasoner calls.

The gate, the compressor and the prefilter always run the plain backbone, so a bank never depends on it and
the same bank serves the untrained and the trained reasoner. File: safetensors holding the LoRA tensors (names
without the adapter name, as ``LoraAdapter.state_tensors`` gives them); metadata: ``format``
(``lychee-reasoner-lora``), ``format_version``, ``rank``, ``alpha``, ``targets``, ``base_fingerprint`` (the
backbone it was trained on; it never applies to another) and ``evidence`` (what the run measured).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigurationError
from .lora import DEFAULT_TARGETS, LoraAdapter
from .weight_files import (
    check_fingerprint,
    check_format,
    damaged_settings,
    describe,
    read_weight_file,
    write_weight_file,
)

REASONER_FORMAT = "lychee-reasoner-lora"
REASONER_FORMAT_VERSION = 1
# Attention and MLP: what the reasoner writes is decided by both (attention alone barely moves its output).
REASONER_TARGETS = (*DEFAULT_TARGETS, "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ReasonerAdapterShape:
    """The LoRA's shape: rank, scale (alpha / rank is the multiplier) and the projections it adapts."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = REASONER_TARGETS

    def to_metadata(self) -> dict[str, str]:
        return {"rank": str(self.rank), "alpha": json.dumps(self.alpha), "targets": json.dumps(list(self.targets))}


@dataclass(frozen=True)
class ReasonerFile:
    """A read adapter file: its tensors, shape, metadata and sha256 (the adapter's identity)."""

    tensors: dict[str, torch.Tensor]
    shape: ReasonerAdapterShape
    metadata: dict[str, str]
    digest: str


def new_reasoner_adapter(
    loaded, shape: ReasonerAdapterShape = ReasonerAdapterShape(), name: str = "lychee_reasoner"
) -> LoraAdapter:
    """A fresh LoRA (B = 0: the policy starts as the untrained reasoner), off outside ``active()``."""
    if shape.rank < 1:
        raise ConfigurationError(f"reasoner adapter rank must be at least 1, got {shape.rank}")
    return LoraAdapter(loaded.model, shape, name)


def save_reasoner_file(
    path: str | Path, adapter: LoraAdapter, shape: ReasonerAdapterShape, base_fingerprint: str, evidence: str = ""
) -> Path:
    """Write the adapter atomically (temporary file, then rename), so an interrupted save never leaves half."""
    metadata = {
        "format": REASONER_FORMAT,
        "format_version": str(REASONER_FORMAT_VERSION),
        **shape.to_metadata(),
        "base_fingerprint": base_fingerprint,
        "evidence": evidence,
    }
    return write_weight_file(path, adapter.state_tensors(), metadata)


def read_reasoner_file(path: str | Path) -> ReasonerFile:
    """Read an adapter file; a specific error for a missing, damaged or foreign file."""
    read = read_weight_file(path, "reasoner", "reasoner_weights")
    metadata, source = read.metadata, describe("reasoner", Path(path).expanduser())
    check_format(metadata, source, "reasoner", REASONER_FORMAT, REASONER_FORMAT_VERSION)
    try:
        shape = ReasonerAdapterShape(
            int(metadata["rank"]), float(json.loads(metadata["alpha"])), tuple(json.loads(metadata["targets"]))
        )
    except (KeyError, TypeError, ValueError) as error:
        raise damaged_settings(source, error) from None
    return ReasonerFile(read.tensors, shape, metadata, read.digest)


def attach_reasoner(loaded, path: str | Path) -> LoraAdapter:
    """Load an adapter file beside ``loaded``'s model (once per file digest) after checking its backbone."""
    read = read_reasoner_file(path)
    source = describe("reasoner", path)
    check_fingerprint(read.metadata.get("base_fingerprint"), loaded, source, "reasoner")
    adapters: dict[str, LoraAdapter] = loaded.gate_adapters
    key = f"reasoner-{read.digest}"
    if key not in adapters:
        adapter = new_reasoner_adapter(loaded, read.shape, f"lychee_reasoner_{read.digest[:12]}")
        adapter.load_tensors(read.tensors, source)
        adapter.digest, adapter.source = read.digest, str(path)
        adapters[key] = adapter
    return adapters[key]
