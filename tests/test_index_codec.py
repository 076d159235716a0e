"""The int8 gate index (``gate.index_dtype = int8``): its codec against an independent numpy reference, its place in
the index's identity (item keys, manifest), a stored int8 bank scoring and ranking like the float16 one, the setting
validated, damaged int8 items refused, and float16 indexes (old banks) stored and read exactly as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from lychee_memory.errors import ConfigurationError
from lychee_memory.gate.index_format import INDEX_DTYPE, IndexSpec, dequantize_index, quantize_index
from lychee_memory.store import MemoryStore
from lychee_memory.store.codec import Damaged, canonical_safetensors, frame, safetensors_header
from lychee_memory.store.gate_index import INDEX_MAGIC, decode_index, encode_index, index_key

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine
from .test_gate import QUESTION

HEADS = [(0, 1), (1, 0), (1, 3)]
SPEC = IndexSpec(heads=((0, 1), (1, 0)), skip_tokens=4, group=2)


def _keys(seed: int = 0, pairs: int = 2, tokens: int = 40, head_dim: int = 16) -> torch.Tensor:
    """Random float16 keys with a few outlier channels (as post-RoPE keys have)."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(pairs, tokens, head_dim, generator=generator)
    keys[:, :, 3] *= 20.0
    keys[:, :, 7] += 5.0
    keys[1, :, 5] = 0.0  # an all-zero channel
    return keys.to(torch.float16)


