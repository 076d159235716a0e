"""The quantised block codecs (int4, int2, k4v2, k4v3) and ``recompress``: error bounds against an independent per-group
loop, exact bit packing, padding slots kept out of ranges, bytes per element as promised, identity (content keys,
a block never read with another codec), non-finite scales, and converting banks in place without a model."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

from lychee_memory import ConfigurationError, CorruptBlockError, Document, NonFiniteScalesError
from lychee_memory.blocks import BankIdentity, MemoryBlock, SourceSpan
from lychee_memory.choices import DEFAULT_BLOCK_DTYPE, DEFAULT_INDEX_DTYPE
from lychee_memory.cli import main
from lychee_memory.store import BLOCK_DTYPES, MemoryStore
from lychee_memory.store.codec import (
    BLOCK_MAGIC,
    CODECS,
    Damaged,
    GroupCodec,
    block_key,
    canonical_safetensors,
    decode_payload,
    encode_block,
    frame,
    pack_codes,
    unframe,
    unpack_codes,
)
from lychee_memory.store.recompress import keeps_bits_for

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine

QUANTISED = ["int4", "int2", "k4v2", "k4v3"]
SMOLLM2_ELEMENTS_PER_TOKEN = 30 * 3 * 64 * 2  # layers x KV heads x head_dim x (keys and values) = 11,520
QUESTION = "What is the access code for the east pier storage shed?"


def kv(slots: int = 100, head_dim: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random keys (with two outlier channels, as real keys have) and values [2, 3, slots, head_dim], and a valid
    mask whose last five slots are padding."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(2, 3, slots, head_dim, generator=generator)
    keys[:, :, :, 5] *= 20
    keys[:, :, :, head_dim - 3] += 9
    values = torch.randn(2, 3, slots, head_dim, generator=generator) * 0.5
    valid = torch.ones(slots, dtype=torch.bool)
    valid[-5:] = False
    return keys, values, valid


def reference_groups(x: torch.Tensor, bits: int, group: int, along_slots: bool, valid: torch.Tensor):
    """The straightforward version: a loop over every group, min/max of its real elements, a float16 scale and
    zero, round to the nearest level. Returns (dequantised, step per element)."""
    levels = 2**bits - 1
    out, step = torch.zeros_like(x), torch.zeros_like(x)
    layers, heads, slots, head_dim = x.shape
    for layer in range(layers):
        for head in range(heads):
            lines = range(head_dim) if along_slots else range(slots)
            for line in lines:
                vector = x[layer, head, :, line] if along_slots else x[layer, head, line, :]
                for start in range(0, vector.numel(), group):
                    chunk = vector[start : start + group]
                    real = valid[start : start + group] if along_slots else torch.ones(chunk.numel(), dtype=torch.bool)
                    if real.any():
                        low, high = float(chunk[real].min()), float(chunk[real].max())
                    else:
                        low = high = 0.0
                    zero = torch.tensor(low).half().float()
                    scale = torch.tensor((high - low) / levels).half().float()
                    if scale == 0:
                        scale = torch.tensor(1.0)
                    codes = torch.clamp(torch.round((chunk - zero) / scale), 0, levels)
                    result = codes * scale + zero
                    if along_slots:
                        out[layer, head, start : start + group, line] = result
                        step[layer, head, start : start + group, line] = scale
                    else:
                        out[layer, head, line, start : start + group] = result
                        step[layer, head, line, start : start + group] = scale
    return out, step


@pytest.mark.parametrize("name", QUANTISED)
def test_round_trip_matches_an_independent_per_group_loop_within_half_a_step(name):
    codec = CODECS[name]
    assert isinstance(codec, GroupCodec)
    keys, values, valid = kv()
    decoded_keys, decoded_values = codec.decode(codec.encode(keys, values, valid), torch.float32)
    expected_keys, key_step = reference_groups(keys, codec.key_bits, codec.key_group, True, valid)
    expected_values, value_step = reference_groups(values, codec.value_bits, codec.value_group, False, valid)
    real = valid
    torch.testing.assert_close(decoded_keys[:, :, real], expected_keys[:, :, real], atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded_values, expected_values, atol=1e-5, rtol=0)
    # Half a step, plus the float16 rounding of the zero (at most 2**-11 of the group's minimum's magnitude).
    slack_keys = key_step / 2 * (1 + 1e-3) + keys.abs() * 2**-10 + 1e-6
    slack_values = value_step / 2 * (1 + 1e-3) + values.abs() * 2**-10 + 1e-6
    assert ((decoded_keys - keys).abs()[:, :, real] <= slack_keys[:, :, real]).all()
    assert ((decoded_values - values).abs() <= slack_values).all()


def test_packing_round_trips_random_codes_exactly_and_puts_the_first_code_in_the_low_bits():
    generator = torch.Generator().manual_seed(1)
    for bits in (2, 3, 4):
        for size in (64, 7, 1, 13):
            codes = torch.randint(0, 2**bits, (3, 5, size), generator=generator, dtype=torch.uint8)
            packed = pack_codes(codes, bits)
            assert packed.dtype == torch.uint8 and packed.shape == (3, 5, -(-size * bits // 8))
            assert torch.equal(unpack_codes(packed, bits, size), codes)
    assert pack_codes(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    assert pack_codes(torch.tensor([9, 4, 15], dtype=torch.uint8), 4).tolist() == [9 | 4 << 4, 15]
    # 3 bits: eight codes make one little-endian 24-bit word, the first code in the low bits; a short tail is cut to
    # ceil(size * 3 / 8) bytes.
    codes = [5, 1, 7, 2, 0, 6, 3, 4, 7]
    word = sum(code << (3 * i) for i, code in enumerate(codes[:8]))
    expected = [word & 0xFF, word >> 8 & 0xFF, word >> 16 & 0xFF, 7]
    assert pack_codes(torch.tensor(codes, dtype=torch.uint8), 3).tolist() == expected
    with pytest.raises(Damaged):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 4, 64)


@pytest.mark.parametrize("name", QUANTISED)
def test_padding_slots_stay_out_of_the_key_ranges(name):
    codec = CODECS[name]
    keys, values, valid = kv()
    wild = keys.clone()
    wild[:, :, ~valid] = 1e4  # whatever a padding slot holds, the real slots' groups do not see it
    clean = codec.decode(codec.encode(keys, values, valid), torch.float32)[0]
    padded = codec.decode(codec.encode(wild, values, valid), torch.float32)[0]
    torch.testing.assert_close(padded[:, :, valid], clean[:, :, valid], atol=0, rtol=0)
    stored = codec.encode(wild, values, valid)
    assert stored["key_scales"].float().abs().max() < 100, "padding widened a scale"


def test_bytes_per_element_are_as_promised():
    """Codes plus a float16 scale and zero per group of 64: int4 0.5625, k4v2 0.4375, int2 0.3125 bytes per element,
    so per SmolLM2 token (11,520 elements): 6,480, 5,040 and 3,600 B of blocks (bfloat16: 23,040; int8: 11,520 plus
    its per-block scales). k4v3: keys (4 + 32/128) and values (3 + 32/64) bits, a mean of 0.484375 B: 5,580 B."""
    expected = {"int4": 6480, "k4v2": 5040, "int2": 3600, "k4v3": 5580}
    slots, head_dim = 128, 64  # whole groups
    keys, values, valid = kv(slots, head_dim)
    valid[:] = True
    elements = 2 * keys.numel()
    for name, per_token in expected.items():
        codec = CODECS[name]
        assert isinstance(codec, GroupCodec)
        assert codec.stored_bytes_per_element() * SMOLLM2_ELEMENTS_PER_TOKEN == per_token
        stored = codec.encode(keys, values, valid)
        assert sum(tensor.numel() * tensor.element_size() for tensor in stored.values()) == (
            elements * codec.stored_bytes_per_element()
        )
        assert stored["keys"].dtype == torch.uint8 and stored["key_scales"].dtype == torch.float16
    assert CODECS["bfloat16"].bytes_per_element * SMOLLM2_ELEMENTS_PER_TOKEN == 23040


def _block(dtype: torch.dtype) -> MemoryBlock:
    keys, values, valid = kv(slots=40, head_dim=16)
    span = SourceSpan(document_id="d", document_index=0, char_start=0, char_end=3, token_start=0, token_end=3, text="a")
    return MemoryBlock(keys.to(dtype), values.to(dtype), valid, 7, torch.tensor([1, 2, 3]), span, "x")


def test_every_codec_has_its_own_content_key_and_decodes_to_the_blocks_dtype():
    identity = BankIdentity("fp", {"kind": "x"}, 64, (1, 2))
    assert set(QUANTISED) <= set(BLOCK_DTYPES) and sorted(CODECS) == sorted(BLOCK_DTYPES)
    keys = {block_key("fp", {"kind": "x"}, name, torch.tensor([1, 2, 3]), (1, 2)) for name in BLOCK_DTYPES}
    assert len(keys) == len(BLOCK_DTYPES)
    for dtype in (torch.float32, torch.bfloat16):
        block = _block(dtype)
        for name in QUANTISED:
            decoded = decode_payload(unframe(BLOCK_MAGIC, encode_block(block, name, identity)))
            assert decoded.keys.dtype == dtype and decoded.values.dtype == dtype
            assert decoded.metadata["storage"] == name and decoded.keys.shape == block.keys.shape


def _rewritten(data: bytes, change) -> bytes:
    """A framed block whose payload ``change`` rewrote (tensors, metadata), framed again with a valid checksum."""
    payload = unframe(BLOCK_MAGIC, data)
    (length,) = struct.unpack("<Q", payload[:8])
    metadata = json.loads(payload[8 : 8 + length])["__metadata__"]
    tensors = dict(safetensors.torch.load(payload))
    change(tensors, metadata)
    return frame(BLOCK_MAGIC, canonical_safetensors(safetensors.torch.save(tensors, metadata)))


def test_non_finite_scales_are_a_specific_error_at_encode_and_at_decode():
    identity = BankIdentity("fp", {"kind": "x"}, 64, (1, 2))
    block = _block(torch.float32)
    for name in QUANTISED:
        for poisoned in (float("inf"), float("nan"), 1e6):  # 1e6: a range beyond float16
            bad = MemoryBlock(
                block.keys.clone(), block.values, block.valid, 7, block.token_ids, block.span, block.compressor
            )
            bad.keys[0, 0, 0, 0] = poisoned
            with pytest.raises(NonFiniteScalesError, match="non-finite"):
                encode_block(bad, name, identity)
        data = encode_block(block, name, identity)

        def poison(tensors, metadata):
            tensors["value_scales"] = tensors["value_scales"].clone()
            tensors["value_scales"][0, 0, 0, 0] = float("inf")

        with pytest.raises(Damaged, match="not finite"):
            decode_payload(unframe(BLOCK_MAGIC, _rewritten(data, poison)))
        damaged = bytearray(data)
        damaged[-3] ^= 0xFF
        with pytest.raises(Damaged, match="checksum"):
            unframe(BLOCK_MAGIC, bytes(damaged))


def test_an_ingest_whose_kv_cannot_be_quantised_names_the_bank_and_writes_no_bank(tmp_path, monkeypatch):
    import lychee_memory.store.codec as codec_module

    real = codec_module.quantize_groups

    def poisoned(tensor, *args, **kwargs):
        return real(torch.full_like(tensor, float("nan")), *args, **kwargs)

    monkeypatch.setattr(codec_module, "quantize_groups", poisoned)
    store = MemoryStore(tmp_path, block_dtype="int4")
    with pytest.raises(NonFiniteScalesError, match="bank 'harbour'.*non-finite"):
        make_engine().ingest([Document.from_text(FACTS_DOCUMENT, id="facts")], store=store, bank="harbour")
    assert store.bank_names() == []


def test_codecs_keep_bits_only_downwards():
    allowed = {
        (source, target) for source in CODECS for target in CODECS if keeps_bits_for(CODECS[source], CODECS[target])
    }
    for pair in [("float32", "int4"), ("bfloat16", "int8"), ("int8", "int4"), ("int4", "k4v2"), ("k4v2", "int2")]:
        assert pair in allowed, pair
    for pair in [("int4", "k4v3"), ("k4v3", "k4v2"), ("k4v3", "int2")]:
        assert pair in allowed, pair
    for pair in [("int4", "int8"), ("int8", "bfloat16"), ("int2", "k4v2"), ("k4v2", "int4"), ("bfloat16", "float16")]:
        assert pair not in allowed, pair
    for pair in [("k4v2", "k4v3"), ("k4v3", "int4")]:
        assert pair not in allowed, pair
    assert all((name, name) in allowed for name in CODECS)


# Banks ---------------------------------------------------------------------------------------------------------


def _file_bytes(path: Path) -> dict[str, str]:
    """Every file's hash under ``path``, leases and locks aside (read without opening a store)."""
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file() and "leases" not in file.parts and not file.name.endswith(".lock")
    }


