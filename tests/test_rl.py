"""GRPO over LycheeMemory trajectories: rewards, advantages, log-probs after the KV prefix, where gradients go,
and a few steps on a toy task raising the reward."""

from __future__ import annotations

import math

import pytest
import torch

from lychee_memory import Document
from lychee_memory.config import EngineConfig, ModelSettings
from lychee_memory.engine import LycheeMemory
from lychee_memory.errors import ConfigurationError, ModelNotFoundError, UnsupportedModelError
from lychee_memory.model_loading import load_model
from lychee_memory.reasoner_weights import new_reasoner_adapter, read_reasoner_file, save_reasoner_file
from lychee_memory.training.rl import (
    LossSettings,
    RLExample,
    RLSettings,
    RLTrainer,
    Turn,
    answer_reward,
    completion_log_probs,
    fixed_log_probs,
    group_advantages,
    only_these_train,
    policy_loss_and_backward,
    rollout_group,
    training_turns,
)

from .conftest import FACTS_DOCUMENT


def fresh_engine(**options) -> LycheeMemory:
    """An engine on its own tiny model (an adapter is injected into the model: never into the shared one)."""
    defaults = dict(chunk_tokens=64, max_memory_tokens=8, max_answer_tokens=4, show_progress=False, gate="all")
    defaults.update(options)
    config = EngineConfig.from_kwargs(spec="tiny-random-llama", **defaults)
    return LycheeMemory(load_model(ModelSettings(spec="tiny-random-llama")), config)


def test_rewards_and_group_advantages_are_exact_on_a_hand_made_group():
    assert answer_reward("The code is 58213.", "58213") == 1.0
    assert answer_reward("The code is 58213.", "58213", "em") == 0.0
    assert answer_reward("58213", ["58213", "x"], "em") == 1.0
    assert answer_reward("code 58213 here", "the code 58213", "f1") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    rewards = [1.0, 0.0, 0.0, 1.0]
    spread = 0.5  # population standard deviation of the group
    unit = 0.5 / (spread + 1e-4)
    assert group_advantages(rewards) == pytest.approx([unit, -unit, -unit, unit])
    assert group_advantages(rewards, scale=False) == [0.5, -0.5, -0.5, 0.5]
    assert group_advantages([1.0, 1.0, 1.0]) == [0.0, 0.0, 0.0], "a group that all agrees teaches nothing"
    rewards = [0.2, 0.9, 0.4]
    mean = sum(rewards) / 3
    spread = math.sqrt(sum((r - mean) ** 2 for r in rewards) / 3)
    assert group_advantages(rewards) == pytest.approx([(r - mean) / (spread + 1e-4) for r in rewards])


def test_completion_log_probs_match_a_plain_forward_of_prompt_and_completion():
    engine = fresh_engine()
    loaded = engine.loaded
    prompt = engine.prompts.final_prompt("What is the access code?", "the code is 58213")
    completions = [[11, 12, 13], [40, 41]]
    turns = [Turn(engine_row(engine, prompt), completion, "answer") for completion in completions]
    with torch.no_grad():
        measured = completion_log_probs(loaded, turns)
        for turn, values in zip(turns, measured):
            sequence = torch.tensor([prompt + turn.completion])
            logits = loaded.model(input_ids=sequence).logits[0].float()
            expected = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
            expected = expected.gather(-1, torch.tensor(turn.completion)[:, None]).squeeze(-1)
            torch.testing.assert_close(values, expected, atol=1e-4, rtol=1e-4)


def engine_row(engine, prompt):
    from lychee_memory.kv_prefix import PromptRow

    return PromptRow(list(prompt))


