"""What store operations report: plain frozen dataclasses, turned into JSON-ready dicts in one way."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal


def _plain(value: Any) -> Any:
    """A JSON-ready copy: datetimes as ISO text, paths as strings, tuples as lists, nested reports as dicts."""
    if isinstance(value, Report):
        return value.to_dict()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


class Report:
    """Base of the reports: ``to_dict`` gives every field plus the properties named in ``derived``."""

    derived: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        data = {item.name: _plain(getattr(self, item.name)) for item in dataclasses.fields(self)}  # type: ignore[arg-type]
        data.update({name: _plain(getattr(self, name)) for name in self.derived})
        return data


@dataclasses.dataclass(frozen=True)
class BankInfo(Report):
    """What a bank holds and what built it, read from its manifest without loading any block."""

    name: str
    documents: tuple[str, ...]
    blocks: int
    tokens: int
    slots: int
    created: datetime
    updated: datetime
    model_fingerprint: str
    model_spec: str | None
    compressor: dict[str, Any]
    chunk_tokens: int
    block_dtypes: tuple[str, ...]
    stored_bytes: int  # bytes of the distinct blocks this bank references (shared blocks counted here too)
    index_bytes: int = 0  # bytes of the distinct gate index items its blocks name (not in stored_bytes)


PARTS = ("blocks", "index", "texts", "manifests")  # what a bank stores, in the order reports name them


@dataclasses.dataclass(frozen=True)
class BytesByPart(Report):
    """What a bank (or a store) costs on disk by part, and per document token: blocks, gate index items, document
    texts and manifests, plus the all-in ``total``; ``per_token`` divides each by ``tokens`` (0.0 without tokens)."""

    derived: ClassVar[tuple[str, ...]] = ("total", "per_token")

    tokens: int  # document tokens (a store: summed over its banks)
    blocks: int
    index: int
    texts: int
    manifests: int

    @property
    def total(self) -> int:
        return sum(getattr(self, part) for part in PARTS)

    @property
    def per_token(self) -> dict[str, float]:
        """Bytes per document token of each part and of the total."""
        sizes = {part: getattr(self, part) for part in PARTS} | {"total": self.total}
        return {part: size / self.tokens if self.tokens else 0.0 for part, size in sizes.items()}


@dataclasses.dataclass(frozen=True)
class StoreUsage(Report):
    """Disk use of a store: totals, blocks nothing references (what gc frees), and each bank's share.

    Gate index items are counted apart (``indexes``, ``index_bytes``); ``unreferenced_bytes`` is everything gc
    would free (blocks and index items) and ``bank_bytes`` a bank's blocks plus its index items.
    """

    path: Path | str  # the store directory, or an object store's URL
    bytes: int
    blocks: int
    block_bytes: int
    texts: int
    banks: int
    unreferenced_blocks: int
    unreferenced_bytes: int
    size_limit_bytes: int | None
    bank_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    leased_blocks: int = 0  # blocks only open banks of live processes still name (kept by gc)
    indexes: int = 0  # gate index items (one per block and index spec)
    index_bytes: int = 0
    unreferenced_indexes: int = 0  # index items nothing references (gc frees them, bytes in unreferenced_bytes)
    # Bytes by part and per document token: the store's (every stored item once, shared or not) and each bank's
    # (the distinct items it names, so banks sharing blocks or texts each count them).
    parts: BytesByPart | None = None
    bank_parts: dict[str, BytesByPart] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class GcReport(Report):
    """What garbage collection removed."""

    derived: ClassVar[tuple[str, ...]] = ("freed_bytes",)

    removed_blocks: int
    removed_texts: int
    bytes_before: int
    bytes_after: int
    removed_indexes: int = 0

    @property
    def freed_bytes(self) -> int:
        return max(0, self.bytes_before - self.bytes_after)


@dataclasses.dataclass(frozen=True)
class StoreProblem(Report):
    """One damaged item found by ``verify``: a manifest, a document text, a block, or a block's gate index."""

    bank: str
    kind: Literal["manifest", "document", "block", "index"]
    reason: str
    key: str | None = None
    block_index: int | None = None
    document_id: str | None = None
    repaired: bool = False


@dataclasses.dataclass(frozen=True)
class VerifyReport(Report):
    """Result of ``verify``: what was checked and every problem found (and whether it was repaired)."""

    derived: ClassVar[tuple[str, ...]] = ("ok",)

    banks: int
    documents_checked: int
    blocks_checked: int
    problems: tuple[StoreProblem, ...]
    indexes_checked: int = 0

    @property
    def unrepaired(self) -> tuple[StoreProblem, ...]:
        return tuple(problem for problem in self.problems if not problem.repaired)

    @property
    def ok(self) -> bool:
        """True when nothing is damaged any more."""
        return not self.unrepaired


@dataclasses.dataclass(frozen=True)
class IngestReport(Report):
    """What one ingest into a store did: chunks seen, blocks compressed, blocks reused, bytes written."""

    bank: str
    documents_added: int
    documents_replaced: int
    chunks: int
    compressed: int
    reused: int
    written_bytes: int
    seconds: float
    parts: BytesByPart | None = None  # the bank's bytes by part and per document token after the ingest


@dataclasses.dataclass(frozen=True)
class RecompressReport(Report):
    """What ``MemoryStore.recompress`` did to a bank: which blocks it converted from which codecs, and the bytes of
    the bank's distinct blocks before and after (the old blocks stay until ``gc``). ``changed`` False: every block
    was already stored with ``codec`` and nothing was written."""

    derived: ClassVar[tuple[str, ...]] = ("saved_bytes",)

    bank: str
    codec: str
    from_codecs: tuple[str, ...]
    blocks: int  # the bank's blocks (entries)
    converted: int  # distinct blocks converted
    bytes_before: int
    bytes_after: int
    changed: bool
    generation: int  # the bank's manifest generation after the command
    seconds: float

    @property
    def saved_bytes(self) -> int:
        return self.bytes_before - self.bytes_after
