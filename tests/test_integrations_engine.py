"""What the adapters build on: gate-only selection, sources before the answer, and streaming helpers."""

from __future__ import annotations

import asyncio
import threading

import pytest
from lychee_memory.integrations.engines import call_engine, call_engine_async, resolve_engine
from lychee_memory.integrations.streaming import iterate_async, trimmed

from lychee_memory import ConfigurationError, EmptyQuestionError

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, loop_ticks, make_engine

QUESTION = "What is the access code for the east pier storage shed?"


@pytest.fixture(scope="module")
def engine():
    return make_engine(threshold=-1e9, max_relevant_blocks=4, max_answer_tokens=24)


@pytest.fixture(scope="module")
def bank(engine):
    return engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])


def test_select_returns_the_blocks_ask_reads(engine, bank):
    answer = engine.ask(QUESTION, bank)
    selected = engine.select(QUESTION, bank)
    assert selected == answer.blocks
    assert len(selected) == 4  # every block passes this threshold; the budget stops the scan


def test_select_takes_a_memory_strategy_for_one_call_and_keeps_the_engines(engine, bank):
    """A retriever that must not decode passes its own strategy; later calls use the engine's again."""
    from lychee_memory.working_memory import GeneratedNotes

    class Recorded(GeneratedNotes):
        reads: list[int] = []

        def update(self, reasoner, bank, reads, observe=None):
            Recorded.reads.extend(index for _, index in reads)
            return [state.memory for state, _ in reads]  # the memory as it was: nothing decoded

    generated: list[int] = []
    original = engine.reasoner.update
    engine.reasoner.update = lambda requests: generated.append(len(requests)) or original(requests)
    try:
        strategy = engine.memory_strategy
        selected = engine.select(QUESTION, bank, memory=Recorded())
        assert [block.index for block in selected] == Recorded.reads and generated == []
        assert engine.memory_strategy is strategy
        engine.select(QUESTION, bank)
        assert generated  # the engine's own strategy writes notes again
    finally:
        del engine.reasoner.update


def test_select_with_k_keeps_the_best_scores_in_reading_order(engine, bank):
    everything = engine.select(QUESTION, bank)
    best_two = engine.select(QUESTION, bank, k=2)
    expected = sorted(sorted(everything, key=lambda block: -block.score)[:2], key=lambda block: block.index)
    assert best_two == expected
    filled = engine.select(QUESTION, bank, k=10)  # more than the gate read: its selections, then unread blocks
    assert len(filled) == min(10, len(bank)) and filled[: len(everything)] == everything
    assert not any(block.selected for block in filled[len(everything) :])
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigurationError, match="k must be a positive number"):
            engine.select(QUESTION, bank, k=bad)
    with pytest.raises(EmptyQuestionError):
        engine.select("  ", bank)


def test_default_gate_selects_fewer_blocks_than_the_bank_holds():
    engine = make_engine()
    bank = engine.ingest([FACTS_DOCUMENT])
    selected = engine.select(QUESTION, bank)
    assert 1 <= len(selected) < len(bank)


def test_stream_blocks_are_known_before_any_answer_text(engine, bank):
    stream = engine.stream(QUESTION, bank)
    blocks = stream.blocks
    assert stream._answer is None  # only the scan ran
    assert blocks == engine.select(QUESTION, bank)
    text = "".join(stream)
    assert text.strip() == stream.answer.text
    assert stream.answer.blocks == blocks
    assert stream.blocks == blocks


def test_trimmed_pieces_join_to_the_stripped_text():
    pieces = ["  ", "\n Hello", " ", "world ", "\n", ""]
    assert "".join(trimmed(pieces)) == "Hello world"
    assert list(trimmed(["   ", "\n"])) == []


