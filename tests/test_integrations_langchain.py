"""The LangChain adapters with real langchain-core objects: reader Runnable, retriever, tools, streaming."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.tools import create_retriever_tool
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests
from lychee_memory.integrations.langchain import LycheeReader, LycheeRetriever
from pydantic import ValidationError

from lychee_memory import ConfigurationError, DocumentError, EmptyQuestionError, FilterError, MemoryStore

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, loop_ticks, make_engine, requires_embedded_model

QUESTION = "What is the access code for the east pier storage shed?"


@functools.cache
def shared_engine():
    # Every block passes this threshold, so the gate reads the first four: selections are predictable.
    return make_engine(threshold=-1e9, max_relevant_blocks=4, max_answer_tokens=24)


def documents() -> list[Document]:
    return [
        Document(page_content=FACTS_DOCUMENT, metadata={"source": "arvel.txt"}, id="arvel"),
        Document(page_content=SECOND_DOCUMENT, metadata={"source": "kestrel.txt"}, id="kestrel"),
    ]


@functools.cache
def shared_bank():
    from lychee_memory.integrations.langchain import to_lychee_documents

    return shared_engine().ingest(to_lychee_documents(documents()))


@pytest.fixture(scope="module")
def engine():
    return shared_engine()


@pytest.fixture(scope="module")
def bank():
    return shared_bank()


@pytest.fixture(scope="module")
def expected(engine, bank):
    return engine.ask(QUESTION, bank)


class Recorder(BaseCallbackHandler):
    """Records the runs LangChain reports, as a tracer would."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_chain_start(self, serialized, inputs, *, name=None, **kwargs):
        self.events.append(("chain_start", name))

    def on_chain_end(self, outputs, **kwargs):
        self.events.append(("chain_end", outputs))

    def on_retriever_start(self, serialized, query, **kwargs):
        self.events.append(("retriever_start", query))

    def on_retriever_end(self, documents, **kwargs):
        self.events.append(("retriever_end", len(documents)))


def test_reader_answers_a_question_over_its_bank_or_given_documents(engine, bank, expected):
    reader = LycheeReader(model=engine, bank=bank)
    assert reader.invoke(QUESTION) == expected.text
    assert reader.invoke({"question": QUESTION}) == expected.text
    assert LycheeReader(model=engine).invoke({"question": QUESTION, "bank": bank}) == expected.text
    from_documents = LycheeReader(model=engine).invoke({"question": QUESTION, "documents": documents()})
    assert from_documents == expected.text
    as_strings = LycheeReader(model=engine).invoke(
        {"question": QUESTION, "documents": [FACTS_DOCUMENT, SECOND_DOCUMENT]}
    )
    assert isinstance(as_strings, str)


def test_reader_batch_shares_scans_and_reports_errors_per_input(engine, bank, expected):
    reader = LycheeReader(model=engine, bank=bank)
    other = "Who is the head gardener?"
    answers = reader.batch([QUESTION, {"question": other}, "   "], return_exceptions=True)
    assert answers[0] == expected.text
    assert answers[1] == engine.ask(other, bank).text
    assert isinstance(answers[2], EmptyQuestionError)
    with pytest.raises(EmptyQuestionError):
        reader.batch([QUESTION, ""])


def test_reader_streams_the_answer_and_passes_config_through(engine, bank, expected):
    reader = LycheeReader(model=engine, bank=bank)
    recorder = Recorder()
    pieces = list(reader.stream(QUESTION, config={"callbacks": [recorder], "run_name": "lychee"}))
    assert len(pieces) >= 2
    assert "".join(pieces) == expected.text
    assert recorder.events == [("chain_start", "lychee"), ("chain_end", expected.text)]
    recorder.events.clear()
    reader.invoke(QUESTION, config={"callbacks": [recorder]})
    assert recorder.events == [("chain_start", "LycheeReader"), ("chain_end", expected.text)]


