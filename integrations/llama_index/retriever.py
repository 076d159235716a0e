"""``LycheeRetriever``: a LlamaIndex retriever returning the blocks Lychee's gate selects, with scores.

It drops in where a vector retriever goes (``RetrieverQueryEngine``, routers, ``RetrieverTool`` in
agents): the gate scans the bank against the question and an evolving working memory, so the second
hop of a multi-hop question is found once the first is in memory, which a similarity search misses.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle

from lychee_memory import MemoryBank

from ..banks import OverBank, engine_for_bank
from ..engines import ModelChoice, call_engine, call_engine_async
from .nodes import blocks_to_nodes


class LycheeRetriever(OverBank, BaseRetriever):
    """Retrieves the blocks the gate selects for a question, scored, in reading order.

    ``k`` keeps at most k blocks (the best by gate score); None keeps every block the gate selected.
    """

    def __init__(
        self,
        bank: MemoryBank,
        model: ModelChoice = None,
        *,
        k: int | None = None,
        show_progress: bool | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        **kwargs: Any,
    ) -> None:
        self._engine = engine_for_bank(bank, model, "from engine.ingest or LycheeIndex")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k must be a positive number of blocks or None, got {k!r}")
        self._bank = bank
        self._k = k
        self._show_progress = show_progress
        super().__init__(callback_manager=callback_manager, verbose=verbose, **kwargs)

    @property
    def k(self) -> int | None:
        return self._k

    def _select(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        blocks = self._engine.select(query_bundle.query_str, self._bank, k=self._k, show_progress=self._show_progress)
        return blocks_to_nodes(blocks, self._bank)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return call_engine(self._engine, lambda: self._select(query_bundle))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await call_engine_async(self._engine, lambda: self._select(query_bundle))