def _store_bytes(path: Path) -> dict[str, str]:
    """Every stored item's and file's hash: blocks, index items, texts and manifests as the store gives them back
    (its SQLite index's own files change on reads), and every other file in the directory."""
    hashes = {name: digest for name, digest in _file_bytes(path).items() if not Path(name).name.startswith("cache.db")}
    with MemoryStore(path, create=False) as store:
        items = store.objects.items
        for prefix in ("block:", "index:", "text:"):
            for key in items.keys(prefix):
                hashes[key] = hashlib.sha256(items.get(key)).hexdigest()
        for name in store.bank_names():
            hashes["bank:" + name] = store.bank_manifest(name).model_dump_json()
    return hashes


def test_a_bank_is_read_with_the_codec_it_was_written_with(tmp_path):
    engine = make_engine()
    docs = [Document.from_text(FACTS_DOCUMENT, id="facts")]
    bank = engine.ingest(docs, store=MemoryStore(tmp_path, block_dtype="int4"), bank="harbour")
    assert MemoryStore(tmp_path).bank_info("harbour").block_dtypes == ("int4",)
    other = engine.open_bank("harbour", MemoryStore(tmp_path, block_dtype="int8"))  # the manifest's codec reads it
    for index in range(len(bank.spans)):
        assert torch.equal(other.block(index).keys, bank.block(index).keys)
    assert engine.ask(QUESTION, other).text is not None
    # A payload relabelled as another codec (checksum valid) is refused, naming the bank.
    store = MemoryStore(tmp_path)
    key = store.bank_manifest("harbour").documents[0].blocks[0].key
    data = store.objects.block(key)

    def relabel(tensors, metadata):
        metadata["storage"] = "int8"

    store.objects.items.put("block:" + key, _rewritten(data, relabel))
    with pytest.raises(CorruptBlockError, match="'harbour'"):
        engine.open_bank("harbour", store).block(0)


