"""``LycheeQueryEngine``: a LlamaIndex query engine whose retrieval is Lychee's gate and whose answer is
written by Lychee's reasoner from its working memory, so no LlamaIndex LLM (nor ``Settings.llm``) is used.

Callback and instrumentation events follow the built-in ``RetrieverQueryEngine``: a QUERY event around
the query, a RETRIEVE event around the gate scan (with the selected nodes) and a SYNTHESIZE event around
the answer, plus the matching retrieval and synthesis start/end instrumentation events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import llama_index.core.instrumentation as instrument
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent, RetrievalStartEvent
from llama_index.core.instrumentation.events.synthesis import SynthesizeEndEvent, SynthesizeStartEvent
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle, QueryType

from lychee_memory import Answer, AnswerStream, MemoryBank, SelectedBlock

from ..banks import BankChoice, OverBank, StoreChoice, engine_for_bank, prepare_bank
from ..engines import ModelChoice, call_engine, call_engine_async, resolve_engine
from ..streaming import iterate_async, trimmed
from .nodes import FiltersInput, LlamaIndexDocumentInput, blocks_to_nodes, to_lychee_documents, to_lychee_filters

dispatcher = instrument.get_dispatcher(__name__)


def answer_metadata(answer: Answer) -> dict[str, Any]:
    """What a Response's metadata carries besides the text: working memory, timings, token counts, evidence."""
    return {
        "memory": answer.memory,
        "memory_steps": list(answer.memory_steps),
        "timings": dict(answer.timings),
        "token_counts": dict(answer.token_counts),
        "evidence": [excerpt.to_dict() for excerpt in answer.evidence],
    }


