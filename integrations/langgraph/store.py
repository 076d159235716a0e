"""``LycheeStore``: a LangGraph ``BaseStore`` whose items live in a Lychee bank and whose search is the gate's.

    from lychee_memory.integrations.langgraph import LycheeStore

    store = LycheeStore(store="./memory")              # a directory or a store URL; model=None: embedded default
    store.put(("alice", "memories"), "home", {"text": "Alice lives in Lyon"})
    store.search(("alice",), query="where does Alice live?", limit=3)

Each item is one document of one bank (``bank``, default "langgraph") in a MemoryStore: its indexed text is
compressed, its value, namespace, timestamps and expiry sit in the document's metadata. ``search`` with a query
ranks the matching items by the gate's selection (no answer is decoded), newest first among near ties; without a
query it lists them in the order they were first put, as LangGraph's in-memory store does. The puts and deletes
of one ``batch`` land in one ingest and one manifest write, so an agent writing many items should batch them.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
)
from langgraph.store.base.embed import get_text_at_path

from lychee_memory import ConfigurationError, Document, LycheeMemory, MemoryBank, MemoryStore

from ..banks import OpenBanks, StoreChoice
from ..engines import ModelChoice, call_engine, resolve_engine
from ..recall import recall
from ..recency import DEFAULT_RECENCY_MARGIN, Recalled, best_per_document, newest_first_among_ties
from .filters import check_filter, matches

DEFAULT_BANK = "langgraph"
NAMESPACE_KEY = "lg_namespace"
ITEM_KEY = "lg_key"
VALUE_KEY = "lg_value"
CREATED_KEY = "lg_created_at"
UPDATED_KEY = "lg_updated_at"
EXPIRES_KEY = "lg_expires_at"
TTL_KEY = "lg_ttl_minutes"
INDEXED_KEY = "lg_indexed"


@dataclass
class StoredItem:
    """An item as the bank's manifest holds it: the LangGraph item, its document id, expiry and whether indexed."""

    item: Item
    document_id: str
    indexed: bool
    ttl_minutes: float | None
    expires_at: float | None

    def expired(self, at: float) -> bool:
        return self.expires_at is not None and self.expires_at <= at