def test_resolve_engine_shares_engines_by_spec_and_checks_types(engine):
    assert resolve_engine(engine) is engine
    with pytest.raises(TypeError, match="model must be a LycheeMemory engine or a model spec"):
        resolve_engine(42)
    with pytest.raises(ValueError, match="model spec is empty"):
        resolve_engine("  ")


async def test_async_engine_calls_leave_the_event_loop_free(engine):
    def slow_call() -> str:
        threading.Event().wait(0.3)  # stands in for a long engine call
        return threading.current_thread().name

    async with loop_ticks() as ticks:
        thread_name = await call_engine_async(engine, slow_call)
    assert thread_name != threading.current_thread().name
    assert ticks.count >= 20


async def test_async_iteration_runs_in_one_worker_thread_and_stops_early():
    threads: list[str] = []
    produced: list[int] = []

    def pieces():
        for number in range(1000):
            threads.append(threading.current_thread().name)
            produced.append(number)
            yield str(number)

    received = []
    async for piece in iterate_async(pieces()):
        received.append(piece)
        if len(received) == 3:
            break
    await asyncio.sleep(0.05)
    assert received == ["0", "1", "2"]
    assert len(set(threads)) == 1 and threads[0] != threading.current_thread().name
    assert len(produced) <= 3 + 4 + 1  # at most a few pieces ahead, and it stopped after the consumer left


async def test_async_iteration_raises_the_workers_error():
    def failing():
        yield "a"
        raise EmptyQuestionError("boom")

    received = []
    with pytest.raises(EmptyQuestionError, match="boom"):
        async for piece in iterate_async(failing()):
            received.append(piece)
    assert received == ["a"]


def lock_is_free(engine) -> bool:
    """Whether another thread can take the engine's lock within a second."""
    seen = []

    def try_lock() -> None:
        acquired = engine.lock.acquire(timeout=1)
        seen.append(acquired)
        if acquired:
            engine.lock.release()

    holder = threading.Thread(target=try_lock)
    holder.start()
    holder.join()
    return seen[0]


def test_a_stream_releases_the_engine_between_pieces(engine, bank):
    stream = engine.stream(QUESTION, bank)
    pieces = 0
    for _ in stream:
        pieces += 1
        assert lock_is_free(engine), "the caller's code between pieces runs without the engine's lock"
    assert pieces >= 2
    assert lock_is_free(engine)


async def test_an_abandoned_async_stream_does_not_hold_the_engine():
    """A consumer that stops reading (without closing) must not keep other callers out of the engine."""
    engine = make_engine(threshold=-1e9, max_relevant_blocks=2, max_answer_tokens=120)
    bank = engine.ingest([FACTS_DOCUMENT])
    assert len(list(trimmed(engine.stream(QUESTION, bank)))) > 10, "more pieces than the worker may run ahead"
    pieces = iterate_async(trimmed(engine.stream(QUESTION, bank)))
    assert await pieces.__anext__()
    await asyncio.sleep(0.2)  # the worker runs a few pieces ahead, then waits for room, mid-answer
    answer = await asyncio.wait_for(asyncio.to_thread(call_engine, engine, lambda: engine.ask(QUESTION, bank)), 60)
    assert answer.text
    await pieces.aclose()


def test_engine_calls_from_threads_are_serialised(engine, bank):
    """Direct engine users get the lock too: concurrent asks give what each gives alone."""
    questions = [QUESTION, "Who is the head gardener?", "Which ship anchored in the bay?"]
    alone = [engine.ask(question, bank).text for question in questions]
    results: dict[int, str] = {}
    active, peak = [0], [0]
    original = engine.reasoner.answer

    def counting(*args, **kwargs):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            return original(*args, **kwargs)
        finally:
            active[0] -= 1

    engine.reasoner.answer = counting
    try:
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, engine.ask(questions[i % 3], bank).text))
            for i in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        engine.reasoner.answer = original
    assert peak[0] == 1, "two threads were inside the engine at once"
    assert [results[i] for i in range(6)] == [alone[i % 3] for i in range(6)]
