"""``LycheeRetriever``: a LangChain retriever returning the blocks Lychee's gate selects, with scores.

It replaces a vector store retriever in chains and agents (``create_retriever_tool`` works on it). The
gate judges blocks against the question and an evolving working memory, so the second hop of a
multi-hop question is found once the first is in memory.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LangChainDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, InstanceOf, PrivateAttr, model_validator

from lychee_memory import LycheeMemory, MemoryBank, MemoryStore

from ..banks import OpenBanks, prepare_bank
from ..engines import call_engine, call_engine_async, resolve_engine
from .documents import LangChainDocumentInput, bank_from_documents, block_to_document


class LycheeRetriever(BaseRetriever):
    """Retrieves the blocks the gate selects, in reading order, as documents with ``score`` metadata.

    ``k`` (here or per call) keeps at most k blocks, the best by gate score; None keeps every block the
    gate selected. ``bank`` is a MemoryBank or the name of a bank in ``store``.
    """

    model: LycheeMemory | str | None = None
    bank: InstanceOf[MemoryBank] | str | None = None
    store: MemoryStore | str | Path | None = None
    k: int | None = Field(default=None, ge=1)
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

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[LangChainDocumentInput],
        *,
        model: LycheeMemory | str | None = None,
        store: MemoryStore | str | os.PathLike[str] | None = None,
        bank: str | None = None,
        k: int | None = None,
        show_progress: bool | None = None,
    ) -> LycheeRetriever:
        """A retriever over a bank built from ``documents`` now (kept as bank ``bank`` of ``store`` if named)."""
        engine, memory = bank_from_documents(documents, model, store, bank, show_progress)
        return cls(model=engine, bank=memory, k=k, show_progress=show_progress)

    @property
    def engine(self) -> LycheeMemory:
        """The engine (loaded on first use when ``model`` is a spec or None)."""
        if self._engine is None:
            self._engine = resolve_engine(self.model)
        return self._engine

    def _select(self, query: str, k: int | None) -> list[LangChainDocument]:
        engine = self.engine
        bank = prepare_bank(engine, None, store=self.store, bank=self.bank, open_banks=self._open_banks)
        blocks = engine.select(query, bank, k=self.k if k is None else k, show_progress=self.show_progress)
        return [block_to_document(block, bank) for block in blocks]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[LangChainDocument]:
        return call_engine(self.engine, lambda: self._select(query, k))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[LangChainDocument]:
        engine = await asyncio.to_thread(lambda: self.engine)
        return await call_engine_async(engine, lambda: self._select(query, k))
