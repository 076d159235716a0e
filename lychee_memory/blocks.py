"""Memory blocks (one compressed chunk's KV), memory banks (the ordered blocks of a corpus) and what makes a
bank's KV valid for an engine (its identity).

A block's keys/values hold, per layer and KV head, the memory slots that replace the chunk's raw tokens, as
the compressor cached them (training-free compressors keep post-RoPE keys; the learned beacon compressor
keeps them before RoPE and they are read unrotated, as the released checkpoint does). A reasoner or gate
prompt that reads a block continues at ``next_position``. A bank knows nothing of storage: a stored bank is
a subclass in ``lychee_memory.store``.

Framed blocks (training-free compressors): every chunk is encoded after the same *opening*, the tokens a text
read puts before a chunk (sequence start and the chat user-turn opening). The opening's KV is the same for every
block, so a block holds only its chunk's slots and a reader puts ``BlockOpening`` in front of them; a prompt that
continues after [opening | block] sees exactly the tokens a text read of the chunk sees. A block may also carry
``gate_keys``, its gate index (see ``gate/index_format.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .documents import Document
from .errors import BankMismatchError, DocumentNotFoundError


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

    keys, values: [layers, kv_heads, slots, head_dim]; valid: [slots] bool (False marks padding slots);
    token_ids: the chunk's tokens, which name the block in a store. gate_keys: the block's gate index
    ([pairs, tokens, head_dim] keys of the prefilter's heads, ``gate/index_format.py``), or None when it has none.
    """

    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    next_position: int
    token_ids: torch.Tensor
    span: SourceSpan
    compressor: str
    gate_keys: torch.Tensor | None = field(default=None, repr=False)

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


