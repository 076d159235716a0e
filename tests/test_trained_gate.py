"""The trained gate (gate/adapter.py, gate.TrainedGateRule, training/gate.py) on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch

from lychee_memory.errors import ConfigurationError, ModelNotFoundError, UnsupportedModelError
from lychee_memory.gate import ScoreRequest
from lychee_memory.gate.adapter import GateAdapterSettings, read_gate_file, save_gate_file
from lychee_memory.training.gate import GateTrainer, GateTrainingConfig, memories_of, states_for, train_gate
from lychee_memory.training.gate_data import GateExample

from .conftest import FACTS_DOCUMENT, make_engine
from .test_gate import QUESTION

TINY = dict(
    steps=4,
    eval_every=2,
    eval_states=12,
    calibration_states=24,
    document_tokens=200,
    batch_size=4,
    per_family={"needle": 4, "needle-multikey": 2, "needle-twohop": 4},
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate-run")
    summary = train_gate(GateTrainingConfig(model="tiny-random-llama", **TINY), out, show_progress=False)
    return out, summary


def test_states_follow_the_chain_and_skip_blocks_already_read():
    text = "A" * 100 + "hop two fact." + "B" * 100 + "hop one fact." + "C" * 100
    hop2, hop1 = text.index("hop two"), text.index("hop one")
    example = GateExample(
        "x", "needle-twohop", "train", "q?", "a", text, ((hop1, hop1 + 13), (hop2, hop2 + 13)), ("n1", "n2"), True
    )
    spans = [(0, 110), (110, 200), (200, len(text))]  # hop 2 (at 100) in block 0, hop 1 (at 213) in block 2
    states = states_for(example, spans, 0, 10, "No previous memory")
    first = {s.block: s.relevant for s in states if s.memory == "No previous memory"}
    assert first == {10: False, 11: False, 12: True}, "hop 2 is not relevant before hop 1 is noted"
    after = {s.block: s.relevant for s in states if s.memory == "n1"}
    assert after == {10: True, 11: False}, "after hop 1's note hop 2 is relevant; hop 1's block is not judged again"
    parallel = GateExample("y", "hotpot-comparison", "train", "q?", "a", text, example.evidence, ("n1", "n2"), False)
    assert [m for m, _, _ in memories_of(parallel, "none")] == ["none", "n1", "n2"]


def test_the_trained_score_matches_a_plain_forward_with_the_adapter(trained):
    out, _ = trained
    engine = make_engine("llama", compressor="none", gate="trained", gate_weights=str(out / "gate.safetensors"))
    bank = engine.ingest([FACTS_DOCUMENT])
    rule = engine.rule
    request = ScoreRequest(QUESTION, "some notes", bank.block(1))
    (score,) = rule.score(engine.loaded, engine.prompts, [request])
    # Independent reference: a plain forward of the opening and the chunk's tokens (no adapter: blocks never see
    # the gate), then the prompt with the adapter on, continuing that cache.
    ids = list(engine.opening.token_ids) + bank.block(1).token_ids.tolist()
    prompt = rule.prompt_ids(engine.prompts, QUESTION, "some notes")
    with torch.inference_mode():
        cache = engine.loaded.model(input_ids=torch.tensor([ids]), use_cache=True).past_key_values
        with rule.adapter.active():
            logits = engine.loaded.model(input_ids=torch.tensor([prompt]), past_key_values=cache).logits[0, -1].float()
    expected = torch.sigmoid(logits[rule.yes_id] - logits[rule.no_id]).item()
    assert score == pytest.approx(expected, abs=2e-5)


def test_the_adapter_is_off_outside_gate_rows(trained):
    out, _ = trained
    plain = make_engine("llama", compressor="none")
    ids = torch.tensor([plain.loaded.tokenizer("the harbour of Arvel", add_special_tokens=False).input_ids])
    with torch.inference_mode():
        before = plain.loaded.model(input_ids=ids).logits
    gated = make_engine("llama", compressor="none", gate="trained", gate_weights=str(out / "gate.safetensors"))
    with torch.inference_mode():
        after = gated.loaded.model(input_ids=ids).logits
        with gated.rule.adapter.active():
            inside = gated.loaded.model(input_ids=ids).logits
    assert torch.equal(before, after), "compression and the reasoner see the plain backbone"
    assert not torch.allclose(before, inside), "the trained adapter changes gate rows"
    assert gated.identity == plain.identity, "banks do not depend on the gate"
    assert gated.info()["gate"]["weights_sha256"] == read_gate_file(out / "gate.safetensors")[2]


def test_save_and_load_give_identical_scores(trained, tmp_path):
    out, _ = trained
    trainer = GateTrainer(GateTrainingConfig(model="tiny-random-llama", **TINY), out, show_progress=False)
    trainer.adapter.load_tensors(read_gate_file(out / "gate.safetensors")[0], "test")
    states = trainer.eval_states[:6]
    expected = trainer.score_states(trainer.rule, states, "heldout")
    engine = make_engine("llama", compressor="none", gate="trained", gate_weights=str(out / "gate.safetensors"))
    requests = [ScoreRequest(s.question, s.memory, trainer.banks["heldout"].block(s.block)) for s in states]
    assert engine.rule.score(engine.loaded, engine.prompts, requests) == pytest.approx(expected, abs=1e-6)


def test_gradients_reach_only_the_adapter_and_the_loss_falls_on_a_fixed_batch(tmp_path):
    trainer = GateTrainer(GateTrainingConfig(model="tiny-random-llama", **TINY), tmp_path, show_progress=False)
    batch = trainer.batch(0)
    adapter_ids = {id(p) for p in trainer.parameters}
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e-2
    losses = []
    for _ in range(15):
        trainer.optimizer.zero_grad(set_to_none=True)
        with trainer.adapter.active():
            loss = trainer.loss(batch)
            loss.backward()
        with_grad = [name for name, p in trainer.loaded.model.named_parameters() if p.grad is not None]
        assert with_grad and all(".lora_" in name and trainer.adapter.name in name for name in with_grad)
        assert all(id(p) in adapter_ids for p in trainer.loaded.model.parameters() if p.grad is not None)
        trainer.optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    config = GateTrainingConfig(model="tiny-random-llama", **TINY)
    straight = GateTrainer(config, tmp_path / "straight", show_progress=False)
    straight.run()
    GateTrainer(config, tmp_path / "resumed", show_progress=False).run(stop_at=2)
    resumed = GateTrainer(config, tmp_path / "resumed", show_progress=False)
    resumed.run()
    for name, tensor in straight.adapter.state_tensors().items():
        assert torch.equal(tensor, resumed.adapter.state_tensors()[name]), name
    changed = config.model_copy(update={"rank": 4})
    with pytest.raises(ConfigurationError, match="other settings.*rank"):
        GateTrainer(changed, tmp_path / "resumed", show_progress=False).run()


def test_the_run_writes_a_small_file_a_curve_and_a_comparison(trained):
    out, summary = trained
    assert (out / "training_curve.png").stat().st_size > 0
    assert summary["bytes"] < 200_000 and set(summary["comparison"]) == {"trained", "query_likelihood", "prompt"}
    for row in summary["comparison"].values():
        assert {"precision", "recall", "f1"} <= set(row["heldout"]["all"])
    examples = summary["examples"]  # what the run trained on, per family and split (gate_data.split_counts)
    assert examples["total"]["train"] > 0 and examples["total"]["heldout"] > 0
    assert json.loads((out / "summary.json").read_text())["examples"] == examples
    tensors, settings, _ = read_gate_file(out / "gate.safetensors")
    assert settings.threshold == summary["comparison"]["trained"]["threshold"] and "held-out F1" in settings.evidence
    assert all(".lora_A." in name or ".lora_B." in name for name in tensors)
    engine = make_engine("llama", compressor="none", gate="trained", gate_weights=str(out / "gate.safetensors"))
    assert engine.threshold == settings.threshold, "the calibrated threshold is the default"
    bank = engine.ingest([FACTS_DOCUMENT])
    answer = engine.ask(QUESTION, bank)
    assert answer.blocks and all(0.0 <= s.score <= 1.0 for s in answer.gate_scores)


def test_bad_gate_files_and_settings_get_specific_errors(trained, tmp_path):
    out, _ = trained
    path = out / "gate.safetensors"
    with pytest.raises(ConfigurationError, match="gate_weights"):
        make_engine("llama", compressor="none", gate="trained")
    with pytest.raises(ConfigurationError, match="gate rule is 'prompt'"):
        make_engine("llama", compressor="none", gate="prompt", gate_weights=str(path))
    assert make_engine("llama", compressor="none", gate_weights=str(path)).rule.name == "trained", "auto + a file"
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        make_engine("llama", compressor="none", gate="trained", gate_weights=str(tmp_path / "missing.safetensors"))
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UnsupportedModelError, match="is damaged or not a safetensors file"):
        make_engine("llama", compressor="none", gate="trained", gate_weights=str(damaged))
    with pytest.raises(UnsupportedModelError, match="another model shape"):
        make_engine("qwen2", compressor="none", gate="trained", gate_weights=str(path))
    tensors, settings, _ = read_gate_file(path)
    other = save_gate_file(
        tmp_path / "other.safetensors",
        tensors,
        GateAdapterSettings(**{**settings.__dict__, "base_fingerprint": "0" * 32}),
    )
    with pytest.raises(UnsupportedModelError, match="never applies to another backbone"):
        make_engine("llama", compressor="none", gate="trained", gate_weights=str(other))
    wrong = {name: tensor[..., :1] for name, tensor in tensors.items()}
    reshaped = save_gate_file(tmp_path / "reshaped.safetensors", wrong, settings)
    with pytest.raises(UnsupportedModelError, match="has shape"):
        make_engine("llama", compressor="none", gate="trained", gate_weights=str(reshaped))
    assert json.loads(settings.to_metadata()["rank"]) == settings.rank


def test_the_cli_trains_a_gate_and_prints_the_comparison(tmp_path, capsys):
    from lychee_memory.cli import main

    code = main(
        [
            "train",
            "gate",
            "--out",
            str(tmp_path / "run"),
            "--model",
            "tiny-random-llama",
            "--steps",
            "2",
            "--eval-every",
            "1",
            "--eval-states",
            "12",
            "--document-tokens",
            "200",
            "--per-family",
            '{"needle": 3, "needle-multikey": 2, "needle-twohop": 3}',
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "| trained |" in printed and "| query_likelihood |" in printed
    assert "--gate trained --gate-weights" in printed and (tmp_path / "run" / "gate.safetensors").is_file()
    assert main(["train", "gate", "--out", str(tmp_path / "bad"), "--per-family", "{not json"]) == 2


def test_without_peft_the_trained_gate_says_what_to_install(trained, monkeypatch):
    import sys

    from lychee_memory.config import ModelSettings
    from lychee_memory.gate.adapter import attach_gate
    from lychee_memory.model_loading import load_model

    out, _ = trained
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    loaded = load_model(ModelSettings(spec="tiny-random-llama"))
    with pytest.raises(ConfigurationError, match="needs peft.*pip install"):
        attach_gate(loaded, out / "gate.safetensors")


def test_a_preset_that_ships_a_gate_makes_it_the_default_rule(trained, tmp_path, monkeypatch):
    import shutil

    from lychee_memory import presets

    out, _ = trained
    shutil.copy(out / "gate.safetensors", tmp_path / "tiny-gate.safetensors")
    loaded = make_engine("llama").loaded
    shipped = presets.ModelPreset(
        name="tiny",
        architecture={"model_type": "llama", "hidden_size": loaded.config.hidden_size},
        gate_weights="tiny-gate.safetensors",
    )
    monkeypatch.setattr(presets, "PRESETS", [shipped])
    monkeypatch.setattr(presets, "TRAINED_DIR", tmp_path)
    engine = make_engine("llama", compressor="none")
    assert engine.rule.name == "trained" and engine.config.gate.weights == str(tmp_path / "tiny-gate.safetensors")
    assert make_engine("llama", compressor="none", gate="query_likelihood").rule.name == "query_likelihood"


def test_calibrating_the_trained_gate_end_to_end_writes_a_new_file_and_keeps_the_old(trained, tmp_path, capsys):
    from lychee_memory.cli import main

    out, _ = trained
    source = out / "gate.safetensors"
    source_tensors, source_settings, source_digest = read_gate_file(source)
    model = ["--model", "tiny-random-llama", "--chunk-tokens", "64", "--max-memory-tokens", "8"]
    command = [
        "calibrate", *model, "--max-answer-tokens", "6", "--compressor", "none", "--gate", "trained",
        "--gate-weights", str(source), "--lengths", "1k", "--n", "1", "--heldout-n", "0", "--skip-heads",
        "--skip-read-mode", "--skip-memory", "--end-to-end", "1", "--no-progress", "--out", str(tmp_path / "p.json"),
    ]  # fmt: skip
    assert main([*command, "--gate-out", str(source)]) == 2, "the source file is never overwritten"
    assert "is the gate file being calibrated" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists(), "refused before anything was measured or written"
    written = tmp_path / "gate-e2e.safetensors"
    assert main([*command, "--gate-out", str(written)]) == 0
    printed = capsys.readouterr().out
    tensors, settings, digest = read_gate_file(written)
    assert f"threshold {settings.threshold:.4f} written to {written}" in printed
    assert (
        "answered, probe:" in printed and "end to end" in settings.evidence and source_digest[:12] in settings.evidence
    )
    assert tensors.keys() == source_tensors.keys() and all(torch.equal(tensors[k], source_tensors[k]) for k in tensors)
    assert read_gate_file(source)[2] == source_digest and read_gate_file(source)[1] == source_settings, "source kept"
    engine = make_engine("llama", compressor="none", gate="trained", gate_weights=str(written))
    assert engine.threshold == settings.threshold, "the threshold travels with the new file"