def test_recompress_converts_in_place_refuses_lost_bits_and_changes_nothing_when_refused(tmp_path):
    engine = make_engine()
    docs = [Document.from_text(FACTS_DOCUMENT, id="facts"), Document.from_text(SECOND_DOCUMENT, id="garden")]
    store = MemoryStore(tmp_path, block_dtype="bfloat16")
    engine.ingest(docs, store=store, bank="harbour")
    before_answer = engine.ask(QUESTION, engine.open_bank("harbour", store))
    original = store.bank_info("harbour").stored_bytes
    indexed = [entry.index_key is not None for _, _, entry in store.bank_manifest("harbour").entries()]

    report = store.recompress("harbour", "int8")
    assert report.changed and report.from_codecs == ("bfloat16",) and report.codec == "int8"
    assert report.converted == report.blocks and report.bytes_after < report.bytes_before == original
    report = store.recompress("harbour", "int4")
    assert report.changed and report.from_codecs == ("int8",)
    info = store.bank_info("harbour")
    assert info.block_dtypes == ("int4",) and info.stored_bytes == report.bytes_after < 0.6 * original
    assert store.verify().ok
    bank = engine.open_bank("harbour", store)
    assert bank.generation == report.generation == 3
    answer = engine.ask(QUESTION, bank)
    assert [block.index for block in answer.blocks] == [block.index for block in before_answer.blocks]
    assert [entry.index_key is not None for _, _, entry in store.bank_manifest("harbour").entries()] == indexed
    assert any(indexed), "the gate index items were carried over to the new blocks"

    snapshot = _store_bytes(tmp_path)
    for codec, message in [
        ("int8", "no longer hold the bits"),
        ("bfloat16", "no longer hold the bits"),
        ("int3", "unknown codec"),
    ]:
        with pytest.raises(ConfigurationError, match=message) as refused:
            store.recompress("harbour", codec)
        assert "'harbour'" in str(refused.value) and message in str(refused.value)
        assert _store_bytes(tmp_path) == snapshot, codec
    same = store.recompress("harbour", "int4")
    assert not same.changed and same.converted == 0 and same.generation == 3
    assert _store_bytes(tmp_path) == snapshot
    assert store.gc().removed_blocks > 0  # the old blocks were left for gc
    assert store.verify().ok and engine.ask(QUESTION, engine.open_bank("harbour", store)).text is not None


