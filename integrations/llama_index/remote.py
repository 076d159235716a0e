"""``LycheeServerRetriever``: a LlamaIndex retriever over a bank of a ``lychee serve`` server.

The HTTP twin of ``LycheeRetriever``: nodes scored by the gate, with the block's place in its document, and
the gate running on the shared server. Use it in ``RetrieverQueryEngine``, routers or a ``RetrieverTool``.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from ..remote import LycheeClient
from .nodes import (
    BLOCK_INDEX_KEY,
    DOCUMENT_ID_KEY,
    FALLBACK_KEY,
    LYCHEE_METADATA_KEYS,
    SELECTED_KEY,
    FiltersInput,
    to_lychee_filters,
)


def remote_block_to_node(block: dict[str, Any]) -> NodeWithScore:
    metadata = {
        DOCUMENT_ID_KEY: block["doc"],
        BLOCK_INDEX_KEY: block["index"],
        FALLBACK_KEY: block.get("fallback", False),
        SELECTED_KEY: block.get("selected", True),
        "bank": block.get("bank"),
    }
    node = TextNode(
        id_=f"{block.get('bank')}:{block['doc']}#{block['start']}-{block['end']}",
        text=block["text"],
        metadata=metadata,
        start_char_idx=block["start"],
        end_char_idx=block["end"],
        excluded_llm_metadata_keys=[*LYCHEE_METADATA_KEYS, "bank"],
        excluded_embed_metadata_keys=[*LYCHEE_METADATA_KEYS, "bank"],
    )
    return NodeWithScore(node=node, score=block["score"])


class LycheeServerRetriever(BaseRetriever):
    """Retrieves the gate's blocks of ``bank`` from a server (``POST /v1/banks/{bank}/retrieve``).

    ``similarity_top_k`` (or ``k``) asks for exactly that many blocks; ``filters`` takes LlamaIndex
    ``MetadataFilters`` (EQ, NE, IN, NIN joined by AND) or a lychee filter dict.
    """

    def __init__(
        self,
        bank: str,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        similarity_top_k: int | None = None,
        k: int | None = None,
        filters: FiltersInput = None,
        timeout: float = 600.0,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        top_k = k if k is not None else similarity_top_k
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"k must be a positive number of blocks or None, got {top_k!r}")
        self.bank = bank
        self.k = top_k
        self.filters = to_lychee_filters(filters)
        self.client = LycheeClient(base_url, api_key, timeout)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        blocks = self.client.retrieve(self.bank, query_bundle.query_str, k=self.k, filters=self.filters)
        return [remote_block_to_node(block) for block in blocks]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        blocks = await self.client.aretrieve(self.bank, query_bundle.query_str, k=self.k, filters=self.filters)
        return [remote_block_to_node(block) for block in blocks]
