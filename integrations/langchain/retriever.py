"""``LycheeRetriever``: a LangChain retriever returning the blocks Lychee's gate selects, with scores.

It replaces a vector store retriever in chains and agents (``create_retriever_tool`` works on it). The
gate judges blocks against the question and an evolving working memory, so the second hop of a
multi-hop question is found once the first is in memory. As on a vector store retriever, ``filter``
restricts the search to documents whose metadata match::

    retriever = LycheeRetriever(bank=bank, k=4, filter={"tenant": "acme"})
    retriever.invoke("What is the access code?", filter={"year": {"$in": [2023, 2024]}})  # per call
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LangChainDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, InstanceOf, PrivateAttr, field_validator, model_validator

from lychee_memory import DocumentFilter, LycheeMemory, MemoryBank, MemoryStore

from ..banks import OpenBanks, prepare_bank
from ..engines import call_engine, call_engine_async, resolve_engine
from .documents import LangChainDocumentInput, bank_from_documents, block_to_document


class LycheeRetriever(BaseRetriever):
    """Retrieves the blocks the gate selects, in reading order, as documents with ``score`` metadata.

    ``k`` (here or per call) returns k blocks whenever the bank holds k: the best k by gate score when the gate
    selected more; when it selected fewer, its selections and then the best-scoring blocks it did not read
    (metadata ``selected`` False). None returns exactly the blocks the gate selected. ``filter`` (here or per
    call; a call's filter replaces this one) scans only documents whose metadata match: ``{"lang": "en"}``,
    ``{"year": {"$in": [2023, 2024]}}``, ``$ne``, ``$nin`` (``lychee_memory.filters``; several keys must all
    hold). ``bank`` is a MemoryBank or the name of a bank in ``store``.
    """

    model: LycheeMemory | str | None = None
    bank: InstanceOf[MemoryBank] | str | None = None
    store: MemoryStore | str | Path | None = None
    k: int | None = Field(default=None, ge=1)
    filter: dict[str, Any] | None = None
    show_progress: bool | None = None

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    _engine: LycheeMemory | None = PrivateAttr(default=None)
    _open_banks: OpenBanks = PrivateAttr(default_factory=OpenBanks)

    @model_validator(mode="after")
    def _needs_a_bank(self) -> LycheeRetriever:
        if self.bank is None:
            raise ValueError(
                "LycheeRetriever needs a bank: LycheeRetriever(bank=engine.ingest(documents)), a stored bank "
                "name with store=..., or LycheeRetriever.from_documents(documents)"
            )
        return self

    @field_validator("filter")
    @classmethod
    def _valid_filter(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        DocumentFilter.parse(value)  # a malformed filter is refused here, not at the first question
        return value

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[LangChainDocumentInput],
        *,
        model: LycheeMemory | str | None = None,
        store: MemoryStore | str | os.PathLike[str] | None = None,
        bank: str | None = None,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
        show_progress: bool | None = None,
    ) -> LycheeRetriever:
        """A retriever over a bank built from ``documents`` now (kept as bank ``bank`` of ``store`` if named)."""
        engine, memory = bank_from_documents(documents, model, store, bank, show_progress)
        return cls(model=engine, bank=memory, k=k, filter=filter, show_progress=show_progress)

    @property
    def engine(self) -> LycheeMemory:
        """The engine (loaded on first use when ``model`` is a spec or None)."""
        if self._engine is None:
            self._engine = resolve_engine(self.model)
        return self._engine

    def _select(self, query: str, k: int | None, filter: dict[str, Any] | None) -> list[LangChainDocument]:
        engine = self.engine
        bank = prepare_bank(engine, None, store=self.store, bank=self.bank, open_banks=self._open_banks)
        blocks = engine.select(
            query,
            bank,
            k=self.k if k is None else k,
            filters=self.filter if filter is None else filter,
            show_progress=self.show_progress,
        )
        return [block_to_document(block, bank) for block in blocks]

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[LangChainDocument]:
        return call_engine(self.engine, lambda: self._select(query, k, filter))

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[LangChainDocument]:
        engine = await asyncio.to_thread(lambda: self.engine)
        return await call_engine_async(engine, lambda: self._select(query, k, filter))