class LycheeStore(BaseStore):
    """LangGraph long-term memory over a Lychee bank: namespaced items, upserts, TTLs, gate-ranked search.

    ``store``: a MemoryStore, a directory or a store URL (None: the default store). ``model``: a LycheeMemory engine,
    a model spec or None (the embedded default, loaded on first use). ``index``: LangGraph's ``IndexConfig``; only
    ``fields`` applies (the text the gate reads, default the whole value as JSON), as the gate needs no embedding.
    ``ttl``: LangGraph's ``TTLConfig`` (``default_ttl`` minutes, ``refresh_on_read``).
    """

    supports_ttl: bool = True

    def __init__(
        self,
        store: StoreChoice = None,
        *,
        model: ModelChoice = None,
        bank: str = DEFAULT_BANK,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        recency_margin: float = DEFAULT_RECENCY_MARGIN,
    ) -> None:
        if index is not None and not isinstance(index, Mapping):
            raise ConfigurationError(f"index must be a LangGraph IndexConfig dict, got {type(index).__name__}")
        if index is not None and index.get("embed") is not None:
            raise ConfigurationError(
                "LycheeStore ranks items with Lychee's gate and takes no embedding model: give index={'fields': [...]} "
                "to choose the text it reads"
            )
        fields = (index or {}).get("fields") or ["$"]
        if isinstance(fields, str) or not all(isinstance(field, str) and field for field in fields):
            raise ConfigurationError(f"index fields must be a list of JSON paths such as ['text'], got {fields!r}")
        if recency_margin < 0:
            raise ConfigurationError(f"recency_margin must be 0 or more, got {recency_margin!r}")
        self.index_config = dict(index) if index is not None else None
        self.ttl_config = ttl
        self.fields = list(fields)
        self.bank_name = bank
        self.recency_margin = recency_margin
        self._model = model
        self._engine: LycheeMemory | None = model if isinstance(model, LycheeMemory) else None
        self._banks = OpenBanks()
        self._store = self._banks.store(store, create=True)

    @property
    def engine(self) -> LycheeMemory:
        """The engine (the embedded default is loaded on first use, once per process)."""
        if self._engine is None:
            self._engine = resolve_engine(self._model)
        return self._engine

    @property
    def memory_store(self) -> MemoryStore:
        return self._store

    # The BaseStore interface --------------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run the operations: reads see the store as it was before the batch, then its puts and deletes are
        written together (the last put of an item wins) in one ingest and one manifest write."""
        ops = list(ops)
        for op in ops:
            if not isinstance(op, (GetOp, SearchOp, ListNamespacesOp, PutOp)):
                raise TypeError(f"unknown store operation {type(op).__name__}")
            if isinstance(op, SearchOp):
                check_namespace(op.namespace_prefix, prefix=True)
                check_filter(op.filter)
            elif not isinstance(op, ListNamespacesOp):
                check_namespace(op.namespace)
        engine = self.engine
        return call_engine(engine, lambda: self._run(engine, ops))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """``batch`` in a worker thread, so the event loop stays free."""
        return await asyncio.to_thread(self.batch, list(ops))

    def sweep_ttl(self) -> int:
        """Delete expired items now (reads already skip them); returns how many were deleted."""
        engine = self.engine

        def sweep() -> int:
            expired = [stored.document_id for stored in self._items().values() if stored.expired(time.time())]
            if expired:
                engine.remove_documents(self._bank(engine), expired)
                self._bank(engine)  # drop the old version now: its lease would keep removed blocks from gc
            return len(expired)

        return call_engine(engine, sweep)

    # Internals -------------------------------------------------------------------------------------

    def _items(self) -> dict[tuple[tuple[str, ...], str], StoredItem]:
        """Every stored item, read from the bank's manifest alone (no text is read: gets and lists stay cheap)."""
        if not self._store.has_bank(self.bank_name):
            return {}
        items = {}
        for document in self._store.bank_manifest(self.bank_name).documents:
            stored = from_metadata(document.id, document.metadata)
            if stored is not None:
                items[(stored.item.namespace, stored.item.key)] = stored
        return items

    def _bank(self, engine: LycheeMemory) -> MemoryBank:
        """The bank itself (texts and blocks, lazily), opened again only when it changed."""
        return self._banks.open(engine, self._store, self.bank_name)

    def _run(self, engine: LycheeMemory, ops: list[Op]) -> list[Result]:
        items = self._items()
        at = time.time()
        live = {address: stored for address, stored in items.items() if not stored.expired(at)}
        results: list[Result] = []
        refresh: dict[tuple[tuple[str, ...], str], StoredItem] = {}
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for op in ops:
            if isinstance(op, GetOp):
                stored = live.get((op.namespace, op.key))
                results.append(stored.item if stored is not None else None)
                if stored is not None and op.refresh_ttl:
                    refresh[(op.namespace, op.key)] = stored
            elif isinstance(op, SearchOp):
                found = self._search(engine, live, op)
                results.append([stored.item for stored in found])
                if op.refresh_ttl:
                    refresh.update({(stored.item.namespace, stored.item.key): stored for stored in found})
            elif isinstance(op, ListNamespacesOp):
                results.append(list_namespaces(live.values(), op))
            else:
                puts[(op.namespace, op.key)] = op
                results.append(None)
        self._write(engine, items, puts, refresh, at)
        return results

    def _search(
        self,
        engine: LycheeMemory,
        live: Mapping[tuple[tuple[str, ...], str], StoredItem],
        op: SearchOp,
    ) -> list[StoredItem]:
        prefix = op.namespace_prefix
        filters = check_filter(op.filter)
        candidates = [
            stored
            for stored in live.values()
            if stored.item.namespace[: len(prefix)] == prefix and matches(stored.item.value, filters)
        ]
        if op.limit <= 0:
            return []
        if not op.query:
            return [plain(stored) for stored in candidates[op.offset : op.offset + op.limit]]
        indexed = [stored for stored in candidates if stored.indexed]
        wanted = op.offset + op.limit
        ranked: list[StoredItem] = []
        if indexed:
            view = self._bank(engine).view([stored.document_id for stored in indexed])
            blocks = recall(engine, op.query, view, wanted)
            best = best_per_document((block.document_id, block.score) for block in blocks)
            by_id = {stored.document_id: stored for stored in indexed}
            order = newest_first_among_ties(
                [
                    Recalled(document_id, score, by_id[document_id].item.updated_at.timestamp())
                    for document_id, score in best.items()
                ],
                self.recency_margin,
            )
            ranked = [scored(by_id[recalled.document_id], recalled.score) for recalled in order]
        seen = {stored.document_id for stored in ranked}
        ranked += [plain(stored) for stored in candidates if stored.document_id not in seen]  # unscored, as LangGraph
        return ranked[op.offset : wanted]

    def _write(
        self,
        engine: LycheeMemory,
        items: Mapping[tuple[tuple[str, ...], str], StoredItem],
        puts: Mapping[tuple[tuple[str, ...], str], PutOp],
        refresh: Mapping[tuple[tuple[str, ...], str], StoredItem],
        at: float,
    ) -> None:
        documents: list[Document] = []
        removed: list[str] = []
        for address, op in puts.items():
            existing = items.get(address)
            if op.value is None:
                if existing is not None:
                    removed.append(existing.document_id)
                continue
            created = existing.item.created_at if existing is not None and not existing.expired(at) else None
            documents.append(self._document(op, created, at))
        refreshed = [
            stored for address, stored in refresh.items() if address not in puts and stored.ttl_minutes is not None
        ]
        if refreshed:
            texts = {document.id: document.text for document in self._bank(engine).documents}
            for stored in refreshed:
                documents.append(with_expiry(stored, texts[stored.document_id], at + stored.ttl_minutes * 60))
        if documents:
            engine.ingest(documents, store=self._store, bank=self.bank_name)
        if removed:
            engine.remove_documents(self._bank(engine), removed)
            self._bank(engine)  # drop the old version now: its lease would keep removed blocks from gc

    def _document(self, op: PutOp, created: datetime.datetime | None, at: float) -> Document:
        if not isinstance(op.value, Mapping):
            raise TypeError(f"a store value must be a dict, got {type(op.value).__name__}")
        if not isinstance(op.key, str):
            raise TypeError(f"a store key must be a string, got {type(op.key).__name__}")
        if op.index not in (None, False) and (
            not isinstance(op.index, list) or not all(isinstance(field, str) and field for field in op.index)
        ):
            raise ConfigurationError(
                f"index must be False, None or a list of JSON paths such as ['text'], got {op.index!r}"
            )
        fields = self.fields if op.index is None else op.index
        text = "" if fields is False else index_text(op.value, fields)
        indexed = bool(text.strip())
        if not indexed:  # kept, never scanned: the gate reads the document's text, so it needs one
            text = json.dumps(op.value, ensure_ascii=False, sort_keys=True)
        now = datetime.datetime.fromtimestamp(at, tz=datetime.timezone.utc)
        ttl = op.ttl if isinstance(op.ttl, (int, float)) and not isinstance(op.ttl, bool) else None
        metadata = {
            NAMESPACE_KEY: list(op.namespace),
            ITEM_KEY: op.key,
            VALUE_KEY: json.dumps(op.value, ensure_ascii=False),
            CREATED_KEY: (created or now).isoformat(),
            UPDATED_KEY: now.isoformat(),
            TTL_KEY: ttl,
            EXPIRES_KEY: at + ttl * 60 if ttl is not None else None,
            INDEXED_KEY: indexed,
        }
        return Document(text=text or op.key, id=item_document_id(op.namespace, op.key), metadata=metadata)


