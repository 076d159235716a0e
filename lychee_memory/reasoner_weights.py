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

from .compressors.memory_weights import file_digest
from .errors import ConfigurationError, ModelNotFoundError, UnsupportedModelError
from .lora import DEFAULT_TARGETS, LoraAdapter

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
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": REASONER_FORMAT,
        "format_version": str(REASONER_FORMAT_VERSION),
        **shape.to_metadata(),
        "base_fingerprint": base_fingerprint,
        "evidence": evidence,
    }
    partial = target.with_name(target.name + ".partial")
    tensors = {name: tensor.contiguous().cpu() for name, tensor in adapter.state_tensors().items()}
    save_file(tensors, str(partial), metadata)
    partial.replace(target)
    return target


def read_reasoner_file(path: str | Path) -> ReasonerFile:
    """Read an adapter file; a specific error for a missing, damaged or foreign file."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"reasoner weights file {str(path)!r} does not exist (reasoner_weights)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise UnsupportedModelError(
            f"reasoner weights file {str(path)!r} is damaged or not safetensors: {error}"
        ) from None
    if metadata.get("format") != REASONER_FORMAT:
        raise UnsupportedModelError(
            f"{str(path)!r} is not a reasoner adapter (format {metadata.get('format')!r}, expected {REASONER_FORMAT!r})"
        )
    if int(metadata.get("format_version", "0")) > REASONER_FORMAT_VERSION:
        raise UnsupportedModelError(
            f"{str(path)!r}: reasoner file format {metadata['format_version']} is newer than ours"
        )
    try:
        shape = ReasonerAdapterShape(
            int(metadata["rank"]), float(json.loads(metadata["alpha"])), tuple(json.loads(metadata["targets"]))
        )
    except (KeyError, TypeError, ValueError) as error:
        raise UnsupportedModelError(f"{str(path)!r}: damaged adapter shape ({error})") from None
    return ReasonerFile(tensors, shape, metadata, file_digest(path))


def attach_reasoner(loaded, path: str | Path) -> LoraAdapter:
    """Load an adapter file beside ``loaded``'s model (once per file digest) after checking its backbone."""
    read = read_reasoner_file(path)
    source = f"reasoner weights {str(path)!r}"
    trained_on = read.metadata.get("base_fingerprint")
    if trained_on and trained_on != loaded.fingerprint():
        raise UnsupportedModelError(
            f"{source} was trained on the backbone {trained_on}, not on this one ({loaded.fingerprint_source()}); "
            "a reasoner adapter never applies to another backbone"
        )
    adapters: dict[str, LoraAdapter] = loaded.gate_adapters
    key = f"reasoner-{read.digest}"
    if key not in adapters:
        adapter = new_reasoner_adapter(loaded, read.shape, f"lychee_reasoner_{read.digest[:12]}")
        adapter.load_tensors(read.tensors, source)
        adapter.digest, adapter.source = read.digest, str(path)
        adapters[key] = adapter
    return adapters[key]
