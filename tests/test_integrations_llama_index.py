"""The LlamaIndex adapters with real llama-index-core objects: query engine, retriever, index, persistence."""

from __future__ import annotations

import logging

import llama_index.core.instrumentation as instrument
import pytest
from llama_index.core import Settings
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.llms.mock import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers import get_response_synthesizer
from llama_index.core.schema import Document, NodeRelationship, NodeWithScore, TextNode
from llama_index.core.storage.storage_context import StorageContext
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters
from lychee_memory.integrations.llama_index import LycheeIndex, LycheeQueryEngine, LycheeRetriever
from lychee_memory.integrations.llama_index.nodes import to_lychee_filters

from lychee_memory import (
    BankNotFoundError,
    ConfigurationError,
    DocumentError,
    DocumentFilter,
    EmptyQuestionError,
    FilterError,
    MemoryStore,
    StoreError,
)

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, loop_ticks, make_engine, requires_embedded_model

QUESTION = "What is the access code for the east pier storage shed?"
KEEPER = "The lighthouse keeper of Arvel is called Bram Otter. He rows to the tower every evening.\n\n" * 2


@pytest.fixture(scope="module")
def engine():
    # Every block passes this threshold, so the gate reads the first four: selections are predictable.
    return make_engine(threshold=-1e9, max_relevant_blocks=4, max_answer_tokens=24)


def documents() -> list[Document]:
    return [
        Document(text=FACTS_DOCUMENT, id_="arvel", metadata={"file_name": "arvel.txt"}),
        Document(text=SECOND_DOCUMENT, id_="kestrel", metadata={"file_name": "kestrel.txt"}),
    ]


@pytest.fixture(scope="module")
def query_engine(engine):
    return LycheeQueryEngine.from_documents(documents(), model=engine)


@pytest.fixture(autouse=True)
def no_global_llm(monkeypatch):
    """Start every test with Settings.llm unresolved; reading it would try OpenAI and fail offline."""
    monkeypatch.setattr(Settings, "_llm", None)


def assert_nodes_match_blocks(nodes: list[NodeWithScore], blocks, bank) -> None:
    assert [node.node.metadata["block_index"] for node in nodes] == [block.index for block in blocks]
    for node, block in zip(nodes, blocks):
        assert isinstance(node.node, TextNode)
        assert node.score == pytest.approx(block.score)
        assert (node.node.start_char_idx, node.node.end_char_idx) == (block.char_start, block.char_end)
        source = bank.document(block.document_id)
        assert node.node.get_content() == source.text[block.char_start : block.char_end]
        assert node.node.ref_doc_id == block.document_id
        assert node.node.relationships[NodeRelationship.SOURCE].node_id == block.document_id
        assert node.node.metadata["file_name"] == source.metadata["file_name"]


def test_query_returns_the_answer_and_the_gated_blocks_as_source_nodes(engine, query_engine):
    bank = query_engine.bank
    assert [document.id for document in bank.documents] == ["arvel", "kestrel"]
    response = query_engine.query(QUESTION)
    expected = engine.ask(QUESTION, bank)
    assert isinstance(response, Response)
    assert response.response == expected.text
    assert_nodes_match_blocks(response.source_nodes, expected.blocks, bank)
    assert response.metadata["memory_steps"] == expected.memory_steps
    assert {"gate", "reason", "answer"} <= set(response.metadata["timings"])
    first = expected.blocks[0]
    assert (
        f"Source (Doc id: {first.document_id}#{first.char_start}-{first.char_end})" in response.get_formatted_sources()
    )
    # Lychee's own metadata stays out of what an LLM would read from the node.
    assert "block_index" not in response.source_nodes[0].node.get_content(metadata_mode="llm")
    assert query_engine.retrieve(QUESTION) == response.source_nodes


def test_streaming_response_has_sources_first_and_the_same_text(engine, query_engine):
    streaming = LycheeQueryEngine(query_engine.bank, engine, streaming=True)
    response = streaming.query(QUESTION)
    assert isinstance(response, StreamingResponse)
    expected = engine.ask(QUESTION, query_engine.bank)
    assert_nodes_match_blocks(response.source_nodes, expected.blocks, query_engine.bank)
    assert response.metadata == {}  # filled in when the stream ends
    pieces = list(response.response_gen)
    assert len(pieces) >= 2
    assert "".join(pieces) == expected.text
    assert response.metadata["memory_steps"] == expected.memory_steps


