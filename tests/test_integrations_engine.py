"""What the adapters build on: gate-only selection, sources before the answer, and streaming helpers."""

from __future__ import annotations

import asyncio
import threading

import pytest
from lychee_memory.integrations.engines import call_engine_async, engine_lock, resolve_engine
from lychee_memory.integrations.streaming import iterate_engine, iterate_engine_async, trimmed

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


def test_select_with_k_keeps_the_best_scores_in_reading_order(engine, bank):
    everything = engine.select(QUESTION, bank)
    best_two = engine.select(QUESTION, bank, k=2)
    expected = sorted(sorted(everything, key=lambda block: -block.score)[:2], key=lambda block: block.index)
    assert best_two == expected
    assert engine.select(QUESTION, bank, k=10) == everything
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
    engine = make_engine()
    threads: list[str] = []
    produced: list[int] = []

    def pieces():
        for number in range(1000):
            threads.append(threading.current_thread().name)
            produced.append(number)
            yield str(number)

    received = []
    async for piece in iterate_engine_async(engine, pieces()):
        received.append(piece)
        if len(received) == 3:
            break
    await asyncio.sleep(0.05)
    assert received == ["0", "1", "2"]
    assert len(set(threads)) == 1 and threads[0] != threading.current_thread().name
    assert len(produced) <= 3 + 4 + 1  # at most a few pieces ahead, and it stopped after the consumer left
    assert engine_lock(engine).acquire(timeout=1)  # and released the engine
    engine_lock(engine).release()


async def test_async_iteration_raises_the_workers_error():
    engine = make_engine()

    def failing():
        yield "a"
        raise EmptyQuestionError("boom")

    received = []
    with pytest.raises(EmptyQuestionError, match="boom"):
        async for piece in iterate_engine_async(engine, failing()):
            received.append(piece)
    assert received == ["a"]


def test_sync_iteration_releases_the_lock_between_pieces():
    engine = make_engine()
    seen_free = []

    def pieces():
        for number in range(3):
            yield str(number)

    def try_lock() -> None:
        lock = engine_lock(engine)
        acquired = lock.acquire(timeout=1)
        seen_free.append(acquired)
        if acquired:
            lock.release()

    for _ in iterate_engine(engine, pieces()):
        holder = threading.Thread(target=try_lock)
        holder.start()
        holder.join()
    assert seen_free == [True, True, True]