def test_gradients_reach_the_reasoner_adapter_and_nothing_else():
    engine = fresh_engine(compressor="none", read_mode="kv")  # memory updates read the block's KV as a prefix
    adapter = new_reasoner_adapter(engine.loaded)
    bank = engine.ingest([Document(text=FACTS_DOCUMENT, id="facts")])
    trajectories = rollout_group(engine, adapter, "What is the access code?", bank, 2, seed=3)
    assert all(t.turns and t.turns[-1].kind == "answer" for t in trajectories)
    assert any(turn.kind == "update" and turn.row.block is not None for t in trajectories for turn in t.turns)
    trajectories[0].advantage, trajectories[1].advantage = 1.0, -1.0
    turns = training_turns(trajectories)
    model = engine.loaded.model
    with only_these_train([model], adapter.parameters()) as trainable:
        old = fixed_log_probs(engine.loaded, adapter, [turn for turn, _ in turns], 4)
        stats = policy_loss_and_backward(engine.loaded, adapter, turns, old, LossSettings(kl=0.1), reference=old)
    assert stats["tokens"] == sum(len(turn.completion) for turn, _ in turns) > 0
    adapter_ids = {id(p) for p in adapter.parameters()}
    assert {id(p) for p in trainable} == adapter_ids
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name and "lychee_reasoner" in name]
    assert lora_b and all(p.grad is not None for p in lora_b) and any(float(p.grad.abs().sum()) > 0 for p in lora_b)
    others = [name for name, p in model.named_parameters() if id(p) not in adapter_ids and p.grad is not None]
    assert others == [], f"gradients leaked into {others[:3]}"


def test_the_adapter_is_off_outside_reasoner_calls_and_starts_as_the_backbone():
    engine = fresh_engine()
    prompt = engine.prompts.final_prompt("What is the access code?", "nothing yet")
    turn = Turn(engine_row(engine, prompt), [11, 12], "answer")
    before = fixed_log_probs(engine.loaded, None, [turn], 1)[0]
    adapter = new_reasoner_adapter(engine.loaded)
    on = fixed_log_probs(engine.loaded, adapter, [turn], 1)[0]
    torch.testing.assert_close(on, before)  # B = 0: the untrained policy is the backbone
    with torch.no_grad():
        for name, parameter in engine.loaded.model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.05)
    changed = fixed_log_probs(engine.loaded, adapter, [turn], 1)[0]
    off = fixed_log_probs(engine.loaded, None, [turn], 1)[0]
    assert not torch.allclose(changed, before) and torch.allclose(off, before), "off unless active"


def sampled_reward(trainer: RLTrainer, seeds: range) -> float:
    """Mean reward of ``len(seeds)`` groups sampled with fixed seeds (the same draws before and after training)."""
    example, settings = trainer.examples[0], trainer.settings
    rewards = [
        trainer.reward(trajectory, example)
        for seed in seeds
        for trajectory in rollout_group(
            trainer.engine,
            trainer.adapter,
            example.question,
            trainer.bank(0),
            settings.group,
            temperature=settings.temperature,
            seed=seed,
        )
    ]
    return sum(rewards) / len(rewards)


def test_a_few_grpo_steps_raise_the_reward_of_a_toy_task():
    """Toy task: the reward is 1 when the answer starts with one fixed token, the one the untrained policy samples
    most often first (about 3 % of answers). Eight GRPO steps must raise the mean reward of the same seeded draws."""
    from collections import Counter

    engine = fresh_engine()
    example = RLExample("What is the digit?", ["7"], [Document(text="The digit is 7.", id="digit")])
    settings = RLSettings(group=8, learning_rate=2e-2, temperature=0.5, seed=1, loss=LossSettings(minibatch=8))
    trainer = RLTrainer(engine, [example], settings, reward=lambda trajectory, _: 0.0)
    firsts = Counter(
        trajectory.turns[-1].completion[0]
        for seed in range(50, 54)
        for trajectory in rollout_group(
            engine, trainer.adapter, example.question, trainer.bank(0), 8, temperature=0.5, seed=seed
        )
        if trajectory.turns[-1].completion
    )
    target = firsts.most_common(1)[0][0]
    trainer.reward = lambda trajectory, _: float(trajectory.turns[-1].completion[:1] == [target])
    before = sampled_reward(trainer, range(100, 104))
    rewards = [trainer.step(step)["reward"] for step in range(8)]
    after = sampled_reward(trainer, range(100, 104))
    assert after > before + 0.2, (before, after, rewards)