@dataclass(frozen=True)
class BlockOpening:
    """The tokens every framed block was encoded after, and their KV ([layers, kv_heads, tokens, head_dim]).

    Computed once per engine (a forward of a few dozen tokens) instead of stored with every block; its token ids
    are part of a bank's identity, so a bank is only read after the opening it was encoded after.
    """

    token_ids: tuple[int, ...]
    keys: torch.Tensor
    values: torch.Tensor

    @property
    def num_slots(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class BankIdentity:
    """What makes a bank's KV right for an engine: the model that computed it, the compressor settings and the
    chunk size, and the opening framed blocks were encoded after (None: a bank from before framing, whose blocks
    began with their own sequence start). Two identities must be equal for an engine to read a bank or add to it;
    the dtype is not part of it (blocks are converted to the engine's dtype when read)."""

    model_fingerprint: str
    compressor: Mapping[str, Any]
    chunk_tokens: int
    opening: tuple[int, ...] | None = ()

    def differences(self, other: BankIdentity) -> list[str]:
        """What differs from ``other`` (this = the bank, other = the engine), in words; empty when they match."""
        found = []
        if self.model_fingerprint != other.model_fingerprint:
            found.append(
                f"it was built with another model (fingerprint {self.model_fingerprint}; this engine's model is "
                f"{other.model_fingerprint})"
            )
        if dict(self.compressor) != dict(other.compressor):
            found.append(
                f"it was built with compressor {dict(self.compressor)}, this engine uses {dict(other.compressor)}"
            )
        if self.chunk_tokens != other.chunk_tokens:
            found.append(
                f"its blocks are {self.chunk_tokens}-token chunks, this engine cuts {other.chunk_tokens}-token chunks"
            )
        if self.opening != other.opening:
            if self.opening is None:
                found.append(
                    "its blocks were encoded by lychee-memory 0.2 or earlier, each alone; blocks are now encoded after "
                    "the prompt opening, so they are read without re-encoding (rebuild it once from its stored text)"
                )
            else:
                found.append(
                    f"its blocks were encoded after the opening tokens {list(self.opening)}, this engine's prompts open "
                    f"with {list(other.opening or ())} (another chat template or use_chat_template setting)"
                )
        return found

    def require_same(self, other: BankIdentity, subject: str, remedy: str) -> None:
        """Raise BankMismatchError ("{subject}: what differs; {remedy}") unless ``other`` matches."""
        found = self.differences(other)
        if found:
            raise BankMismatchError(f"{subject}: {'; '.join(found)}; {remedy}")


@dataclass
class MemoryBank:
    """The ordered memory blocks of one or many documents, plus what built them (``identity``).

    Blocks are held in memory, or fetched one at a time through ``loader`` (a stored bank), so a scan over a
    large bank never needs all of its KV resident at once. ``gate_index`` describes the index the blocks carry
    (``prefilter.IndexSpec.describe()``, None: no index); ``index_loader`` fetches one block's index alone.
    """

    documents: list[Document]
    spans: list[SourceSpan]
    slot_counts: list[int]
    identity: BankIdentity
    name: str | None = None
    _blocks: list[MemoryBlock | None] = field(default_factory=list, repr=False)
    loader: Callable[[int], MemoryBlock] | None = field(default=None, repr=False)
    gate_index: dict[str, Any] | None = None
    index_loader: Callable[[int], torch.Tensor | None] | None = field(default=None, repr=False)
    # A view (``view``, ``union``): for each block, the bank it comes from and its index there; None for a bank
    # that holds its own blocks.
    origins: list[tuple[MemoryBank, int]] | None = field(default=None, repr=False)

    @classmethod
    def from_blocks(
        cls,
        documents: Sequence[Document],
        blocks: Sequence[MemoryBlock],
        identity: BankIdentity,
        name: str | None = None,
        gate_index: dict[str, Any] | None = None,
    ) -> MemoryBank:
        return cls(
            documents=list(documents),
            spans=[block.span for block in blocks],
            slot_counts=[block.num_slots for block in blocks],
            identity=identity,
            name=name,
            _blocks=list(blocks),
            gate_index=gate_index,
        )

    @property
    def model_fingerprint(self) -> str:
        return self.identity.model_fingerprint

    @property
    def compressor(self) -> dict[str, Any]:
        return dict(self.identity.compressor)

    @property
    def chunk_tokens(self) -> int:
        return self.identity.chunk_tokens

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

    def gate_keys(self, index: int) -> torch.Tensor | None:
        """The block's gate index (without loading its KV when the bank can fetch the index alone), or None."""
        resident = self._blocks[index] if index < len(self._blocks) else None
        if resident is not None:
            return resident.gate_keys
        if self.index_loader is not None:
            return self.index_loader(index)
        return self.block(index).gate_keys

    def gate_index_key(self, index: int) -> str | None:
        """A content key of the block's gate index (one key, one index: a cache may keep what it read under it), from
        the bank the block comes from; None when that bank cannot name one (blocks held in memory)."""
        if self.origins is None:
            return None
        source, at = self.origins[index]
        return source.gate_index_key(at)

    def __iter__(self) -> Iterator[MemoryBlock]:
        return (self.block(index) for index in range(len(self)))

    def document(self, document_id: str) -> Document:
        for document in self.documents:
            if document.id == document_id:
                return document
        raise KeyError(document_id)

    def without_documents(self, document_ids: Iterable[str]) -> MemoryBank:
        """An in-memory bank without these documents (blocks shared, spans renumbered).

        Raises DocumentNotFoundError for an id the bank does not hold. A stored bank is changed in its store
        instead (``LycheeMemory.remove_documents``).
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
        return MemoryBank.from_blocks(documents, blocks, self.identity, name=self.name, gate_index=self.gate_index)

    def origin(self, index: int) -> tuple[MemoryBank, int]:
        """The bank block ``index`` belongs to and its index there (itself and ``index`` unless a view)."""
        if self.origins is None:
            return self, index
        return self.origins[index]

    def document_of(self, block: Any) -> Document:
        """The document a ``SelectedBlock`` of this bank (or of a view or union of it) came from, found by the
        block's own bank and index, so a union holding one document id in two banks gives each block its own."""
        if self.origins is not None:
            for position, (origin, at) in enumerate(self.origins):
                if at == block.index and origin.name == block.bank:
                    return self.documents[self.spans[position].document_index]
        return self.document(block.document_id)

    def view(self, document_ids: Iterable[str]) -> MemoryBank:
        """The bank restricted to these documents, in bank order: blocks are fetched from this bank when read,
        nothing is compressed or copied. Raises DocumentNotFoundError for an id the bank does not hold."""
        wanted = {document_ids} if isinstance(document_ids, str) else set(document_ids)
        present = {document.id for document in self.documents}
        missing = sorted(wanted - present)
        if missing:
            raise DocumentNotFoundError(f"bank {self.name or '(unnamed)'} holds no document with id {missing[0]!r}")
        return MemoryBank.union([self], keep=lambda bank, document: document.id in wanted, name=self.name)

    @staticmethod
    def union(
        banks: Sequence[MemoryBank],
        keep: Callable[[MemoryBank, Document], bool] | None = None,
        name: str | None = None,
    ) -> MemoryBank:
        """One bank over several banks' blocks (in the order given), optionally only documents ``keep`` accepts.

        The banks must share an identity (the same engine built them). Document ids stay as they are, so two
        banks may hold the same id; ``origin`` tells which bank a block came from. The union has a gate index
        only when every bank has the same one.
        """
        if not banks:
            raise ValueError("a union needs at least one bank")
        first = banks[0]
        for other in banks[1:]:
            differences = other.identity.differences(first.identity)
            if differences:
                raise BankMismatchError(
                    f"banks {first.name or '(unnamed)'} and {other.name or '(unnamed)'} were built by different engines "
                    f"(model, compressor, chunk size or opening differ), so one scan cannot read both; rebuild one "
                    "with the other's engine"
                )
        documents: list[Document] = []
        spans: list[SourceSpan] = []
        slot_counts: list[int] = []
        origins: list[tuple[MemoryBank, int]] = []
        for bank in banks:
            renumbered: dict[int, int] = {}
            for position, document in enumerate(bank.documents):
                if keep is None or keep(bank, document):
                    renumbered[position] = len(documents)
                    documents.append(document)
            for index, span in enumerate(bank.spans):
                if span.document_index in renumbered:
                    spans.append(replace(span, document_index=renumbered[span.document_index]))
                    slot_counts.append(bank.slot_counts[index])
                    origins.append(bank.origin(index))
        indexes = {repr(sorted(bank.gate_index.items())) if bank.gate_index else None for bank in banks}
        gate_index = first.gate_index if len(indexes) == 1 else None

        def load(index: int) -> MemoryBlock:
            source, at = origins[index]
            return replace(source.block(at), span=spans[index])

        def load_index(index: int) -> torch.Tensor | None:
            source, at = origins[index]
            return source.gate_keys(at)

        return MemoryBank(
            documents=documents,
            spans=spans,
            slot_counts=slot_counts,
            identity=first.identity,
            name=name if name is not None else "+".join(bank.name or "(unnamed)" for bank in banks),
            loader=load,
            gate_index=gate_index,
            index_loader=load_index,
            origins=origins,
        )

    @property
    def num_tokens(self) -> int:
        return sum(span.token_end - span.token_start for span in self.spans)

    @property
    def num_slots(self) -> int:
        return sum(self.slot_counts)

    def resident_nbytes(self) -> int:
        return sum(block.nbytes for block in self._blocks if block is not None)

    def resident_dtype(self) -> torch.dtype | None:
        """The dtype of the first block held in memory (None when none is): what a copy of the bank reads back in."""
        sample = next((block for block in self._blocks if block is not None), None)
        return sample.keys.dtype if sample is not None else None

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
            "store": None,
        }
