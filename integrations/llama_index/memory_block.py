"""``LycheeMemoryBlock``: long-term memory for LlamaIndex agents, kept as compressed blocks, recalled without decoding.

    from llama_index.core.memory import Memory
    from lychee_memory.integrations.llama_index import LycheeMemoryBlock

    memory = Memory.from_defaults(session_id="alice", memory_blocks=[LycheeMemoryBlock(name="lychee")])

Messages that ``Memory`` flushes out of its chat history are appended to a bank of a MemoryStore, one document per
message (role, session id and turn time in its metadata): only the new messages are compressed, nothing stored is
encoded again. ``aget`` recalls the messages that matter for the recent ones (``recall_settings``; by default BM25
over the messages, an older statement superseded by a newer one of the same slot, nothing when no message shares a
term: ``recall.CONVERSATION_RECALL``; nothing is decoded) and returns them, each with its source. ``forget``
removes messages; after ``MemoryStore.gc()`` their text is gone from the store.
"""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, TextBlock
from llama_index.core.memory import BaseMemoryBlock
from pydantic import ConfigDict, Field, PrivateAttr

from lychee_memory import Document, DocumentFilter, LycheeMemory, MemoryBank, MemoryStore

from ..banks import OpenBanks
from ..engines import call_engine_async, resolve_engine
from ..recall import CONVERSATION_RECALL, RecallSettings, recall
from ..recency import DEFAULT_RECENCY_MARGIN, Recalled, best_per_document, newest_first_among_ties
from .nodes import to_lychee_filters

DEFAULT_BANK = "agent_memory"
SESSION_KEY = "session_id"
ROLE_KEY = "role"
TIME_KEY = "turn_time"
MAX_QUERY_CHARS = 2000  # the gate's question: the tail of the recent messages


