"""``LycheeServerRetriever``: a LangChain retriever over a bank of a ``lychee serve`` server.

It is the HTTP twin of ``LycheeRetriever``: the same documents and metadata (score, block, doc, start, end,
selected, bank), with the gate running on the shared server instead of in this process.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LangChainDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from ..remote import LycheeClient


def remote_block_to_document(block: dict[str, Any]) -> LangChainDocument:
    """A block of the server's JSON as a LangChain document (the same metadata as a local retriever's)."""
    metadata = {
        "score": block["score"],
        "block": block["index"],
        "doc": block["doc"],
        "start": block["start"],
        "end": block["end"],
        "fallback": block.get("fallback", False),
        "selected": block.get("selected", True),
        "bank": block.get("bank"),
    }
    return LangChainDocument(
        page_content=block["text"], metadata=metadata, id=f"{block['doc']}#{block['start']}-{block['end']}"
    )


class LycheeServerRetriever(BaseRetriever):
    """Retrieves the gate's blocks of ``bank`` from a server (``POST /v1/banks/{bank}/retrieve``).

    ``k`` asks for exactly k blocks (the gate's, then the best-scoring others); ``filter`` restricts the scan
    to documents whose metadata match (``{"key": value}``, ``$in``, ``$ne``...). Both can be given per call.
    """

    base_url: str = "http://127.0.0.1:8000"
    bank: str
    api_key: str | None = None
    k: int | None = Field(default=None, ge=1)
    filter: dict[str, Any] | None = None
    timeout: float = 600.0

    model_config = ConfigDict(extra="forbid")

    _client: LycheeClient | None = PrivateAttr(default=None)

    @property
    def client(self) -> LycheeClient:
        if self._client is None:
            self._client = LycheeClient(self.base_url, self.api_key, self.timeout)
        return self._client

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[LangChainDocument]:
        blocks = self.client.retrieve(
            self.bank, query, k=k or self.k, filters=filter if filter is not None else self.filter
        )
        return [remote_block_to_document(block) for block in blocks]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[LangChainDocument]:
        blocks = await self.client.aretrieve(
            self.bank, query, k=k or self.k, filters=filter if filter is not None else self.filter
        )
        return [remote_block_to_document(block) for block in blocks]
