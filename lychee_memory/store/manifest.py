"""Bank manifests: the JSON record that defines a bank, and the rules for bank names.

A manifest lists the bank's documents (metadata, text by hash) and, per document, its blocks in order (content
key, storage format, spans, and the key of the block's gate index item), plus the identity that built them (model
fingerprint, compressor, chunk size, the opening framed blocks were encoded after) and the spec of the gate index
its blocks carry. It is written last and atomically; ``generation`` counts its writes, so a writer can tell
whether the bank changed while it worked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..blocks import BankIdentity
from ..choices import BLOCK_DTYPES as BLOCK_DTYPES  # re-exported: where the store and its users import it
from ..choices import BlockDtype
from ..documents import Document
from ..errors import ConfigurationError, DocumentError
from .reports import BankInfo

FORMAT_VERSION = 1

# How the model fingerprint of a manifest was computed. Manifests written before the field existed hashed
# sampled weight values and the dtype; their banks must be rebuilt once (the text is kept) to be read again.
FINGERPRINT_SCHEME = "checkpoint-files"
LEGACY_FINGERPRINT_SCHEME = "sampled-weights"

BANK_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
BANK_NAME_RULE = "1 to 128 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"


def now() -> datetime:
    return datetime.now(timezone.utc)


def check_bank_name(name: object) -> str:
    """A name to look a bank up by: any non-empty string without control characters (banks made before
    names had rules stay readable, renamable and deletable)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"a bank name must be a non-empty string, got {name!r}")
    if any(ord(character) < 32 for character in name):
        raise ConfigurationError(f"bank name {name[:40]!r} must not contain control characters (newlines, tabs)")
    return name


def check_new_bank_name(name: object) -> str:
    """A name for a new bank: it will appear in URLs, paths and other stores, so only safe characters."""
    check_bank_name(name)
    assert isinstance(name, str)
    if not BANK_NAME_PATTERN.fullmatch(name):
        raise ConfigurationError(f"bank name {name[:60]!r} is not allowed: a bank name is {BANK_NAME_RULE}")
    return name


def json_metadata(document: Document) -> dict[str, Any]:
    """A document's metadata as it will be stored (JSON round trip), or a DocumentError saying why it cannot be."""
    try:
        return json.loads(json.dumps(document.metadata))
    except (TypeError, ValueError) as error:
        raise DocumentError(
            f"document {document.id!r} has metadata that cannot be stored as JSON ({error}); use strings, numbers, "
            "lists and dicts"
        ) from None


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoredBlock(_Record):
    """A manifest's entry for one block: its key, storage format, where its text lies, and its gate index item
    (``index_key``: None when it has none; the bank's ``gate_index`` says which spec it was built with)."""

    key: str
    storage: BlockDtype
    char_start: int
    char_end: int
    token_start: int
    token_end: int
    slots: int
    nbytes: int
    index_key: str | None = None
    index_bytes: int = 0


def block_entry(
    key: str, storage: str, span: Any, shape: tuple[int, int], index: tuple[str, int] | None = None
) -> StoredBlock:
    """A manifest entry for a stored block: its key and format, where its text lies (``span``: a Chunk or
    SourceSpan), its (slots, bytes), and its gate index item's (key, bytes) when it has one."""
    return StoredBlock(
        key=key,
        storage=storage,
        char_start=span.char_start,
        char_end=span.char_end,
        token_start=span.token_start,
        token_end=span.token_end,
        slots=shape[0],
        nbytes=shape[1],
        index_key=index[0] if index is not None else None,
        index_bytes=index[1] if index is not None else 0,
    )


class StoredDocument(_Record):
    """A manifest's entry for one document: id, metadata, its text by hash, and its blocks in order."""

    id: str
    metadata: dict[str, Any]
    text_key: str
    characters: int
    blocks: list[StoredBlock]


