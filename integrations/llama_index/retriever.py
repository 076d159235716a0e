"""``LycheeRetriever``: a LlamaIndex retriever returning the blocks Lychee's gate selects, with scores.

It drops in where a vector retriever goes (``RetrieverQueryEngine``, routers, ``RetrieverTool`` in
agents): the gate scans the bank against the question and an evolving working memory, so the second
hop of a multi-hop question is found once the first is in memory, which a similarity search misses. As on a
vector retriever, ``filters`` restricts the scan to documents whose metadata match::

    filters = MetadataFilters(filters=[MetadataFilter(key="tenant", value="acme")])
    retriever = index.as_retriever(similarity_top_k=4, filters=filters)  # or filters={"tenant": "acme"}
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle

from lychee_memory import MemoryBank

from ..banks import OverBank, engine_for_bank
from ..engines import ModelChoice, call_engine, call_engine_async
from .nodes import FiltersInput, blocks_to_nodes, to_lychee_filters


class LycheeRetriever(OverBank, BaseRetriever):
    """Retrieves the blocks the gate selects for a question, scored, in reading order.

    ``k`` returns k nodes whenever the bank holds k blocks: the best k by gate score when the gate selected more;
    when it selected fewer, its selections and then the best-scoring blocks it did not read (node metadata
    ``selected`` False). None returns exactly the blocks the gate selected. ``filters`` (LlamaIndex
    ``MetadataFilters`` with EQ, NE, IN, NIN joined by AND, or a lychee filter dict) scans only the documents
    whose metadata match.
    """

    def __init__(
        self,
        bank: MemoryBank,
        model: ModelChoice = None,
        *,
        k: int | None = None,
        filters: FiltersInput = None,
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
        self._filters = to_lychee_filters(filters)
        self._show_progress = show_progress
        super().__init__(callback_manager=callback_manager, verbose=verbose, **kwargs)

    @property
    def k(self) -> int | None:
        return self._k

    @property
    def filters(self) -> dict[str, Any] | None:
        """The metadata filter in lychee's language (``lychee_memory.filters``), None when every document is read."""
        return self._filters

    def _select(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        blocks = self._engine.select(
            query_bundle.query_str, self._bank, k=self._k, filters=self._filters, show_progress=self._show_progress
        )
        return blocks_to_nodes(blocks, self._bank)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return call_engine(self._engine, lambda: self._select(query_bundle))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await call_engine_async(self._engine, lambda: self._select(query_bundle))