class LycheeMemoryBlock(BaseMemoryBlock[str]):
    """Flushed chat messages compressed into a Lychee bank, recalled by ``recall_settings`` (integrations/recall.py).

    ``model``: a LycheeMemory engine, a model spec or None (the embedded default). ``store``: a MemoryStore, a
    directory or a store URL (None: the default store); ``bank``: the bank's name there. ``k``: messages recalled.
    ``retrieval_context_window``: recent messages the gate is asked about. ``filters``: a metadata filter (lychee
    dict or LlamaIndex ``MetadataFilters``) every recall obeys. A ``session_id`` given to ``aget`` (``Memory``
    gives its own) recalls only that session's messages unless ``all_sessions`` is True.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = Field(default="lychee_memory", description="The name of the memory block.")
    model: Any = Field(default=None, exclude=True, description="LycheeMemory engine, model spec or None.")
    store: Any = Field(default=None, exclude=True, description="MemoryStore, directory or URL; None: default store.")
    bank: str = Field(default=DEFAULT_BANK, description="The bank in the store that holds the messages.")
    k: int = Field(default=2, ge=1, description="How many messages a recall returns at most.")
    candidates: int = Field(
        default=2, ge=1, description="Recall returns k x candidates blocks; recency then keeps the best k of them."
    )
    retrieval_context_window: int = Field(default=5, ge=1, description="Recent messages the gate is asked about.")
    all_sessions: bool = Field(default=False, description="Recall from every session even when given a session id.")
    filters: Any = Field(default=None, exclude=True, description="A metadata filter every recall obeys.")
    recency_margin: float = Field(
        default=DEFAULT_RECENCY_MARGIN, ge=0, description="Recency bonus of the newest recalled message (see recency)."
    )
    recall_settings: RecallSettings = Field(
        default=CONVERSATION_RECALL, description="How recall ranks the messages and when it returns none (see recall)."
    )

    _engine: LycheeMemory | None = PrivateAttr(default=None)
    _banks: OpenBanks = PrivateAttr(default_factory=OpenBanks)
    _filters: dict[str, Any] | None = PrivateAttr(default=None)
    _last_sources: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self._filters = to_lychee_filters(self.filters)  # a bad filter raises FilterError now, not at the first recall
        if isinstance(self.model, LycheeMemory):
            self._engine = self.model

    @property
    def engine(self) -> LycheeMemory:
        """The engine (the embedded default is loaded on first use, once per process)."""
        if self._engine is None:
            self._engine = resolve_engine(self.model)
        return self._engine

    @property
    def memory_store(self) -> MemoryStore:
        """The MemoryStore the messages live in (created on first use)."""
        return self._banks.store(self.store, create=True)

    @property
    def last_sources(self) -> list[dict[str, Any]]:
        """The sources of the last recall, best first: document id, score, session, role, turn time, text and whether
        the gate selected it (False: the best-scoring message it did not read, added to reach k)."""
        return list(self._last_sources)

    # Writing ---------------------------------------------------------------------------------------

    async def _aput(self, messages: list[ChatMessage]) -> None:
        """Append the messages as documents of their own; only they are compressed."""
        documents = self.to_documents(messages)
        if documents:
            engine = self.engine
            store = self.memory_store
            await call_engine_async(engine, lambda: engine.ingest(documents, store=store, bank=self.bank))

    def to_documents(self, messages: list[ChatMessage]) -> list[Document]:
        """One document per message with text: ``role: text``, with session, role and turn time in metadata."""
        if not isinstance(messages, list) or not all(isinstance(message, ChatMessage) for message in messages):
            raise TypeError("messages must be a list of LlamaIndex ChatMessage")
        documents = []
        for message in messages:
            text = message_text(message)
            if not text.strip():
                continue
            turn_time = time.time()
            metadata: dict[str, Any] = {ROLE_KEY: message.role.value, TIME_KEY: turn_time}
            session = message.additional_kwargs.get(SESSION_KEY)
            if session is not None:
                metadata[SESSION_KEY] = str(session)
            document_id = f"msg-{uuid.uuid4().hex}"
            documents.append(Document(text=f"{message.role.value}: {text}", id=document_id, metadata=metadata))
        return documents

    async def forget(self, document_ids: list[str]) -> None:
        """Remove messages (ids from ``last_sources``) from the bank; ``MemoryStore.gc()`` then erases their text."""
        if isinstance(document_ids, str):
            document_ids = [document_ids]
        engine = self.engine

        def remove() -> None:
            bank = self._banks.open(engine, self.memory_store, self.bank)
            engine.remove_documents(bank, list(document_ids))

        await call_engine_async(engine, remove)

    # Reading ---------------------------------------------------------------------------------------

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        """The messages recalled for the recent ones, best first, each with its source; "" when none."""
        query = self.query_text(messages or [])
        if not query:
            return ""
        session = block_kwargs.get(SESSION_KEY)
        engine = self.engine
        sources = await call_engine_async(engine, lambda: self.recall(query, session))
        self._last_sources = sources
        return format_sources(sources)

    def query_text(self, messages: list[ChatMessage]) -> str:
        """The gate's question: the last ``retrieval_context_window`` messages' text, at most MAX_QUERY_CHARS."""
        recent = messages[-self.retrieval_context_window :]
        text = "\n".join(message_text(message) for message in recent if message_text(message).strip())
        return text[-MAX_QUERY_CHARS:].strip()

    def recall(self, query: str, session: str | None = None) -> list[dict[str, Any]]:
        """The messages recalled for ``query`` (by ``recall_settings``, nothing decoded), best first, as source dicts."""
        engine = self.engine
        store = self.memory_store
        if not store.has_bank(self.bank):
            return []
        bank = self._banks.open(engine, store, self.bank)
        filters = dict(self._filters or {})
        if session is not None and not self.all_sessions:
            filters[SESSION_KEY] = str(session)
        view = bank if not filters else _matching(bank, filters)
        if view is None:
            return []
        blocks = recall(engine, query, view, self.k * self.candidates, settings=self.recall_settings)
        best = best_per_document((block.document_id, block.score) for block in blocks)
        chosen = {block.document_id for block in blocks if block.selected}
        by_id = {document.id: document for document in bank.documents}
        order = {document.id: position for position, document in enumerate(bank.documents)}
        ranked = newest_first_among_ties(
            [Recalled(document_id, score, order[document_id]) for document_id, score in best.items()],
            self.recency_margin,
        )
        sources = []
        for item in ranked[: self.k]:
            document = by_id[item.document_id]
            sources.append(
                {
                    "document_id": item.document_id,
                    "score": item.score,
                    "session_id": document.metadata.get(SESSION_KEY),
                    "role": document.metadata.get(ROLE_KEY),
                    "turn_time": document.metadata.get(TIME_KEY),
                    "text": document.text,
                    "selected": item.document_id in chosen,
                }
            )
        return sources

    async def atruncate(self, content: str, tokens_to_truncate: int) -> str | None:
        """Drop the least relevant recalled messages until about ``tokens_to_truncate`` tokens are gone."""
        if tokens_to_truncate <= 0:
            return content
        entries = [entry for entry in content.split(ENTRY_SEPARATOR) if entry]
        tokenizer = self.engine.loaded.tokenizer
        removed = 0
        while entries and removed < tokens_to_truncate:
            removed += len(tokenizer.encode(entries.pop(), add_special_tokens=False))  # type: ignore[attr-defined]
        return ENTRY_SEPARATOR.join(entries) if entries else None


ENTRY_SEPARATOR = "\n\n~~~\n\n"  # between recalled messages (a message may hold blank lines itself)


def message_text(message: ChatMessage) -> str:
    """A message's text blocks, joined (images and other blocks carry no text to remember)."""
    return "".join(block.text for block in message.blocks if isinstance(block, TextBlock))


def format_sources(sources: list[dict[str, Any]]) -> str:
    """Recalled messages as text for the prompt, best first, each naming its source (one entry per message)."""
    entries = []
    for source in sources:
        when = ""
        if isinstance(source.get("turn_time"), (int, float)):
            stamp = datetime.datetime.fromtimestamp(source["turn_time"], tz=datetime.timezone.utc)
            when = f" at {stamp.strftime('%Y-%m-%d %H:%M:%S')} UTC"
        session = f" in session {source['session_id']}" if source.get("session_id") is not None else ""
        entries.append(f"{source['text']}\n(source: {source['document_id']}{session}{when})")
    return ENTRY_SEPARATOR.join(entries)


def _matching(bank: MemoryBank, filters: dict[str, Any]) -> MemoryBank | None:
    """The bank's view of the documents matching ``filters``; None when none match."""
    document_filter = DocumentFilter.parse(filters)
    ids = [document.id for document in bank.documents if document_filter.matches(document.metadata)]
    return bank.view(ids) if ids else None
