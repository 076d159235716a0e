"""Gate index items: each block's gate index (``gate/index_format.py``) stored next to the block, read without its KV.

One item per (block, index spec): key ``index:<sha256 of the block key, a zero byte and the spec's canonical
JSON>``, value a framed record (magic ``LYCHEEI1``, SHA-256 of the payload) holding safetensors
``{"keys": float16 [pairs, tokens, head_dim]}`` (spec dtype float16) or ``{"codes": uint8 [pairs, tokens,
head_dim], "scales", "zeros": float32 [pairs, 1, head_dim]}`` (int8), whose metadata names the block key, the spec and the
head_dim of the block's KV. A manifest entry names its item (``index_key``, ``index_bytes``) and the manifest the spec
(``gate_index``); a missing or damaged item never fails a query: the gate judges that block without it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch

from ..blocks import SourceSpan
from .codec import Damaged, canonical_safetensors, frame, safetensors_header, unframe
from .manifest import FORMAT_VERSION, BankManifest, StoredBlock, StoredDocument

if TYPE_CHECKING:
    from .disk import Items

logger = logging.getLogger(__name__)

INDEX_MAGIC = b"LYCHEEI1"
INDEX_PREFIX = "index:"


def canonical_spec(spec: Mapping[str, Any]) -> str:
    return json.dumps(dict(spec), sort_keys=True, separators=(",", ":"))


def index_key(block_key: str, spec: Mapping[str, Any]) -> str:
    """The key (without ``index:``) of a block's gate index item built with ``spec``."""
    digest = hashlib.sha256(block_key.encode("utf-8"))
    digest.update(b"\0")
    digest.update(canonical_spec(spec).encode("utf-8"))
    return digest.hexdigest()


def encode_index(keys: torch.Tensor, block_key: str, spec: Mapping[str, Any], head_dim: int) -> bytes:
    """A gate index as a framed safetensors record (tensors in the spec's dtype; metadata: block key, spec,
    head_dim)."""
    from ..gate.index_format import IndexSpec

    metadata = {
        "format": str(FORMAT_VERSION),
        "block": block_key,
        "gate_index": canonical_spec(spec),
        "head_dim": str(int(head_dim)),
    }
    tensors = IndexSpec.from_description(dict(spec)).encode(keys)
    return frame(INDEX_MAGIC, canonical_safetensors(safetensors.torch.save(tensors, metadata)))


@functools.lru_cache(maxsize=16)
def _parsed_spec(canonical: str):
    """The IndexSpec of a canonical spec description, or None when it cannot be read (parsed once per spec)."""
    from ..gate.index_format import IndexSpec

    try:
        return IndexSpec.from_description(json.loads(canonical))
    except (KeyError, TypeError, ValueError):
        return None


def decode_index(data: bytes, block_key: str, spec: Mapping[str, Any], tokens: int) -> torch.Tensor:
    """The float16 index keys of a stored item (on CPU), checked against its block and spec; Damaged if not."""
    payload = unframe(INDEX_MAGIC, data)
    metadata = safetensors_header(payload).get("__metadata__") or {}
    if metadata.get("block") != block_key:
        raise Damaged("it belongs to another block")
    canonical = canonical_spec(spec)
    try:
        if canonical_spec(json.loads(metadata["gate_index"])) != canonical:
            raise Damaged("it was built with another index spec than the bank's")
        head_dim = int(metadata["head_dim"])
    except (KeyError, TypeError, ValueError):
        raise Damaged("its metadata is incomplete") from None
    try:
        tensors = safetensors.torch.load(payload)
    except Exception as error:  # safetensors raises its own error types for malformed payloads
        raise Damaged(f"its payload cannot be read ({error})") from None
    parsed = _parsed_spec(canonical)
    if parsed is None:
        raise Damaged("the bank's index spec cannot be read")
    try:
        keys = parsed.decode(tensors, head_dim)
    except ValueError as error:
        raise Damaged(str(error)) from None
    if keys.shape[1] > tokens:
        raise Damaged(f"its shape {tuple(keys.shape)} ({keys.dtype}) does not match the bank's index spec")
    return keys


