"""Persistent banks: bit-exact round trips, incremental ingest, damage and repair, crashes, concurrency.

References are computed independently of the store: blocks straight from the engine's compressor, chunk
counts from the chunker, corruption written with sqlite3 and plain file writes, crashes and concurrent
writers as real processes.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import diskcache.core
import pytest
import safetensors.torch
import torch

from lychee_memory import (
    BankMismatchError,
    BankNotFoundError,
    ConfigurationError,
    CorruptBlockError,
    CorruptDocumentError,
    Document,
    DocumentNotFoundError,
    LycheeMemory,
    MemoryStore,
    StoreError,
    StoreFullError,
)
from lychee_memory.blocks import BankIdentity, MemoryBlock, SourceSpan
from lychee_memory.chunking import chunk_documents
from lychee_memory.cli import main, recipe_for_settings
from lychee_memory.config import EngineConfig, ModelSettings
from lychee_memory.kv_prefix import PromptRow, logits_of, prefill
from lychee_memory.model_loading import load_model
from lychee_memory.store import BLOCK_DTYPES, BankManifest
from lychee_memory.store.codec import BLOCK_MAGIC, CODECS, block_key, codec_for, decode_payload, encode_block, unframe

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine

REPOSITORY = Path(__file__).resolve().parents[1]
QUESTION = "What is the access code for the east pier storage shed?"
FLOAT_STORAGE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def numbered_document(count: int, tag: str = "") -> str:
    """Paragraphs that differ from each other, so every chunk (and block) is distinct."""
    return "\n\n".join(
        f"Entry {tag}{index}: the tide table for pier {index} lists {index * 37 % 101} boats and code {index * 7919}."
        for index in range(count)
    )


def reference_blocks(engine: LycheeMemory, documents: list[Document]):
    return engine.compress_documents(documents)


def chunk_count(engine: LycheeMemory, documents: list[Document]) -> int:
    return len(chunk_documents(documents, engine.loaded.tokenizer, engine.chunk_tokens))


def assert_same_block(stored, expected, storage_dtype: torch.dtype | None = None) -> None:
    """Stored equals computed bit for bit, after the storage dtype's own rounding."""
    keys, values = expected.keys, expected.values
    if storage_dtype is not None:
        keys, values = keys.to(storage_dtype).to(keys.dtype), values.to(storage_dtype).to(values.dtype)
    assert stored.keys.dtype == expected.keys.dtype
    assert torch.equal(stored.keys, keys) and torch.equal(stored.values, values)
    assert torch.equal(stored.valid, expected.valid.cpu())
    assert torch.equal(stored.token_ids, expected.token_ids.cpu())
    assert (stored.next_position, stored.compressor) == (expected.next_position, expected.compressor)
    assert stored.span == expected.span


def count_compressed(engine: LycheeMemory) -> list[int]:
    """Wrap the engine's compressor so every compressed chunk is counted."""
    counter = [0]
    compress = engine.compressor.compress

    def counting(loaded, chunks):
        counter[0] += len(chunks)
        return compress(loaded, chunks)

    engine.compressor.compress = counting
    return counter


