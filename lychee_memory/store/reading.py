"""Reading a stored bank's blocks: one block per call, checked against its key and manifest, keeping nothing."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import torch

from ..blocks import MemoryBlock, SourceSpan
from ..errors import CorruptBlockError
from .codec import BLOCK_MAGIC, Damaged, DecodedBlock, block_key, decode_payload, unframe
from .manifest import BankManifest, StoredBlock

if TYPE_CHECKING:
    from .disk import Items


def check_block(data: bytes, entry: StoredBlock, manifest: BankManifest, dtype: torch.dtype | None) -> DecodedBlock:
    """Checksum, decode, and confirm the block is the one the key names (same model, compressor, opening, tokens)."""
    decoded = decode_payload(unframe(BLOCK_MAGIC, data), dtype)
    metadata = decoded.metadata
    if metadata["storage"] != entry.storage:  # never read with a codec the bank's manifest did not write it with
        raise Damaged(f"it is stored as {metadata['storage']}, its manifest says {entry.storage}")
    if metadata.get("model_fingerprint") != manifest.model_fingerprint:
        raise Damaged("it was computed by another model than the bank's")
    if json.loads(metadata.get("compressor", "null")) != manifest.compressor:
        raise Damaged("it was computed by another compressor than the bank's")
    if decoded.token_ids.numel() != entry.token_end - entry.token_start or decoded.keys.shape[2] != entry.slots:
        raise Damaged("its shape does not match the manifest")
    expected = block_key(
        manifest.model_fingerprint, manifest.compressor, metadata["storage"], decoded.token_ids, manifest.opening
    )
    if expected != entry.key:
        raise Damaged("its content does not match its key")
    return decoded


class BlockLoader:
    """A stored bank's loader: reads, checks and converts one block per call, keeping nothing."""

    def __init__(
        self,
        items: Items,
        store_path: str,
        manifest: BankManifest,
        entries: list[StoredBlock],
        spans: list[SourceSpan],
        dtype: torch.dtype | None,
        device: torch.device | str | None,
    ):
        self.items, self.store_path, self.manifest, self.entries, self.spans = (
            items,
            store_path,
            manifest,
            entries,
            spans,
        )
        self.dtype, self.device = dtype, device

    def __call__(self, index: int) -> MemoryBlock:
        entry, span, device = self.entries[index], self.spans[index], self.device
        data = self.items.get("block:" + entry.key)
        where = (
            f"bank {self.manifest.name!r} block {index} (document {span.document_id!r}, chars {span.char_start}-"
            f"{span.char_end}, key {entry.key[:16]})"
        )
        advice = f"run `lychee store verify --repair --store {self.store_path}` to recompress it from the stored text"
        if data is None:
            raise CorruptBlockError(f"{where} is missing from store {self.store_path!r}; {advice}")
        try:
            decoded = check_block(data, entry, self.manifest, self.dtype)
        except Damaged as damage:
            raise CorruptBlockError(f"{where} is damaged: {damage}; {advice}") from None
        return MemoryBlock(
            keys=decoded.keys.to(device) if device is not None else decoded.keys,
            values=decoded.values.to(device) if device is not None else decoded.values,
            valid=decoded.valid,
            next_position=int(decoded.metadata["next_position"]),
            token_ids=decoded.token_ids,
            span=span,
            compressor=decoded.metadata["compressor_name"],
        )