def test_reader_composes_after_a_parallel_step_with_a_real_retriever(engine, expected):
    store = InMemoryVectorStore.from_documents(documents(), DeterministicFakeEmbedding(size=16))
    retriever = store.as_retriever(search_kwargs={"k": 2})
    chain = {"question": RunnablePassthrough(), "documents": retriever} | LycheeReader(model=engine)
    # The vector store may return the documents in either order; the bank follows that order.
    retrieved = retriever.invoke(QUESTION)
    direct = LycheeReader(model=engine).invoke({"question": QUESTION, "documents": retrieved})
    assert chain.invoke(QUESTION) == direct
    streamed = list(chain.stream(QUESTION))
    assert "".join(streamed) == direct and len(streamed) >= 2
    # In that stream the reader receives its input as partial dicts and merges them before answering.
    reader = LycheeReader(model=engine)
    partial = iter([{"question": "What is the access "}, {"documents": documents()}, {"question": "code?"}])
    assert "".join(reader.transform(partial)) == reader.invoke(
        {"question": "What is the access code?", "documents": documents()}
    )


async def test_reader_async_paths_stream_and_keep_the_loop_free(engine, bank, expected):
    reader = LycheeReader(model=engine, bank=bank)
    async with loop_ticks() as ticks:
        answer = await reader.ainvoke(QUESTION)
        pieces = [piece async for piece in reader.astream(QUESTION)]
    assert answer == expected.text and "".join(pieces) == expected.text and len(pieces) >= 2
    assert ticks.count >= 20, f"the event loop ticked only {ticks.count} times"
    assert await reader.abatch([QUESTION, QUESTION]) == [expected.text, expected.text]

    chain = {"question": RunnablePassthrough(), "documents": RunnableLambda(lambda _: documents())} | LycheeReader(
        model=engine
    )
    assert "".join([piece async for piece in chain.astream(QUESTION)]) == expected.text
    events = [event async for event in chain.astream_events(QUESTION, version="v2")]
    reader_stream = [
        event for event in events if event["name"] == "LycheeReader" and event["event"] == "on_chain_stream"
    ]
    assert "".join(event["data"]["chunk"] for event in reader_stream) == expected.text
    ends = [event for event in events if event["name"] == "LycheeReader" and event["event"] == "on_chain_end"]
    assert ends and ends[0]["data"]["output"] == expected.text


def test_retriever_returns_gated_blocks_with_scores_and_sources(engine, bank):
    retriever = LycheeRetriever(model=engine, bank=bank)
    recorder = Recorder()
    found = retriever.invoke(QUESTION, config={"callbacks": [recorder]})
    blocks = engine.select(QUESTION, bank)
    assert [document.metadata["block"] for document in found] == [block.index for block in blocks]
    for document, block in zip(found, blocks):
        assert document.page_content == block.text
        assert document.metadata["score"] == pytest.approx(block.score)
        assert (document.metadata["doc"], document.metadata["start"], document.metadata["end"]) == (
            block.document_id,
            block.char_start,
            block.char_end,
        )
        assert document.metadata["source"] == bank.document(block.document_id).metadata["source"]
    assert recorder.events == [("retriever_start", QUESTION), ("retriever_end", len(found))]
    assert [d.metadata["block"] for d in retriever.invoke(QUESTION, k=2)] == [
        b.index for b in engine.select(QUESTION, bank, k=2)
    ]
    assert len(LycheeRetriever(model=engine, bank=bank, k=1).invoke(QUESTION)) == 1


async def test_retriever_async(engine, bank):
    retriever = LycheeRetriever(model=engine, bank=bank, k=3)
    assert [d.id for d in await retriever.ainvoke(QUESTION)] == [d.id for d in retriever.invoke(QUESTION)]


ONLY_KESTREL = {"source": "kestrel.txt"}


def places(found: list[Document]) -> list[tuple[str, int, int, bool]]:
    return [(d.metadata["doc"], d.metadata["start"], d.metadata["end"], d.metadata["selected"]) for d in found]


