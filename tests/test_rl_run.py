"""`lychee train rl` runs on a tiny model: held-out split, outputs, determinism, resuming, the CLI."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from lychee_memory.cli import main
from lychee_memory.errors import ConfigurationError
from lychee_memory.reasoner_weights import read_reasoner_file
from lychee_memory.training.rl_data import rl_examples
from lychee_memory.training.rl_run import RLRun, RLTrainingConfig

FAMILIES = {"needle": 6, "needle-multikey": 4, "squad": 0}


def tiny_config(**overrides) -> RLTrainingConfig:
    settings = dict(
        model="tiny-random-llama",
        per_family=FAMILIES,
        document_tokens=160,
        steps=3,
        group=2,
        learning_rate=5e-2,
        eval_every=2,
        eval_questions=2,
        max_memory_tokens=8,
        max_answer_tokens=4,
        rank=2,
    )
    settings.update(overrides)
    return RLTrainingConfig(**settings)


def test_training_and_heldout_questions_never_overlap():
    split = rl_examples(None, tokens=200, per_family={"needle": 20, "needle-multikey": 20})
    train, heldout = ({example.question for example in split[name]} for name in ("train", "heldout"))
    assert train and heldout and not train & heldout
    assert {example.family for example in split["heldout"]} == {"needle", "needle-multikey"}
    with pytest.raises(ConfigurationError, match="unknown RL family"):
        rl_examples(None, tokens=200, per_family={"needles": 3})


def test_a_run_writes_its_adapter_curves_and_summary_and_resumes_to_the_same_result(tmp_path):
    whole = RLRun(tiny_config(), tmp_path / "whole", show_progress=False)
    whole.run()
    summary = whole.summary()
    assert summary["steps"] == 3 and summary["before"]["step"] == 0 and summary["after"]["step"] == 3
    assert summary["rollout_seconds_per_step"] > 0 and summary["peak_memory_gib"] > 0
    assert [e["step"] for e in whole.state.evaluations] == [0, 2, 3]
    for name in ("reasoner.safetensors", "training_curve.png", "checkpoint.pt", "config.json"):
        assert (tmp_path / "whole" / name).is_file(), name
    saved = read_reasoner_file(tmp_path / "whole" / "reasoner.safetensors")
    assert "3 steps" in saved.metadata["evidence"]

    interrupted = RLRun(tiny_config(), tmp_path / "parts", show_progress=False)
    interrupted.run(stop_at=1)  # as if killed after step 1 (its checkpoint saved)
    resumed = RLRun(tiny_config(), tmp_path / "parts", show_progress=False)
    resumed.run()
    assert resumed.state.step == 3
    keys = ("reward", "loss", "tokens")
    assert [[r[k] for k in keys] for r in resumed.state.history] == [[r[k] for k in keys] for r in whole.state.history]
    mine, theirs = whole.trainer.adapter_tensors(), resumed.trainer.adapter_tensors()
    assert all(torch.allclose(mine[name], theirs[name], atol=1e-6) for name in mine)

    with pytest.raises(ConfigurationError, match="other settings"):
        RLRun(tiny_config(group=3), tmp_path / "whole", show_progress=False).run()


def test_the_cli_trains_and_prints_before_after_and_cost(tmp_path, capsys):
    code = main(
        [
            "train",
            "rl",
            "--out",
            str(tmp_path / "run"),
            "--model",
            "tiny-random-llama",
            "--per-family",
            json.dumps(FAMILIES),
            "--document-tokens",
            "160",
            "--steps",
            "1",
            "--group",
            "2",
            "--eval-questions",
            "1",
            "--rank",
            "2",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "held-out sub_em" in out and "s per step" in out and "--reasoner-weights" in out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 1


def test_data_parallel_under_torchrun_keeps_the_ranks_in_step(tmp_path):
    """Two CPU ranks (gloo) roll out different questions, average gradients and end with one adapter (the run
    checks every rank's adapter agrees at each evaluation and stops if not)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(port), "-m", "lychee_memory.cli", "train", "rl", "--out", str(tmp_path / "run"),
        "--model", "tiny-random-llama", "--per-family", json.dumps(FAMILIES), "--document-tokens", "160",
        "--steps", "2", "--group", "2", "--eval-every", "1", "--eval-questions", "1", "--rank", "2",
        "--learning-rate", "0.05", "--no-progress",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert done.stdout.count("held-out sub_em") == 1, "rank 0 alone reports"


def _data_parallel_worker(rank: int, port: int, out: str) -> None:
    import itertools
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    from lychee_memory import Document
    from lychee_memory.training.rl import RLSettings, RLTrainer
    from lychee_memory.training.rl_data import RLExample

    from .test_rl import fresh_engine

    examples = [
        RLExample(f"What is digit {i}?", [str(i)], [Document(text=f"The digit is {i}.", id=f"d{i}")]) for i in (3, 7)
    ]
    # A reward that always splits a group (1, 0, 1, 0, ... in call order), so every rank has gradients.
    calls = itertools.count()
    trainer = RLTrainer(
        fresh_engine(),
        examples,
        RLSettings(group=2, learning_rate=5e-2, seed=4),
        reward=lambda trajectory, example: float(next(calls) % 2 == 0),
    )
    for step in range(2):
        trainer.step(step, position=rank)  # rank r trains on question r
    total = torch.stack([p.detach().double().sum() for p in trainer.adapter.parameters()]).sum().reshape(1)
    model = trainer.engine.loaded.model
    change = sum(float(p.detach().abs().sum()) for name, p in model.named_parameters() if "lora_B" in name)
    gathered = [torch.zeros_like(total) for _ in range(2)]
    torch.distributed.all_gather(gathered, total)
    torch.save({"sums": [float(g) for g in gathered], "change": float(change)}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_data_parallel_ranks_average_gradients_and_hold_one_adapter(tmp_path):
    """Two gloo ranks train on different questions; averaged gradients leave both with the same, changed adapter
    (without the averaging their adapters would differ)."""
    import socket

    import torch.multiprocessing as multiprocessing

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    multiprocessing.spawn(_data_parallel_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    sums = results[0]["sums"]
    assert sums[0] == pytest.approx(sums[1], rel=1e-9, abs=1e-12)
    assert all(result["change"] > 0 for result in results)


def test_a_joint_run_writes_a_compressor_that_engines_load_as_a_new_identity(tmp_path):
    from lychee_memory import LycheeMemory
    from lychee_memory.config import ModelSettings
    from lychee_memory.model_loading import load_model

    from .test_learned_compressor import _random_weights, _write

    loaded = load_model(ModelSettings(spec="tiny-random-llama"))
    start = _write(tmp_path, loaded, _random_weights(loaded))
    config = tiny_config(compressor_weights=str(start), chunk_tokens=64, train_compressor=True, steps=2, eval_every=1)
    run = RLRun(config, tmp_path / "joint", show_progress=False)
    calls = itertools.count()  # a reward that always splits a group, so every step updates
    run.trainer.reward = lambda trajectory, example: float(next(calls) % 2 == 0)
    run.run()
    summary = run.summary()
    assert summary["compressor"] and (tmp_path / "joint" / "compressor.safetensors").is_file()
    options = dict(chunk_tokens=64, show_progress=False)
    before = LycheeMemory.from_pretrained("tiny-random-llama", compressor_weights=str(start), **options)
    after = LycheeMemory.from_pretrained("tiny-random-llama", compressor_weights=summary["compressor"], **options)
    assert before.identity != after.identity, "a bank records which memory weights built it"
    resumed = RLRun(config.model_copy(update={"steps": 3}), tmp_path / "joint", show_progress=False)
    weights = {k: v.clone() for k, v in resumed.engine.compressor.weights.state_dict().items()}
    resumed.resume()
    restored = resumed.engine.compressor.weights.state_dict()
    assert any(not torch.equal(weights[k], restored[k]) for k in weights), "the checkpoint restores trained weights"


def test_a_checkpoint_from_before_a_setting_existed_resumes_as_that_settings_default(tmp_path):
    RLRun(tiny_config(steps=1), tmp_path / "old", show_progress=False).run()
    path = tmp_path / "old" / "checkpoint.pt"
    payload = torch.load(path, weights_only=False)
    del payload["config"]["train_compressor"], payload["config"]["chunk_tokens"]  # written by an older version
    torch.save(payload, path)
    resumed = RLRun(tiny_config(steps=2), tmp_path / "old", show_progress=False)
    assert resumed.run().step == 2
    with pytest.raises(ConfigurationError, match="chunk_tokens"):
        RLRun(tiny_config(steps=3, chunk_tokens=64), tmp_path / "old", show_progress=False).run()