def check_namespace(namespace: object, *, prefix: bool = False) -> None:
    """LangGraph's rules for a namespace (a non-empty tuple of non-empty labels without periods), as its
    ``InvalidNamespaceError``; a search prefix may be empty."""
    if not isinstance(namespace, tuple):
        raise InvalidNamespaceError(f"a namespace must be a tuple of strings, got {type(namespace).__name__}")
    if not namespace and not prefix:
        raise InvalidNamespaceError("a namespace cannot be empty: give at least one label, such as ('memories',)")
    for label in namespace:
        if not isinstance(label, str) or not label or "." in label or "\x00" in label:
            raise InvalidNamespaceError(
                f"invalid namespace label {label!r} in {namespace}: labels are non-empty strings without periods "
                "or NUL bytes"
            )
    if namespace and namespace[0] == "langgraph":
        raise InvalidNamespaceError(f'root label for namespace cannot be "langgraph", got {namespace}')


def item_document_id(namespace: tuple[str, ...], key: str) -> str:
    """The document id of an item: a hash of its namespace and key (ids stay short, and tell nothing of the item)."""
    return "lg-" + hashlib.sha256(json.dumps([list(namespace), key]).encode("utf-8")).hexdigest()[:32]


def index_text(value: Mapping[str, Any], fields: list[str]) -> str:
    """The text the gate reads for a value: each field's text (JSON paths, ``$`` = the whole value), one a line."""
    return "\n".join(text for field in fields for text in get_text_at_path(value, field) if text)


