"""Trained weight files (gate, reasoner, compressor): safetensors read and write, and their checks, with one wording.

Each kind's module (the gate's adapter, ``reasoner_weights``, ``compressors/memory_weights``) keeps its own tensor
names and metadata keys; this module holds what they share, so a missing, damaged, foreign, newer or mismatched
file gets the same message whichever kind it is: ``ModelNotFoundError`` for a missing file, ``UnsupportedModelError``
for everything else. Writes are atomic (a temporary file, then a rename): an interrupted save never leaves half.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelNotFoundError, UnsupportedModelError

# The command that writes each kind of file: named by the "foreign file" message, so the reader knows what to run.
WRITERS = {
    "gate": "lychee train gate",
    "reasoner": "lychee train rl",
    "compressor": "lychee train compressor",
}


@dataclass(frozen=True)
class WeightFile:
    """A read weight file: its tensors, its (string) metadata and its sha256, the identity engines record."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    digest: str


def file_digest(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB pieces (a weight file's identity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_geometry(config: Any) -> dict[str, Any]:
    """What a weight file must match in the model it is loaded beside (from a transformers config)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {
        "model_type": str(config.model_type),
        "hidden_size": int(config.hidden_size),
        "num_hidden_layers": int(config.num_hidden_layers),
        "num_attention_heads": int(config.num_attention_heads),
        "num_key_value_heads": int(config.num_key_value_heads),
        "head_dim": int(head_dim),
    }


def describe(kind: str, path: str | Path | None = None) -> str:
    """How messages name a file: ``gate weights file '/x.safetensors'`` (or ``the gate weights file``)."""
    return f"{kind} weights file {str(path)!r}" if path is not None else f"the {kind} weights file"


def write_weight_file(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Write ``tensors`` (detached, contiguous, on the CPU) and ``metadata`` atomically; returns the path."""
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    save_file(
        {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}, str(partial), dict(metadata)
    )
    partial.replace(target)
    return target


def read_weight_file(path: str | Path, kind: str, option: str = "") -> WeightFile:
    """Tensors, metadata and sha256 of a safetensors file; ``option`` (the setting that named it) goes in the
    message for a missing file."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        where = f" ({option})" if option else ""
        raise ModelNotFoundError(f"{describe(kind, path)} does not exist{where}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise UnsupportedModelError(f"{describe(kind, path)} is damaged or not a safetensors file: {error}") from None
    return WeightFile(tensors, metadata, file_digest(path))


def foreign_file(source: str, kind: str, found: str) -> UnsupportedModelError:
    """The error for a readable file of another format (``found`` says what it holds instead)."""
    return UnsupportedModelError(f"{source} is not a {kind} weights file ({found}; {WRITERS[kind]} writes them)")


def check_format(metadata: Mapping[str, str], source: str, kind: str, name: str, version: int) -> None:
    """Refuse a file whose ``format`` is not ``name`` or whose ``format_version`` is newer than ``version``."""
    if metadata.get("format") != name:
        raise foreign_file(source, kind, f"format {metadata.get('format')!r}, expected {name!r}")
    check_version(metadata.get("format_version", "0"), source, version)


def check_version(found: Any, source: str, version: int) -> None:
    """Refuse a format version newer than ``version`` (the newest this lychee-memory reads)."""
    try:
        number = int(found)
    except (TypeError, ValueError):
        raise damaged_settings(source, f"format_version {found!r}") from None
    if number > version:
        raise UnsupportedModelError(
            f"{source} has format version {number}, newer than this lychee-memory reads ({version}); upgrade it"
        )


def damaged_settings(source: str, error: Any) -> UnsupportedModelError:
    """The error for a readable file whose settings (metadata) cannot be parsed."""
    return UnsupportedModelError(f"{source} has damaged settings ({error})")


def check_geometry(trained_for: Mapping[str, Any] | None, config: Any, source: str) -> None:
    """Refuse a file trained for another model shape (``base_geometry`` of its backbone), naming each difference;
    a file that does not record its shape passes."""
    if not trained_for:
        return
    found = base_geometry(config)
    differing = [
        f"{key} {trained_for.get(key)} (this model: {found[key]})"
        for key in found
        if trained_for.get(key) != found[key]
    ]
    if differing:
        raise UnsupportedModelError(f"{source} was trained for another model shape: " + ", ".join(differing))


def check_fingerprint(trained_on: str | None, loaded: Any, source: str, kind: str) -> None:
    """Refuse an adapter trained on another backbone (``LoadedModel.fingerprint``); none recorded passes."""
    if trained_on and trained_on != loaded.fingerprint():
        raise UnsupportedModelError(
            f"{source} was trained on the backbone {trained_on}, not on this one ({loaded.fingerprint_source()}); "
            f"a {kind} adapter never applies to another backbone"
        )
