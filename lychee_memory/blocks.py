"""Memory blocks (one compressed chunk's KV) and memory banks (the ordered blocks of a corpus).

A block's keys/values hold, per layer and KV head, the memory slots that replace the chunk's raw tokens.
A reasoner or gate prompt that reads a block continues at ``next_position``; ``keys_rotated`` says
whether the keys already carry RoPE (training-free compressors) or not (the learned beacon compressor,
whose keys are cached before RoPE and read unrotated, as the released checkpoint does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from .documents import Document
from .errors import DocumentNotFoundError

if TYPE_CHECKING:
    from .store import MemoryStore


@dataclass(frozen=True)
class SourceSpan:
    """Where a block's text comes from: document, character span and token span."""

    document_id: str
    document_index: int
    char_start: int
    char_end: int
    token_start: int
    token_end: int
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "document_index": self.document_index,
            "char_start": self.char_start,
            "char_end": self.char_end,
            "token_start": self.token_start,
            "token_end": self.token_end,
        }


@dataclass
class MemoryBlock:
    """One chunk compressed into per-layer KV memory slots.

    keys, values: [layers, kv_heads, slots, head_dim]; valid: [slots] bool;
    slot_positions: [layers, kv_heads, slots] position each slot came from inside the chunk forward.
    """

    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    slot_positions: torch.Tensor
    next_position: int
    keys_rotated: bool
    token_ids: torch.Tensor
    span: SourceSpan
    compressor: str

    def __post_init__(self) -> None:
        if self.keys.shape != self.values.shape or self.keys.dim() != 4:
            raise ValueError(
                f"keys {tuple(self.keys.shape)} and values {tuple(self.values.shape)} must be equal 4D shapes"
            )
        if self.valid.shape != (self.keys.shape[2],):
            raise ValueError(f"valid mask {tuple(self.valid.shape)} does not match {self.keys.shape[2]} slots")

    @property
    def num_slots(self) -> int:
        return int(self.keys.shape[2])

    @property
    def num_layers(self) -> int:
        return int(self.keys.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.numel())

    @property
    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() * 2

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MemoryBlock:
        """A copy with keys/values on ``device`` in ``dtype`` (metadata tensors stay on CPU)."""
        return replace(
            self, keys=self.keys.to(device=device, dtype=dtype), values=self.values.to(device=device, dtype=dtype)
        )


@dataclass
class MemoryBank:
    """The ordered memory blocks of one or many documents, plus what built them.

    Blocks are held in memory, or fetched one at a time through ``loader`` (a store-backed bank), so a
    scan over a large bank never needs all of its KV resident at once. A store-backed bank knows its
    ``store`` and the content keys of its blocks (``block_keys``); ``name`` is then its name in the store.
    """

    documents: list[Document]
    spans: list[SourceSpan]
    slot_counts: list[int]
    model_fingerprint: str
    compressor: dict[str, Any]
    chunk_tokens: int
    name: str | None = None
    _blocks: list[MemoryBlock | None] = field(default_factory=list, repr=False)
    loader: Callable[[int], MemoryBlock] | None = field(default=None, repr=False)
    store: MemoryStore | None = field(default=None, repr=False, compare=False)
    block_keys: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def from_blocks(
        cls,
        documents: Sequence[Document],
        blocks: Sequence[MemoryBlock],
        model_fingerprint: str,
        compressor: dict[str, Any],
        chunk_tokens: int,
        name: str | None = None,
    ) -> MemoryBank:
        return cls(
            documents=list(documents),
            spans=[block.span for block in blocks],
            slot_counts=[block.num_slots for block in blocks],
            model_fingerprint=model_fingerprint,
            compressor=dict(compressor),
            chunk_tokens=chunk_tokens,
            name=name,
            _blocks=list(blocks),
        )

    def __len__(self) -> int:
        return len(self.spans)

    def block(self, index: int) -> MemoryBlock:
        """The block at ``index``, loaded through the bank's loader when it is not resident."""
        if not 0 <= index < len(self.spans):
            raise IndexError(f"block {index} out of range for a bank of {len(self.spans)} blocks")
        resident = self._blocks[index] if index < len(self._blocks) else None
        if resident is not None:
            return resident
        if self.loader is None:
            raise LookupError(f"block {index} is not resident and the bank has no loader")
        return self.loader(index)

    def __iter__(self) -> Iterator[MemoryBlock]:
        return (self.block(index) for index in range(len(self)))

    def document(self, document_id: str) -> Document:
        for document in self.documents:
            if document.id == document_id:
                return document
        raise KeyError(document_id)

    def without_documents(self, document_ids: Iterable[str]) -> MemoryBank:
        """An in-memory bank without these documents (blocks shared, spans renumbered).

        Raises DocumentNotFoundError for an id the bank does not hold. A store-backed bank is changed in
        its store instead (``LycheeMemory.remove_documents``).
        """
        removed = {document_ids} if isinstance(document_ids, str) else set(document_ids)
        present = {document.id for document in self.documents}
        missing = sorted(removed - present)
        if missing:
            raise DocumentNotFoundError(
                f"bank {self.name or '(unnamed)'} holds no document with id {missing[0]!r} "
                f"(documents: {', '.join(sorted(present))})"
            )
        documents = [document for document in self.documents if document.id not in removed]
        renumbered = {document.id: index for index, document in enumerate(documents)}
        blocks = []
        for index, span in enumerate(self.spans):
            if span.document_id in removed:
                continue
            block = self.block(index)
            blocks.append(replace(block, span=replace(span, document_index=renumbered[span.document_id])))
        return MemoryBank.from_blocks(
            documents, blocks, self.model_fingerprint, self.compressor, self.chunk_tokens, name=self.name
        )

    @property
    def num_tokens(self) -> int:
        return sum(span.token_end - span.token_start for span in self.spans)

    @property
    def num_slots(self) -> int:
        return sum(self.slot_counts)

    def resident_nbytes(self) -> int:
        return sum(block.nbytes for block in self._blocks if block is not None)

    def summary(self) -> dict[str, Any]:
        """Counts a person wants to see after an ingest."""
        return {
            "name": self.name,
            "documents": len(self.documents),
            "blocks": len(self),
            "tokens": self.num_tokens,
            "slots": self.num_slots,
            "compression": round(self.num_tokens / max(1, self.num_slots), 3),
            "compressor": self.compressor,
            "chunk_tokens": self.chunk_tokens,
            "resident_bytes": self.resident_nbytes(),
            "store": str(self.store.path) if self.store is not None else None,
        }