def from_metadata(document_id: str, metadata: Mapping[str, Any]) -> StoredItem | None:
    """The stored item a document's metadata holds; None for a document that is not a LangGraph item."""
    if VALUE_KEY not in metadata or NAMESPACE_KEY not in metadata:
        return None
    item = Item(
        value=json.loads(metadata[VALUE_KEY]),
        key=metadata[ITEM_KEY],
        namespace=tuple(metadata[NAMESPACE_KEY]),
        created_at=datetime.datetime.fromisoformat(metadata[CREATED_KEY]),
        updated_at=datetime.datetime.fromisoformat(metadata[UPDATED_KEY]),
    )
    return StoredItem(item, document_id, bool(metadata[INDEXED_KEY]), metadata[TTL_KEY], metadata[EXPIRES_KEY])


def with_expiry(stored: StoredItem, text: str, expires_at: float) -> Document:
    """The item's document again with a new expiry (same text: nothing is compressed)."""
    item = stored.item
    metadata = {
        NAMESPACE_KEY: list(item.namespace),
        ITEM_KEY: item.key,
        VALUE_KEY: json.dumps(item.value, ensure_ascii=False),
        CREATED_KEY: item.created_at.isoformat(),
        UPDATED_KEY: item.updated_at.isoformat(),
        TTL_KEY: stored.ttl_minutes,
        EXPIRES_KEY: expires_at,
        INDEXED_KEY: stored.indexed,
    }
    return Document(text=text, id=stored.document_id, metadata=metadata)


def plain(stored: StoredItem) -> StoredItem:
    """The stored item as an unscored search result."""
    return scored(stored, None)


def scored(stored: StoredItem, score: float | None) -> StoredItem:
    """The stored item as a search result with the gate's score."""
    item = stored.item
    result = SearchItem(item.namespace, item.key, item.value, item.created_at, item.updated_at, score=score)
    return StoredItem(result, stored.document_id, stored.indexed, stored.ttl_minutes, stored.expires_at)


def list_namespaces(items: Iterable[StoredItem], op: ListNamespacesOp) -> list[tuple[str, ...]]:
    """The distinct namespaces of ``items`` matching the op's conditions, cut at ``max_depth``, sorted, paged."""
    namespaces = {stored.item.namespace for stored in items}
    kept = {
        namespace[: op.max_depth] if op.max_depth is not None else namespace
        for namespace in namespaces
        if all(_matches(condition, namespace) for condition in op.match_conditions or ())
    }
    return sorted(kept)[op.offset : op.offset + op.limit]


def _matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path))
    else:
        raise ValueError(f"unknown namespace match type {condition.match_type!r}; use 'prefix' or 'suffix'")
    return all(wanted == "*" or label == wanted for label, wanted in pairs)