def test_a_positive_advantage_raises_its_completions_and_a_negative_one_lowers_them():
    """One update on a hand-set group: every answer with advantage +1 becomes likelier, every one with -1 less so;
    later epochs on the same rollout are bounded by the clip."""
    engine = fresh_engine()
    example = RLExample("What is the digit?", ["7"], [Document(text="The digit is 7.", id="digit")])
    trainer = RLTrainer(engine, [example], RLSettings(group=4, learning_rate=5e-2), reward=lambda trajectory, _: 0.0)
    trajectories = rollout_group(engine, trainer.adapter, example.question, trainer.bank(0), 4, seed=5)
    for trajectory, advantage in zip(trajectories, [1.0, -1.0, 1.0, -1.0]):
        trajectory.advantage = advantage
    turns = training_turns(trajectories)
    answers = [trajectory.turns[-1] for trajectory in trajectories]
    before = [float(values.sum()) for values in fixed_log_probs(engine.loaded, trainer.adapter, answers, 8)]
    with trainer.adapter.active(), only_these_train([engine.loaded.model], trainer.adapter.parameters()):
        old = fixed_log_probs(engine.loaded, trainer.adapter, [turn for turn, _ in turns], 8)
        for _ in range(3):
            trainer.optimizer.zero_grad()
            stats = policy_loss_and_backward(engine.loaded, trainer.adapter, turns, old, LossSettings(minibatch=8))
            trainer.optimizer.step()
    after = [float(values.sum()) for values in fixed_log_probs(engine.loaded, trainer.adapter, answers, 8)]
    assert after[0] > before[0] and after[2] > before[2] and after[1] < before[1] and after[3] < before[3]
    assert stats["clipped"] > 0, "the third epoch's ratios hit the clip"


def test_a_saved_adapter_loads_into_an_engine_as_its_reasoner_and_never_touches_the_bank(tmp_path):
    example = RLExample("What is the digit?", ["7"], [Document(text="The digit is 7.", id="digit")])
    trained = RLTrainer(fresh_engine(), [example], RLSettings(group=2, learning_rate=5e-2))
    with torch.no_grad():  # as if trained: nonzero B everywhere
        for parameter in trained.adapter.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    path = save_reasoner_file(
        tmp_path / "reasoner.safetensors",
        trained.adapter,
        trained.settings.shape,
        trained.engine.loaded.fingerprint(),
        "two toy steps",
    )
    assert read_reasoner_file(path).metadata["evidence"] == "two toy steps"
    plain, adapted = fresh_engine(), fresh_engine(reasoner_weights=str(path))
    assert adapted.info()["reasoner"]["weights_sha256"] == read_reasoner_file(path).digest
    prompt = plain.prompts.final_prompt(example.question, "the digit is 7")
    turn = Turn(engine_row(plain, prompt), [11, 12, 13], "answer")
    expected = fixed_log_probs(trained.engine.loaded, trained.adapter, [turn], 1)[0]
    torch.testing.assert_close(fixed_log_probs(adapted.loaded, adapted.reasoner.adapter, [turn], 1)[0], expected)
    assert not torch.allclose(fixed_log_probs(plain.loaded, None, [turn], 1)[0], expected)
    # The bank and the gate's scores are the backbone's: the same with and without the adapter.
    documents = [Document(text=FACTS_DOCUMENT, id="facts")]
    plain_bank, adapted_bank = plain.ingest(documents), adapted.ingest(documents)
    for index in range(len(plain_bank)):
        for mine, theirs in zip(plain_bank.block(index).keys, adapted_bank.block(index).keys):
            torch.testing.assert_close(mine, theirs)
    question = "What is the access code?"
    plain_answer, adapted_answer = plain.ask(question, plain_bank), adapted.ask(question, adapted_bank)
    assert [b.score for b in plain_answer.blocks] == pytest.approx([b.score for b in adapted_answer.blocks])
    # The reasoner's calls do use it: its greedy answer is the trained adapter's, not the backbone's.
    with torch.no_grad():
        reference = adapted.reasoner.answer([question], ["the digit is 7"])[0].token_ids
        adapted.reasoner.adapter, own = None, adapted.reasoner.adapter
        backbone = adapted.reasoner.answer([question], ["the digit is 7"])[0].token_ids
        adapted.reasoner.adapter = own
    assert reference != backbone or len(reference) == 0