def _reference(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 8-bit per (pair, channel) over tokens, in numpy: codes, float32 scales and zeros (minimum)."""
    values = keys.astype(np.float32)
    zeros = values.min(axis=1, keepdims=True)
    spread = values.max(axis=1, keepdims=True) - zeros
    scales = np.where(spread > 0, spread / np.float32(255.0), np.float32(1.0)).astype(np.float32)
    codes = np.clip(np.round((values - zeros) / scales), 0, 255).astype(np.uint8)
    return codes, scales, zeros


def _engine(family: str = "llama", dtype: str = "float16"):
    gate = {"prefilter_heads": HEADS, "index_dtype": dtype}
    return make_engine(family, compressor="none", chunk_tokens=32, gate=gate)


def test_codec_matches_a_numpy_reference_within_half_a_scale():
    keys = _keys()
    codes, scales, zeros = quantize_index(keys)
    expected_codes, expected_scales, expected_zeros = _reference(keys.numpy())
    assert codes.dtype == torch.uint8 and scales.dtype == torch.float32 and scales.shape == (2, 1, 16)
    np.testing.assert_array_equal(zeros.numpy(), expected_zeros)
    np.testing.assert_allclose(scales.numpy(), expected_scales, rtol=1e-6, atol=0)
    assert np.abs(codes.numpy().astype(int) - expected_codes.astype(int)).max() <= 1  # a tie may round either way
    assert (codes.numpy() == expected_codes).mean() > 0.99
    decoded = dequantize_index(codes, scales, zeros)
    assert decoded.dtype == INDEX_DTYPE and decoded.shape == keys.shape
    error = (decoded.float() - keys.float()).abs().numpy()
    bound = expected_scales / 2 + np.abs(keys.float().numpy()) * 2.0**-10  # half a step, plus float16 rounding
    assert (error <= bound).all() and error.max() > 0
    assert torch.equal(decoded[1, :, 5], torch.zeros(40, dtype=INDEX_DTYPE))  # a zero channel stays zero


def test_encoding_decoded_keys_again_gives_the_same_codes_and_scales():
    """An int8 engine's blocks carry decoded keys; storing them must not drift further (store, reopen, store)."""
    spec = IndexSpec(heads=SPEC.heads, skip_tokens=4, group=2, dtype="int8")
    for seed in range(5):
        decoded = spec.decode(spec.encode(_keys(seed)), 16)
        again = spec.encode(decoded)
        assert torch.equal(spec.decode(again, 16), decoded)
        assert torch.equal(again["zeros"], spec.encode(_keys(seed))["zeros"])


def test_index_dtype_is_part_of_the_spec_and_the_item_keys():
    int8 = IndexSpec(heads=SPEC.heads, skip_tokens=4, group=2, dtype="int8")
    assert SPEC.describe()["dtype"] == "float16" and int8.describe()["dtype"] == "int8"
    assert index_key("block", SPEC.describe()) != index_key("block", int8.describe())
    assert IndexSpec.from_description(int8.describe()) == int8
    old = {key: value for key, value in SPEC.describe().items() if key != "dtype"}
    assert IndexSpec.from_description(old) == SPEC  # a description without a dtype is float16


def test_the_setting_is_validated():
    with pytest.raises(ConfigurationError, match="index_dtype"):
        _engine(dtype="int4")
    with pytest.raises(ValueError, match="unknown gate index dtype 'int4'"):
        IndexSpec(heads=SPEC.heads, skip_tokens=4, group=2, dtype="int4")
    with pytest.raises(ValueError, match="unknown gate index dtype"):
        IndexSpec.from_description({**SPEC.describe(), "dtype": "bfloat16"})


def test_float16_items_are_stored_as_before():
    keys = _keys()
    data = encode_index(keys, "block", SPEC.describe(), 16)
    payload = safetensors.torch.load(data[40:])
    assert list(payload) == ["keys"] and torch.equal(payload["keys"], keys)
    assert torch.equal(decode_index(data, "block", SPEC.describe(), 40), keys)


def test_int8_items_are_half_the_size_and_damage_is_refused():
    int8 = IndexSpec(heads=SPEC.heads, skip_tokens=4, group=2, dtype="int8").describe()
    keys = _keys(tokens=200)
    data = encode_index(keys, "block", int8, 16)
    float16 = encode_index(keys, "block", SPEC.describe(), 16)
    assert len(data) < 0.6 * len(float16)
    assert torch.equal(decode_index(data, "block", int8, 200), dequantize_index(*quantize_index(keys)))
    with pytest.raises(Damaged, match="another index spec"):  # never read with a format it was not written with
        decode_index(float16, "block", int8, 200)
    codes, scales, zeros = quantize_index(keys)
    header = safetensors_header(data[40:])["__metadata__"]

    def forged(**tensors: torch.Tensor) -> bytes:
        return frame(INDEX_MAGIC, canonical_safetensors(safetensors.torch.save(tensors, header)))

    for bad in (scales.clone().fill_(float("inf")), scales.clone().fill_(float("nan")), -scales):
        with pytest.raises(Damaged, match="scales are not finite and positive"):
            decode_index(forged(codes=codes, scales=bad, zeros=zeros), "block", int8, 200)
    with pytest.raises(Damaged, match="zeros are not finite"):
        decode_index(forged(codes=codes, scales=scales, zeros=zeros.clone().fill_(float("nan"))), "block", int8, 200)
    with pytest.raises(Damaged, match="lacks the int8 index codes, scales or zeros"):
        decode_index(forged(codes=codes, scales=scales), "block", int8, 200)
    with pytest.raises(Damaged, match="do not match the bank's index spec"):
        decode_index(forged(codes=codes.to(torch.int8), scales=scales, zeros=zeros), "block", int8, 200)


def _stage_one(engine, bank):
    prefilter = engine.prefilter_for(bank)
    query = prefilter.query(QUESTION, engine.config.prompts.initial_memory)
    scores, _ = prefilter.scores(query, bank.gate_keys, range(len(bank)))
    return torch.tensor([scores[index] for index in range(len(bank))], dtype=torch.float32)


def test_a_stored_int8_bank_scores_and_ranks_like_the_float16_one(tmp_path):
    docs = [FACTS_DOCUMENT, SECOND_DOCUMENT]
    half = _engine(dtype="float16")
    full_bank = half.ingest(docs, store=MemoryStore(tmp_path / "f16"), bank="harbour")
    compact = _engine(dtype="int8")
    in_memory = compact.ingest(docs)
    compact.ingest(docs, store=MemoryStore(tmp_path / "i8"), bank="harbour")
    store = MemoryStore(tmp_path / "i8")
    assert store.bank_manifest("harbour").gate_index["dtype"] == "int8"
    stored = compact.open_bank("harbour", store)
    assert len(stored) == len(full_bank) == len(in_memory) > 3
    for index in range(len(stored)):  # a bank in memory already holds what the store gives back
        assert torch.equal(stored.gate_keys(index), in_memory.block(index).gate_keys)
        spec = IndexSpec.from_description(store.bank_manifest("harbour").gate_index)
        expected = dequantize_index(*quantize_index(full_bank.gate_keys(index)))
        assert torch.equal(stored.gate_keys(index), expected) and spec.dtype == "int8"
    reference, scores = _stage_one(half, full_bank), _stage_one(compact, stored)
    assert torch.allclose(scores, reference, atol=0.05 * float(reference.abs().max()), rtol=0)
    assert int(scores.argmax()) == int(reference.argmax())
    f16_bytes = MemoryStore(tmp_path / "f16").bank_info("harbour").index_bytes
    assert store.bank_info("harbour").index_bytes < 0.75 * f16_bytes


def _store_items(path) -> dict[str, bytes]:
    """Every item and manifest of a store, to show a refused command changed nothing."""
    store = MemoryStore(path)
    items = {key: store.objects.items.get(key) for key in store.objects.items.keys("")}
    items.update({"bank:" + name: store.bank_manifest(name).model_dump_json().encode() for name in store.bank_names()})
    return items


def test_recompress_converts_a_float16_index_to_int8_without_a_model_as_an_int8_ingest_would(tmp_path):
    docs = [FACTS_DOCUMENT, SECOND_DOCUMENT]
    half = _engine(dtype="float16")
    half.ingest(docs, store=MemoryStore(tmp_path / "f16", block_dtype="bfloat16"), bank="harbour")
    compact = _engine(dtype="int8")  # the independent reference: the same bank ingested with an int8 index
    reference = compact.ingest(docs, store=MemoryStore(tmp_path / "i8", block_dtype="bfloat16"), bank="harbour")
    store = MemoryStore(tmp_path / "f16")
    before = store.bank_manifest("harbour")
    report = store.recompress("harbour", index_dtype="int8")
    after = store.bank_manifest("harbour")
    assert report.changed and report.generation == before.generation + 1 and report.converted == report.blocks
    assert after.gate_index == MemoryStore(tmp_path / "i8").bank_manifest("harbour").gate_index
    assert [e.key for _, _, e in after.entries()] == [e.key for _, _, e in before.entries()]  # blocks untouched
    assert sum(e.index_bytes for _, _, e in after.entries()) < 0.75 * sum(e.index_bytes for _, _, e in before.entries())
    converted = half.open_bank("harbour", store)
    assert len(converted) == len(reference) > 3
    for index in range(len(converted)):
        assert torch.equal(converted.gate_keys(index), reference.gate_keys(index))
    assert torch.equal(_stage_one(half, converted), _stage_one(compact, reference))
    assert store.verify().ok
    assert store.gc().removed_indexes == len({e.key for _, _, e in before.entries()})  # the float16 items

    snapshot = _store_items(tmp_path / "f16")
    for dtype, message in [("float16", "no longer holds the bits"), ("int4", "unknown index dtype")]:
        with pytest.raises(ConfigurationError, match=message) as refused:
            store.recompress("harbour", index_dtype=dtype)
        assert "'harbour'" in str(refused.value)
        assert _store_items(tmp_path / "f16") == snapshot, dtype
    with pytest.raises(ConfigurationError, match="name a codec, an index dtype"):
        store.recompress("harbour")
    same = store.recompress("harbour", index_dtype="int8")
    assert not same.changed and _store_items(tmp_path / "f16") == snapshot


def test_recompress_converts_blocks_and_index_in_one_command(tmp_path, capsys):
    from lychee_memory.cli import main

    docs = [FACTS_DOCUMENT, SECOND_DOCUMENT]
    half = _engine(dtype="float16")
    half.ingest(docs, store=MemoryStore(tmp_path, block_dtype="bfloat16"), bank="harbour")
    keys = [half.open_bank("harbour", MemoryStore(tmp_path)).gate_keys(i) for i in range(3)]
    assert main(["store", "recompress", "harbour", "--store", str(tmp_path), "--json"]) != 0
    assert "name a codec, an index dtype" in capsys.readouterr().err
    argv = ["store", "recompress", "harbour", "--codec", "int4", "--index-dtype", "int8", "--store", str(tmp_path)]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"]
    store = MemoryStore(tmp_path)
    assert store.bank_info("harbour").block_dtypes == ("int4",)
    assert store.bank_manifest("harbour").gate_index["dtype"] == "int8"
    bank = half.open_bank("harbour", store)
    for index, expected in enumerate(keys):
        assert torch.equal(bank.gate_keys(index), dequantize_index(*quantize_index(expected)))
    assert half.ask(QUESTION, bank).text is not None
    assert main([*argv[:3], "--index-dtype", "float16", "--store", str(tmp_path)]) != 0
    assert "no longer holds the bits" in capsys.readouterr().err


def test_adding_to_a_float16_indexed_bank_with_an_int8_engine_converts_the_old_index_without_recompressing(tmp_path):
    half = _engine(dtype="float16")
    old = half.ingest([FACTS_DOCUMENT], store=MemoryStore(tmp_path, block_dtype="bfloat16"), bank="harbour")
    old_keys = [old.gate_keys(index) for index in range(len(old))]
    old_blocks = [entry.key for _, _, entry in MemoryStore(tmp_path).bank_manifest("harbour").entries()]
    compact = _engine(dtype="int8")
    store = MemoryStore(tmp_path, block_dtype="bfloat16")
    bank = compact.ingest([SECOND_DOCUMENT], store=store, bank="harbour")
    fresh = compact.ingest([SECOND_DOCUMENT])
    assert store.last_ingest.compressed == len(fresh)  # only the new document's chunks went through the model
    manifest = store.bank_manifest("harbour")
    assert manifest.gate_index["dtype"] == "int8"
    assert [entry.key for entry in manifest.documents[0].blocks] == old_blocks  # the old blocks are kept as they are
    for index, keys in enumerate(old_keys):
        assert torch.equal(bank.gate_keys(index), dequantize_index(*quantize_index(keys)))
    assert store.verify().ok