async def test_aquery_runs_off_the_event_loop_and_streams_asynchronously(engine, query_engine):
    async with loop_ticks() as ticks:
        response = await query_engine.aquery(QUESTION)
    expected = engine.ask(QUESTION, query_engine.bank)
    assert isinstance(response, Response) and response.response == expected.text
    assert_nodes_match_blocks(response.source_nodes, expected.blocks, query_engine.bank)
    assert ticks.count >= 20, f"the event loop ticked only {ticks.count} times during aquery"

    streaming = LycheeQueryEngine(query_engine.bank, engine, streaming=True)
    streamed = await streaming.aquery(QUESTION)
    assert isinstance(streamed, AsyncStreamingResponse)
    assert len(streamed.source_nodes) == len(expected.blocks)
    pieces = [piece async for piece in streamed.async_response_gen()]
    assert "".join(pieces) == expected.text
    assert streamed.metadata["memory_steps"] == expected.memory_steps


class EventRecorder(BaseEventHandler):
    """Collects instrumentation event names, as a tracing integration would."""

    names: list[str] = []

    def handle(self, event: BaseEvent, **kwargs) -> None:
        self.names.append(event.class_name())


def record_events(run) -> tuple[list[str], LlamaDebugHandler]:
    debug = LlamaDebugHandler(print_trace_on_end=False)
    recorder = EventRecorder(names=[])
    dispatcher = instrument.get_dispatcher()
    dispatcher.add_event_handler(recorder)
    try:
        run(CallbackManager([debug]))
    finally:
        dispatcher.event_handlers.remove(recorder)
    wanted = {
        "QueryStartEvent",
        "QueryEndEvent",
        "RetrievalStartEvent",
        "RetrievalEndEvent",
        "SynthesizeStartEvent",
        "SynthesizeEndEvent",
    }
    return [name for name in recorder.names if name in wanted], debug


def test_callback_and_instrumentation_events_match_the_built_in_engine(engine, query_engine):
    bank = query_engine.bank

    def lychee(callback_manager):
        LycheeQueryEngine(bank, engine, callback_manager=callback_manager).query(QUESTION)

    def built_in(callback_manager):
        retriever = LycheeRetriever(bank, engine, callback_manager=callback_manager)
        synthesizer = get_response_synthesizer(llm=MockLLM(), callback_manager=callback_manager)
        RetrieverQueryEngine(retriever, synthesizer, callback_manager=callback_manager).query(QUESTION)

    ours, our_debug = record_events(lychee)
    theirs, their_debug = record_events(built_in)
    assert (
        ours
        == theirs
        == [
            "QueryStartEvent",
            "RetrievalStartEvent",
            "RetrievalEndEvent",
            "SynthesizeStartEvent",
            "SynthesizeEndEvent",
            "QueryEndEvent",
        ]
    )
    for kind in (CBEventType.QUERY, CBEventType.RETRIEVE, CBEventType.SYNTHESIZE):
        assert len(our_debug.get_event_pairs(kind)) == len(their_debug.get_event_pairs(kind)) == 1
    start, end = our_debug.get_event_pairs(CBEventType.RETRIEVE)[0]
    assert start.payload[EventPayload.QUERY_STR] == QUESTION
    assert [node.node.node_id for node in end.payload[EventPayload.NODES]] == [
        node.node.node_id for node in query_engine.retrieve(QUESTION)
    ]