def stored_index(items: Items, block_key: str, spec: Mapping[str, Any]) -> tuple[str, int] | None:
    """(key, bytes) of the block's index item for ``spec`` when one is stored, else None (not checked)."""
    key = index_key(block_key, spec)
    size = items.size(INDEX_PREFIX + key)
    return (key, size) if size else None


def write_index(
    items: Items, block_key: str, spec: Mapping[str, Any], keys: torch.Tensor, head_dim: int
) -> tuple[str, int]:
    """Write a block's index item; returns its (key, bytes)."""
    key = index_key(block_key, spec)
    data = encode_index(keys, block_key, spec, head_dim)
    items.put(INDEX_PREFIX + key, data)
    return key, len(data)


def narrowed(items: Items, entry: StoredBlock, spec: Mapping[str, Any]) -> StoredBlock | None:
    """The entry naming its index item for an int8 ``spec``, written without a model from its stored float16 item
    of the same heads (a bank indexed before ``gate.index_dtype`` changed); None when it holds no usable one."""
    if spec.get("dtype", "float16") == "float16":
        return None
    wider = {**spec, "dtype": "float16"}
    for old in (wider, {key: value for key, value in wider.items() if key != "dtype"}):  # described with or without
        if entry.index_key != index_key(entry.key, old):
            continue
        data = items.get(INDEX_PREFIX + entry.index_key)
        if data is None:
            return None
        try:
            keys = decode_index(data, entry.key, old, entry.token_end - entry.token_start)
        except Damaged:
            return None
        key, size = write_index(items, entry.key, spec, keys, keys.shape[-1])
        return entry.model_copy(update={"index_key": key, "index_bytes": size})
    return None


def conforms(entry: StoredBlock, spec: Mapping[str, Any] | None) -> bool:
    """Whether an entry names the index item a bank with gate index ``spec`` expects (none when spec is None)."""
    if spec is None:
        return entry.index_key is None and entry.index_bytes == 0
    return entry.index_key == index_key(entry.key, spec)


def without_index(document: StoredDocument, spec: Mapping[str, Any] | None) -> StoredDocument:
    """The document with the index fields of every entry that does not conform to ``spec`` cleared."""
    blocks = [
        entry if conforms(entry, spec) else entry.model_copy(update={"index_key": None, "index_bytes": 0})
        for entry in document.blocks
    ]
    return document.model_copy(update={"blocks": blocks})


def read_index(items: Items, entry: StoredBlock, manifest: BankManifest) -> tuple[torch.Tensor | None, str | None]:
    """(keys, None) for an entry's usable gate index, else (None, why not in words); (None, None): the bank
    has no gate index."""
    spec = manifest.gate_index
    if spec is None:
        return None, None
    if entry.index_key is None:
        return None, "the block's gate index is missing (its manifest entry names none)"
    if entry.index_key != index_key(entry.key, spec):
        return None, "the block's gate index is missing (its manifest entry names one of another index spec)"
    data = items.get(INDEX_PREFIX + entry.index_key)
    if data is None:
        return None, "the block's gate index is missing"
    try:
        return decode_index(data, entry.key, spec, entry.token_end - entry.token_start), None
    except Damaged as damage:
        return None, f"the block's gate index is damaged: {damage}"


class IndexLoader:
    """A stored bank's ``index_loader``: one block's gate index per call (never its KV), None when unusable.

    The first block without a usable index is logged (once per bank), with the command that rebuilds it.
    """

    def __init__(self, items: Items, store_path: str, manifest: BankManifest, entries: list[StoredBlock], spans):
        self.items, self.store_path, self.manifest = items, store_path, manifest
        self.entries: list[StoredBlock] = entries
        self.spans: list[SourceSpan] = spans
        self.warned = False

    def __call__(self, index: int) -> torch.Tensor | None:
        keys, problem = read_index(self.items, self.entries[index], self.manifest)
        if problem is not None and not self.warned:
            self.warned = True
            span = self.spans[index]
            logger.warning(
                "bank %r block %d (document %r, chars %d-%d): %s; the gate judges such blocks without their index "
                "(slower) until `lychee store verify --repair --store %s` rebuilds it (further blocks of this bank "
                "are not reported)",
                self.manifest.name,
                index,
                span.document_id,
                span.char_start,
                span.char_end,
                problem,
                self.store_path,
            )
        return keys
