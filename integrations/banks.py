"""The bank an adapter answers over: new documents, an existing bank, or a bank kept in a MemoryStore.

Adapters accept the same three arguments everywhere: ``documents`` (compressed on the way in), ``bank``
(a MemoryBank, or the name of a bank in ``store``) and ``store`` (a MemoryStore or a directory; None
with a bank name is the default store). With a store, documents are added to the named bank (a document
with the same id replaces the old one) and the bank is read lazily from disk.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from lychee_memory import Document, DocumentError, LycheeMemory, MemoryBank, MemoryStore, StoredBank
from lychee_memory.store import as_store, check_new_bank_name

from .engines import ModelChoice, resolve_engine

StoreChoice = MemoryStore | str | os.PathLike[str] | None
"""A MemoryStore, the directory of one, or None (the default store, when a bank name is given)."""

BankChoice = MemoryBank | str | None
"""A MemoryBank, or the name of a bank in the store."""


class OverBank:
    """What an adapter over one bank exposes, whatever its framework: the engine and the bank it answers over."""

    _engine: LycheeMemory
    _bank: MemoryBank

    @property
    def engine(self) -> LycheeMemory:
        return self._engine

    @property
    def bank(self) -> MemoryBank:
        return self._bank


def engine_for_bank(bank: object, model: ModelChoice, where_banks_come_from: str) -> LycheeMemory:
    """The engine for ``model``, once ``bank`` is known to be a MemoryBank built by that engine's model and
    compressor: an adapter never serves KV another model computed."""
    if not isinstance(bank, MemoryBank):
        raise TypeError(f"bank must be a MemoryBank ({where_banks_come_from}), got {type(bank).__name__}")
    engine = resolve_engine(model)
    engine.check_bank(bank)
    return engine


class OpenBanks:
    """Stored banks an adapter opened by name, reused while the store still holds that version.

    Without it a reader given a bank name would open the bank (and its store) again for every question, so
    questions of one batch would never share a scan; a bank changed by any writer is opened again.
    """

    def __init__(self) -> None:
        self._stores: dict[str, MemoryStore] = {}
        self._banks: dict[tuple[str, str], StoredBank] = {}
        self._guard = threading.Lock()

    def store(self, store: StoreChoice, *, create: bool) -> MemoryStore:
        if isinstance(store, MemoryStore):
            return store
        path = _store_key(store) if store is not None else ""
        with self._guard:
            if path not in self._stores:
                self._stores[path] = as_store(store, create=create)
            return self._stores[path]

    def open(self, engine: LycheeMemory, store: StoreChoice, name: str) -> StoredBank:
        target = self.store(store, create=False)
        key = (target.location if target.where.remote else str(target.path.expanduser().resolve()), name)
        with self._guard:
            bank = self._banks.get(key)
        if bank is None or not bank.is_current():
            bank = engine.open_bank(name, store=target)
            with self._guard:
                self._banks[key] = bank
        return bank


def prepare_bank(
    engine: LycheeMemory,
    documents: Sequence[Document] | None,
    *,
    store: StoreChoice = None,
    bank: BankChoice = None,
    show_progress: bool | None = None,
    open_banks: OpenBanks | None = None,
) -> MemoryBank:
    """Compress ``documents`` into a new bank, add them to ``bank``, or open ``bank`` as it is.

    ``open_banks`` keeps banks opened by name across calls (an adapter answering many questions).
    """
    if documents is not None and not documents:
        raise DocumentError("the documents list is empty: pass at least one document, or an existing bank")
    if isinstance(bank, MemoryBank):  # ``store`` only locates banks given by name
        engine.check_bank(bank)
        return bank if documents is None else add_documents(engine, bank, documents, show_progress=show_progress)
    if isinstance(bank, str):
        banks = open_banks or OpenBanks()
        if documents is None:
            return banks.open(engine, store, bank)
        target = banks.store(store, create=True)
        return engine.ingest(list(documents), store=target, bank=bank, show_progress=show_progress)
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
    if isinstance(bank, StoredBank) and bank.store is not None and bank.name is not None:
        return engine.ingest(list(documents), store=bank.store, bank=bank.name, show_progress=show_progress)
    replaced = {document.id for document in documents} & {document.id for document in bank.documents}
    kept = bank.without_documents(replaced) if replaced else bank
    added = engine.ingest(list(documents), show_progress=show_progress)
    offset = len(kept.documents)
    blocks = list(kept) + [
        replace(block, span=replace(block.span, document_index=block.span.document_index + offset)) for block in added
    ]
    # The merged bank has an index only if both parts were indexed the same way (else stage 1 would skip blocks).
    gate_index = kept.gate_index if kept.gate_index == added.gate_index else None
    return MemoryBank.from_blocks(
        kept.documents + added.documents, blocks, kept.identity, name=bank.name, gate_index=gate_index
    )


def save_bank(bank: MemoryBank, store: StoreChoice, name: str) -> None:
    """Make bank ``name`` of ``store`` hold exactly ``bank``'s documents (nothing more, nothing less).

    The new version is written under a temporary name first, so the old one stays whole until the new one
    is complete; blocks the store already holds are not written again.
    """
    target = as_store(store)
    if isinstance(bank, StoredBank) and bank.store is not None and bank.name == name:
        if _same_store(bank.store, target):
            return  # already there: every change to a stored bank is written when it is made
    check_new_bank_name(name)  # the last step renames onto it: refuse a bad name before anything changes
    staging = f"{name[:100]}.saving-{uuid.uuid4().hex[:8]}"
    target.save_bank(bank, staging)
    if target.has_bank(name):
        target.delete_bank(name)
    target.rename_bank(staging, name)


def _store_key(store: str | os.PathLike[str]) -> str:
    """One key per store: an object-store URL as given, a directory resolved."""
    text = os.fspath(store)
    return text if "://" in text or "?" in text else str(Path(text).expanduser().resolve())


def _same_store(first: MemoryStore, second: MemoryStore) -> bool:
    """Whether two handles open one store: the same object-store URL, or the same local directory."""
    if first.where.remote or second.where.remote:
        return first.location == second.location
    return first.path.expanduser().resolve() == second.path.expanduser().resolve()