def test_a_preset_ships_its_reasoner_for_its_own_memory_and_a_user_can_turn_it_off(tmp_path, monkeypatch):
    """A shipped preset's reasoner weights (a file in the package's trained/ directory) load with the preset's
    memory, and only with it: the adapter was trained answering from that memory. "none" keeps the backbone."""
    import dataclasses

    from lychee_memory import presets

    engine = fresh_engine()
    adapter = new_reasoner_adapter(engine.loaded)
    path = save_reasoner_file(tmp_path / "tiny-reasoner.safetensors", adapter, RLSettings().shape,
                              engine.loaded.fingerprint())  # fmt: skip
    tiny = {"model_type": "llama", "hidden_size": engine.loaded.config.hidden_size}
    shipped = dataclasses.replace(
        presets.PRESETS[0], architecture=tiny, prefilter_heads=(), gate_weights=None, reasoner_weights=path.name
    )
    monkeypatch.setattr(presets, "PRESETS", [shipped])
    monkeypatch.setattr(presets, "TRAINED_DIR", tmp_path)
    assert shipped.memory == "excerpts"
    with_preset = fresh_engine(chunk_tokens=None, memory="auto")
    assert with_preset.config.reasoner.weights == str(path)
    assert with_preset.reasoner.adapter is not None
    assert with_preset.info()["reasoner"]["weights_sha256"] == read_reasoner_file(path).digest
    notes = fresh_engine(chunk_tokens=None, memory="notes")  # another memory: the backbone answers
    assert notes.config.reasoner.weights is None and notes.reasoner.adapter is None
    off = fresh_engine(chunk_tokens=None, memory="auto", reasoner_weights="none")
    assert off.reasoner.adapter is None
    generic = fresh_engine(chunk_tokens=None, memory="auto", use_presets=False)
    assert generic.reasoner.adapter is None
    # the eval's methods say the same: `lychee eval --methods "lychee,lychee:reasoner_weights=none"` compares the two
    from lychee_memory.eval.runner import MethodRunner, parse_methods

    runner = MethodRunner("tiny-random-llama", {"max_memory_tokens": 8, "max_answer_tokens": 4, "gate": "all"})
    plain, trained = (runner.engine_for(m) for m in parse_methods("lychee:reasoner_weights=none,lychee"))
    assert plain.reasoner.adapter is None and trained.reasoner.adapter is not None


def test_bad_reasoner_files_get_specific_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        fresh_engine(reasoner_weights=str(tmp_path / "missing.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UnsupportedModelError, match="is damaged or not a safetensors file"):
        fresh_engine(reasoner_weights=str(tmp_path / "junk.safetensors"))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "gate.safetensors"), {"format": "lychee-gate-lora"})
    with pytest.raises(UnsupportedModelError, match="is not a reasoner weights file"):
        fresh_engine(reasoner_weights=str(tmp_path / "gate.safetensors"))
    engine = fresh_engine()
    adapter = new_reasoner_adapter(engine.loaded)
    path = save_reasoner_file(tmp_path / "other.safetensors", adapter, RLSettings().shape, "another-backbone")
    with pytest.raises(UnsupportedModelError, match="never applies to another backbone"):
        fresh_engine(reasoner_weights=str(path))


def test_one_epoch_without_old_log_probs_gives_the_same_gradient():
    """A single epoch may skip the behaviour policy's forward (old = the current log-probs, detached)."""
    engine = fresh_engine()
    example = RLExample("What is the digit?", ["7"], [Document(text="The digit is 7.", id="digit")])
    trainer = RLTrainer(engine, [example], RLSettings(group=4), reward=lambda trajectory, _: 0.0)
    with torch.no_grad():
        for parameter in trainer.adapter.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    trajectories = rollout_group(engine, trainer.adapter, example.question, trainer.bank(0), 4, seed=5)
    for trajectory, advantage in zip(trajectories, [1.0, -1.0, 0.5, -0.5]):
        trajectory.advantage = advantage
    turns = training_turns(trajectories)
    gradients = []
    for with_old in (True, False):
        with only_these_train([engine.loaded.model], trainer.adapter.parameters()):
            old = fixed_log_probs(engine.loaded, trainer.adapter, [t for t, _ in turns], 4) if with_old else None
            trainer.optimizer.zero_grad()
            policy_loss_and_backward(engine.loaded, trainer.adapter, turns, old, LossSettings())
            gradients.append([p.grad.clone() for p in trainer.adapter.parameters()])
    for first, second in zip(*gradients):
        torch.testing.assert_close(first, second)


