"""The bank an adapter answers over: new documents, an existing bank, or a bank kept in a MemoryStore.

Adapters accept the same three arguments everywhere: ``documents`` (compressed on the way in), ``bank``
(a MemoryBank, or the name of a bank in ``store``) and ``store`` (a MemoryStore or a directory; None
with a bank name is the default store). With a store, documents are added to the named bank (a document
with the same id replaces the old one) and the bank is read lazily from disk.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from lychee_memory import Document, DocumentError, LycheeMemory, MemoryBank, MemoryStore
from lychee_memory.store import as_store

from .engines import ModelChoice, resolve_engine

StoreChoice = MemoryStore | str | os.PathLike[str] | None
"""A MemoryStore, the directory of one, or None (the default store, when a bank name is given)."""

BankChoice = MemoryBank | str | None
"""A MemoryBank, or the name of a bank in the store."""


def engine_for_bank(bank: object, model: ModelChoice, where_banks_come_from: str) -> LycheeMemory:
    """The engine for ``model``, once ``bank`` is known to be a MemoryBank built by that engine's model and
    compressor: an adapter never serves KV another model computed."""
    if not isinstance(bank, MemoryBank):
        raise TypeError(f"bank must be a MemoryBank ({where_banks_come_from}), got {type(bank).__name__}")
    engine = resolve_engine(model)
    engine.check_bank(bank)
    return engine


def prepare_bank(
    engine: LycheeMemory,
    documents: Sequence[Document] | None,
    *,
    store: StoreChoice = None,
    bank: BankChoice = None,
    show_progress: bool | None = None,
) -> MemoryBank:
    """Compress ``documents`` into a new bank, add them to ``bank``, or open ``bank`` as it is."""
    if documents is not None and not documents:
        raise DocumentError("the documents list is empty: pass at least one document, or an existing bank")
    if isinstance(bank, MemoryBank):  # ``store`` only locates banks given by name
        engine.check_bank(bank)
        return bank if documents is None else add_documents(engine, bank, documents, show_progress=show_progress)
    if isinstance(bank, str):
        if documents is None:
            return engine.open_bank(bank, store=store)
        return engine.ingest(list(documents), store=as_store(store), bank=bank, show_progress=show_progress)
    if bank is not None:
        raise TypeError(f"bank must be a MemoryBank or the name of a stored bank, got {type(bank).__name__}")
    if documents is None:
        raise DocumentError("no documents and no bank: pass documents to compress, or an existing bank")
    if store is not None:
        raise ValueError("to keep the documents in a store, name the bank too: store=..., bank='name'")
    return engine.ingest(list(documents), show_progress=show_progress)


def add_documents(
    engine: LycheeMemory, bank: MemoryBank, documents: Sequence[Document], *, show_progress: bool | None = None
) -> MemoryBank:
    """``bank`` with ``documents`` added; a document whose id the bank holds replaces the old version.

    A stored bank is changed in its store (only new chunks are compressed); an in-memory bank is rebuilt
    in memory from its own blocks and the new documents' blocks.
    """
    if bank.store is not None and bank.name is not None:
        return engine.ingest(list(documents), store=bank.store, bank=bank.name, show_progress=show_progress)
    replaced = {document.id for document in documents} & {document.id for document in bank.documents}
    kept = bank.without_documents(replaced) if replaced else bank
    added = engine.ingest(list(documents), show_progress=show_progress)
    offset = len(kept.documents)
    blocks = list(kept) + [
        replace(block, span=replace(block.span, document_index=block.span.document_index + offset)) for block in added
    ]
    return MemoryBank.from_blocks(
        kept.documents + added.documents,
        blocks,
        kept.model_fingerprint,
        kept.compressor,
        kept.chunk_tokens,
        name=bank.name,
    )


def save_bank(bank: MemoryBank, store: StoreChoice, name: str) -> None:
    """Make bank ``name`` of ``store`` hold exactly ``bank``'s documents (nothing more, nothing less).

    The new version is written under a temporary name first, so the old one stays whole until the new one
    is complete; blocks the store already holds are not written again.
    """
    target = as_store(store)
    if bank.store is not None and bank.name == name and _same_path(bank.store.path, target.path):
        return  # already there: every change to a stored bank is written when it is made
    staging = f"{name}.saving-{uuid.uuid4().hex[:8]}"
    target.save_bank(bank, staging)
    if target.has_bank(name):
        target.delete_bank(name)
    target.rename_bank(staging, name)


def _same_path(first: Path, second: Path) -> bool:
    return first.expanduser().resolve() == second.expanduser().resolve()