def test_retriever_filter_on_the_retriever_and_per_call(engine, bank):
    retriever = LycheeRetriever(model=engine, bank=bank, filter=ONLY_KESTREL)
    found = retriever.invoke(QUESTION)
    expected = engine.select(QUESTION, bank, filters=ONLY_KESTREL)
    assert found and {d.metadata["doc"] for d in found} == {"kestrel"}
    assert places(found) == [(b.document_id, b.char_start, b.char_end, b.selected) for b in expected]
    assert [d.metadata["block"] for d in found] == [b.index for b in expected], "indices in the whole bank"
    assert all(d.metadata["selected"] is True and d.metadata["bank"] == bank.name for d in found)
    # A call's filter replaces the retriever's; an empty one reads every document.
    arvel = retriever.invoke(QUESTION, filter={"source": {"$ne": "kestrel.txt"}})
    assert arvel and {d.metadata["doc"] for d in arvel} == {"arvel"}
    assert places(retriever.invoke(QUESTION, filter={})) == places(
        LycheeRetriever(model=engine, bank=bank).invoke(QUESTION)
    )
    assert places(await_(retriever.ainvoke(QUESTION))) == places(found)
    # k fills up with the filtered documents' unread blocks only.
    of_kestrel = sum(span.document_id == "kestrel" for span in bank.spans)
    filled = retriever.invoke(QUESTION, k=of_kestrel + 3)
    assert len(filled) == of_kestrel and {d.metadata["doc"] for d in filled} == {"kestrel"}
    assert [d.metadata["selected"] for d in filled] == [True] * len(found) + [False] * (of_kestrel - len(found))
    assert len({d.id for d in filled}) == of_kestrel
    from_documents = LycheeRetriever.from_documents(documents(), model=engine, filter=ONLY_KESTREL, k=2)
    assert [d.metadata["doc"] for d in from_documents.invoke(QUESTION)] == ["kestrel", "kestrel"]


def await_(awaitable):
    return asyncio.run(awaitable)


def test_retriever_and_reader_refuse_a_malformed_filter(engine, bank):
    with pytest.raises(ValidationError, match=r"unknown operator '\$gt'"):
        LycheeRetriever(model=engine, bank=bank, filter={"year": {"$gt": 2020}})
    with pytest.raises(FilterError, match="not supported at the top level"):
        LycheeRetriever(model=engine, bank=bank).invoke(QUESTION, filter={"$or": [ONLY_KESTREL]})
    with pytest.raises(ValidationError, match=r"\$in takes a list"):
        LycheeReader(model=engine, bank=bank, filter={"source": {"$in": "kestrel.txt"}})
    with pytest.raises(FilterError, match="unknown operator"):
        LycheeReader(model=engine, bank=bank).invoke({"question": QUESTION, "filter": {"source": {"$like": "k%"}}})


def test_reader_filter_on_the_reader_or_in_the_input(engine, bank, monkeypatch):
    only_arvel = {"source": "arvel.txt"}
    kestrel_answer = engine.ask(QUESTION, bank, filters=ONLY_KESTREL).text
    arvel_answer = engine.ask(QUESTION, bank, filters=only_arvel).text
    assert kestrel_answer != engine.ask(QUESTION, bank).text != arvel_answer, "the filters change what is read"
    assert (
        LycheeReader(model=engine, bank=bank).invoke({"question": QUESTION, "filter": ONLY_KESTREL}) == kestrel_answer
    )
    reader = LycheeReader(model=engine, bank=bank, filter=ONLY_KESTREL)
    assert reader.invoke(QUESTION) == kestrel_answer
    assert reader.invoke({"question": QUESTION, "filter": only_arvel}) == arvel_answer, "the input's filter wins"
    assert reader.invoke({"question": QUESTION, "filter": None}) == kestrel_answer
    assert "".join(reader.stream(QUESTION)) == kestrel_answer
    assert "".join(reader.stream({"question": QUESTION, "filter": only_arvel})) == arvel_answer
    assert await_(reader.ainvoke({"question": QUESTION, "filter": only_arvel})) == arvel_answer
    assert reader.as_tool().invoke({"question": QUESTION}) == kestrel_answer, "the tool keeps the reader's filter"
    # A batch shares one scan per (bank, filter) and reports a bad filter for its input alone.
    asked, ask_many = [], engine.ask_many
    monkeypatch.setattr(
        engine,
        "ask_many",
        lambda questions, source, **kwargs: (
            asked.append((list(questions), kwargs.get("filters"))) or ask_many(questions, source, **kwargs)
        ),
    )
    other = "Who is the head gardener?"
    answers = reader.batch(
        [
            QUESTION,
            {"question": QUESTION, "filter": only_arvel},
            {"question": other},
            {"question": QUESTION, "filter": 3},
        ],
        return_exceptions=True,
    )
    assert answers[:2] == [kestrel_answer, arvel_answer] and isinstance(answers[3], FilterError)
    assert asked == [([QUESTION, other], ONLY_KESTREL), ([QUESTION], only_arvel)]
    assert answers[2] == ask_many([other], bank, filters=ONLY_KESTREL)[0].text