async def test_retriever_replaces_a_vector_retriever(engine, query_engine):
    bank = query_engine.bank
    retriever = LycheeRetriever(bank, engine)
    nodes = retriever.retrieve(QUESTION)
    assert_nodes_match_blocks(nodes, engine.select(QUESTION, bank), bank)
    assert await retriever.aretrieve(QUESTION) == nodes
    best_two = LycheeRetriever(bank, engine, k=2).retrieve(QUESTION)
    assert_nodes_match_blocks(best_two, engine.select(QUESTION, bank, k=2), bank)
    # Inside the built-in RetrieverQueryEngine, with that engine's own (here: mock) LLM writing the answer.
    built_in = RetrieverQueryEngine(retriever, get_response_synthesizer(llm=MockLLM()))
    response = built_in.query(QUESTION)
    assert [node.node.node_id for node in response.source_nodes] == [node.node.node_id for node in nodes]


def test_index_answers_without_settings_llm(engine):
    index = LycheeIndex.from_documents(documents(), model=engine)
    response = index.as_query_engine().query(QUESTION)
    assert response.response == engine.ask(QUESTION, index.bank).text
    assert "".join(index.as_query_engine(streaming=True).query(QUESTION).response_gen) == response.response
    assert len(index.as_retriever(similarity_top_k=2).retrieve(QUESTION)) == 2
    assert index.as_retriever(k=1).k == 1
    with pytest.warns(UserWarning, match="similarity_top_k/k does not apply"):
        index.as_query_engine(similarity_top_k=3)
    with pytest.raises(ValueError, match="never falls back to Settings.llm"):
        index.as_chat_engine()
    assert Settings._llm is None  # nothing above resolved the global LLM (which would be OpenAI)
    # An explicit LLM is honoured: it writes the answer from the gate's blocks.
    with_llm = index.as_query_engine(llm=MockLLM(), similarity_top_k=2)
    assert isinstance(with_llm, RetrieverQueryEngine) and len(with_llm.query(QUESTION).source_nodes) == 2


def only(key: str, value, operator: FilterOperator = FilterOperator.EQ) -> MetadataFilters:
    return MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=operator)])


def test_metadata_filters_become_lychee_filters():
    both = MetadataFilters(
        filters=[
            MetadataFilter(key="lang", value="en"),
            MetadataFilter(key="year", value=[2023, 2024], operator=FilterOperator.IN),
            MetadataFilter(key="tenant", value="b", operator=FilterOperator.NE),
            MetadataFilter(key="tenant", value=["c", "d"], operator=FilterOperator.NIN),
            MetadataFilter(key="draft", value=None),
        ]
    )
    assert to_lychee_filters(both) == {
        "lang": "en",
        "year": {"$in": [2023, 2024]},
        "tenant": {"$nin": ["b", "c", "d"]},  # NE and NIN on one key, both required: one $nin
        "draft": None,
    }
    assert to_lychee_filters(MetadataFilters(filters=[], condition=None)) == {}
    assert to_lychee_filters(None) is None
    assert to_lychee_filters({"lang": {"$ne": "fr"}}) == {"lang": {"$ne": "fr"}}
    assert to_lychee_filters(DocumentFilter.parse({"lang": "en"})) == {"lang": {"$eq": "en"}}
    refused = [
        (MetadataFilters(filters=[MetadataFilter(key="a", value=1)], condition=FilterCondition.OR), "condition OR"),
        (MetadataFilters(filters=[MetadataFilter(key="a", value=1)], condition=FilterCondition.NOT), "condition NOT"),
        (only("year", 2020, FilterOperator.GT), r"filter on 'year': operator GT \('>'\) is not supported"),
        (only("tags", "x", FilterOperator.CONTAINS), "operator CONTAINS"),
        (only("title", "x", FilterOperator.TEXT_MATCH), "operator TEXT_MATCH"),
        (MetadataFilters(filters=[only("a", 1)]), "nested MetadataFilters are not supported"),
        (
            MetadataFilters(filters=[MetadataFilter(key="a", value=1), MetadataFilter(key="a", value=2)]),
            "several filters on 'a'",
        ),
        (only("year", 2020, FilterOperator.IN), r"\$in takes a list"),
        (only("tags", ["x", "y"]), "values must be strings"),
        ({"lang": {"$gt": 1}}, "unknown operator"),
        ("lang == en", "filters must be LlamaIndex MetadataFilters or a dict"),
    ]
    for filters, message in refused:
        with pytest.raises(FilterError, match=message):
            to_lychee_filters(filters)