def test_a_group_that_all_agrees_skips_its_update():
    engine = fresh_engine()
    example = RLExample("What is the digit?", ["7"], [Document(text="The digit is 7.", id="digit")])
    trainer = RLTrainer(engine, [example], RLSettings(group=2, learning_rate=5e-2), reward=lambda trajectory, _: 1.0)
    before = {name: tensor.clone() for name, tensor in trainer.adapter_tensors().items()}
    record = trainer.step(0)
    assert record["updated"] == 0.0 and record["spread"] == 0.0 and record["update_seconds"] < 1.0
    after = trainer.adapter_tensors()
    assert all(torch.equal(before[name], after[name]) for name in before)


def learned_engine(tmp_path, **options) -> LycheeMemory:
    """A tiny engine whose blocks come from a (random, nonzero) learned compressor, read as KV."""
    from .test_learned_compressor import _random_weights, _write

    loaded = load_model(ModelSettings(spec="tiny-random-llama"))
    path = _write(tmp_path, loaded, _random_weights(loaded))
    return LycheeMemory.from_pretrained(
        "tiny-random-llama",
        compressor="learned",
        compressor_weights=str(path),
        chunk_tokens=64,
        max_memory_tokens=8,
        max_answer_tokens=4,
        gate="all",
        show_progress=False,
        **options,
    )


def test_a_differentiable_block_equals_the_stored_one(tmp_path):
    from lychee_memory.training.rl import differentiable_block

    engine = learned_engine(tmp_path)
    assert engine.reasoner.read_mode == "kv"
    bank = engine.ingest([Document(text=FACTS_DOCUMENT, id="facts")])
    memory = engine.compressor.weights
    with only_these_train([memory], list(memory.parameters())):
        for index in range(len(bank)):
            stored = bank.block(index)
            rebuilt = differentiable_block(engine, stored)
            torch.testing.assert_close(rebuilt.keys, stored.keys, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(rebuilt.values, stored.values, atol=1e-5, rtol=1e-4)
            assert rebuilt.keys.requires_grad and rebuilt.values.requires_grad


@pytest.mark.parametrize("train_reasoner", [True, False])
def test_joint_training_reaches_the_compressor_through_the_blocks_read_and_nothing_else(tmp_path, train_reasoner):
    import itertools

    engine = learned_engine(tmp_path)
    example = RLExample("What is the access code?", ["58213"], [Document(text=FACTS_DOCUMENT, id="facts")])
    calls = itertools.count()
    settings = RLSettings(group=2, learning_rate=1e-2, train_compressor=True, train_reasoner=train_reasoner)
    trainer = RLTrainer(engine, [example], settings, reward=lambda trajectory, _: float(next(calls) % 2 == 0))
    memory = engine.compressor.weights
    before = {name: parameter.detach().clone() for name, parameter in memory.named_parameters()}
    first_bank = trainer.bank(0)
    lora_before = {name: tensor.clone() for name, tensor in trainer.adapter_tensors().items()}
    record = trainer.step(0)
    assert record["updated"] == 1.0 and record["turns"] > 2
    moved = [name for name, parameter in memory.named_parameters() if not torch.equal(parameter, before[name])]
    assert moved, "the memory weights learned from the reward"
    lora_after = trainer.adapter_tensors()
    lora_moved = any(not torch.equal(lora_before[name], lora_after[name]) for name in lora_before)
    assert lora_moved == train_reasoner, "the reasoner's LoRA trains only when switched on"
    backbone = [n for n, p in engine.loaded.model.named_parameters() if "lora_" not in n and p.grad is not None]
    assert backbone == [], f"gradients leaked into the backbone: {backbone[:3]}"
    assert trainer.bank(0) is not first_bank, "blocks are compressed again with the new memory weights"
    assert not any(parameter.requires_grad for parameter in memory.parameters()), "flags restored after the step"


def test_joint_training_needs_a_learned_compressor_read_as_kv():
    example = RLExample("What is the digit?", ["7"], [Document(text="The digit is 7.", id="digit")])
    with pytest.raises(ConfigurationError, match="compressor='learned'"):
        RLTrainer(fresh_engine(), [example], RLSettings(group=2, train_compressor=True))
    with pytest.raises(ValueError, match="nothing to train"):
        RLSettings(train_reasoner=False)