class TestLycheeRetrieverStandard(RetrieversIntegrationTests):
    """langchain-tests' standard retriever suite, on a gate that reads four blocks per question."""

    @property
    def retriever_constructor(self) -> type[LycheeRetriever]:
        return LycheeRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"model": shared_engine(), "bank": shared_bank()}

    @property
    def retriever_query_example(self) -> str:
        return QUESTION


SHORT_DOCUMENTS = [
    Document(page_content="The access code for the east pier storage shed is 58213.", metadata={"topic": "codes"}),
    Document(
        page_content="Kestrel Hall's head gardener is a botanist named Odile Fenwick.", metadata={"topic": "garden"}
    ),
    Document(
        page_content="The market of Arvel opens on Saturdays; bread and wool are sold.", metadata={"topic": "town"}
    ),
    Document(page_content="The Silver Heron anchored in the bay of Arvel for one winter.", metadata={"topic": "ships"}),
]


@functools.cache
def default_bank():
    """Four one-block documents, compressed by the embedded default engine (loaded once per process by the
    adapters' model cache, which ``model=None`` resolves to, with the model's own gate settings)."""
    from lychee_memory.integrations.engines import resolve_engine
    from lychee_memory.integrations.langchain import to_lychee_documents

    return resolve_engine().ingest(to_lychee_documents(SHORT_DOCUMENTS), name="short", show_progress=False)


@requires_embedded_model
@pytest.mark.slow
class TestLycheeRetrieverStandardOnTheEmbeddedDefault(RetrieversIntegrationTests):
    """The standard suite on the embedded default (SmolLM2-135M) with its real gate: its threshold reads one
    block here, so k=3 is filled up with the best-scoring unread blocks."""

    @property
    def retriever_constructor(self) -> type[LycheeRetriever]:
        return LycheeRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"model": None, "bank": default_bank(), "show_progress": False}

    @property
    def retriever_query_example(self) -> str:
        return QUESTION


@requires_embedded_model
@pytest.mark.slow
def test_retriever_on_the_embedded_default_reads_the_fact_and_fills_k():
    bank = default_bank()
    from lychee_memory.integrations.engines import resolve_engine

    engine = resolve_engine()
    assert engine.config.gate.threshold == 2.0 and len(bank) == 4, "the model's own gate, one block per document"
    found = LycheeRetriever(bank=bank, k=3).invoke(QUESTION)
    assert len(found) == 3 and len({d.id for d in found}) == 3
    assert "58213" in found[0].page_content and found[0].metadata["selected"] is True
    flags = [d.metadata["selected"] for d in found]
    assert flags == sorted(flags, reverse=True) and flags[-1] is False, "the gate's block, then the fill"
    assert all(d.metadata["bank"] == "short" for d in found)
    without_codes = LycheeRetriever(bank=bank, k=3, filter={"topic": {"$ne": "codes"}}).invoke(QUESTION)
    assert len(without_codes) == 3 and not any("58213" in d.page_content for d in without_codes)


def test_reader_and_retriever_as_agent_tools(engine, bank, expected):
    tool = LycheeReader(model=engine, bank=bank).as_tool()
    assert tool.name == "lychee_memory" and set(tool.args) == {"question"}
    assert tool.invoke({"question": QUESTION}) == expected.text
    message = tool.invoke({"name": tool.name, "args": {"question": QUESTION}, "id": "call-1", "type": "tool_call"})
    assert isinstance(message, ToolMessage) and message.content == expected.text and message.tool_call_id == "call-1"
    assert asyncio.run(tool.ainvoke({"question": QUESTION})) == expected.text
    passages = create_retriever_tool(LycheeRetriever(model=engine, bank=bank, k=2), "passages", "Guide passages.")
    assert passages.invoke({"query": QUESTION}).count("\n\n") >= 1
    with pytest.raises(ValueError, match="answers over its own bank"):
        LycheeReader(model=engine).as_tool()