def test_retriever_and_query_engine_filters(engine):
    index = LycheeIndex.from_documents(documents(), model=engine)
    bank, kestrel = index.bank, {"file_name": "kestrel.txt"}
    retriever = index.as_retriever(filters=only("file_name", "kestrel.txt"))
    assert retriever.filters == kestrel
    nodes = retriever.retrieve(QUESTION)
    assert nodes and {node.node.ref_doc_id for node in nodes} == {"kestrel"}
    assert_nodes_match_blocks(nodes, engine.select(QUESTION, bank, filters=kestrel), bank)
    arvel = LycheeRetriever(bank, engine, filters={"file_name": {"$ne": "kestrel.txt"}}).retrieve(QUESTION)
    assert arvel and {node.node.ref_doc_id for node in arvel} == {"arvel"}
    of_kestrel = sum(span.document_id == "kestrel" for span in bank.spans)
    filled = index.as_retriever(similarity_top_k=of_kestrel + 2, filters=kestrel).retrieve(QUESTION)
    assert len(filled) == of_kestrel and {node.node.ref_doc_id for node in filled} == {"kestrel"}
    assert [node.node.metadata["selected"] for node in filled] == [True] * len(nodes) + [False] * (
        of_kestrel - len(nodes)
    )

    query_engine = index.as_query_engine(filters=only("file_name", ["kestrel.txt"], FilterOperator.IN))
    assert query_engine.filters == {"file_name": {"$in": ["kestrel.txt"]}}
    response = query_engine.query(QUESTION)
    expected = engine.ask(QUESTION, bank, filters=kestrel)
    assert response.response == expected.text != engine.ask(QUESTION, bank).text
    assert_nodes_match_blocks(response.source_nodes, expected.blocks, bank)
    assert query_engine.retrieve(QUESTION) == response.source_nodes
    streamed = index.as_query_engine(streaming=True, filters=kestrel).query(QUESTION)
    assert "".join(streamed.response_gen) == expected.text
    assert {node.node.ref_doc_id for node in streamed.source_nodes} == {"kestrel"}
    from_documents = LycheeQueryEngine.from_documents(documents(), model=engine, filters=kestrel)
    assert from_documents.query(QUESTION).response == expected.text
    with_llm = index.as_query_engine(llm=MockLLM(), filters=kestrel)
    assert {node.node.ref_doc_id for node in with_llm.query(QUESTION).source_nodes} == {"kestrel"}
    chat = index.as_chat_engine(llm=MockLLM(), filters=kestrel)
    assert {node.node.ref_doc_id for node in chat.chat(QUESTION).source_nodes} == {"kestrel"}
    with pytest.raises(FilterError, match="condition OR"):
        index.as_retriever(filters=MetadataFilters(filters=[MetadataFilter(key="a", value=1)], condition="or"))
    with pytest.raises(FilterError, match="operator LT"):
        index.as_query_engine(filters=only("year", 2000, FilterOperator.LT))


def test_k_returns_k_nodes_selected_first(engine, query_engine):
    bank = query_engine.bank
    read = len(engine.select(QUESTION, bank))
    assert read == 4
    nodes = LycheeIndex(bank, engine).as_retriever(similarity_top_k=read + 2).retrieve(QUESTION)
    assert len(nodes) == read + 2 and len({node.node.node_id for node in nodes}) == read + 2
    assert [node.node.metadata["selected"] for node in nodes] == [True] * read + [False, False]
    assert "selected" not in nodes[-1].node.get_content(metadata_mode="llm")
    assert_nodes_match_blocks(nodes, engine.select(QUESTION, bank, k=read + 2), bank)


SHORT_DOCUMENTS = [
    Document(text="The access code for the east pier storage shed is 58213.", id_="code"),
    Document(text="Kestrel Hall's head gardener is a botanist named Odile Fenwick.", id_="garden"),
    Document(text="The market of Arvel opens on Saturdays; bread and wool are sold.", id_="market"),
    Document(text="The Silver Heron anchored in the bay of Arvel for one winter.", id_="ship"),
]


