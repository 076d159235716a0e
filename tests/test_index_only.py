"""Index-only banks (block dtype ``none``): only gate index items, texts and manifests are stored; blocks are encoded
from the stored text when read, through the engine's bounded LRU of encoded blocks, and answer as float32 banks do."""

from __future__ import annotations

import json

import pytest
import torch

from lychee_memory import ConfigurationError, Document
from lychee_memory.block_cache import BlockCache
from lychee_memory.blocks import MemoryBlock, SourceSpan
from lychee_memory.cli import main
from lychee_memory.errors import BankMismatchError, CorruptDocumentError, StoreError
from lychee_memory.store import MemoryStore

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine

QUESTION = "What is the access code for the east pier storage shed?"


def _docs() -> list[Document]:
    return [Document.from_text(FACTS_DOCUMENT, id="facts"), Document.from_text(SECOND_DOCUMENT, id="garden")]


def _ingest(engine, path, block_dtype: str, bank: str = "harbour") -> MemoryStore:
    store = MemoryStore(path, block_dtype=block_dtype)
    engine.ingest(_docs(), store=store, bank=bank)
    return store


@pytest.mark.parametrize("batch", [1, 4])
def test_an_index_only_bank_stores_no_payload_and_answers_as_the_float32_bank(tmp_path, batch):
    """Ingest compresses ``batch`` chunks per forward; a read encodes one: the KV is the same to the bit."""
    engine = make_engine(ingest_batch_size=batch)
    index_only = _ingest(engine, tmp_path / "none", "none")
    float32 = _ingest(engine, tmp_path / "float32", "float32")
    items = index_only.objects.items
    assert list(items.keys("block:")) == []
    manifest = index_only.bank_manifest("harbour")
    entries = [entry for _, _, entry in manifest.entries()]
    assert {entry.storage for entry in entries} == {"none"} and all(entry.nbytes == 0 for entry in entries)
    assert manifest.gate_index is not None and all(entry.index_key for entry in entries), "the gate index is kept"
    info = index_only.bank_info("harbour")
    assert info.block_dtypes == ("none",)
    assert info.stored_bytes == 0 and info.index_bytes == sum(entry.index_bytes for entry in entries) > 0  # no KV
    text_bytes = sum(items.size(key) for key in items.keys("text:"))
    usage = index_only.usage()
    assert usage.blocks == usage.block_bytes == 0 and usage.bytes < float32.usage().bytes
    assert text_bytes == len(FACTS_DOCUMENT.encode()) + len(SECOND_DOCUMENT.encode())

    engine.ingest(_docs(), store=index_only, bank="harbour")  # unchanged documents: nothing compressed again
    assert index_only.last_ingest is not None and index_only.last_ingest.compressed == 0
    assert index_only.bank_manifest("harbour").documents == manifest.documents

    fresh = make_engine()  # a cold cache, one chunk per forward
    stored = fresh.open_bank("harbour", index_only)
    reference = fresh.open_bank("harbour", float32)
    for index in range(len(stored.spans)):
        block, expected = stored.block(index), reference.block(index)
        assert torch.equal(block.keys, expected.keys) and torch.equal(block.values, expected.values)
        assert torch.equal(block.valid, expected.valid) and block.span == expected.span
    answer, expected_answer = fresh.ask(QUESTION, stored), fresh.ask(QUESTION, reference)
    assert answer.text == expected_answer.text
    assert [b.index for b in answer.blocks] == [b.index for b in expected_answer.blocks]


def test_the_block_cache_is_hit_on_the_second_query_and_shared_by_banks_holding_the_same_chunk(tmp_path):
    store = _ingest(make_engine(), tmp_path, "none")
    engine = make_engine()
    engine.ingest([Document.from_text(FACTS_DOCUMENT, id="copy")], store=store, bank="copy")
    bank = engine.open_bank("harbour", store)
    engine.block_cache.clear()
    first = engine.ask(QUESTION, bank)
    after_first = engine.block_cache.stats()
    assert after_first.encodes > 0 and after_first.evictions == 0
    second = engine.ask(QUESTION, bank)
    after_second = engine.block_cache.stats()
    assert after_second.encodes == after_first.encodes, "the second query encodes nothing"
    assert after_second.hits > after_first.hits and second.text == first.text
    copy = engine.open_bank("copy", store)  # the same chunks, the same content keys
    for index in range(len(copy.spans)):
        copy.block(index)
    assert engine.block_cache.stats().encodes <= after_second.encodes + len(copy.spans)
    shared = set(copy.block_keys) & set(bank.block_keys)
    assert shared, "two banks with the same chunk name the same block"
    encodes = engine.block_cache.stats().encodes
    for index, key in enumerate(copy.block_keys):
        if key in shared:
            copy.block(index)
    assert engine.block_cache.stats().encodes == encodes