def corrupt_item(store: MemoryStore, key: str, delete: bool = False) -> None:
    """Flip one byte of a stored value (or delete its row) with sqlite3 and file writes, not the store's API."""
    database = sqlite3.connect(store.path / "cache" / "cache.db")
    with database:
        ((filename, value),) = database.execute("SELECT filename, value FROM Cache WHERE key = ?", (key,)).fetchall()
        if delete:
            database.execute("DELETE FROM Cache WHERE key = ?", (key,))
        elif filename is not None:
            path = store.path / "cache" / filename
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x55
            path.write_bytes(bytes(data))
        else:
            data = bytearray(value)
            data[len(data) // 2] ^= 0x55
            database.execute("UPDATE Cache SET value = ? WHERE key = ?", (bytes(data), key))
    database.close()


def documents() -> list[Document]:
    return [Document.from_text(FACTS_DOCUMENT, id="facts"), Document.from_text(SECOND_DOCUMENT, id="garden")]


# Round trips --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "float16"])
def test_stored_blocks_equal_computed_blocks_bit_for_bit(tmp_path, storage):
    engine = make_engine()
    docs = documents()
    bank = engine.ingest(docs, store=MemoryStore(tmp_path, block_dtype=storage), bank="harbour")
    expected = reference_blocks(engine, docs)
    reopened = engine.open_bank("harbour", MemoryStore(tmp_path))  # a fresh store object, as a new session
    assert len(bank) == len(reopened) == len(expected)
    assert bank.resident_nbytes() == 0, "a store-backed bank reads blocks lazily"
    for index, block in enumerate(expected):
        assert_same_block(bank.block(index), block, FLOAT_STORAGE[storage])
        assert_same_block(reopened.block(index), block, FLOAT_STORAGE[storage])
    assert [d.text for d in reopened.documents] == [d.text for d in docs]
    assert reopened.spans == [block.span for block in expected]


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_bfloat16_engine_gets_its_own_dtype_back(tmp_path, storage):
    loaded = load_model(ModelSettings(spec="tiny-random-llama", dtype="bfloat16"))
    engine = LycheeMemory(
        loaded, EngineConfig.from_kwargs(spec="tiny-random-llama", chunk_tokens=64, show_progress=False)
    )
    docs = [Document.from_text(SECOND_DOCUMENT, id="garden")]
    bank = engine.ingest(docs, store=MemoryStore(tmp_path, block_dtype=storage), bank="garden")
    for index, block in enumerate(reference_blocks(engine, docs)):
        assert block.keys.dtype == torch.bfloat16
        assert_same_block(bank.block(index), block)


@pytest.mark.parametrize("compressor", ["none", "key_norm", "beacon"])
def test_every_compressor_round_trips(tmp_path, compressor):
    options = {"beacon_window": 16} if compressor == "beacon" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny model has no trained beacon weights, and says so
        engine = make_engine("qwen2", compressor=compressor, **options)
    docs = [Document.from_text(SECOND_DOCUMENT, id="garden")]
    bank = engine.ingest(docs, store=MemoryStore(tmp_path, block_dtype="float32"), bank="garden")
    for index, block in enumerate(reference_blocks(engine, docs)):
        assert_same_block(bank.block(index), block)


def test_answers_over_a_stored_bank_equal_answers_over_the_same_bank_in_memory(tmp_path):
    engine = make_engine(read_mode="kv")
    docs = [Document.from_text(FACTS_DOCUMENT, id="facts")]
    in_memory = engine.ingest(docs)
    stored = engine.ingest(docs, store=MemoryStore(tmp_path, block_dtype="float32"), bank="harbour")
    expected, answer = engine.ask(QUESTION, in_memory), engine.ask(QUESTION, stored)
    assert answer.text == expected.text
    assert [(s.index, s.score) for s in answer.gate_scores] == [(s.index, s.score) for s in expected.gate_scores]
    many = engine.ask_many([QUESTION, "Which ship anchored in the bay?"], stored)
    assert many[0].text == expected.text
    stream = engine.stream(QUESTION, stored)
    assert "".join(stream) == expected.text


def test_a_query_keeps_only_a_batch_of_blocks_in_memory(tmp_path):
    batch = 4
    # prefilter off: the rule scores every block (with it, stage 1 reads only the index items, tested below)
    engine = make_engine(read_mode="kv", gate_batch_size=batch, threshold=1e9, prefilter="off")  # scan all, fallback
    bank = engine.ingest(documents(), store=MemoryStore(tmp_path), bank="harbour")
    assert len(bank) > 4 * batch
    alive, peak, loads = [0], [0], [0]
    load = bank.loader

    def tracking(index):
        block = load(index)
        loads[0] += 1
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(block, lambda: alive.__setitem__(0, alive[0] - 1))
        return block

    bank.loader = tracking
    engine.ask(QUESTION, bank)
    assert loads[0] >= len(bank), "every block was scored, each read from the store"
    assert peak[0] <= 2 * batch, f"{peak[0]} blocks were alive at once; a lazy scan holds about one batch"
    assert bank.resident_nbytes() == 0


# Incremental ingest ------------------------------------------------------------------------------------


def test_ingest_compresses_only_chunks_not_stored_yet(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path, block_dtype="bfloat16")
    compressed = count_compressed(engine)
    facts = Document.from_text(FACTS_DOCUMENT, id="facts")
    garden = Document.from_text(SECOND_DOCUMENT, id="garden")

    first = engine.ingest([facts], store=store, bank="harbour")
    assert compressed[0] == chunk_count(engine, [facts]) == store.last_ingest.compressed
    blocks_after_first = store.usage().blocks

    again = engine.ingest([facts], store=store, bank="harbour")
    assert compressed[0] == chunk_count(engine, [facts]), "an unchanged document compresses nothing"
    assert again.block_keys == first.block_keys and store.last_ingest.reused == len(first)

    compressed[0] = 0
    both = engine.ingest([garden], store=store, bank="harbour")
    assert compressed[0] == chunk_count(engine, [garden])
    assert [d.id for d in both.documents] == ["facts", "garden"]
    assert len(both) == chunk_count(engine, [facts, garden])

    compressed[0] = 0
    engine.ingest([facts], store=store, bank="copy")
    assert compressed[0] == 0, "identical chunks in another bank are stored once"
    assert store.usage().blocks == blocks_after_first + chunk_count(engine, [garden])

    compressed[0] = 0
    extra = "\n\nA late notice: the lighthouse lamp is now green, by order of the council."
    changed = Document.from_text(FACTS_DOCUMENT + extra, id="facts")
    old_chunks = {c.token_ids for c in chunk_documents([facts], engine.loaded.tokenizer, engine.chunk_tokens)}
    new_chunks = {c.token_ids for c in chunk_documents([changed], engine.loaded.tokenizer, engine.chunk_tokens)}
    replaced = engine.ingest([changed], store=store, bank="harbour")
    assert compressed[0] == len(new_chunks - old_chunks) > 0
    assert [d.id for d in replaced.documents] == ["facts", "garden"], "a document with a known id is replaced in place"
    assert replaced.documents[0].text == changed.text
    for index, block in enumerate(reference_blocks(engine, [changed, garden])):
        assert_same_block(replaced.block(index), block, torch.bfloat16)


def test_remove_documents_from_stored_and_in_memory_banks(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path, block_dtype="bfloat16")
    docs = documents()
    stored = engine.ingest(docs, store=store, bank="harbour")
    in_memory = engine.ingest(docs)
    garden_only = reference_blocks(engine, [docs[1]])
    for bank, storage in (
        (engine.remove_documents(stored, ["facts"]), torch.bfloat16),
        (engine.remove_documents(in_memory, ["facts"]), None),
    ):
        assert [d.id for d in bank.documents] == ["garden"]
        assert len(bank) == len(garden_only)
        for index, block in enumerate(garden_only):
            assert_same_block(bank.block(index), block, storage)
        engine.ask(QUESTION, bank)
    assert [d.id for d in engine.open_bank("harbour", store).documents] == ["garden"]
    with pytest.raises(DocumentNotFoundError, match="nowhere"):
        engine.remove_documents(stored, ["nowhere"])
    with pytest.raises(DocumentNotFoundError, match="nowhere"):
        engine.remove_documents(in_memory, ["nowhere"])


# Managing banks ----------------------------------------------------------------------------------------


def test_list_rename_delete_and_collect_garbage(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path)
    facts, garden = documents()
    engine.ingest([facts], store=store, bank="harbour")
    engine.ingest([facts, garden], store=store, bank="both")
    info = {bank.name: bank for bank in store.list_banks()}
    assert set(info) == {"harbour", "both"}
    assert info["both"].documents == ("facts", "garden")
    assert info["both"].blocks == chunk_count(engine, [facts, garden])
    assert info["harbour"].tokens == len(engine.loaded.tokenizer(FACTS_DOCUMENT, add_special_tokens=False).input_ids)
    assert info["harbour"].model_fingerprint == engine.loaded.fingerprint()
    assert info["harbour"].compressor == engine.compressor.describe()

    with pytest.raises(StoreError, match="already exists"):
        store.rename_bank("harbour", "both")
    with pytest.raises(BankNotFoundError, match="nowhere"):
        store.rename_bank("nowhere", "elsewhere")
    with pytest.raises(BankNotFoundError, match="nowhere"):
        store.delete_bank("nowhere")
    with pytest.raises(BankNotFoundError):
        engine.open_bank("nowhere", store)
    store.rename_bank("harbour", "pier")
    assert store.has_bank("pier") and not store.has_bank("harbour")
    engine.ask(QUESTION, engine.open_bank("pier", store))

    store.delete_bank("both")
    usage = store.usage()
    assert usage.unreferenced_blocks == chunk_count(engine, [garden]), "facts' blocks are still used by 'pier'"
    report = store.gc()
    assert report.removed_blocks == chunk_count(engine, [garden]) and report.removed_texts == 1
    assert store.usage().unreferenced_blocks == 0
    assert store.verify().ok
    engine.ask(QUESTION, engine.open_bank("pier", store))

    with store.writing_blocks(), pytest.raises(StoreError, match="busy"):
        store.gc()  # an ingest in flight has blocks no manifest names yet


def test_store_never_evicts_and_never_pickles(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path)
    engine.ingest(documents(), store=store, bank="harbour")
    database = sqlite3.connect(tmp_path / "cache" / "cache.db")
    settings = dict(database.execute("SELECT key, value FROM Settings").fetchall())
    modes = {mode for (mode,) in database.execute("SELECT DISTINCT mode FROM Cache")}
    raw_keys = {raw for (raw,) in database.execute("SELECT DISTINCT raw FROM Cache")}
    database.close()
    assert settings["eviction_policy"] == "none"
    assert settings["size_limit"] >= 2**60
    assert modes <= {diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY}, "values are plain bytes, never pickles"
    assert raw_keys == {1}, "keys are plain strings, never pickles"


def test_default_store_lives_under_the_cache_directory():
    engine = make_engine()
    engine.ingest([SECOND_DOCUMENT], bank="garden")
    store = MemoryStore()
    assert store.path == Path(os.environ["LYCHEE_CACHE_DIR"]) / "stores" / "default"
    assert store.has_bank("garden")
    assert len(engine.open_bank("garden")) == len(engine.ingest([SECOND_DOCUMENT]))


def test_bad_store_input_is_refused_clearly(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("milk", encoding="utf-8")
    with pytest.raises(StoreError, match="not a lychee-memory store"):
        MemoryStore(tmp_path / "notes")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(StoreError, match="is a file"):
        MemoryStore(tmp_path / "file")
    with pytest.raises(ConfigurationError, match="block dtype"):
        MemoryStore(tmp_path / "store", block_dtype="int7")
    engine = make_engine()
    with pytest.raises(ConfigurationError, match="bank name"):
        engine.ingest([SECOND_DOCUMENT], store=tmp_path / "store", bank="")
    with pytest.raises(ConfigurationError, match="bank name"):
        engine.ingest([SECOND_DOCUMENT], store=tmp_path / "store")


# Damage and repair -------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flipped byte", "missing"])
def test_damaged_block_is_named_and_repaired_from_the_stored_text(tmp_path, damage):
    engine = make_engine()
    store = MemoryStore(tmp_path, block_dtype="float32")
    docs = documents()
    bank = engine.ingest(docs, store=store, bank="harbour")
    expected = reference_blocks(engine, docs)
    victim = 3
    corrupt_item(store, "block:" + bank.block_keys[victim], delete=damage == "missing")

    with pytest.raises(CorruptBlockError, match=rf"bank 'harbour' block {victim} \(document 'facts'"):
        bank.block(victim)
    with pytest.raises(CorruptBlockError, match="harbour"):
        make_engine(prefilter="off").ask(QUESTION, bank)  # the rule reads every block (stage 1 may skip this one)
    report = store.verify()
    assert not report.ok
    assert [(p.bank, p.kind, p.block_index, p.document_id) for p in report.problems] == [
        ("harbour", "block", victim, "facts")
    ]
    # With the engine's recipe, or (as `lychee store verify --repair` does) an engine rebuilt from the settings
    # the bank recorded at ingest.
    if damage == "missing":
        repaired = store.verify(repair=True, recipe=engine.block_recipe())
    else:
        not_repaired = store.verify(repair=True)
        assert not not_repaired.ok and "no engine to recompress with" in not_repaired.problems[0].reason
        repaired = store.verify(repair=True, recipe_for_settings=recipe_for_settings)
    assert repaired.ok and repaired.problems[0].repaired
    assert store.verify().ok and not store.verify().problems
    reopened = engine.open_bank("harbour", store)
    for index, block in enumerate(expected):
        assert_same_block(reopened.block(index), block)
    engine.ask(QUESTION, reopened)


def test_damaged_document_text_is_reported_and_not_served(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path)
    engine.ingest(documents(), store=store, bank="harbour")
    manifest = store.bank_manifest("harbour")
    corrupt_item(store, "text:" + manifest.documents[1].text_key)
    report = store.verify(repair=True, recipe=engine.block_recipe())
    assert [(p.kind, p.document_id, p.repaired) for p in report.problems] == [("document", "garden", False)]
    with pytest.raises(CorruptDocumentError, match="garden"):
        engine.open_bank("harbour", store)


def test_damaged_manifest_is_reported(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path)
    engine.ingest(documents(), store=store, bank="harbour")
    engine.ingest([SECOND_DOCUMENT], store=store, bank="garden")
    corrupt_item(store, "bank:harbour")
    with pytest.raises(StoreError, match="manifest of bank 'harbour'"):
        engine.open_bank("harbour", store)
    assert [(p.bank, p.kind) for p in store.verify().problems] == [("harbour", "manifest")]
    engine.ask(QUESTION, engine.open_bank("garden", store))
    with pytest.raises(StoreError, match="harbour"):
        store.gc()  # cannot know what a damaged manifest references, so nothing is collected


# Gate index items ----------------------------------------------------------------------------------------


def index_item_key(block_key: str, spec: dict) -> str:
    """The documented key of a block's gate index item, computed here independently of the store."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(block_key.encode("utf-8") + b"\0" + canonical.encode("utf-8")).hexdigest()


def no_kv_reads(bank) -> None:
    """Make any read of a block's KV fail: the gate index must be read alone."""

    def refuse(index):
        raise AssertionError(f"block {index}'s KV was read to get its gate index")

    bank.loader = refuse


def test_gate_index_items_round_trip_and_are_read_without_the_kv(tmp_path):
    engine = make_engine()
    spec = engine.gate_index_description
    assert spec is not None, "the default engine builds a gate index"
    docs = documents()
    expected = reference_blocks(engine, docs)
    assert all(block.gate_keys is not None for block in expected)
    engine.ingest(docs, store=MemoryStore(tmp_path), bank="harbour")
    store = MemoryStore(tmp_path)  # a fresh store object, as a new session
    manifest = store.bank_manifest("harbour")
    assert manifest.gate_index == spec and manifest.opening == list(engine.identity.opening)
    assert manifest.identity == engine.identity
    bank = engine.open_bank("harbour", store)
    assert bank.gate_index == spec
    no_kv_reads(bank)
    for index, block in enumerate(expected):
        stored = bank.gate_keys(index)
        assert stored.dtype == torch.float16 and stored.device.type == "cpu"
        assert torch.equal(stored, block.gate_keys.cpu()), f"block {index}'s index differs from the computed one"
    entries = [entry for _, _, entry in manifest.entries()]
    for entry in entries:
        assert entry.index_key == index_item_key(entry.key, spec)
        data = store.objects.items.get("index:" + entry.index_key)
        assert data[:8] == b"LYCHEEI1" and hashlib.sha256(data[40:]).digest() == data[8:40]
        assert entry.index_bytes == len(data)
    distinct = {entry.index_key: entry.index_bytes for entry in entries}
    usage = store.usage()
    assert usage.indexes == len(distinct) == len({entry.key for entry in entries})
    assert usage.index_bytes == sum(distinct.values()) == store.bank_info("harbour").index_bytes > 0
    assert usage.bank_bytes["harbour"] == store.bank_info("harbour").stored_bytes + usage.index_bytes
    report = store.verify()
    assert report.ok and report.indexes_checked == len(distinct)

    # Renaming and removing documents keep each block's index.
    store.rename_bank("harbour", "pier")
    garden = engine.remove_documents(engine.open_bank("pier", store), ["facts"])
    no_kv_reads(garden)
    for index, block in enumerate(reference_blocks(engine, docs[1:])):
        assert torch.equal(garden.gate_keys(index), block.gate_keys.cpu())
    assert store.verify().ok


@pytest.mark.parametrize("damage", ["flipped byte", "missing", "unnamed"])
def test_damaged_gate_index_is_reported_and_repaired(tmp_path, damage, caplog):
    engine = make_engine()
    store = MemoryStore(tmp_path, block_dtype="bfloat16")
    docs = documents()
    bank = engine.ingest(docs, store=store, bank="harbour")
    expected = reference_blocks(engine, docs)
    victim, other = 2, 15  # a block of each document
    manifest = store.bank_manifest("harbour")
    entries = [entry for _, _, entry in manifest.entries()]
    if damage == "unnamed":  # a manifest entry without its index item (as a bank saved without an index)
        old = manifest.model_dump(mode="json")
        for document in old["documents"]:
            for entry in document["blocks"]:
                if entry["key"] in (entries[victim].key, entries[other].key):
                    entry["index_key"], entry["index_bytes"] = None, 0
        with store.manifests.changing():
            store.manifests.write(BankManifest.model_validate(old), manifest)
        bank = engine.open_bank("harbour", store)
    else:
        for index in (victim, other):
            corrupt_item(store, "index:" + entries[index].index_key, delete=damage == "missing")

    no_kv_reads(bank)
    with caplog.at_level(logging.WARNING, logger="lychee_memory"):
        assert bank.gate_keys(victim) is None and bank.gate_keys(other) is None
        assert torch.equal(bank.gate_keys(0), expected[0].gate_keys.cpu())
    warnings_logged = [record.getMessage() for record in caplog.records if "gate" in record.getMessage()]
    assert len(warnings_logged) == 1, "one warning per bank"
    assert f"bank 'harbour' block {victim} (document 'facts'" in warnings_logged[0]
    assert "lychee store verify --repair" in warnings_logged[0]
    assert engine.ask(QUESTION, engine.open_bank("harbour", store)).text is not None, "a query never fails on it"

    report = store.verify()
    assert not report.ok
    assert [(p.bank, p.kind, p.block_index, p.document_id) for p in report.problems] == [
        ("harbour", "index", victim, "facts"),
        ("harbour", "index", other, "garden"),
    ]
    assert all("gate index" in p.reason for p in report.problems)
    if damage == "flipped byte":
        assert "damaged" in report.problems[0].reason
        repaired = store.verify(repair=True, recipe_for_settings=recipe_for_settings)
    else:
        repaired = store.verify(repair=True, recipe=engine.block_recipe())
    assert repaired.ok and all(p.repaired for p in repaired.problems) and len(repaired.problems) == 2
    assert store.verify().ok and not store.verify().problems
    reopened = engine.open_bank("harbour", store)
    for index, block in enumerate(expected):
        assert torch.equal(reopened.gate_keys(index), block.gate_keys.cpu())
        assert_same_block(reopened.block(index), block, torch.bfloat16)
    assert all(entry.index_key is not None for _, _, entry in store.bank_manifest("harbour").entries())


def test_a_stored_block_without_its_index_is_compressed_again_at_ingest(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path)
    facts = Document.from_text(FACTS_DOCUMENT, id="facts")
    engine.ingest([facts], store=store, bank="harbour")
    (entry, *_) = [entry for _, _, entry in store.bank_manifest("harbour").entries()]
    corrupt_item(store, "index:" + entry.index_key, delete=True)
    compressed = count_compressed(engine)
    bank = engine.ingest([facts], store=store, bank="copy")
    assert compressed[0] == 1 == store.last_ingest.compressed, "only the block whose index is gone"
    assert torch.equal(bank.gate_keys(0), reference_blocks(engine, [facts])[0].gate_keys.cpu())
    assert store.verify().ok, "the first bank names the same (rewritten) item"


def test_gc_keeps_the_index_items_of_live_and_leased_banks(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path)
    facts, garden = documents()
    engine.ingest([facts], store=store, bank="harbour")
    engine.ingest([facts, garden], store=store, bank="both")
    garden_blocks = chunk_count(engine, [garden])
    assert store.usage().indexes == chunk_count(engine, [facts, garden])

    both, harbour = store.bank_manifest("both"), store.bank_manifest("harbour")
    only_both = [entry for _, _, entry in both.entries() if entry.key not in harbour.block_keys()]
    store.delete_bank("both")
    usage = store.usage()
    assert usage.unreferenced_indexes == garden_blocks == len(only_both)
    assert usage.unreferenced_bytes == sum(entry.nbytes + entry.index_bytes for entry in only_both), "what gc frees"
    report = store.gc()
    assert (report.removed_blocks, report.removed_indexes) == (garden_blocks, garden_blocks)
    after = store.usage()
    assert after.indexes == chunk_count(engine, [facts]) and after.unreferenced_indexes == 0
    assert store.verify().ok

    # An open bank's lease keeps its index items after its manifest is gone; they go once it is closed.
    bank = engine.open_bank("harbour", store)
    store.delete_bank("harbour")
    assert store.gc().removed_indexes == 0
    no_kv_reads(bank)
    assert all(bank.gate_keys(index) is not None for index in range(len(bank)))
    del bank
    gc.collect()
    report = store.gc()
    assert report.removed_indexes == chunk_count(engine, [facts]) and store.usage().indexes == 0


def test_save_bank_keeps_the_gate_index(tmp_path, caplog):
    engine = make_engine()
    docs = documents()
    expected = reference_blocks(engine, docs)
    in_memory = engine.ingest(docs)
    assert in_memory.gate_index == engine.gate_index_description
    first = MemoryStore(tmp_path / "first").save_bank(in_memory, "harbour")
    # From one store into another: the index items are read alone from the first store and copied.
    second = MemoryStore(tmp_path / "second", block_dtype="float32").save_bank(first, "copy")
    for bank in (first, second):
        manifest = bank.store.bank_manifest(bank.name)
        assert manifest.gate_index == bank.gate_index == engine.gate_index_description
        assert manifest.identity == engine.identity
        no_kv_reads(bank)
        for index, block in enumerate(expected):
            assert torch.equal(bank.gate_keys(index), block.gate_keys.cpu())
        assert bank.store.verify().ok

    # Into a bank indexed with another spec: the target keeps its spec; blocks whose item for it is stored name
    # it, the others have none (logged; verify reports them).
    other = make_engine(gate={"prefilter_heads": [[1, 0], [1, 3]]})
    extra = Document.from_text(numbered_document(6), id="tides")
    with caplog.at_level(logging.WARNING, logger="lychee_memory"):
        saved = first.store.save_bank(other.ingest([docs[1], extra]), "harbour")
    assert saved.gate_index == engine.gate_index_description
    assert any(
        f"{chunk_count(other, [extra])} saved block(s) have no gate index" in r.getMessage() for r in caplog.records
    )
    report = first.store.verify()
    assert {p.kind for p in report.problems} == {"index"}
    assert {p.document_id for p in report.problems} == {"tides"}, "garden's blocks name their stored items"
    assert first.store.verify(repair=True, recipe=engine.block_recipe()).ok
    assert first.store.verify().ok


def test_ingesting_with_another_index_spec_reindexes_the_bank(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path)
    facts, garden = documents()
    engine.ingest([facts], store=store, bank="harbour")
    other = make_engine(gate={"prefilter_heads": [[1, 0], [1, 3]]})
    assert other.identity == engine.identity and other.gate_index_description != engine.gate_index_description
    bank = other.ingest([garden], store=store, bank="harbour")
    manifest = store.bank_manifest("harbour")
    assert manifest.gate_index == other.gate_index_description
    no_kv_reads(bank)
    for index, block in enumerate(reference_blocks(other, [facts, garden])):
        assert torch.equal(bank.gate_keys(index), block.gate_keys.cpu())
    assert store.verify().ok

    # An engine that builds no index leaves a bank without one (never a half-indexed bank).
    bank = make_engine(prefilter="off").ingest([garden], store=store, bank="harbour")
    assert store.bank_manifest("harbour").gate_index is None and bank.gate_index is None
    assert not any(entry.index_key for _, _, entry in store.bank_manifest("harbour").entries())
    assert store.verify().ok
    del bank
    gc.collect()
    assert store.gc().removed_indexes > 0 and store.usage().indexes == 0, "none is left once gc runs"


def test_a_bank_from_before_framed_blocks_is_refused_and_upgraded_in_place(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path, block_dtype="bfloat16")
    docs = documents()
    engine.ingest(docs, store=store, bank="harbour")
    # As 0.2 wrote it: no opening, no gate index, blocks under keys that name no opening.
    old = store.bank_manifest("harbour").model_dump(mode="json")
    for field in ("opening", "gate_index"):
        old.pop(field)
    for document in old["documents"]:
        for entry in document["blocks"]:
            for field in ("index_key", "index_bytes"):
                entry.pop(field)
            data = store.objects.items.get("block:" + entry["key"])
            token_ids = safetensors.torch.load(data[40:])["token_ids"]
            entry["key"] = block_key(old["model_fingerprint"], old["compressor"], entry["storage"], token_ids, None)
            store.objects.items.put("block:" + entry["key"], data)
    with store.manifests.changing():
        store.manifests.write(BankManifest.model_validate(old), store.bank_manifest("harbour"))
    manifest = store.bank_manifest("harbour")
    assert manifest.opening is None and manifest.identity.opening is None and manifest.gate_index is None
    assert store.verify().ok, "its blocks still verify under the keys it was written with"

    for attempt in (
        lambda: engine.open_bank("harbour", store),
        lambda: engine.ingest([SECOND_DOCUMENT], store=store, bank="harbour"),
    ):
        with pytest.raises(BankMismatchError, match="recompress") as refused:
            attempt()
        message = str(refused.value)
        assert "open_bank(name, store, recompress=True)" in message and "--recompress" in message
    assert store.bank_manifest("harbour").generation == manifest.generation, "nothing changed"

    upgraded = engine.open_bank("harbour", store, recompress=True)
    assert store.bank_names() == ["harbour"] and upgraded.name == "harbour"
    manifest = store.bank_manifest("harbour")
    assert manifest.opening == list(engine.identity.opening) and manifest.gate_index == engine.gate_index_description
    assert all(entry.index_key for _, _, entry in manifest.entries())
    assert [d.id for d in upgraded.documents] == ["facts", "garden"]
    for index, block in enumerate(reference_blocks(engine, docs)):
        assert_same_block(upgraded.block(index), block, torch.bfloat16)
        assert torch.equal(upgraded.gate_keys(index), block.gate_keys.cpu())
    assert engine.open_bank("harbour", store).identity == engine.identity
    assert store.verify().ok


# Model and compressor mismatch -------------------------------------------------------------------------


def test_another_model_or_compressor_is_refused_or_recompresses(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path, block_dtype="float32")
    docs = documents()
    engine.ingest(docs, store=store, bank="harbour")
    other_model = make_engine("qwen2")
    other_compressor = make_engine(compressor="key_norm")
    for other in (other_model, other_compressor):
        with pytest.raises(BankMismatchError, match="recompress"):
            other.open_bank("harbour", store)
        with pytest.raises(BankMismatchError, match="harbour"):
            other.ingest([SECOND_DOCUMENT], store=store, bank="harbour")
    assert store.bank_info("harbour").model_fingerprint == engine.loaded.fingerprint(), "nothing changed"

    rebuilt = other_compressor.open_bank("harbour", store, recompress=True)
    info = store.bank_info("harbour")
    assert info.compressor == other_compressor.compressor.describe() and info.documents == ("facts", "garden")
    for index, block in enumerate(reference_blocks(other_compressor, docs)):
        assert_same_block(rebuilt.block(index), block)
    with pytest.raises(BankMismatchError):
        engine.open_bank("harbour", store)
    with pytest.raises(BankMismatchError):
        engine.ask(QUESTION, rebuilt)  # a bank object from another engine is refused at ask time too


def test_another_chunk_size_is_refused_and_nothing_is_merged(tmp_path):
    """Chunk size is part of a bank's identity: merging 32-token chunks into a 64-token bank is refused."""
    engine = make_engine(chunk_tokens=64)
    store = MemoryStore(tmp_path)
    engine.ingest([Document.from_text(FACTS_DOCUMENT, id="facts")], store=store, bank="harbour")
    smaller = make_engine(chunk_tokens=32)
    with pytest.raises(BankMismatchError, match="64-token chunks, this engine cuts 32-token chunks"):
        smaller.ingest([Document.from_text(SECOND_DOCUMENT, id="garden")], store=store, bank="harbour")
    with pytest.raises(BankMismatchError, match="chunks"):
        smaller.open_bank("harbour", store)
    info = store.bank_info("harbour")
    assert (info.documents, info.chunk_tokens) == (("facts",), 64), "nothing changed"
    assert len(smaller.open_bank("harbour", store, recompress=True)) == chunk_count(smaller, documents()[:1])


@pytest.mark.parametrize("where", ["store", "memory"])
def test_a_float32_bank_serves_a_bfloat16_engine_of_the_same_model(tmp_path, where):
    """The dtype is storage, not identity: blocks come back in the engine's dtype."""
    engine = make_engine()
    bf16 = LycheeMemory(
        load_model(ModelSettings(spec="tiny-random-llama", dtype="bfloat16")),
        EngineConfig.from_kwargs(spec="tiny-random-llama", chunk_tokens=64, max_memory_tokens=12, show_progress=False),
    )
    docs = documents()
    if where == "store":
        engine.ingest(docs, store=MemoryStore(tmp_path, block_dtype="float32"), bank="harbour")
        bank = bf16.open_bank("harbour", MemoryStore(tmp_path))
        assert bank.block(0).keys.dtype == torch.bfloat16
    else:
        bank = engine.ingest(docs)
    answer = bf16.ask(QUESTION, bank)
    assert answer.blocks and isinstance(answer.text, str)


# Bank names and read-only use --------------------------------------------------------------------------


def test_new_bank_names_are_restricted_and_old_names_stay_usable(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path)
    for bad in ("../../etc", "a/b", "with space", ".hidden", "x" * 129, "naïve"):
        with pytest.raises(ConfigurationError, match="is not allowed: a bank name is 1 to 128 characters"):
            engine.ingest([SECOND_DOCUMENT], store=store, bank=bad)
    assert store.bank_names() == [] and not (tmp_path / "etc").exists()
    for good in ("harbour", "team-7.notes_v2", "A" * 128):
        engine.ingest([SECOND_DOCUMENT], store=store, bank=good)
    with pytest.raises(ConfigurationError, match="not allowed"):
        store.rename_bank("harbour", "../escape")
    # A bank named before names had rules (written as that version did) stays readable, extendable,
    # renamable and deletable.
    legacy = store.bank_manifest("harbour").model_copy(update={"name": "old notes/2024"})
    with store.manifests.changing():
        store.manifests.write(legacy, None)
    assert engine.ask(QUESTION, engine.open_bank("old notes/2024", store)).blocks
    engine.ingest([Document.from_text(FACTS_DOCUMENT, id="facts")], store=store, bank="old notes/2024")
    store.rename_bank("old notes/2024", "old-notes-2024")
    assert store.bank_info("old-notes-2024").documents[-1] == "facts"
    store.delete_bank("old-notes-2024")


def test_reading_never_creates_a_store(tmp_path, capsys):
    engine = make_engine()
    typo = tmp_path / "some" / "typo" / "path"
    with pytest.raises(StoreError, match="no store at"):
        engine.open_bank("harbour", typo)
    with pytest.raises(StoreError, match="no store at"):
        MemoryStore(typo, create=False)
    for command in (["store", "verify"], ["store", "ls"], ["store", "du"], ["store", "gc"], ["store", "rm", "x"]):
        assert main([*command, "--store", str(typo)]) == 2
        assert "no store at" in capsys.readouterr().err
    assert main(["ask", "--store", str(typo), "--bank", "harbour", "-q", "why?", *TINY]) == 2
    assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "some").exists(), "no read-only command created a directory"


def test_a_bank_from_before_checkpoint_fingerprints_says_how_to_rebuild_it(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path, block_dtype="float32")
    engine.ingest(documents(), store=store, bank="harbour")
    old = store.bank_manifest("harbour").model_dump(mode="json")
    old.pop("fingerprint_scheme")  # as 0.1 wrote it: sampled weights and dtype, no scheme recorded
    old["model_fingerprint"] = "0123456789abcdef0123456789abcdef"
    old["engine_config"]["reasoner"]["focus_tokens"] = 0  # a setting 0.1 recorded and 0.2 retired
    with store.manifests.changing():
        store.manifests.write(BankManifest.model_validate(old), None)
    with pytest.raises(BankMismatchError, match="built before lychee-memory 0.2.*recompress=True"):
        engine.open_bank("harbour", store)
    rebuilt = engine.open_bank("harbour", store, recompress=True)
    assert [d.id for d in rebuilt.documents] == ["facts", "garden"]
    for index, block in enumerate(reference_blocks(engine, documents())):
        assert_same_block(rebuilt.block(index), block)
    assert EngineConfig.from_recorded(old["engine_config"]).reasoner.max_memory_tokens == 12


# Quantisation ------------------------------------------------------------------------------------------


# sha256 of encode_block's bytes for one fixed block, per (computed dtype, storage): written by lychee-memory 0.2's
# float/int8 branches, before the codecs became registry entries; every stored block and content key depends on them.
ENCODED_BLOCK_SHA256 = {
    ("float32", "float32"): "98753827cf4e8113c6de34eabb8fdaba26edaace3c74eed1ed703fe2d9156bb8",
    ("float32", "bfloat16"): "15ae403b9f6d5f5c90c76b92ad8c610208d9cbe719ae9b9fab21fb4b750cc6f2",
    ("float32", "float16"): "ae4eee4f037f0daad6ad6557dd9fcaba6fa2a0c93d7a46e8217defd4936e34d9",
    ("float32", "int8"): "5f27eacde9474c81a7555ddf6d298eb2ad6ff3092514dc74e6af32b3c08a7e34",
    ("bfloat16", "float32"): "3895ab3dc96baeb16e756f37b3632f9326bfed800f6006874367c86686b9f9a4",
    ("bfloat16", "bfloat16"): "9ed267d6453b5efd4ddddad89d47e70bca92e2528e0d43efd4019aca76355bb1",
    ("bfloat16", "float16"): "2e00a7680bb7be30cad10351532532173fe91840481af3bfe830bbaf9ad5dca9",
    ("bfloat16", "int8"): "7e5656cab7a07a8fb67122332dd36013048ed5ca491f7f21b4fa96b076d9057c",
}


def test_block_codecs_are_registry_entries_that_write_the_bytes_blocks_were_always_written_as():
    assert sorted(CODECS) == sorted(BLOCK_DTYPES), "every storage format a store accepts has exactly one codec"
    with pytest.raises(ConfigurationError, match="unknown block dtype 'int7'"):
        codec_for("int7")
    generator = torch.Generator().manual_seed(0)
    span = SourceSpan(document_id="d", document_index=0, char_start=0, char_end=3, token_start=0, token_end=3, text="a")
    identity = BankIdentity("fp", {"kind": "x"}, 64, (1, 2))
    for computed in (torch.float32, torch.bfloat16):
        keys = torch.randn(2, 2, 5, 4, generator=generator).to(computed)
        values = torch.randn(2, 2, 5, 4, generator=generator).to(computed)
        valid = torch.tensor([True, True, True, False, True])
        block = MemoryBlock(keys, values, valid, 7, torch.tensor([1, 2, 3]), span, "x")
        for storage, codec in CODECS.items():
            if storage not in {written for _, written in ENCODED_BLOCK_SHA256}:
                continue  # a codec added since (tests/test_codecs.py)
            data = encode_block(block, storage, identity)
            key = (str(computed).removeprefix("torch."), storage)
            assert hashlib.sha256(data).hexdigest() == ENCODED_BLOCK_SHA256[key], key
            decoded = decode_payload(unframe(BLOCK_MAGIC, data))
            assert decoded.keys.dtype == computed and decoded.metadata["storage"] == codec.name
            element = next(tensor for name, tensor in safetensors.torch.load(data[40:]).items() if name == "keys")
            assert element.element_size() == codec.bytes_per_element


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_int8_blocks_stay_within_the_stated_tolerance(tmp_path, family):
    """Stated tolerance: every element within half its int8 step (max |x| / 254 of its key channel or value
    slot); next-token logits after the block within 5 % of the logits' standard deviation, same argmax."""
    engine = make_engine(family, compressor="none")
    docs = [Document.from_text(FACTS_DOCUMENT, id="facts")]
    quantised = engine.ingest(docs, store=MemoryStore(tmp_path / "int8", block_dtype="int8"), bank="harbour")
    bf16 = engine.ingest(docs, store=MemoryStore(tmp_path / "bf16", block_dtype="bfloat16"), bank="harbour")
    prompt = engine.prompts.encode_text("Question: " + QUESTION)
    for index, block in enumerate(reference_blocks(engine, docs)):
        stored = quantised.block(index)
        key_step = block.keys.abs().amax(dim=2, keepdim=True) / 127
        value_step = block.values.abs().amax(dim=3, keepdim=True) / 127
        assert ((stored.keys - block.keys).abs() <= key_step / 2 * (1 + 1e-5) + 1e-7).all()
        assert ((stored.values - block.values).abs() <= value_step / 2 * (1 + 1e-5) + 1e-7).all()
        assert not torch.equal(stored.keys, block.keys), "int8 really quantised"
        logits = {}
        for label, candidate in (("fp32", block), ("int8", stored)):
            _, hidden = prefill(engine.loaded, [PromptRow(prompt, candidate)])
            logits[label] = logits_of(engine.loaded, hidden[:, -1])[0]
        error = (logits["int8"] - logits["fp32"]).abs().max() / logits["fp32"].std()
        assert error <= 0.05, f"block {index}: logit error {error:.4f} of the logit spread"
        assert logits["int8"].argmax() == logits["fp32"].argmax()
    assert quantised.store.bank_info("harbour").stored_bytes < 0.75 * bf16.store.bank_info("harbour").stored_bytes


# Full disk ---------------------------------------------------------------------------------------------


def test_size_limit_is_a_clear_error_that_changes_no_bank(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path)
    engine.ingest([SECOND_DOCUMENT], store=store, bank="garden")
    limited = MemoryStore(tmp_path, size_limit_bytes=store.usage().bytes + 20_000)
    with pytest.raises(StoreFullError, match="limit"):
        engine.ingest([numbered_document(60)], store=limited, bank="garden")
    with pytest.raises(StoreFullError):
        engine.ingest([numbered_document(60)], store=limited, bank="tides")
    assert store.bank_names() == ["garden"] and store.bank_info("garden").documents == (
        Document.content_id(SECOND_DOCUMENT),
    )
    assert store.verify().ok
    engine.ask(QUESTION, engine.open_bank("garden", store))
    engine.ingest([numbered_document(60)], store=store, bank="tides")  # usable again once there is room
    assert store.verify().ok


def test_full_disk_is_a_clear_error_that_leaves_no_half_written_files(tmp_path, monkeypatch):
    engine = make_engine(compressor="none", chunk_tokens=512)  # blocks over 32 KB live in value files
    store = MemoryStore(tmp_path, block_dtype="float32")
    engine.ingest([SECOND_DOCUMENT], store=store, bank="garden")
    real_open = open

    class FillingFile(io.FileIO):
        def write(self, data):
            super().write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    def opening(path, mode="r", *args, **kwargs):
        if "x" in mode:
            return FillingFile(path, "xb")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(diskcache.core, "open", opening, raising=False)
    with pytest.raises(StoreFullError, match="disk .* is full"):
        engine.ingest([FACTS_DOCUMENT], store=store, bank="garden")
    monkeypatch.undo()

    database = sqlite3.connect(tmp_path / "cache" / "cache.db")
    indexed = {name for (name,) in database.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
    database.close()
    on_disk = {
        str(path.relative_to(tmp_path / "cache")) for path in (tmp_path / "cache").rglob("*.val") if path.is_file()
    }
    assert on_disk == indexed, "no half-written value file is left behind"
    assert store.bank_info("garden").documents == (Document.content_id(SECOND_DOCUMENT),)
    assert store.verify().ok
    engine.ask(QUESTION, engine.open_bank("garden", store))
    engine.ingest([FACTS_DOCUMENT], store=store, bank="garden")
    assert len(store.bank_info("garden").documents) == 2


# Crashes and concurrent writers (real processes) -------------------------------------------------------


BF16_WORKER = ("--block-dtype", "bfloat16")  # workers whose blocks a test compares bit for bit after bfloat16 rounding


def start_worker(store: Path, bank: str, document: Path, identifier: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store_worker", str(store), bank, str(document), "--id", identifier, *extra],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
    )


def read_until(process: subprocess.Popen, wanted: str) -> None:
    for line in process.stdout:
        if line.strip() == wanted:
            return
    raise AssertionError(f"worker ended before {wanted!r}: {process.stderr.read()}")


def test_kill_9_during_ingest_leaves_every_bank_consistent(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path / "store", block_dtype="bfloat16")
    engine.ingest([FACTS_DOCUMENT], store=store, bank="harbour")
    engine.ingest([Document.from_text(SECOND_DOCUMENT, id="garden")], store=store, bank="grow")
    big = Document.from_text(numbered_document(80), id="tides")
    (tmp_path / "tides.txt").write_text(big.text, encoding="utf-8")
    total = chunk_count(engine, [big])

    worker = start_worker(tmp_path / "store", "grow", tmp_path / "tides.txt", "tides", "--delay", "0.3", *BF16_WORKER)
    try:
        read_until(worker, "compressed 6")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == -signal.SIGKILL

    reopened = MemoryStore(tmp_path / "store", block_dtype="bfloat16")
    assert reopened.bank_names() == ["grow", "harbour"]
    assert reopened.bank_info("grow").documents == ("garden",), "the interrupted ingest changed nothing"
    assert reopened.verify().ok
    usage = reopened.usage()
    assert 5 <= usage.unreferenced_blocks < total, "blocks written before the kill are kept, unreferenced"
    for name, text in (("harbour", FACTS_DOCUMENT), ("grow", SECOND_DOCUMENT)):
        bank = engine.open_bank(name, reopened)
        for index, block in enumerate(reference_blocks(engine, [Document.from_text(text, id=bank.documents[0].id)])):
            assert_same_block(bank.block(index), block, torch.bfloat16)
        engine.ask(QUESTION, bank)

    compressed = count_compressed(engine)
    resumed = engine.ingest([big], store=reopened, bank="grow")
    assert compressed[0] == total - usage.unreferenced_blocks, "a rerun compresses only what the crash lost"
    assert [d.id for d in resumed.documents] == ["garden", "tides"]
    assert reopened.verify().ok and reopened.usage().unreferenced_blocks == 0


def ingest_together(
    where, documents: list[Document], directory: Path, timeout: float = 300, extra: tuple[str, ...] = ()
) -> None:
    """One worker process per document ingests it into bank ``together`` of store ``where``; all are released at the
    same moment (``--start-when``) and must succeed. ``extra``: more worker flags (``--block-dtype``)."""
    for document in documents:
        (directory / f"{document.id}.txt").write_text(document.text, encoding="utf-8")
    MemoryStore(where)
    go = directory / "go"
    workers = [
        start_worker(
            where, "together", directory / f"{d.id}.txt", d.id, "--delay", "0.05", "--start-when", str(go), *extra
        )
        for d in documents
    ]
    try:
        for worker in workers:
            read_until(worker, "ready")
        go.touch()
        for worker in workers:
            _, errors = worker.communicate(timeout=timeout)
            assert worker.returncode == 0, errors
    finally:
        for worker in workers:
            worker.kill()


def test_two_processes_ingesting_into_one_bank_corrupt_nothing(tmp_path):
    engine = make_engine()
    shared = numbered_document(12, "shared-")
    first = Document.from_text(shared + "\n\n" + numbered_document(30, "first-"), id="first")
    second = Document.from_text(shared + "\n\n" + numbered_document(30, "second-"), id="second")
    ingest_together(tmp_path / "store", [first, second], tmp_path, extra=BF16_WORKER)

    store = MemoryStore(tmp_path / "store")
    bank = engine.open_bank("together", store)
    assert sorted(d.id for d in bank.documents) == ["first", "second"], "both additions survive"
    ordered = sorted([first, second], key=lambda d: [x.id for x in bank.documents].index(d.id))
    for index, block in enumerate(reference_blocks(engine, ordered)):
        assert_same_block(bank.block(index), block, torch.bfloat16)
    report = store.verify()
    assert report.ok and report.blocks_checked == len(set(bank.block_keys))
    usage = store.usage()
    assert usage.blocks == len(set(bank.block_keys)) < len(bank), "shared chunks are stored once"
    assert usage.unreferenced_blocks == 0
    engine.ask(QUESTION, bank)


def test_gc_keeps_the_blocks_an_open_bank_of_another_process_still_reads(tmp_path):
    """A lazy bank opened in one process keeps working while another removes documents and collects garbage."""
    engine = make_engine()
    store = MemoryStore(tmp_path / "store")
    engine.ingest(documents(), store=store, bank="harbour")
    go = tmp_path / "go"
    holder = start_worker(tmp_path / "store", "harbour", Path("-"), "-", "--hold-until", str(go))
    try:
        read_until(holder, "opened")
        engine.remove_documents(engine.open_bank("harbour", store), ["facts"])
        report = store.gc()
        assert report.removed_blocks == 0, "the other process's open bank still names the removed blocks"
        assert store.usage().leased_blocks == chunk_count(engine, documents()[:1])
        go.touch()
        out, errors = holder.communicate(timeout=120)
    finally:
        holder.kill()
    assert f"read {chunk_count(engine, documents())}" in out, out + errors
    assert store.gc().removed_blocks == chunk_count(engine, documents()[:1]), "once it is gone, gc frees them"
    assert store.verify().ok


def test_a_rebuild_loses_no_document_a_concurrent_ingest_adds(tmp_path):
    """Rebuilding with another compressor while another process adds a document keeps both changes."""
    engine = make_engine()
    store = MemoryStore(tmp_path / "store", block_dtype="bfloat16")
    facts = Document.from_text(FACTS_DOCUMENT, id="facts")
    engine.ingest([facts], store=store, bank="harbour")
    tides = Document.from_text(numbered_document(8), id="tides")
    (tmp_path / "tides.txt").write_text(tides.text, encoding="utf-8")
    go = tmp_path / "go"
    adder = start_worker(
        tmp_path / "store", "harbour", tmp_path / "tides.txt", "tides", "--start-when", str(go), *BF16_WORKER
    )
    rebuild = start_worker(
        tmp_path / "store", "harbour", Path("-"), "-", "--rebuild-with", "key_norm", "--delay", "0.5", *BF16_WORKER
    )
    try:
        read_until(adder, "ready")
        read_until(rebuild, "compressed 1")  # rebuilding, its manifest not written yet
        go.touch()  # the old engine adds a document now
        _, errors = adder.communicate(timeout=120)
        assert adder.returncode == 0, errors
        _, errors = rebuild.communicate(timeout=300)
        assert rebuild.returncode == 0, errors
    finally:
        adder.kill()
        rebuild.kill()
    key_norm = make_engine(compressor="key_norm")
    info = store.bank_info("harbour")
    assert info.documents == ("facts", "tides"), "the document added during the rebuild survives"
    assert info.compressor == key_norm.compressor.describe(), "and it was rebuilt with the new compressor too"
    bank = key_norm.open_bank("harbour", store)
    for index, block in enumerate(reference_blocks(key_norm, [facts, tides])):
        assert_same_block(bank.block(index), block, torch.bfloat16)
    assert store.verify().ok


# Command line ------------------------------------------------------------------------------------------

TINY = ["--model", "tiny-random-llama", "--chunk-tokens", "64", "--max-memory-tokens", "8", "--max-answer-tokens", "6"]


def lychee(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lychee_memory.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_ingests_once_asks_in_a_fresh_process_and_manages_the_store(tmp_path, capsys):
    document = tmp_path / "harbour.txt"
    document.write_text(FACTS_DOCUMENT, encoding="utf-8")
    store = str(tmp_path / "store")
    first = lychee("ingest", str(document), "--store", store, "--bank", "harbour", "--json", "--no-progress", *TINY)
    assert first.returncode == 0, first.stderr
    second = lychee("ingest", str(document), "--store", store, "--bank", "harbour", "--json", "--no-progress", *TINY)
    assert second.returncode == 0, second.stderr
    first_report, second_report = json.loads(first.stdout)["stored"], json.loads(second.stdout)["stored"]
    assert first_report["compressed"] == first_report["chunks"] > 0
    assert second_report["compressed"] == 0 and second_report["reused"] == first_report["chunks"]

    asked = lychee("ask", "--store", store, "--bank", "harbour", "-q", QUESTION, "--json", "--no-progress", *TINY)
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert answer["blocks"] and answer["blocks"][0]["doc"] == str(document)

    def run(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    status, out, _ = run("store", "ls", "--store", store, "--json")
    assert status == 0 and [bank["name"] for bank in json.loads(out)["banks"]] == ["harbour"]
    status, out, _ = run("store", "verify", "--store", store, "--json")
    assert status == 0 and json.loads(out)["ok"]
    assert run("store", "mv", "harbour", "pier", "--store", store)[0] == 0
    status, out, _ = run("store", "du", "--store", store, "--json")
    assert json.loads(out)["banks"] == 1 and json.loads(out)["blocks"] == first_report["chunks"]
    corrupt_item(MemoryStore(store), "block:" + MemoryStore(store).bank_manifest("pier").documents[0].blocks[2].key)
    status, out, _ = run("store", "verify", "--store", store)
    assert status == 1 and "DAMAGED: bank 'pier' block 2" in out
    for args, message in (
        (["store", "rm", "nowhere", "--store", store], "no bank named 'nowhere'"),
        (["ask", "--store", store, "--bank", "nowhere", "-q", "why?"], "no bank named 'nowhere'"),
        (["ask", "-q", "why?"], "--bank"),
        (["ingest", str(document), "--store", store], "--bank"),
    ):
        status, _, error = run(*args)
        assert status == 2 and message in error
    assert run("store", "rm", "pier", "--store", store)[0] == 0
    status, out, _ = run("store", "gc", "--store", store, "--json")
    assert json.loads(out)["removed_blocks"] == first_report["chunks"]