class LycheeQueryEngine(OverBank, BaseQueryEngine):
    """Answers questions over a memory bank; ``source_nodes`` are the blocks the gate selected.

    ``streaming=True`` returns a ``StreamingResponse`` (``AsyncStreamingResponse`` from ``aquery``) whose
    source nodes are known before the first token; its metadata fills in when the stream ends. ``filters``
    (``MetadataFilters`` with EQ, NE, IN, NIN joined by AND, or a lychee filter dict) reads only the documents
    whose metadata match.
    """

    def __init__(
        self,
        bank: MemoryBank,
        model: ModelChoice = None,
        *,
        streaming: bool = False,
        filters: FiltersInput = None,
        show_progress: bool | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        self._engine = engine_for_bank(bank, model, "from engine.ingest, or use LycheeQueryEngine.from_documents")
        self._bank = bank
        self._streaming = streaming
        self._filters = to_lychee_filters(filters)
        self._show_progress = show_progress
        super().__init__(callback_manager=callback_manager)

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[LlamaIndexDocumentInput] | None = None,
        *,
        model: ModelChoice = None,
        store: StoreChoice = None,
        bank: BankChoice = None,
        streaming: bool = False,
        filters: FiltersInput = None,
        show_progress: bool | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> LycheeQueryEngine:
        """Compress ``documents`` into a bank and answer over it (``model``: engine, spec or the default).

        With ``bank`` alone, answer over that bank (a MemoryBank, or a bank name in ``store``); with both,
        the documents are added to the bank first.
        """
        engine = resolve_engine(model)
        lychee_documents = None if documents is None else to_lychee_documents(documents)
        memory = prepare_bank(engine, lychee_documents, store=store, bank=bank, show_progress=show_progress)
        return cls(
            memory,
            engine,
            streaming=streaming,
            filters=filters,
            show_progress=show_progress,
            callback_manager=callback_manager,
        )

    @property
    def streaming(self) -> bool:
        return self._streaming

    @property
    def filters(self) -> dict[str, Any] | None:
        """The metadata filter in lychee's language (``lychee_memory.filters``), None when every document is read."""
        return self._filters

    def _get_prompt_modules(self) -> PromptMixinType:
        return {}

    def query(self, str_or_query_bundle: QueryType) -> RESPONSE_TYPE:
        """Answer a question (a string or a QueryBundle); ``source_nodes`` are the blocks the gate read."""
        _as_query_bundle(str_or_query_bundle)  # a clear error for a wrong type, before any event fires
        return super().query(str_or_query_bundle)

    async def aquery(self, str_or_query_bundle: QueryType) -> RESPONSE_TYPE:
        """``query`` without blocking the event loop: the engine runs in a worker thread."""
        _as_query_bundle(str_or_query_bundle)
        return await super().aquery(str_or_query_bundle)

    def retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """The blocks the gate selects for the query, as scored nodes (no answer is written)."""
        bundle = _as_query_bundle(query_bundle)
        blocks = call_engine(
            self._engine,
            lambda: self._engine.select(
                bundle.query_str, self._bank, filters=self._filters, show_progress=self._show_progress
            ),
        )
        return blocks_to_nodes(blocks, self._bank)

    # Synchronous -------------------------------------------------------------------------------------

    @dispatcher.span
    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        query_bundle = _as_query_bundle(query_bundle)
        with self.callback_manager.event(
            CBEventType.QUERY, payload={EventPayload.QUERY_STR: query_bundle.query_str}
        ) as query_event:
            with self._retrieval_events(query_bundle) as finish_retrieval:
                stream, blocks = call_engine(self._engine, lambda: self._scan(query_bundle))
                nodes = blocks_to_nodes(blocks, self._bank)
                finish_retrieval(nodes)
            with self._synthesis_events(query_bundle) as finish_synthesis:
                if self._streaming:
                    metadata: dict[str, Any] = {}
                    response: RESPONSE_TYPE = StreamingResponse(
                        response_gen=self._pieces(stream, metadata), source_nodes=nodes, metadata=metadata
                    )
                else:
                    answer = call_engine(self._engine, lambda: stream.answer)
                    response = Response(answer.text, source_nodes=nodes, metadata=answer_metadata(answer))
                finish_synthesis(response)
            query_event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    def _scan(self, query_bundle: QueryBundle) -> tuple[AnswerStream, list[SelectedBlock]]:
        """Start an answer stream and run its gate scan (call with the engine's lock held)."""
        stream = self._engine.stream(
            query_bundle.query_str, self._bank, filters=self._filters, show_progress=self._show_progress
        )
        return stream, stream.blocks

    def _pieces(self, stream: AnswerStream, metadata: dict[str, Any]) -> Iterator[str]:
        yield from trimmed(stream)
        metadata.update(answer_metadata(stream.answer))

    # Asynchronous: the engine runs in worker threads --------------------------------------------------

    @dispatcher.span
    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        query_bundle = _as_query_bundle(query_bundle)
        with self.callback_manager.event(
            CBEventType.QUERY, payload={EventPayload.QUERY_STR: query_bundle.query_str}
        ) as query_event:
            with self._retrieval_events(query_bundle) as finish_retrieval:
                stream, blocks = await call_engine_async(self._engine, lambda: self._scan(query_bundle))
                nodes = blocks_to_nodes(blocks, self._bank)
                finish_retrieval(nodes)
            with self._synthesis_events(query_bundle) as finish_synthesis:
                if self._streaming:
                    metadata: dict[str, Any] = {}
                    response: RESPONSE_TYPE = AsyncStreamingResponse(
                        response_gen=self._apieces(stream, metadata), source_nodes=nodes, metadata=metadata
                    )
                else:
                    answer = await call_engine_async(self._engine, lambda: stream.answer)
                    response = Response(answer.text, source_nodes=nodes, metadata=answer_metadata(answer))
                finish_synthesis(response)
            query_event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    async def _apieces(self, stream: AnswerStream, metadata: dict[str, Any]) -> AsyncIterator[str]:
        async for piece in iterate_async(trimmed(stream)):
            yield piece
        metadata.update(answer_metadata(stream.answer))

    # Events ------------------------------------------------------------------------------------------

    def _retrieval_events(self, query_bundle: QueryBundle) -> AbstractContextManager[Callable[[Any], None]]:
        return _phase_events(self.callback_manager, CBEventType.RETRIEVE, query_bundle)

    def _synthesis_events(self, query_bundle: QueryBundle) -> AbstractContextManager[Callable[[Any], None]]:
        return _phase_events(self.callback_manager, CBEventType.SYNTHESIZE, query_bundle)


@contextmanager
def _phase_events(
    callback_manager: CallbackManager, kind: CBEventType, query_bundle: QueryBundle
) -> Iterator[Callable[[Any], None]]:
    """The callback event and the instrumentation start/end events of one phase (retrieve or synthesize).

    Start events fire on entry; the phase calls the yielded ``finish`` with its nodes or response, which
    fires the end events with that payload.
    """
    retrieving = kind == CBEventType.RETRIEVE
    if retrieving:
        dispatcher.event(RetrievalStartEvent(str_or_query_bundle=query_bundle))
    else:
        dispatcher.event(SynthesizeStartEvent(query=query_bundle))
    with callback_manager.event(kind, payload={EventPayload.QUERY_STR: query_bundle.query_str}) as event:

        def finish(result: Any) -> None:
            if retrieving:
                event.on_end(payload={EventPayload.NODES: result})
                dispatcher.event(RetrievalEndEvent(str_or_query_bundle=query_bundle, nodes=result))
            else:
                event.on_end(payload={EventPayload.RESPONSE: result})
                dispatcher.event(SynthesizeEndEvent(query=query_bundle, response=result))

        yield finish


def _as_query_bundle(query: Any) -> QueryBundle:
    if isinstance(query, str):
        return QueryBundle(query)
    if not isinstance(query, QueryBundle):
        raise TypeError(f"a query must be a string or a QueryBundle, got {type(query).__name__}")
    return query