def test_stored_banks_by_name(engine, tmp_path, expected):
    store = tmp_path / "store"
    reader = LycheeReader.from_documents(documents(), model=engine, store=store, bank="guide")
    assert MemoryStore(store).bank_info("guide").documents == ("arvel", "kestrel")
    by_name = LycheeReader(model=engine, store=store, bank="guide")
    assert by_name.invoke(QUESTION) == reader.invoke(QUESTION)
    retriever = LycheeRetriever(model=engine, store=store, bank="guide", k=2)
    selected = engine.select(QUESTION, engine.open_bank("guide", store), k=2)
    assert len(selected) == 2
    assert [document.metadata["doc"] for document in retriever.invoke(QUESTION)] == [b.document_id for b in selected]
    added = LycheeReader(model=engine, store=store).invoke(
        {"question": QUESTION, "bank": "guide", "documents": [Document(page_content="A new page.\n\n" * 3, id="new")]}
    )
    assert isinstance(added, str) and "new" in MemoryStore(store).bank_info("guide").documents


def test_a_reader_given_a_bank_name_opens_it_once_and_batches_questions_over_it(engine, tmp_path, monkeypatch):
    store = tmp_path / "store"
    LycheeReader.from_documents(documents(), model=engine, store=store, bank="guide")
    opened, asked = [], []
    open_bank, ask_many = engine.open_bank, engine.ask_many
    monkeypatch.setattr(engine, "open_bank", lambda *args, **kwargs: opened.append(args) or open_bank(*args, **kwargs))
    monkeypatch.setattr(
        engine,
        "ask_many",
        lambda questions, *args, **kwargs: asked.append(list(questions)) or ask_many(questions, *args, **kwargs),
    )
    reader = LycheeReader(model=engine, store=store, bank="guide")
    questions = [QUESTION, "Who is the head gardener?", "Which ship anchored in the bay?"]
    answers = reader.batch(questions)
    assert asked == [questions], "one batched scan for every question over the bank"
    assert answers == [engine.ask(question, engine.open_bank("guide", store)).text for question in questions]
    opened.clear()
    reader.invoke(QUESTION)
    reader.batch(questions)
    assert opened == [], "the bank stays open while the store holds the same version"
    LycheeReader(model=engine, store=store).invoke(
        {
            "question": QUESTION,
            "bank": "guide",
            "documents": [Document(page_content="Another page.\n\n" * 3, id="more")],
        }
    )
    reader.invoke(QUESTION)
    assert len(opened) == 1, "a bank changed by another writer is opened again"


def test_bad_inputs_give_clear_errors(engine, bank):
    reader = LycheeReader(model=engine)
    with pytest.raises(ValueError, match="no documents and no bank"):
        reader.invoke(QUESTION)
    with pytest.raises(ValueError, match="needs a 'question' key"):
        reader.invoke({"documents": documents()})
    with pytest.raises(ValueError, match="unknown keys query"):
        reader.invoke({"question": QUESTION, "query": "x", "documents": documents()})
    with pytest.raises(TypeError, match="takes a question string or a dict"):
        reader.invoke(42)
    with pytest.raises(TypeError, match="the question must be a string"):
        reader.invoke({"question": ["what?"], "documents": documents()})
    with pytest.raises(EmptyQuestionError):
        reader.invoke({"question": "  ", "documents": documents()})
    with pytest.raises(DocumentError, match="documents list is empty"):
        reader.invoke({"question": QUESTION, "documents": []})
    with pytest.raises(TypeError, match="cannot read a document from int"):
        reader.invoke({"question": QUESTION, "documents": [1, 2]})
    with pytest.raises(TypeError, match="takes no call options"):
        LycheeReader(model=engine, bank=bank).invoke(QUESTION, temperature=0.5)
    with pytest.raises(ValidationError):
        LycheeReader(model=engine, modle="typo")
    with pytest.raises(ValidationError, match="needs a bank"):
        LycheeRetriever(model=engine)
    with pytest.raises(ValidationError):
        LycheeRetriever(model=engine, bank=bank, k=0)
    with pytest.raises(ConfigurationError, match="k must be a positive number"):
        LycheeRetriever(model=engine, bank=bank).invoke(QUESTION, k=0)
    with pytest.raises(EmptyQuestionError):
        LycheeRetriever(model=engine, bank=bank).invoke("")
    with pytest.raises(ValidationError):
        LycheeRetriever(model=engine, bank=42)
