"""What a stored bank costs: each block fetched and decoded once per query, and bytes per token by part."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter

import pytest

from lychee_memory import Document
from lychee_memory.store import MemoryStore
from lychee_memory.store.reading import QueryBlocks, blocks_once

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
    monkeypatch.setattr("lychee_memory.engine.blocks_once", lambda bank, max_blocks: contextlib.nullcontext(bank))


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


def test_the_query_cache_keeps_at_most_its_blocks_and_bytes_and_nothing_after_the_query(stored):
    _, store = stored
    bank = store.load_bank("harbour")
    size = bank.block(0).nbytes
    cache = QueryBlocks(bank.block, max_blocks=2)
    for index in (0, 1, 0, 2):  # 0 used again, so 1 is the least recently used when 2 arrives
        cache(index)
    assert list(cache.blocks) == [0, 2] and cache.fetches == 3 and cache.hits == 1
    small = QueryBlocks(bank.block, max_blocks=8, budget_bytes=size + 1)
    for index in range(3):
        small(index)
    assert list(small.blocks) == [2] and small.held_bytes == small.blocks[2].nbytes  # the last one is always kept
    with blocks_once(bank, max_blocks=4) as scanned:
        assert len(scanned) == len(bank) and scanned.origin(3) == (bank, 3)
        assert scanned.block(3).span == bank.spans[3]
        cached = scanned.loader
    assert not cached.blocks and cached.held_bytes == 0


# Bytes per token by part ------------------------------------------------------------------------------------------

PARTS = ("blocks", "index", "texts", "manifests")


def item_bytes(store, prefix: str, keys) -> int:
    """The bytes of these stored items, read back one by one (not the store's own accounting)."""
    total = 0
    for key in keys:
        data = store.objects.items.get(prefix + key)
        assert data is not None, prefix + key
        total += len(data)
    return total


def measured(store, manifests) -> dict[str, int]:
    """Each part's bytes summed from the store's objects: the distinct items these manifests name."""
    return {
        "blocks": item_bytes(store, "block:", {key for m in manifests for key in m.block_keys()}),
        "index": item_bytes(store, "index:", {key for m in manifests for key in m.index_keys()}),
        "texts": item_bytes(store, "text:", {d.text_key for m in manifests for d in m.documents}),
        "manifests": sum(len(store.manifests.catalog.read(m.name)) for m in manifests),
    }


def check_adds_up(parts: dict, expected: dict[str, int], tokens: int) -> None:
    assert {part: parts[part] for part in PARTS} == expected
    assert all(expected[part] > 0 for part in PARTS)
    assert parts["total"] == sum(expected.values()) and parts["tokens"] == tokens
    for part in (*PARTS, "total"):
        assert parts["per_token"][part] == pytest.approx(parts[part] / tokens)


@pytest.fixture(scope="module")
def two_banks(tmp_path_factory):
    """A store whose two banks share a document (its blocks and text are stored once), written through the CLI."""
    from lychee_memory.cli import main

    root = tmp_path_factory.mktemp("costs")
    facts, garden = root / "facts.txt", root / "garden.txt"
    facts.write_text(FACTS_DOCUMENT, encoding="utf-8")
    garden.write_text(SECOND_DOCUMENT, encoding="utf-8")
    store = str(root / "store")
    tiny = ["--model", "tiny-random-llama", "--chunk-tokens", "64", "--no-progress", "--json", "--store", store]
    reports = {}
    for bank, paths in (("harbour", [facts]), ("both", [facts, garden])):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["ingest", *map(str, paths), "--bank", bank, *tiny]) == 0
        reports[bank] = json.loads(out.getvalue())
    return MemoryStore(store, create=False), reports


def test_bank_bytes_by_part_add_up_and_match_the_stored_items(two_banks):
    store, _ = two_banks
    usage = store.usage().to_dict()
    for name in ("harbour", "both"):
        manifest = store.bank_manifest(name)
        check_adds_up(usage["bank_parts"][name], measured(store, [manifest]), store.bank_info(name).tokens)
        assert store.bank_parts(name).to_dict() == usage["bank_parts"][name]
        # The old key still counts blocks and index items.
        assert usage["bank_bytes"][name] == usage["bank_parts"][name]["blocks"] + usage["bank_parts"][name]["index"]


def test_store_bytes_by_part_count_shared_items_once(two_banks):
    store, _ = two_banks
    usage = store.usage().to_dict()
    manifests = [store.bank_manifest(name) for name in store.bank_names()]
    tokens = sum(store.bank_info(name).tokens for name in store.bank_names())
    check_adds_up(usage["parts"], measured(store, manifests), tokens)
    assert usage["parts"]["blocks"] == usage["block_bytes"] and usage["parts"]["index"] == usage["index_bytes"]
    banks = usage["bank_parts"].values()
    assert usage["parts"]["blocks"] < sum(bank["blocks"] for bank in banks)  # "harbour" shares all its blocks
    assert usage["parts"]["texts"] < sum(bank["texts"] for bank in banks)


def test_ingest_json_reports_bytes_by_part_and_the_codec(two_banks):
    store, reports = two_banks
    for name, report in reports.items():
        assert report["bytes_by_part"] == store.bank_parts(name).to_dict()
        assert report["stored"]["parts"]["per_token"]["total"] > 0
        assert report["block_dtypes"] == list(store.bank_info(name).block_dtypes)
        assert report["stored_bytes"] == report["bytes_by_part"]["blocks"]  # the old keys are kept
    # The first ingest's report was taken before the second bank existed; "harbour" has not changed since.
    assert reports["harbour"]["stored"]["parts"] == store.bank_parts("harbour").to_dict()


def test_store_du_and_info_name_bytes_per_token_and_codecs(two_banks, capsys):
    from lychee_memory.cli import main

    store, _ = two_banks
    assert main(["store", "du", "--store", str(store.path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["bank_parts"]["both"]["per_token"]["total"] > 0 and listed["parts"]["total"] > 0
    assert main(["store", "du", "--store", str(store.path)]) == 0
    text = capsys.readouterr().out
    assert "B/token all-in" in text and "both:" in text
    assert main(["info", "--no-load", "--store", str(store.path), "--json"]) == 0
    banks = json.loads(capsys.readouterr().out)["banks"]
    assert banks["both"]["block_dtypes"] == list(store.bank_info("both").block_dtypes) != []
