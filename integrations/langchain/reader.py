"""``LycheeReader``: a LangChain Runnable that answers a question over documents with Lychee memory.

It ends a RAG chain where a prompt and a chat model would: ``{"question": RunnablePassthrough(),
"documents": retriever} | LycheeReader()``. Input is a question (answered over the reader's ``bank``) or
a dict with ``question`` and ``documents`` or ``bank`` (and optionally ``filter``, a metadata filter such as
``{"tenant": "acme"}`` that restricts which documents are read); output is the answer text. Streaming yields
the answer as it is generated; when the input itself streams in (partial dicts from a ``RunnableParallel``),
the pieces are merged before answering.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, ConfigDict, Field, InstanceOf, PrivateAttr, field_validator

from lychee_memory import (
    AnswerStream,
    Document,
    DocumentFilter,
    EmptyQuestionError,
    LycheeMemory,
    MemoryBank,
    MemoryStore,
)

from ..banks import OpenBanks, prepare_bank
from ..engines import call_engine, call_engine_async, resolve_engine
from ..streaming import iterate_async, trimmed
from .documents import LangChainDocumentInput, bank_from_documents, to_lychee_documents

ReaderInput = str | dict[str, Any]
"""A question, or ``{"question": ..., "documents": [...]}``, or ``{"question": ..., "bank": ...}``; a dict may
add ``"filter": {...}`` (which documents to read, replacing the reader's ``filter``)."""
Filter = dict[str, Any] | None

DEFAULT_TOOL_NAME = "lychee_memory"
DEFAULT_TOOL_DESCRIPTION = (
    "Answers a question from the documents held in Lychee memory (long reports, manuals, books). "
    "Input: a complete, self-contained question. Output: the answer found in the documents."
)


class QuestionArguments(BaseModel):
    """The arguments an agent passes to the Lychee memory tool."""

    question: str = Field(description="a complete, self-contained question about the documents")


class LycheeReader(RunnableSerializable[ReaderInput, str]):
    """Answers questions over documents with Lychee memory; the answer text is the output.

    ``model``: a LycheeMemory engine, a model spec, or None for the embedded default (loaded on first
    use). ``bank``: the bank questions are answered over when the input brings no documents (a
    MemoryBank, or a bank name in ``store``). ``filter``: read only documents whose metadata match, e.g.
    ``{"tenant": "acme"}`` or ``{"year": {"$in": [2023, 2024]}}`` (``lychee_memory.filters``); an input dict's
    ``filter`` replaces it for that input. The agent tool keeps the reader's filter (the agent cannot change it).
    """

    model: LycheeMemory | str | None = None
    bank: InstanceOf[MemoryBank] | str | None = None
    store: MemoryStore | str | Path | None = None
    filter: dict[str, Any] | None = None
    show_progress: bool | None = None

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    _engine: LycheeMemory | None = PrivateAttr(default=None)
    _open_banks: OpenBanks = PrivateAttr(default_factory=OpenBanks)

    @field_validator("filter")
    @classmethod
    def _valid_filter(cls, value: Filter) -> Filter:
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
        filter: dict[str, Any] | None = None,
        show_progress: bool | None = None,
    ) -> LycheeReader:
        """A reader over a bank built from ``documents`` now (kept as bank ``bank`` of ``store`` if named)."""
        engine, memory = bank_from_documents(documents, model, store, bank, show_progress)
        return cls(model=engine, bank=memory, store=_store_path(store), filter=filter, show_progress=show_progress)

    @property
    def engine(self) -> LycheeMemory:
        """The engine (loaded on first use when ``model`` is a spec or None)."""
        if self._engine is None:
            self._engine = resolve_engine(self.model)
        return self._engine

    # Runnable interface ----------------------------------------------------------------------------

    def invoke(self, input: ReaderInput, config: RunnableConfig | None = None, **kwargs: Any) -> str:
        _refuse_options(kwargs)
        return self._call_with_config(self._answer, input, config)

    async def ainvoke(self, input: ReaderInput, config: RunnableConfig | None = None, **kwargs: Any) -> str:
        _refuse_options(kwargs)
        return await self._acall_with_config(self._aanswer, input, config)

    def batch(
        self,
        inputs: list[ReaderInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[str]:
        """Answer several inputs; questions over the same bank share batched scans and generations."""
        _refuse_options(kwargs)
        return self._batch_with_config(self._answer_batch, inputs, config, return_exceptions=return_exceptions)

    async def abatch(
        self,
        inputs: list[ReaderInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[str]:
        _refuse_options(kwargs)
        return await self._abatch_with_config(self._aanswer_batch, inputs, config, return_exceptions=return_exceptions)

    def transform(
        self, input: Iterator[ReaderInput], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[str]:
        _refuse_options(kwargs)
        yield from self._transform_stream_with_config(input, self._stream_answer, config)

    def stream(self, input: ReaderInput, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[str]:
        yield from self.transform(iter([input]), config, **kwargs)

    async def atransform(
        self, input: AsyncIterator[ReaderInput], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[str]:
        _refuse_options(kwargs)
        async for piece in self._atransform_stream_with_config(input, self._astream_answer, config):
            yield piece

    async def astream(
        self, input: ReaderInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[str]:
        async def single() -> AsyncIterator[ReaderInput]:
            yield input

        async for piece in self.atransform(single(), config, **kwargs):
            yield piece

    def as_tool(
        self,
        args_schema: type[BaseModel] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        arg_types: dict[str, type] | None = None,
    ) -> BaseTool:
        """This reader as an agent tool: the agent passes ``question``, answered over the reader's bank."""
        if args_schema is not None or arg_types is not None:
            return super().as_tool(args_schema, name=name, description=description, arg_types=arg_types)
        if self.bank is None:
            raise ValueError(
                "as a tool the reader answers over its own bank: create it with bank=... or from_documents"
            )

        def ask(question: str, callbacks: Any = None) -> str:
            return self.invoke(question, config={"callbacks": callbacks})

        async def aask(question: str, callbacks: Any = None) -> str:
            return await self.ainvoke(question, config={"callbacks": callbacks})

        return StructuredTool.from_function(
            func=ask,
            coroutine=aask,
            name=name or DEFAULT_TOOL_NAME,
            description=description or DEFAULT_TOOL_DESCRIPTION,
            args_schema=QuestionArguments,
        )

    # Answering -------------------------------------------------------------------------------------

    def _answer(self, value: ReaderInput) -> str:
        question, documents, bank, filters = self._parse(value)
        engine = self.engine
        return call_engine(engine, lambda: self._ask(question, documents, bank, filters))

    async def _aanswer(self, value: ReaderInput) -> str:
        question, documents, bank, filters = self._parse(value)
        engine = await asyncio.to_thread(lambda: self.engine)
        return await call_engine_async(engine, lambda: self._ask(question, documents, bank, filters))

    def _ask(
        self, question: str, documents: list[Document] | None, bank: MemoryBank | str | None, filters: Filter
    ) -> str:
        source = self._bank(documents, bank)
        return self.engine.ask(question, source, filters=filters, show_progress=self.show_progress).text

    def _answer_batch(self, values: list[ReaderInput]) -> list[str | Exception]:
        results: list[str | Exception] = [""] * len(values)
        # Questions over the same bank under the same filter share one batched scan.
        groups: dict[tuple[int, str], tuple[MemoryBank, Filter, list[int], list[str]]] = {}
        for position, value in enumerate(values):
            try:
                question, documents, bank, filters = self._parse(value)
                source = call_engine(self.engine, partial(self._bank, documents, bank))
            except Exception as error:  # reported for this input only
                results[position] = error
                continue
            group = (id(source), DocumentFilter.parse(filters).key)
            _, _, positions, questions = groups.setdefault(group, (source, filters, [], []))
            positions.append(position)
            questions.append(question)
        for source, filters, positions, questions in groups.values():
            try:
                answers = call_engine(self.engine, partial(self._ask_many, questions, source, filters))
                for position, answer in zip(positions, answers):
                    results[position] = answer
            except Exception:  # find which questions fail and answer the others
                for position, question in zip(positions, questions):
                    try:
                        ask = partial(self._ask_many, [question], source, filters)
                        results[position] = call_engine(self.engine, ask)[0]
                    except Exception as error:
                        results[position] = error
        return results

    def _ask_many(self, questions: list[str], source: MemoryBank, filters: Filter) -> list[str]:
        answers = self.engine.ask_many(questions, source, filters=filters, show_progress=self.show_progress)
        return [answer.text for answer in answers]

    async def _aanswer_batch(self, values: list[ReaderInput]) -> list[str | Exception]:
        return await asyncio.to_thread(self._answer_batch, values)

    def _stream_answer(self, chunks: Iterator[ReaderInput]) -> Iterator[str]:
        question, documents, bank, filters = self._parse(merge_input_chunks(chunks))
        engine = self.engine
        stream = call_engine(engine, partial(self._start_stream, question, documents, bank, filters))
        yield from trimmed(stream)

    async def _astream_answer(self, chunks: AsyncIterator[ReaderInput]) -> AsyncIterator[str]:
        merged: Any = _NOTHING
        async for chunk in chunks:
            merged = chunk if merged is _NOTHING else _merge(merged, chunk)
        question, documents, bank, filters = self._parse(_received(merged))
        engine = await asyncio.to_thread(lambda: self.engine)
        stream = await call_engine_async(engine, partial(self._start_stream, question, documents, bank, filters))
        async for piece in iterate_async(trimmed(stream)):
            yield piece

    def _start_stream(
        self, question: str, documents: list[Document] | None, bank: MemoryBank | str | None, filters: Filter
    ) -> AnswerStream:
        """The answer stream over the input's source (call with the engine's lock held)."""
        source = self._bank(documents, bank)
        return self.engine.stream(question, source, filters=filters, show_progress=self.show_progress)

    # Input -----------------------------------------------------------------------------------------

    def _parse(self, value: Any) -> tuple[str, list[Document] | None, MemoryBank | str | None, Filter]:
        """Question, documents to read (or None), bank to read (or None) and metadata filter from one input;
        cheap checks only."""
        filters = self.filter
        if isinstance(value, str):
            question, documents, bank = value, None, self.bank
        elif isinstance(value, Mapping):
            if "question" not in value:
                raise ValueError(
                    f"LycheeReader input needs a 'question' key (got keys: {', '.join(map(str, value)) or 'none'})"
                )
            unknown = sorted(set(map(str, value)) - {"question", "documents", "bank", "filter"})
            if unknown:
                raise ValueError(
                    f"LycheeReader input has unknown keys {', '.join(unknown)}; "
                    "it reads 'question', 'documents', 'bank', 'filter'"
                )
            if value.get("filter") is not None:
                filters = value["filter"]
                DocumentFilter.parse(filters)  # FilterError for a malformed one, before any work
            question = value["question"]
            documents = to_lychee_documents(value["documents"]) if value.get("documents") is not None else None
            bank = value.get("bank", None if documents is not None else self.bank)
        else:
            raise TypeError(
                "LycheeReader takes a question string or a dict with 'question' and 'documents' or 'bank', "
                f"got {type(value).__name__}"
            )
        if not isinstance(question, str):
            raise TypeError(f"the question must be a string, got {type(question).__name__}")
        if not question.strip():
            raise EmptyQuestionError("the question is empty: ask something about the documents")
        if documents is None and bank is None:
            raise ValueError(
                "no documents and no bank: pass {'question': ..., 'documents': [...]}, or give the reader a bank "
                "(LycheeReader(bank=...) or LycheeReader.from_documents(...))"
            )
        return question, documents, bank, filters

    def _bank(self, documents: list[Document] | None, bank: MemoryBank | str | None) -> MemoryBank:
        return prepare_bank(
            self.engine,
            documents,
            store=self.store,
            bank=bank,
            show_progress=self.show_progress,
            open_banks=self._open_banks,
        )


_NOTHING: Any = object()


def merge_input_chunks(chunks: Iterator[Any]) -> Any:
    """One input from the chunks of a streamed input: dicts merged key by key, strings joined."""
    merged: Any = _NOTHING
    for chunk in chunks:
        merged = chunk if merged is _NOTHING else _merge(merged, chunk)
    return _received(merged)


def _received(merged: Any) -> Any:
    if merged is _NOTHING:
        raise ValueError("LycheeReader received no input")
    return merged


def _merge(first: Any, second: Any) -> Any:
    """Merge the way LangChain adds streamed chunks: strings and lists extend, dicts merge, else replace."""
    if isinstance(first, str) and isinstance(second, str):
        return first + second
    if isinstance(first, list) and isinstance(second, list):
        return first + second
    if isinstance(first, Mapping) and isinstance(second, Mapping):
        merged = dict(first)
        for key, value in second.items():
            merged[key] = _merge(merged[key], value) if key in merged else value
        return merged
    return second


def _refuse_options(options: dict[str, Any]) -> None:
    if options:
        raise TypeError(f"LycheeReader takes no call options, got {', '.join(sorted(options))}")


def _store_path(store: MemoryStore | str | os.PathLike[str] | None) -> MemoryStore | str | Path | None:
    return Path(store) if isinstance(store, os.PathLike) else store
