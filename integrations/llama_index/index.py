"""``LycheeIndex``: a LlamaIndex managed index whose "vectors" are Lychee memory blocks.

Documents are chunked and compressed by the engine (no node parser, no embedding model, no LLM), kept
in memory or in a MemoryStore on disk. ``as_query_engine()`` answers with Lychee's own reasoner and
``as_retriever()`` returns the gate's blocks; neither ever reads ``Settings.llm`` (so never falls back to
OpenAI). Swap ``VectorStoreIndex.from_documents(docs)`` for ``LycheeIndex.from_documents(docs)``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.chat_engine.types import BaseChatEngine, ChatMode
from llama_index.core.data_structs.data_structs import IndexDict
from llama_index.core.indices.managed.base import BaseManagedIndex
from llama_index.core.llms.utils import LLMType
from llama_index.core.schema import BaseNode, TransformComponent
from llama_index.core.schema import Document as LlamaIndexDocument
from llama_index.core.storage.docstore.types import RefDocInfo
from llama_index.core.storage.storage_context import StorageContext

from lychee_memory import Document, DocumentNotFoundError, MemoryBank, MemoryStore

from ..banks import BankChoice, OverBank, StoreChoice, add_documents, engine_for_bank, prepare_bank, save_bank
from ..engines import ModelChoice, call_engine, resolve_engine
from .nodes import LlamaIndexDocumentInput, block_node_id, to_lychee_documents
from .query_engine import LycheeQueryEngine
from .retriever import LycheeRetriever

logger = logging.getLogger(__name__)

DEFAULT_PERSIST_DIR = "./storage"
DEFAULT_BANK_NAME = "index"


class LycheeIndex(OverBank, BaseManagedIndex):
    """Documents compressed into a Lychee memory bank, queried through LlamaIndex's index interface."""

    def __init__(
        self,
        bank: MemoryBank,
        model: ModelChoice = None,
        *,
        show_progress: bool = False,
        callback_manager: CallbackManager | None = None,
        **kwargs: Any,
    ) -> None:
        self._engine = engine_for_bank(bank, model, "or use LycheeIndex.from_documents / from_persist_dir")
        if kwargs.get("storage_context") is not None:
            raise ValueError(_NO_STORAGE_CONTEXT)
        self._bank = bank
        super().__init__(
            index_struct=IndexDict(),
            storage_context=StorageContext.from_defaults(),
            show_progress=show_progress,
            callback_manager=callback_manager,
            **{key: value for key, value in kwargs.items() if key != "storage_context"},
        )

    @classmethod
    def from_documents(  # type: ignore[override]
        cls,
        documents: Sequence[LlamaIndexDocumentInput] | None = None,
        storage_context: StorageContext | None = None,
        show_progress: bool = False,
        callback_manager: CallbackManager | None = None,
        transformations: list[TransformComponent] | None = None,
        *,
        model: ModelChoice = None,
        store: StoreChoice = None,
        bank: BankChoice = None,
        **kwargs: Any,
    ) -> LycheeIndex:
        """Compress documents into a bank (in memory, or added to bank ``bank`` of ``store``) and index it.

        ``model`` is a LycheeMemory engine, a model spec, or None for the embedded default. The engine cuts
        chunks by model tokens itself, so ``transformations`` and ``storage_context`` are refused.
        """
        if storage_context is not None:
            raise ValueError(_NO_STORAGE_CONTEXT)
        if transformations:
            raise ValueError(
                "LycheeIndex chunks documents by model tokens itself and takes no transformations; "
                "set chunk_tokens on the engine (LycheeMemory.from_pretrained(spec, chunk_tokens=...)) instead"
            )
        engine = resolve_engine(model)
        lychee_documents = None if documents is None else to_lychee_documents(documents)
        memory = prepare_bank(engine, lychee_documents, store=store, bank=bank, show_progress=show_progress)
        return cls(memory, engine, show_progress=show_progress, callback_manager=callback_manager, **kwargs)

    # What it holds ---------------------------------------------------------------------------------

    @property
    def ref_doc_info(self) -> dict[str, RefDocInfo]:
        """Each document id with the node ids of its blocks and its metadata."""
        info = {
            document.id: RefDocInfo(node_ids=[], metadata=dict(document.metadata)) for document in self._bank.documents
        }
        for span in self._bank.spans:
            info[span.document_id].node_ids.append(block_node_id(span.document_id, span.char_start, span.char_end))
        return info

    # Changing it -----------------------------------------------------------------------------------

    def insert(self, document: LlamaIndexDocument, **insert_kwargs: Any) -> None:
        """Compress a document into the bank; one with the same id replaces the old version."""
        with self._callback_manager.as_trace("insert"):
            self._add(to_lychee_documents([document]))

    async def ainsert(self, document: LlamaIndexDocument, **insert_kwargs: Any) -> None:
        """``insert`` in a worker thread, so compression does not block the event loop."""
        await asyncio.to_thread(self.insert, document, **insert_kwargs)

    def insert_nodes(self, nodes: Sequence[BaseNode], **insert_kwargs: Any) -> None:
        """Add nodes as documents of their own (each node's id and text); the engine chunks them again."""
        with self._callback_manager.as_trace("insert_nodes"):
            self._insert(nodes)

    def _insert(self, nodes: Sequence[BaseNode], **insert_kwargs: Any) -> None:
        self._add(to_lychee_documents(list(nodes)))

    def _add(self, documents: list[Document]) -> None:
        engine = self._engine
        self._bank = call_engine(
            engine, lambda: add_documents(engine, self._bank, documents, show_progress=self._show_progress)
        )

    def delete_ref_doc(self, ref_doc_id: str, delete_from_docstore: bool = False, **delete_kwargs: Any) -> None:
        """Remove a document and its blocks; an unknown id logs a warning, as LlamaIndex indexes do."""
        if not isinstance(ref_doc_id, str):
            raise TypeError(f"ref_doc_id must be a document id string, got {type(ref_doc_id).__name__}")
        try:
            self._bank = self._engine.remove_documents(self._bank, [ref_doc_id])
        except DocumentNotFoundError:
            logger.warning(f"ref_doc_id {ref_doc_id} not found, nothing deleted.")

    def update_ref_doc(self, document: LlamaIndexDocument, **update_kwargs: Any) -> None:
        """Replace a document (same id) with its new version."""
        self.insert(document)

    def refresh_ref_docs(self, documents: Sequence[LlamaIndexDocument], **update_kwargs: Any) -> list[bool]:
        """Insert new documents and replace changed ones (text or metadata); True where a document changed."""
        held = {document.id: document for document in self._bank.documents}
        refreshed = []
        for document in to_lychee_documents(list(documents)):
            current = held.get(document.id)
            changed = current is None or current.text != document.text or current.metadata != document.metadata
            if changed:
                self._add([document])
            refreshed.append(changed)
        return refreshed

    def _delete_node(self, node_id: str, **delete_kwargs: Any) -> None:
        raise NotImplementedError(
            "LycheeIndex removes whole documents, not single blocks: use delete_ref_doc(document_id)"
        )

    # Persistence -----------------------------------------------------------------------------------

    def persist(
        self, persist_dir: str | os.PathLike[str] | MemoryStore = DEFAULT_PERSIST_DIR, *, bank: str | None = None
    ) -> None:
        """Write the bank into the MemoryStore at ``persist_dir`` as bank ``bank`` (default: its name or "index").

        The stored bank then holds exactly this index's documents; blocks already stored are reused.
        """
        name = bank or self._bank.name or DEFAULT_BANK_NAME
        store = persist_dir if isinstance(persist_dir, MemoryStore) else MemoryStore(Path(persist_dir))
        call_engine(self._engine, lambda: save_bank(self._bank, store, name))

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str | os.PathLike[str] | MemoryStore = DEFAULT_PERSIST_DIR,
        *,
        model: ModelChoice = None,
        bank: str | None = None,
        show_progress: bool = False,
        callback_manager: CallbackManager | None = None,
    ) -> LycheeIndex:
        """The index persisted in ``persist_dir`` (bank ``bank``; may be left out when the store holds one)."""
        store = persist_dir if isinstance(persist_dir, MemoryStore) else MemoryStore(Path(persist_dir), create=False)
        if bank is None:
            names = [info.name for info in store.list_banks()]
            if len(names) != 1:
                raise ValueError(
                    f"store {store.location!r} holds {len(names)} banks ({', '.join(names) or 'none'}); "
                    "say which one with bank='name'"
                )
            bank = names[0]
        engine = resolve_engine(model)
        return cls(
            engine.open_bank(bank, store=store), engine, show_progress=show_progress, callback_manager=callback_manager
        )

    # Querying: Lychee answers with its own model ---------------------------------------------------

    def as_retriever(self, **kwargs: Any) -> LycheeRetriever:
        """A retriever over the gate's blocks; ``k`` (or ``similarity_top_k``) returns k of them when the bank
        holds k (the gate's selections first, then the best-scoring blocks it did not read); ``filters``
        (``MetadataFilters`` with EQ, NE, IN, NIN joined by AND, or a lychee filter dict) scans only matching
        documents."""
        k = _pop_top_k(kwargs)
        options = _only(kwargs, {"callback_manager", "verbose", "show_progress", "filters"}, "as_retriever")
        options.setdefault("callback_manager", self._callback_manager)
        options.setdefault("show_progress", self._show_progress)
        return LycheeRetriever(self._bank, self._engine, k=k, **options)

    def as_query_engine(self, llm: LLMType | None = None, **kwargs: Any) -> BaseQueryEngine:
        """Lychee's query engine (its reasoner writes the answer); never reads ``Settings.llm``.

        ``filters`` (``MetadataFilters`` or a lychee filter dict) reads only matching documents. With ``llm``, a
        ``RetrieverQueryEngine`` instead: that LLM writes the answer from the gate's blocks.
        """
        if llm is not None:
            from llama_index.core.llms.utils import resolve_llm
            from llama_index.core.query_engine.retriever_query_engine import RetrieverQueryEngine

            retriever = self.as_retriever(k=_pop_top_k(kwargs), filters=kwargs.pop("filters", None))
            return RetrieverQueryEngine.from_args(
                retriever, llm=resolve_llm(llm, callback_manager=self._callback_manager), **kwargs
            )
        if _pop_top_k(kwargs) is not None:
            warnings.warn(
                "similarity_top_k/k does not apply to LycheeIndex.as_query_engine: the gate decides which blocks "
                "the reasoner reads (max_relevant_blocks on the engine caps them); use as_retriever(k=...) to cap "
                "retrieved blocks",
                UserWarning,
                stacklevel=2,
            )
        options = _only(kwargs, {"streaming", "callback_manager", "show_progress", "filters"}, "as_query_engine")
        options.setdefault("callback_manager", self._callback_manager)
        options.setdefault("show_progress", self._show_progress)
        return LycheeQueryEngine(self._bank, self._engine, **options)

    def as_chat_engine(
        self, chat_mode: ChatMode = ChatMode.BEST, llm: LLMType | None = None, **kwargs: Any
    ) -> BaseChatEngine:
        """A chat engine over the gate's blocks; chatting needs a chat LLM, so ``llm`` is required."""
        if llm is None:
            raise ValueError(
                "a chat engine needs a chat LLM and LycheeIndex never falls back to Settings.llm: pass llm=..., "
                "or use as_query_engine() to answer with Lychee's own model"
            )
        from llama_index.core.chat_engine import CondensePlusContextChatEngine, ContextChatEngine
        from llama_index.core.llms.utils import resolve_llm

        chat_llm = resolve_llm(llm, callback_manager=self._callback_manager)
        filters = kwargs.pop("filters", None)
        retriever = self.as_retriever(k=_pop_top_k(kwargs), filters=filters)
        if chat_mode == ChatMode.CONTEXT:
            return ContextChatEngine.from_defaults(retriever=retriever, llm=chat_llm, **kwargs)
        if chat_mode in (ChatMode.BEST, ChatMode.CONDENSE_PLUS_CONTEXT):
            return CondensePlusContextChatEngine.from_defaults(retriever=retriever, llm=chat_llm, **kwargs)
        if filters is not None:  # the other modes build a query engine (as_query_engine), which takes them too
            kwargs["filters"] = filters
        return super().as_chat_engine(chat_mode=chat_mode, llm=chat_llm, **kwargs)


_NO_STORAGE_CONTEXT = (
    "LycheeIndex keeps its memory in a lychee MemoryStore, not a StorageContext: pass store=... and bank='name' "
    "to from_documents, or use index.persist(dir) and LycheeIndex.from_persist_dir(dir)"
)


def _pop_top_k(options: dict[str, Any]) -> int | None:
    k = options.pop("k", None)
    top_k = options.pop("similarity_top_k", None)
    if k is not None and top_k is not None and k != top_k:
        raise ValueError(f"k={k} and similarity_top_k={top_k} disagree; give one of them")
    return k if k is not None else top_k


def _only(options: dict[str, Any], allowed: set[str], method: str) -> dict[str, Any]:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"LycheeIndex.{method} got unsupported options {', '.join(unknown)} "
            f"(it takes {', '.join(sorted(allowed | {'k', 'similarity_top_k'}))}); Lychee's gate and reasoner "
            "replace vector-store retrieval and response synthesis"
        )
    return dict(options)
