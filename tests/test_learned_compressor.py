"""The learned compressor and its trainer: memory KV against an independent forward, the file format and its
errors, bank identity, and what training must do (gradients only in the memory weights, loss falls, resumes)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from transformers import DynamicCache

from lychee_memory import LycheeMemory
from lychee_memory.compressors.learned import memory_positions, memory_stream
from lychee_memory.compressors.memory_weights import (
    LearnedSettings,
    MemoryWeights,
    base_geometry,
    read_memory_file,
    save_memory_weights,
)
from lychee_memory.config import ModelSettings
from lychee_memory.errors import ConfigurationError, ModelNotFoundError, UnsupportedModelError
from lychee_memory.model_loading import load_model
from lychee_memory.training.compressor import CompressorTrainer, CompressorTrainingConfig

from .conftest import FACTS_DOCUMENT

FAMILIES = ["llama", "qwen2"]


def _loaded(family: str):
    return load_model(ModelSettings(spec=f"tiny-random-{family}"))


def _random_weights(loaded, rank: int = 4, seed: int = 1) -> MemoryWeights:
    weights = MemoryWeights.initial(loaded, rank)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in weights.up.values():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        weights.embedding.add_(torch.randn(weights.embedding.shape, generator=generator) * 0.05)
    return weights


def _write(tmp_path, loaded, weights, ratios=(4,), window=256, name="weights.safetensors"):
    settings = LearnedSettings(
        ratios=tuple(ratios), window=window, rank=weights.rank, base=base_geometry(loaded.config)
    )
    path = tmp_path / name
    save_memory_weights(path, weights, settings)
    return path


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ratio", [2, 4])
def test_memory_kv_matches_a_plain_forward_with_merged_projections(family, ratio):
    """Independent reference: a copy of the model whose q/k/v carry the merged deltas runs the memory tokens as
    ordinary tokens (inputs_embeds) after the raw chunk's cache, with a 4D mask of the layout."""
    loaded = _loaded(family)
    weights = _random_weights(loaded)
    ids = torch.randint(5, loaded.config.vocab_size, (1, 23))
    prefix, length = 3, 20
    cache = DynamicCache(config=loaded.model.config)
    with torch.no_grad():
        loaded.model.get_decoder()(input_ids=ids, past_key_values=cache, use_cache=True)
    raw_keys = [layer.keys for layer in cache.layers]
    raw_values = [layer.values for layer in cache.layers]
    with torch.no_grad():
        keys, values = memory_stream(loaded, weights, raw_keys, raw_values, [length], ratio, prefix)

    merged = copy.deepcopy(loaded.model)
    for index, layer in enumerate(merged.get_decoder().layers):
        for name in "qkv":
            projection = getattr(layer.self_attn, f"{name}_proj")
            with torch.no_grad():
                projection.weight += weights.up[name][index] @ weights.down[name][index]
    positions = memory_positions([length], ratio, prefix, torch.device("cpu"))
    count = positions.shape[1]
    reference_cache = DynamicCache(
        ddp_cache_data=[(k.clone(), v.clone()) for k, v in zip(raw_keys, raw_values)], config=merged.config
    )
    visible = torch.cat(
        [
            torch.arange(prefix + length)[None, :] <= positions[0][:, None],
            torch.ones(count, count, dtype=torch.bool).tril(),
        ],
        dim=1,
    )
    embeds = weights.embedding.detach()[None, None].expand(1, count, -1)
    with torch.no_grad():
        merged.get_decoder()(
            inputs_embeds=embeds,
            past_key_values=reference_cache,
            position_ids=positions,
            attention_mask=visible[None, None],
            use_cache=True,
        )
    for layer in range(loaded.num_layers):
        expected_keys = reference_cache.layers[layer].keys[:, :, prefix + length :]
        expected_values = reference_cache.layers[layer].values[:, :, prefix + length :]
        torch.testing.assert_close(keys[layer], expected_keys, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(values[layer], expected_values, atol=2e-5, rtol=1e-4)


def test_memory_positions_cover_each_group_and_short_tails():
    positions = memory_positions([10, 6], 4, 2, torch.device("cpu"))
    assert positions.tolist() == [[5, 9, 11], [5, 7, 7]]


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_weights_load_beside_the_model_and_give_identical_blocks(tmp_path, family):
    loaded = _loaded(family)
    weights = _random_weights(loaded)
    path = _write(tmp_path, loaded, weights)
    engine = LycheeMemory.from_pretrained(f"tiny-random-{family}", compressor_weights=str(path), chunk_tokens=64)
    assert engine.config.compressor.kind == "learned"
    assert engine.config.reasoner.read_mode == "kv"
    bank = engine.ingest(FACTS_DOCUMENT)
    first = bank.block(0)
    assert first.num_slots == -(-first.num_tokens // 4)
    assert bank.gate_keys(0).shape[1] == first.num_slots - -(-engine.index_spec.skip_tokens // 4)
    # The same weights held in memory (no file) compress to the same bytes.
    from lychee_memory.compressors.learned import LearnedCompressor

    compressor = LearnedCompressor(
        weights=weights, settings=engine.compressor.settings, ratio=4, digest="x", opening=engine.opening
    )
    chunks = engine.chunk(load_documents_of(FACTS_DOCUMENT))
    direct = compressor.compress(engine.loaded, chunks[:2])
    from_file = engine.compressor.compress(engine.loaded, chunks[:2])
    for index in range(2):
        assert torch.equal(direct[index].keys, from_file[index].keys)
        assert torch.equal(direct[index].values, from_file[index].values)
        # The ingest batched other chunks alongside (padding): the same KV up to float rounding.
        torch.testing.assert_close(direct[index].keys, bank.block(index).keys, atol=1e-5, rtol=1e-5)
    answer = engine.ask("What is the access code for the east pier storage shed?", bank)
    assert isinstance(answer.text, str)


def load_documents_of(text: str):
    from lychee_memory.documents import load_documents

    return load_documents([text])


def test_bank_identity_holds_the_weights_digest(tmp_path):
    loaded = _loaded("llama")
    first = _write(tmp_path, loaded, _random_weights(loaded, seed=1), name="a.safetensors")
    second = _write(tmp_path, loaded, _random_weights(loaded, seed=2), name="b.safetensors")
    engine_a = LycheeMemory.from_pretrained("tiny-random-llama", compressor_weights=str(first), chunk_tokens=64)
    engine_b = LycheeMemory.from_pretrained("tiny-random-llama", compressor_weights=str(second), chunk_tokens=64)
    digest = read_memory_file(first)[2]
    assert engine_a.identity.compressor["weights_sha256"] == digest
    bank = engine_a.ingest(FACTS_DOCUMENT)
    with pytest.raises(Exception, match="compressor"):
        engine_b.check_bank(bank)


def test_weights_for_another_model_ratio_or_file_are_refused(tmp_path):
    llama = _loaded("llama")
    path = _write(tmp_path, llama, _random_weights(llama))
    with pytest.raises(UnsupportedModelError, match="trained for another model shape"):
        LycheeMemory.from_pretrained("tiny-random-qwen2", compressor_weights=str(path))
    with pytest.raises(ConfigurationError, match="trained for ratio 4, not 8"):
        LycheeMemory.from_pretrained("tiny-random-llama", compressor_weights=str(path), ratio=8, chunk_tokens=64)
    with pytest.raises(ConfigurationError, match="longer than the 256 tokens"):
        LycheeMemory.from_pretrained("tiny-random-llama", compressor_weights=str(path), chunk_tokens=512)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        LycheeMemory.from_pretrained("tiny-random-llama", compressor_weights=str(tmp_path / "missing.safetensors"))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(UnsupportedModelError, match="is damaged or not a safetensors file"):
        LycheeMemory.from_pretrained("tiny-random-llama", compressor_weights=str(broken))
    # A file whose tensors have the wrong shape names the tensor.
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    name = next(key for key in tensors if key.endswith("lychee_memory_k_proj.lora_up"))
    tensors[name] = torch.zeros(3, 3)
    metadata = read_memory_file(path)[1]
    reshaped = tmp_path / "reshaped.safetensors"
    save_file(tensors, str(reshaped), metadata={f"lychee_memory_{k}": json.dumps(v) for k, v in metadata.items()})
    with pytest.raises(UnsupportedModelError, match="has shape"):
        LycheeMemory.from_pretrained("tiny-random-llama", compressor_weights=str(reshaped), chunk_tokens=64)
    with pytest.raises(ConfigurationError, match="needs trained memory weights"):
        LycheeMemory.from_pretrained("tiny-random-llama", compressor="learned")


def _trainer(tmp_path, **overrides) -> CompressorTrainer:
    settings = dict(
        model="tiny-random-llama",
        chunk_tokens=[96],
        steps=4,
        eval_every=2,
        eval_samples=1,
        train_samples=3,
        rank=4,
        learning_rate=5e-3,
        warmup_steps=0,
    )
    settings.update(overrides)
    return CompressorTrainer(CompressorTrainingConfig(**settings), tmp_path)


def test_gradients_reach_only_the_memory_weights(tmp_path):
    trainer = _trainer(tmp_path)
    rows = trainer.rows_for(trainer.train_samples[96][0], __import__("random").Random(0))
    terms, _ = trainer.losses(rows, 4)
    (terms["kl"] + terms["answer"] + terms["match"]).backward()
    assert all(parameter.grad is None for parameter in trainer.loaded.model.parameters())
    grads = {name: parameter.grad for name, parameter in trainer.weights.named_parameters()}
    assert all(grad is not None for grad in grads.values())
    assert all(float(grad.abs().sum()) > 0 for name, grad in grads.items() if not name.startswith("down"))


def test_training_on_a_fixed_chunk_lowers_the_loss(tmp_path):
    trainer = _trainer(tmp_path, train_samples=1, learning_rate=1e-2)
    records = [trainer.train_step(step) for step in range(12)]
    divergence = [record["kl"] for record in records]
    # The distillation term is what the memory weights can drive down (a random tiny model's answer loss is
    # mostly irreducible): measured 0.217 -> 0.134 in 12 steps.
    assert divergence[-1] < 0.75 * divergence[0], divergence
    assert records[-1]["loss"] < records[0]["loss"]


def test_training_is_deterministic_and_resumes_to_the_same_weights(tmp_path):
    straight = _trainer(tmp_path / "straight", steps=4)
    straight.run(show_progress=False)
    interrupted = _trainer(tmp_path / "resumed", steps=4)
    interrupted.run(show_progress=False, stop_at=3)
    resumed = _trainer(tmp_path / "resumed", steps=4)
    state = resumed.run(show_progress=False)
    assert state.step == 4
    for (name, mine), (_, theirs) in zip(resumed.weights.named_parameters(), straight.weights.named_parameters()):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5, msg=name)
    assert (tmp_path / "resumed" / "compressor.safetensors").is_file()
    with pytest.raises(ConfigurationError, match="other settings"):
        _trainer(tmp_path / "resumed", steps=6, rank=8).run(show_progress=False)


def test_cli_trains_and_the_weights_answer_through_ask(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "lychee_memory.cli"]
    trained = subprocess.run(
        command
        + [
            "train",
            "compressor",
            "--model",
            "tiny-random-llama",
            "--out",
            str(out),
            "--steps",
            "2",
            "--eval-every",
            "1",
        ]
        + ["--chunk-tokens", "96", "--rank", "4", "--eval-samples", "1", "--train-samples", "2", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr
    assert (out / "compressor.safetensors").is_file() and (out / "checkpoint.pt").is_file()
    document = tmp_path / "doc.txt"
    document.write_text(FACTS_DOCUMENT)
    asked = subprocess.run(
        command
        + ["ask", "--model", "tiny-random-llama", "--compressor-weights", str(out / "compressor.safetensors")]
        + ["--chunk-tokens", "96", "--no-progress", "--question", "What is the code?", str(document)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert asked.returncode == 0, asked.stderr


def test_a_model_whose_preset_ships_weights_finds_them_unless_told_none(tmp_path, monkeypatch):
    from lychee_memory import presets

    loaded = _loaded("llama")
    path = _write(tmp_path, loaded, _random_weights(loaded), name="tiny-4x.safetensors")
    shipped = presets.ModelPreset(
        name="tiny",
        architecture={"model_type": "llama", "hidden_size": loaded.config.hidden_size},
        compressor_weights=path.name,
    )
    monkeypatch.setattr(presets, "PRESETS", [shipped])
    monkeypatch.setattr(presets, "TRAINED_DIR", tmp_path)
    engine = LycheeMemory.from_pretrained("tiny-random-llama", chunk_tokens=64)
    assert engine.config.compressor.kind == "learned"
    assert engine.loaded.memory_source == str(path)
    plain = LycheeMemory.from_pretrained("tiny-random-llama", chunk_tokens=64, compressor_weights="none")
    assert plain.config.compressor.kind != "learned"