class BankManifest(_Record):
    """Everything that defines a bank; stored as JSON, written last and atomically."""

    format: int = FORMAT_VERSION
    name: str
    created: datetime
    updated: datetime
    generation: int = 0  # how many times this manifest was written
    model_fingerprint: str
    fingerprint_scheme: str = LEGACY_FINGERPRINT_SCHEME
    model_spec: str | None = None
    model_dtype: str | None = None  # the dtype the blocks were computed in (informative: dtype is not identity)
    compressor: dict[str, Any]
    chunk_tokens: int
    engine_config: dict[str, Any] | None = None  # the resolved EngineConfig, so repair can rebuild the engine
    # The token ids framed blocks were encoded after ([] for an unframed compressor); None: written before blocks
    # were framed (such a bank is read by no current engine until it is rebuilt from its stored text).
    opening: list[int] | None = None
    gate_index: dict[str, Any] | None = None  # the spec of the blocks' gate index (IndexSpec.describe()); None: none
    documents: list[StoredDocument]

    @property
    def identity(self) -> BankIdentity:
        opening = tuple(self.opening) if self.opening is not None else None
        return BankIdentity(self.model_fingerprint, dict(self.compressor), self.chunk_tokens, opening)

    @property
    def before_framing(self) -> bool:
        """Whether the bank was written before framed blocks (no opening recorded): it must be rebuilt once."""
        return self.opening is None

    @property
    def legacy_fingerprint(self) -> bool:
        """Whether the bank predates checkpoint-file fingerprints (it must be rebuilt once to be read)."""
        return self.fingerprint_scheme != FINGERPRINT_SCHEME

    def entries(self) -> Iterator[tuple[int, StoredDocument, StoredBlock]]:
        for document_index, document in enumerate(self.documents):
            for entry in document.blocks:
                yield document_index, document, entry

    def block_keys(self) -> set[str]:
        return {entry.key for _, _, entry in self.entries()}

    def index_keys(self) -> set[str]:
        """The keys of the gate index items the bank's entries name."""
        return {entry.index_key for _, _, entry in self.entries() if entry.index_key is not None}

    def info(self) -> BankInfo:
        entries = [entry for _, _, entry in self.entries()]
        distinct = {entry.key: entry.nbytes for entry in entries}
        indexes = {entry.index_key: entry.index_bytes for entry in entries if entry.index_key is not None}
        return BankInfo(
            name=self.name,
            documents=tuple(document.id for document in self.documents),
            blocks=len(entries),
            tokens=sum(entry.token_end - entry.token_start for entry in entries),
            slots=sum(entry.slots for entry in entries),
            created=self.created,
            updated=self.updated,
            model_fingerprint=self.model_fingerprint,
            model_spec=self.model_spec,
            compressor=dict(self.compressor),
            chunk_tokens=self.chunk_tokens,
            block_dtypes=tuple(sorted({entry.storage for entry in entries})),
            stored_bytes=sum(distinct.values()),
            index_bytes=sum(indexes.values()),
        )


def manifest_for(
    name: str,
    identity: BankIdentity,
    documents: list[StoredDocument],
    *,
    current: BankManifest | None = None,
    gate_index: dict[str, Any] | None = None,
    fingerprint_scheme: str = FINGERPRINT_SCHEME,
    model_spec: str | None = None,
    model_dtype: str | None = None,
    engine_config: dict[str, Any] | None = None,
) -> BankManifest:
    """A new manifest of ``documents`` built by ``identity``, keeping ``current``'s creation time (if any)."""
    moment = now()
    return BankManifest(
        name=name,
        created=current.created if current is not None else moment,
        updated=moment,
        model_fingerprint=identity.model_fingerprint,
        fingerprint_scheme=fingerprint_scheme,
        model_spec=model_spec,
        model_dtype=model_dtype,
        compressor=dict(identity.compressor),
        chunk_tokens=identity.chunk_tokens,
        engine_config=engine_config,
        opening=list(identity.opening) if identity.opening is not None else None,
        gate_index=gate_index,
        documents=documents,
    )


def merge_documents(
    current: list[StoredDocument], incoming: list[StoredDocument]
) -> tuple[list[StoredDocument], int, int]:
    """Documents of ``current`` with ``incoming`` added: same id replaces in place, new ids go last."""
    merged = list(current)
    position = {document.id: index for index, document in enumerate(merged)}
    added = replaced = 0
    for document in incoming:
        if document.id in position:
            merged[position[document.id]] = document
            replaced += 1
        else:
            position[document.id] = len(merged)
            merged.append(document)
            added += 1
    return merged, added, replaced