@requires_embedded_model
@pytest.mark.slow
def test_as_retriever_on_the_embedded_default_returns_k_nodes():
    # model=None: the embedded default with its own gate settings, loaded once per process by the adapters.
    index = LycheeIndex.from_documents(SHORT_DOCUMENTS)
    assert len(index.bank) == 4
    nodes = index.as_retriever(similarity_top_k=3).retrieve(QUESTION)
    assert len(nodes) == 3 and len({node.node.node_id for node in nodes}) == 3
    flags = [node.node.metadata["selected"] for node in nodes]
    assert flags[0] is True and flags == sorted(flags, reverse=True) and flags[-1] is False
    assert nodes[0].node.ref_doc_id == "code"


def test_index_insert_update_delete_and_refresh_in_memory(engine, caplog):
    index = LycheeIndex.from_documents(documents()[:1], model=engine)
    index.insert(Document(text=KEEPER, id_="keeper", metadata={"file_name": "keeper.txt"}))
    assert list(index.ref_doc_info) == ["arvel", "keeper"]
    keeper_nodes = index.ref_doc_info["keeper"].node_ids
    assert keeper_nodes and all(node_id.startswith("keeper#") for node_id in keeper_nodes)
    keeper_blocks = [span for span in index.bank.spans if span.document_id == "keeper"]
    assert "".join(span.text for span in keeper_blocks) == KEEPER
    assert {index.bank.spans[i].document_id for i in range(len(index.bank))} == {"arvel", "keeper"}

    index.update_ref_doc(Document(text=SECOND_DOCUMENT, id_="keeper", metadata={"file_name": "keeper.txt"}))
    assert list(index.ref_doc_info) == ["arvel", "keeper"]
    assert index.bank.document("keeper").text == SECOND_DOCUMENT

    assert index.refresh_ref_docs(
        [
            Document(text=FACTS_DOCUMENT, id_="arvel", metadata={"file_name": "arvel.txt"}),
            Document(text=KEEPER, id_="new"),
        ]
    ) == [False, True]
    assert list(index.ref_doc_info) == ["arvel", "keeper", "new"]

    index.delete_ref_doc("keeper")
    assert list(index.ref_doc_info) == ["arvel", "new"]
    assert all(span.document_id != "keeper" for span in index.bank.spans)
    with caplog.at_level(logging.WARNING):
        index.delete_ref_doc("keeper")
    assert "ref_doc_id keeper not found" in caplog.text
    nodes = index.as_retriever().retrieve(QUESTION)
    assert {node.node.ref_doc_id for node in nodes} <= {"arvel", "new"}


async def test_index_inserts_nodes_and_asynchronously(engine):
    index = LycheeIndex.from_documents(documents()[:1], model=engine)
    index.insert_nodes([TextNode(id_="note", text=KEEPER)])
    await index.ainsert(Document(text=SECOND_DOCUMENT, id_="kestrel"))
    assert list(index.ref_doc_info) == ["arvel", "note", "kestrel"]


def test_persist_refuses_a_bad_bank_name_before_changing_anything(engine, tmp_path):
    index = LycheeIndex.from_documents(documents(), model=engine)
    store = MemoryStore(tmp_path / "store")
    index.persist(store, bank="guide")
    with pytest.raises(ConfigurationError, match="is not allowed: a bank name is"):
        index.persist(store, bank="../guide")
    assert store.bank_names() == ["guide"] and store.bank_info("guide").documents == ("arvel", "kestrel")


def test_persist_and_from_persist_dir_round_trip(engine, tmp_path):
    index = LycheeIndex.from_documents(documents(), model=engine)
    store = MemoryStore(tmp_path / "exact", block_dtype="float32")
    index.persist(store)
    loaded = LycheeIndex.from_persist_dir(store, model=engine)
    assert [document.id for document in loaded.bank.documents] == ["arvel", "kestrel"]
    assert loaded.bank.spans == index.bank.spans
    assert loaded.ref_doc_info == index.ref_doc_info
    assert loaded.bank.document("arvel").metadata == {"file_name": "arvel.txt"}
    before = index.as_query_engine().query(QUESTION)
    after = loaded.as_query_engine().query(QUESTION)
    assert after.response == before.response
    assert [node.node.node_id for node in after.source_nodes] == [node.node.node_id for node in before.source_nodes]

    # Default format (bfloat16 blocks) in a directory; the stored bank then follows the index exactly.
    directory = tmp_path / "storage"
    index.persist(directory)
    index.delete_ref_doc("kestrel")
    index.persist(directory)
    reopened = LycheeIndex.from_persist_dir(directory, model=engine)
    assert list(reopened.ref_doc_info) == ["arvel"]
    assert reopened.bank.spans == index.bank.spans
    assert len(reopened.as_retriever().retrieve(QUESTION)) == 4