def test_recompress_refuses_a_damaged_bank_before_writing_anything(tmp_path):
    engine = make_engine()
    store = MemoryStore(tmp_path, block_dtype="bfloat16")
    engine.ingest([Document.from_text(FACTS_DOCUMENT, id="facts")], store=store, bank="harbour")
    entries = [entry for _, _, entry in store.bank_manifest("harbour").entries()]
    last = entries[-1].key
    data = bytearray(store.objects.block(last))
    data[-5] ^= 0xFF
    store.objects.items.put("block:" + last, bytes(data))
    snapshot = _store_bytes(tmp_path)
    with pytest.raises(CorruptBlockError, match="'harbour'.*checksum"):
        store.recompress("harbour", "int4")
    assert _store_bytes(tmp_path) == snapshot


def test_store_recompress_command_and_ingest_block_dtype_int4(tmp_path, capsys):
    path = tmp_path / "facts.txt"
    path.write_text(FACTS_DOCUMENT, encoding="utf-8")
    store = str(tmp_path / "store")
    tiny = ["--model", "tiny-random-llama", "--chunk-tokens", "64", "--no-progress"]
    assert main(["ingest", str(path), "--store", store, "--bank", "quarter", "--block-dtype", "int4", *tiny]) == 0
    assert main(["ingest", str(path), "--store", store, "--bank", "harbour", "--block-dtype", "bfloat16", *tiny]) == 0
    capsys.readouterr()
    assert main(["store", "du", "--store", store, "--json"]) == 0
    usage = json.loads(capsys.readouterr().out)
    assert usage["bank_bytes"]["quarter"] < usage["bank_bytes"]["harbour"]  # blocks plus the same gate index
    assert main(["store", "ls", "--store", store, "--json"]) == 0
    banks = {bank["name"]: bank for bank in json.loads(capsys.readouterr().out)["banks"]}
    assert banks["quarter"]["block_dtypes"] == ["int4"]
    assert banks["quarter"]["stored_bytes"] < 0.6 * banks["harbour"]["stored_bytes"]  # 16-slot blocks: headers weigh
    assert main(["store", "recompress", "harbour", "--codec", "k4v2", "--store", store, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["changed"] and report["codec"] == "k4v2" and report["saved_bytes"] > 0
    assert main(["store", "recompress", "harbour", "--codec", "k4v2", "--store", store]) == 0
    assert "already stored as k4v2" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:  # unknown codec: argparse's choices
        main(["store", "recompress", "harbour", "--codec", "int3", "--store", store])
    assert refused.value.code == 2
    assert main(["store", "recompress", "harbour", "--codec", "int8", "--store", store]) != 0
    assert "no longer hold the bits" in capsys.readouterr().err
    assert main(["ask", str(path), "-q", QUESTION, "--store", store, "--bank", "harbour", *tiny]) == 0


def test_the_previous_release_bank_recompressed_to_int4_shrinks_and_still_answers(tmp_path):
    from .test_compat import FIXTURE_STORE, generator

    fixture = _file_bytes(FIXTURE_STORE)  # never opened as a store: opening one writes
    copy = tmp_path / "store"
    shutil.copytree(FIXTURE_STORE, copy)
    engine = generator.make_engine()
    with MemoryStore(copy, create=False) as store:
        volume = store.usage().bytes
        for name in generator.BANKS:
            before = store.bank_info(name).stored_bytes
            report = store.recompress(name, "int4")
            assert report.changed and report.bytes_before == before and report.bytes_after < before
            assert store.bank_info(name).stored_bytes == report.bytes_after
        store.gc()
        assert store.usage().bytes < volume, "the store shrank once gc freed the old blocks"
        assert store.verify().ok
        for bank_name, question in generator.QUESTIONS:
            answer = engine.ask(question, engine.open_bank(bank_name, store))
            assert isinstance(answer.text, str) and answer.blocks
    assert _file_bytes(FIXTURE_STORE) == fixture, "the checked-in fixture was written"


def test_a_default_engine_answers_the_previous_release_bank(tmp_path):
    """An engine with today's default int8 index reads the float16 index an earlier release wrote (in the format
    its manifest names) and answers and selects as that release recorded, scores within the compat tolerance."""
    from lychee_memory import LycheeMemory

    from .test_compat import EXPECTED, FIXTURE_STORE, SCORE_TOLERANCE, generator

    copy = tmp_path / "store"
    shutil.copytree(FIXTURE_STORE, copy)
    engine = LycheeMemory.from_pretrained(generator.SPEC, **generator.ENGINE_OPTIONS)
    assert engine.config.gate.index_dtype == DEFAULT_INDEX_DTYPE == "int8"
    with MemoryStore(copy, create=False) as store:
        assert store.bank_manifest("harbour").gate_index["dtype"] == "float16"
        observed = generator.observe(engine, store)
    for answer, expected in zip(observed["answers"], EXPECTED["answers"], strict=True):
        for field in ("bank", "question", "text", "blocks", "fallback", "candidates", "memory_steps"):
            assert answer[field] == expected[field], field
        scores = [row["score"] for row in expected["gate_scores"]]
        assert [row["score"] for row in answer["gate_scores"]] == pytest.approx(scores, abs=SCORE_TOLERANCE)
    for selection, expected in zip(observed["selections"], EXPECTED["selections"], strict=True):
        assert [b["index"] for b in selection["blocks"]] == [b["index"] for b in expected["blocks"]]
        scores = [b["score"] for b in expected["blocks"]]
        assert [b["score"] for b in selection["blocks"]] == pytest.approx(scores, abs=SCORE_TOLERANCE)


def test_recompress_catches_up_with_a_writer_that_changed_the_bank_meanwhile(tmp_path, monkeypatch):
    from lychee_memory.store.block_objects import BlockObjects

    engine = make_engine()
    store = MemoryStore(tmp_path, block_dtype="bfloat16")
    engine.ingest([Document.from_text(FACTS_DOCUMENT, id="facts")], store=store, bank="harbour")
    real = BlockObjects.write_block
    calls = []

    def write_then_ingest(self, *args, **kwargs):
        written = real(self, *args, **kwargs)
        if not calls:  # another writer adds a document while the conversion runs
            calls.append(1)
            engine.ingest(
                [Document.from_text(SECOND_DOCUMENT, id="garden")],
                store=MemoryStore(tmp_path, block_dtype="bfloat16"),
                bank="harbour",
            )
        return written

    monkeypatch.setattr(BlockObjects, "write_block", write_then_ingest)
    report = store.recompress("harbour", "int4")
    monkeypatch.undo()
    manifest = store.bank_manifest("harbour")
    assert [document.id for document in manifest.documents] == ["facts", "garden"]
    assert {entry.storage for _, _, entry in manifest.entries()} == {"int4"}
    assert report.generation == manifest.generation == 3 and store.verify().ok


def test_a_store_created_without_a_dtype_writes_the_default_codec_and_index(tmp_path):
    """What a user gets without naming a codec: ``DEFAULT_BLOCK_DTYPE`` blocks (k4v3: kept every answer bfloat16 kept
    on the 28K needle ladder, benchmarks/codec_answers.py) and a ``DEFAULT_INDEX_DTYPE`` (int8) index, the same bytes
    as naming them, and the planted fact answered as a bfloat16 bank with a float16 index answers it."""
    assert (DEFAULT_BLOCK_DTYPE, DEFAULT_INDEX_DTYPE) == ("k4v3", "int8")
    docs = [Document.from_text(FACTS_DOCUMENT, id="facts"), Document.from_text(SECOND_DOCUMENT, id="garden")]
    engine = make_engine(compressor="none")
    default = engine.ingest(docs, store=MemoryStore(tmp_path / "default"), bank="harbour")
    named = make_engine(compressor="none", gate={"index_dtype": "int8"})
    explicit = named.ingest(docs, store=MemoryStore(tmp_path / "named", block_dtype="k4v3"), bank="harbour")
    before = make_engine(compressor="none", gate={"index_dtype": "float16"})
    bf16 = before.ingest(docs, store=MemoryStore(tmp_path / "bf16", block_dtype="bfloat16"), bank="harbour")
    store = MemoryStore(tmp_path / "default")
    assert store.block_dtype == "k4v3" and store.bank_info("harbour").block_dtypes == ("k4v3",)
    manifest = store.bank_manifest("harbour")
    assert {entry.storage for _, _, entry in manifest.entries()} == {"k4v3"}
    assert manifest.gate_index == MemoryStore(tmp_path / "named").bank_manifest("harbour").gate_index
    assert manifest.gate_index["dtype"] == "int8"
    assert MemoryStore(tmp_path / "bf16").bank_manifest("harbour").gate_index["dtype"] == "float16"
    assert (
        store.bank_info("harbour").stored_bytes < 0.5 * MemoryStore(tmp_path / "bf16").bank_info("harbour").stored_bytes
    )
    for index in range(len(default)):
        assert torch.equal(default.block(index).keys, explicit.block(index).keys)
        assert torch.equal(default.block(index).values, explicit.block(index).values)
        assert torch.equal(default.gate_keys(index), explicit.gate_keys(index))
        assert not torch.equal(default.block(index).values, bf16.block(index).values), "really quantised"
    answer, reference = engine.ask(QUESTION, default), before.ask(QUESTION, bf16)
    assert answer.blocks and [b.index for b in answer.blocks] == [b.index for b in reference.blocks]
    assert answer.text == reference.text


def test_the_cli_names_the_default_codec(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    assert "default k4v3" in " ".join(capsys.readouterr().out.split())
    for command, flag in (("ask", "--bank"), ("serve", "--store")):  # banks these create get the default too
        with pytest.raises(SystemExit):
            main([command, "--help"])
        words = " ".join(capsys.readouterr().out.split())
        assert "k4v3" in words.split(f"{flag} {flag[2:].upper()} ", 1)[1] and "int8 gate index" in words, command
    path = tmp_path / "facts.txt"
    path.write_text(FACTS_DOCUMENT, encoding="utf-8")
    store = str(tmp_path / "store")
    tiny = ["--model", "tiny-random-llama", "--chunk-tokens", "64", "--no-progress"]
    assert main(["ingest", str(path), "--store", store, "--bank", "harbour", "--block-dtype", "k4v2", *tiny]) == 0
    assert main(["ingest", str(path), "--store", store, "--bank", "plain", *tiny]) == 0
    capsys.readouterr()
    assert main(["info", "--no-load", "--json", "--model", "tiny-random-llama", "--store", store]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["storage"] == {"block_dtype": "k4v3", "index_dtype": "int8"}  # what a new bank gets
    assert info["banks"]["harbour"]["block_dtypes"] == ["k4v2"]  # what this bank was written with
    assert info["banks"]["plain"]["block_dtypes"] == ["k4v3"]  # ingest without --block-dtype: the default
    assert MemoryStore(store).bank_manifest("plain").gate_index["dtype"] == "int8"
    assert main(["info", "--json", "--model", "tiny-random-llama"]) == 0  # loaded: the engine's own index setting
    loaded = json.loads(capsys.readouterr().out)
    assert loaded["storage"]["index_dtype"] == loaded["engine"]["gate"]["index_dtype"] == "int8"