def test_the_block_cache_is_bounded_and_evicts_the_least_recently_used(tmp_path):
    span = SourceSpan(document_id="d", document_index=0, char_start=0, char_end=1, token_start=0, token_end=1, text="a")

    def block() -> MemoryBlock:
        return MemoryBlock(torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 4, 8), torch.ones(4, dtype=torch.bool), 4,
                           torch.tensor([1]), span, "x")  # fmt: skip

    size = block().nbytes
    cache = BlockCache(2 * size)
    for key in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" comes
        cache.get_or_encode(key, block)
    stats = cache.stats()
    assert (stats.encodes, stats.hits, stats.evictions, stats.blocks, stats.bytes) == (3, 1, 1, 2, 2 * size)
    assert set(cache.entries) == {"a", "c"}
    BlockCache(0).get_or_encode("a", block)  # a block larger than the cache is returned, not kept
    with pytest.raises(ConfigurationError):
        BlockCache(-1)

    store = _ingest(make_engine(), tmp_path, "none")
    engine = make_engine(block_cache_mb=0.02)
    bank = engine.open_bank("harbour", store)
    for index in range(len(bank.spans)):
        bank.block(index)
    stats = engine.block_cache.stats()
    assert stats.bytes <= stats.capacity_bytes == int(0.02 * 2**20)
    assert stats.evictions > 0 and stats.encodes == len(set(bank.block_keys))


def test_verify_recompress_and_gc_on_index_only_banks(tmp_path):
    engine = make_engine()
    store = _ingest(engine, tmp_path, "none")
    assert store.verify().ok, "the missing KV is not damage"
    snapshot = store.bank_manifest("harbour").model_dump_json()
    with pytest.raises(ConfigurationError, match="'harbour'.*index-only.*ingest it again"):
        store.recompress("harbour", "int4")
    assert store.bank_manifest("harbour").model_dump_json() == snapshot
    assert not store.recompress("harbour", "none").changed

    engine.ingest(_docs(), store=MemoryStore(tmp_path, block_dtype="float32"), bank="kept")
    before = engine.ask(QUESTION, engine.open_bank("kept", store))
    report = store.recompress("kept", "none")
    assert report.changed and report.from_codecs == ("float32",) and report.bytes_after < report.bytes_before
    assert store.bank_info("kept").block_dtypes == ("none",)
    assert all(entry.index_key for _, _, entry in store.bank_manifest("kept").entries())
    assert store.gc().removed_blocks > 0 and list(store.objects.items.keys("block:")) == []
    assert store.verify().ok
    after = make_engine().ask(QUESTION, make_engine().open_bank("kept", store))
    assert after.text == before.text and [b.index for b in after.blocks] == [b.index for b in before.blocks]


def test_errors_name_the_bank_and_the_document(tmp_path):
    store = _ingest(make_engine(), tmp_path, "none")
    with pytest.raises(StoreError, match="'harbour' block 0 .*index-only"):
        store.load_bank("harbour").block(0)  # no engine to encode it with
    with pytest.raises(BankMismatchError):
        make_engine("qwen2").open_bank("harbour", store)
    with pytest.raises(BankMismatchError):
        make_engine(chunk_tokens=32).open_bank("harbour", store)
    text_key = store.bank_manifest("harbour").documents[1].text_key
    store.objects.items.put("text:" + text_key, b"not the garden")
    with pytest.raises(CorruptDocumentError, match="'harbour'.*'garden'"):
        make_engine().open_bank("harbour", store)
    report = store.verify()
    assert [(problem.kind, problem.document_id) for problem in report.problems] == [("document", "garden")]
    store.objects.items.delete("text:" + text_key)
    with pytest.raises(CorruptDocumentError, match="'harbour'.*'garden' is missing"):
        make_engine().open_bank("harbour", store)


def test_ingest_block_dtype_none_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "facts.txt"
    path.write_text(FACTS_DOCUMENT, encoding="utf-8")
    store = str(tmp_path / "store")
    tiny = ["--model", "tiny-random-llama", "--chunk-tokens", "64", "--no-progress"]
    assert main(["ingest", str(path), "--store", store, "--bank", "light", "--block-dtype", "none", *tiny]) == 0
    assert main(["ingest", str(path), "--store", store, "--bank", "harbour", *tiny]) == 0
    capsys.readouterr()
    assert main(["store", "ls", "--store", store, "--json"]) == 0
    banks = {bank["name"]: bank for bank in json.loads(capsys.readouterr().out)["banks"]}
    assert banks["light"]["block_dtypes"] == ["none"]
    assert banks["light"]["stored_bytes"] == 0 < banks["harbour"]["stored_bytes"]
    assert main(["store", "du", "--store", store, "--json"]) == 0
    usage = json.loads(capsys.readouterr().out)
    assert usage["bank_bytes"]["light"] < usage["bank_bytes"]["harbour"]
    assert main(["store", "verify", "--store", store]) == 0
    assert main(["store", "recompress", "light", "--codec", "int8", "--store", store]) != 0
    assert "ingest it again" in capsys.readouterr().err
    assert main(["ask", str(path), "-q", QUESTION, "--store", store, "--bank", "light", *tiny]) == 0