def test_index_kept_in_a_store_changes_on_disk(engine, tmp_path):
    store_path = tmp_path / "store"
    index = LycheeIndex.from_documents(documents()[:1], model=engine, store=store_path, bank="guide")
    assert index.bank.store is not None
    index.insert(Document(text=KEEPER, id_="keeper"))
    index.delete_ref_doc("arvel")
    assert MemoryStore(store_path).bank_info("guide").documents == ("keeper",)
    index.persist(store_path, bank="guide")  # already there: nothing to write
    assert list(LycheeIndex.from_persist_dir(store_path, model=engine).ref_doc_info) == ["keeper"]
    engine_from_store = LycheeQueryEngine.from_documents(model=engine, store=store_path, bank="guide")
    assert engine_from_store.query(QUESTION).source_nodes[0].node.ref_doc_id == "keeper"
    LycheeIndex.from_documents(documents()[1:], model=engine, store=store_path, bank="other")
    with pytest.raises(ValueError, match="holds 2 banks"):
        LycheeIndex.from_persist_dir(store_path, model=engine)


def test_bad_inputs_give_clear_errors(engine, query_engine, tmp_path):
    with pytest.raises(DocumentError, match="no documents and no bank"):
        LycheeQueryEngine.from_documents(model=engine)
    with pytest.raises(DocumentError, match="no documents given"):
        LycheeIndex.from_documents([], model=engine)
    with pytest.raises(DocumentError, match="empty"):
        LycheeIndex.from_documents([Document(text="   ")], model=engine)
    with pytest.raises(TypeError, match="cannot read a document from int"):
        LycheeQueryEngine.from_documents([42], model=engine)
    with pytest.raises(EmptyQuestionError):
        query_engine.query("   ")
    with pytest.raises(TypeError, match="a query must be a string or a QueryBundle"):
        query_engine.query(42)
    with pytest.raises(TypeError, match="bank must be a MemoryBank"):
        LycheeQueryEngine("my-bank", engine)
    with pytest.raises(TypeError, match="model must be a LycheeMemory engine"):
        LycheeRetriever(query_engine.bank, 3.5)
    with pytest.raises(ValueError, match="k must be a positive number"):
        LycheeRetriever(query_engine.bank, engine, k=0)
    with pytest.raises(ValueError, match="not a StorageContext"):
        LycheeIndex.from_documents(documents(), model=engine, storage_context=StorageContext.from_defaults())
    with pytest.raises(ValueError, match="takes no transformations"):
        LycheeIndex.from_documents(documents(), model=engine, transformations=[SentenceSplitter()])
    with pytest.raises(ValueError, match="name the bank too"):
        LycheeIndex.from_documents(documents(), model=engine, store=tmp_path / "store")
    with pytest.raises(StoreError, match="no store at"):
        LycheeIndex.from_documents(model=engine, store=tmp_path / "store", bank="missing")
    assert not (tmp_path / "store").exists(), "opening a bank never creates a store"
    MemoryStore(tmp_path / "store")
    with pytest.raises(BankNotFoundError, match="no bank named 'missing'"):
        LycheeIndex.from_documents(model=engine, store=tmp_path / "store", bank="missing")
    index = LycheeIndex(query_engine.bank, engine)
    with pytest.raises(TypeError, match="unsupported options response_mode"):
        index.as_query_engine(response_mode="compact")
    with pytest.raises(NotImplementedError, match="use delete_ref_doc"):
        index.delete_nodes(["arvel#0-90"])
