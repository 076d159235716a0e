"""LycheeMemoryBlock inside LlamaIndex's own Memory: flushed messages appended, recall by the gate, sessions,
truncation, forgetting, and recency among near ties (tiny random models)."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory import BaseMemoryBlock, Memory
from lychee_memory.integrations.llama_index import LycheeMemoryBlock
from lychee_memory.integrations.recall import GATE_RECALL
from lychee_memory.integrations.recency import Recalled, newest_first_among_ties

from lychee_memory import FilterError, MemoryStore

from .conftest import make_engine, requires_embedded_model


@pytest.fixture(scope="module")
def engine():
    return make_engine("llama")


def chat(role: str, text: str) -> ChatMessage:
    return ChatMessage(role=role, content=text)


def test_is_a_memory_block_and_keeps_the_llama_index_fields(engine, tmp_path):
    block = LycheeMemoryBlock(name="long_term", model=engine, store=tmp_path / "s", priority=1)
    assert isinstance(block, BaseMemoryBlock) and block.name == "long_term" and block.priority == 1
    assert asyncio.run(block.aget([chat("user", "anything?")])) == ""  # nothing stored yet: nothing recalled


def test_aput_appends_messages_without_compressing_stored_ones_again(engine, tmp_path):
    block = LycheeMemoryBlock(name="m", model=engine, store=tmp_path / "s", bank="chat")
    store = MemoryStore(tmp_path / "s")
    asyncio.run(block.aput([chat("user", "I live in Oslo."), chat("assistant", "Noted.")], session_id="s1"))
    asyncio.run(block.aput([chat("user", "My cat is called Miso.")], session_id="s2"))
    report = block.memory_store.last_ingest
    assert report is not None and report.documents_added == 1 and report.compressed == 1  # only the new message
    bank = engine.open_bank("chat", store=store)
    assert [document.text for document in bank.documents] == [
        "user: I live in Oslo.",
        "assistant: Noted.",
        "user: My cat is called Miso.",
    ]
    metadata = [document.metadata for document in bank.documents]
    assert [entry["session_id"] for entry in metadata] == ["s1", "s1", "s2"]
    assert [entry["role"] for entry in metadata] == ["user", "assistant", "user"]
    times = [entry["turn_time"] for entry in metadata]
    assert times == sorted(times)


def test_aget_recalls_with_sources_and_filters_by_session(engine, tmp_path):
    block = LycheeMemoryBlock(name="m", model=engine, store=tmp_path / "s", k=2, recall_settings=GATE_RECALL)
    asyncio.run(block.aput([chat("user", "The boat is moored at pier nine.")], session_id="a"))
    asyncio.run(block.aput([chat("user", "The vault code is 4471.")], session_id="b"))
    asyncio.run(block.aput([chat("user", "Lunch is at noon on Fridays.")], session_id="b"))
    text = asyncio.run(block.aget([chat("user", "Where is the boat?")]))
    assert len(block.last_sources) == 2
    for source in block.last_sources:
        assert source["text"] in text and f"(source: {source['document_id']} in session {source['session_id']}" in text
    only_a = asyncio.run(block.aget([chat("user", "Where is the boat?")], session_id="a"))
    assert [source["session_id"] for source in block.last_sources] == ["a"]
    assert "pier nine" in only_a and "vault" not in only_a
    everyone = LycheeMemoryBlock(
        name="m", model=engine, store=tmp_path / "s", k=3, all_sessions=True, recall_settings=GATE_RECALL
    )
    asyncio.run(everyone.aget([chat("user", "Where is the boat?")], session_id="a"))
    assert {source["session_id"] for source in everyone.last_sources} == {"a", "b"}
    pinned = LycheeMemoryBlock(
        name="m", model=engine, store=tmp_path / "s", k=3, filters={"session_id": "b"}, recall_settings=GATE_RECALL
    )
    asyncio.run(pinned.aget([chat("user", "Where is the boat?")]))
    assert {source["session_id"] for source in pinned.last_sources} == {"b"}
    with pytest.raises(FilterError, match="unknown operator"):
        LycheeMemoryBlock(name="m", model=engine, filters={"role": {"$regex": "u"}})


def test_memory_flushes_into_the_block_and_recalls_in_its_output(engine, tmp_path):
    block = LycheeMemoryBlock(name="lychee", model=engine, store=tmp_path / "s", k=1)
    memory = Memory.from_defaults(
        session_id="alice", token_limit=60, chat_history_token_ratio=0.5, token_flush_size=20, memory_blocks=[block]
    )

    async def converse() -> list[ChatMessage]:
        for turn in range(8):
            await memory.aput(chat("user", f"Note {turn}: the harbour bell rang {turn} times at dawn."))
            await memory.aput(chat("assistant", "Noted."))
        return await memory.aget()

    messages = asyncio.run(converse())
    bank = engine.open_bank("agent_memory", store=MemoryStore(tmp_path / "s"))
    assert len(bank.documents) >= 2 and {document.metadata["session_id"] for document in bank.documents} == {"alice"}
    recalled = block.last_sources[0]["text"]
    assert any(recalled in message.content for message in messages if message.content)  # in Memory's output


def test_atruncate_drops_the_least_relevant_messages_first(engine, tmp_path):
    block = LycheeMemoryBlock(name="m", model=engine, store=tmp_path / "s", k=3, recall_settings=GATE_RECALL)
    asyncio.run(block.aput([chat("user", f"Fact {index}: the tower has {index} bells.") for index in range(4)]))
    text = asyncio.run(block.aget([chat("user", "How many bells?")]))
    sources = block.last_sources
    assert asyncio.run(block.atruncate(text, 0)) == text
    shorter = asyncio.run(block.atruncate(text, 1))
    assert sources[-1]["text"] not in shorter and sources[0]["text"] in shorter
    assert asyncio.run(block.atruncate(text, 10_000)) is None


def test_forget_then_gc_leaves_no_trace_of_the_message(engine, tmp_path):
    root = tmp_path / "s"
    block = LycheeMemoryBlock(name="m", model=engine, store=root, k=2)
    asyncio.run(block.aput([chat("user", "My locker combination is walnut-7719-osprey."), chat("user", "Hello.")]))
    asyncio.run(block.aget([chat("user", "What is my locker combination?")]))
    secret = next(source for source in block.last_sources if "walnut" in source["text"])
    asyncio.run(block.forget([secret["document_id"]]))
    asyncio.run(block.aget([chat("user", "What is my locker combination?")]))  # the block reads the new version
    assert all("walnut" not in source["text"] for source in block.last_sources)
    report = MemoryStore(root).gc()
    assert report.removed_texts == 1
    assert [path for path in root.rglob("*") if path.is_file() and b"walnut-7719" in path.read_bytes()] == []


def test_the_newer_of_two_near_tied_messages_is_recalled_first(engine, tmp_path):
    """The same statement made twice scores alike (to the last bits of a batched forward): the later one leads."""
    block = LycheeMemoryBlock(name="m", model=engine, store=tmp_path / "s", k=2, recall_settings=GATE_RECALL)
    asyncio.run(block.aput([chat("user", "The meeting room is on floor three.")], session_id="old"))
    asyncio.run(block.aput([chat("user", "The meeting room is on floor three.")], session_id="new"))
    asyncio.run(block.aget([chat("user", "Which floor is the meeting room on?")]))
    assert [source["session_id"] for source in block.last_sources] == ["new", "old"]


def reference_order(items: list[Recalled], margin: float) -> list[str]:
    """Independent reference: item a precedes b when a's score beats b's by more than the recency bonus between
    them, computed pairwise (a bubble sort over the pairwise rule)."""
    times = sorted({item.time for item in items})
    spread = max(item.score for item in items) - min(item.score for item in items)

    def bonus(item: Recalled) -> float:
        return 0.0 if len(times) < 2 else margin * spread * times.index(item.time) / (len(times) - 1)

    order = list(items)
    for _ in range(len(order)):
        for position in range(len(order) - 1):
            first, second = order[position], order[position + 1]
            key_first = (first.score + bonus(first), first.time)
            key_second = (second.score + bonus(second), second.time)
            if key_second > key_first:
                order[position], order[position + 1] = second, first
    return [item.document_id for item in order]


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.25, 1.0])
def test_recency_ranking_matches_a_pairwise_reference(margin):
    scores = [0.9, 0.85, 0.5, 0.88, 0.2, 0.5]
    for permutation in itertools.islice(itertools.permutations(range(6)), 0, 720, 37):
        items = [Recalled(f"d{index}", scores[index], float(time)) for time, index in enumerate(permutation)]
        ours = [item.document_id for item in newest_first_among_ties(items, margin)]
        assert ours == reference_order(items, margin)
    # margin 0 is the gate's order, ties newest first
    items = [Recalled("old", 0.5, 1.0), Recalled("new", 0.5, 2.0), Recalled("best", 0.9, 0.0)]
    assert [item.document_id for item in newest_first_among_ties(items, 0.0)] == ["best", "new", "old"]
    # a newer message within the margin overtakes; a clearly better older one does not
    items = [Recalled("old", 0.80, 1.0), Recalled("new", 0.78, 2.0), Recalled("low", 0.0, 0.0)]
    assert [item.document_id for item in newest_first_among_ties(items, 0.25)] == ["new", "old", "low"]
    items = [Recalled("old", 0.80, 1.0), Recalled("new", 0.40, 2.0), Recalled("low", 0.0, 0.0)]
    assert [item.document_id for item in newest_first_among_ties(items, 0.25)] == ["old", "new", "low"]
    with pytest.raises(ValueError, match="0 or more"):
        newest_first_among_ties(items, -1.0)


@requires_embedded_model
@pytest.mark.slow
def test_works_alone_on_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    block = LycheeMemoryBlock(name="memory")  # the embedded default model and the default store

    async def run() -> str:
        await block.aput([chat("user", "My sister Ingrid lives in Bergen.")], session_id="s")
        await block.aput([chat("user", "I bought bread and cheese today.")], session_id="s")
        return await block.aget([chat("user", "Where does my sister live?")])

    assert "Bergen" in asyncio.run(run())


def test_recall_decodes_nothing_and_leaves_the_engine_as_it_was(engine, tmp_path, monkeypatch):
    block = LycheeMemoryBlock(name="m", model=engine, store=tmp_path / "s", k=2, recall_settings=GATE_RECALL)
    asyncio.run(block.aput([chat("user", f"Fact {index}: the ferry leaves at {index} o'clock.") for index in range(6)]))
    bank = engine.open_bank("agent_memory", store=MemoryStore(tmp_path / "s"))
    updates: list[int] = []
    original = engine.reasoner.update
    monkeypatch.setattr(engine.reasoner, "update", lambda requests: updates.append(len(requests)) or original(requests))
    engine.select("When does the ferry leave?", bank, k=2)
    assert updates  # the engine's own select writes notes for the blocks it reads: the check below can fail
    updates.clear()
    strategy = engine.memory_strategy
    asyncio.run(block.aget([chat("user", "When does the ferry leave?")]))
    assert len(block.last_sources) == 2 and updates == []
    assert engine.memory_strategy is strategy
