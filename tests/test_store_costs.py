"""What a stored bank costs: each block fetched and decoded once per query, and bytes per token by part."""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest

from lychee_memory import Document
from lychee_memory.store import MemoryStore

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine

QUESTION = "What is the access code for the east pier storage shed?"


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """An engine and a store holding one bank of two documents."""
    engine = make_engine()
    store = MemoryStore(tmp_path_factory.mktemp("store"))
    docs = [Document.from_text(FACTS_DOCUMENT, id="facts"), Document.from_text(SECOND_DOCUMENT, id="garden")]
    engine.ingest(docs, store=store, bank="harbour")
    return engine, store


def counted_bank(store):
    """The bank, its block reads counted per block (each read is one fetch from the store and one decode)."""
    bank = store.load_bank("harbour")
    fetched: Counter[int] = Counter()
    load = bank.loader

    def counting(index):
        fetched[index] += 1
        return load(index)

    bank.loader = counting
    return bank, fetched


def without_cache(monkeypatch):
    monkeypatch.setattr("lychee_memory.engine.blocks_once", lambda bank: contextlib.nullcontext(bank))


def test_a_block_scored_by_the_gate_and_read_by_the_reasoner_is_fetched_once(stored, monkeypatch):
    engine, store = stored
    bank, fetched = counted_bank(store)
    cached = engine.ask(QUESTION, bank)
    read = [block.index for block in cached.blocks if block.selected]
    scored = {score.index for score in cached.gate_scores}
    assert read and set(read) <= scored  # the read blocks were stage-2 rows too
    assert max(fetched.values()) == 1 and all(fetched[index] == 1 for index in read)

    with monkeypatch.context() as patch:
        without_cache(patch)
        bank, before = counted_bank(store)
        uncached = engine.ask(QUESTION, bank)
    # Without it: once for the gate row, once for the reasoner (and once more for a near-tie rescored alone).
    assert all(before[index] >= 2 for index in read)
    assert set(before) == set(fetched) and sum(before.values()) > sum(fetched.values())
    assert uncached.text == cached.text
    assert [block.index for block in uncached.blocks] == [block.index for block in cached.blocks]


def test_ask_many_fetches_each_block_once_per_batch(stored, monkeypatch):
    engine, store = stored
    questions = [QUESTION, "Who is the head gardener of Kestrel Hall?"]
    bank, fetched = counted_bank(store)
    cached = engine.ask_many(questions, bank)
    assert fetched and max(fetched.values()) == 1
    with monkeypatch.context() as patch:
        without_cache(patch)
        bank, before = counted_bank(store)
        uncached = engine.ask_many(questions, bank)
    assert max(before.values()) > 1
    assert [answer.text for answer in uncached] == [answer.text for answer in cached]
