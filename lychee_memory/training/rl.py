"""Group-relative policy optimisation over whole LycheeMemory trajectories (the core of ``lychee train rl``).

One training question gives ``group`` sampled trajectories through the real engine: the gate (plain backbone,
deterministic) picks blocks as the working memory evolves; the reasoner (backbone + a LoRA adapter, sampled)
writes each memory update and the final answer. A trajectory's reward comes from its answer against the gold
(``sub_em``, ``em`` or ``f1``); advantages are normalised within the group. Every generated turn, each memory
update and the answer, is a training row: its prefix is the block's KV plus the prompt exactly as the reasoner
saw it, its completion the sampled tokens, and it carries its trajectory's advantage. The loss is the clipped
policy ratio with an optional k3 KL to the frozen model (the same backbone with the adapter off), normalised by
the step's token count. TRL's GRPOTrainer cannot do this: it recomputes log-probs from prompt+completion without
the KV prefix and gives a multi-turn trajectory one row.

Only the adapter's parameters train: the backbone is frozen during a step, and the gate and the compressor
never see the adapter (it is on only inside reasoner calls and the loss forwards).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..blocks import MemoryBlock
from ..errors import ConfigurationError
from ..eval.metrics import exact_match, f1_score, sub_em
from ..generation import Generation
from ..kv_prefix import PromptRow, logits_of, prefill_with_gradients
from ..lora import LoraAdapter
from ..reasoner import UpdateRequest
from ..reasoner_weights import ReasonerAdapterShape, new_reasoner_adapter
from .rl_data import RLExample

RewardKind = Literal["sub_em", "em", "f1"]


def answer_reward(prediction: str, gold: str | Sequence[str], kind: RewardKind = "sub_em") -> float:
    """The outcome reward of one trajectory: 1/0 for sub_em and em, the token F1 for f1."""
    if kind == "sub_em":
        return float(sub_em(prediction, gold))
    if kind == "em":
        return float(exact_match(prediction, gold))
    if kind == "f1":
        return float(f1_score(prediction, gold))
    raise ValueError(f"unknown reward {kind!r}; choose sub_em, em or f1")


def group_advantages(rewards: Sequence[float], scale: bool = True, epsilon: float = 1e-4) -> list[float]:
    """Each reward minus the group's mean, divided by the group's (population) standard deviation when ``scale``.

    A group whose rewards are all equal teaches nothing: every advantage is 0.
    """
    if not rewards:
        return []
    mean = sum(rewards) / len(rewards)
    centred = [reward - mean for reward in rewards]
    if not scale:
        return centred
    spread = math.sqrt(sum(value * value for value in centred) / len(rewards))
    if spread < epsilon:
        return [0.0 for _ in rewards]
    return [value / (spread + epsilon) for value in centred]


@dataclass
class Turn:
    """One generated turn: the row the reasoner decoded after (block KV + prompt) and the tokens it sampled."""

    row: PromptRow
    completion: list[int]
    kind: str  # "update" or "answer"


@dataclass
class Trajectory:
    """One sampled pass over a bank: its turns in order, its answer, reward and advantage."""

    question: str
    turns: list[Turn] = field(default_factory=list)
    answer: str = ""
    reward: float = 0.0
    advantage: float = 0.0
    blocks_read: list[int] = field(default_factory=list)


def _completion(generation: Generation, stop_token: int | None) -> list[int]:
    """The sampled tokens, with the stop token the decoder consumed (so the policy also learns when to stop)."""
    tokens = list(generation.token_ids)
    if generation.stopped and stop_token is not None:
        tokens.append(stop_token)
    return tokens


@contextlib.contextmanager
def policy_of(engine: Any, adapter: LoraAdapter | None, **sampling: Any) -> Iterator[None]:
    """The engine's reasoner with ``adapter`` as its LoRA and, if given, other decoding settings (temperature,
    top_p, seed), for the block only: gate, compressor and prefilter keep the plain backbone."""
    reasoner = engine.reasoner
    settings, own = reasoner.settings, reasoner.adapter
    reasoner.settings = settings.model_copy(update=sampling)
    reasoner.adapter = adapter
    try:
        yield
    finally:
        reasoner.settings, reasoner.adapter = settings, own


def rollout_group(
    engine: Any,
    adapter: LoraAdapter,
    question: str,
    bank: Any,
    group: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[Trajectory]:
    """``group`` sampled trajectories of one question over ``bank``, recorded turn by turn.

    The engine's own scan runs (gate, state-aware re-judging, budgets) with the adapter as the reasoner's; each
    memory update is observed to record its row and sampled completion.
    """
    reasoner, loaded = engine.reasoner, engine.loaded
    stop_token = loaded.stop_token_ids[0] if loaded.stop_token_ids else None
    trajectories: dict[int, Trajectory] = {}

    def record(state: Any, index: int, request: UpdateRequest, generation: Generation) -> None:
        trajectory = trajectories.setdefault(id(state), Trajectory(state.question))
        trajectory.turns.append(Turn(reasoner.update_row(request), _completion(generation, stop_token), "update"))
        trajectory.blocks_read.append(index)

    with engine.lock, policy_of(engine, adapter, temperature=temperature, top_p=top_p, seed=seed):
        states, _ = engine.scan([question] * group, bank, False, observe=record)
        memories = [engine.memory_strategy.answer_memory(state) for state in states]
        rows = [PromptRow(engine.prompts.final_prompt(question, memory)) for memory in memories]
        answers = reasoner.answer([question] * group, memories)
    result = []
    for state, row, generation in zip(states, rows, answers):
        trajectory = trajectories.get(id(state), Trajectory(question))
        trajectory.turns.append(Turn(row, _completion(generation, stop_token), "answer"))
        trajectory.answer = generation.text
        result.append(trajectory)
    return result


BlockRebuild = Callable[[MemoryBlock], MemoryBlock]


def completion_log_probs(loaded: Any, turns: Sequence[Turn], rebuild: BlockRebuild | None = None) -> list[torch.Tensor]:
    """Per-token log-probs of each turn's completion after its prefix (block KV + prompt), with autograd as set.

    Rows are laid out left-padded so every sequence ends at the same index: the completion is the last ``c``
    tokens of its row, predicted from the ``c`` positions before them. ``rebuild`` recomputes each read block
    (joint training: the compressor's KV with autograd, so gradients reach its parameters).
    """
    rows = [
        PromptRow(
            turn.row.prompt_ids + turn.completion,
            rebuild(turn.row.block) if rebuild is not None and turn.row.block is not None else turn.row.block,
            turn.row.opening,
        )
        for turn in turns
    ]
    batch, hidden = prefill_with_gradients(loaded, rows)
    width = batch.input_ids.shape[1]
    result = []
    for position, turn in enumerate(turns):
        count = len(turn.completion)
        if count == 0:
            result.append(hidden.new_zeros(0, dtype=torch.float32))
            continue
        logits = logits_of(loaded, hidden[position, width - count - 1 : width - 1])
        targets = batch.input_ids[position, width - count :]
        result.append(torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1))
    return result


@dataclass(frozen=True)
class LossSettings:
    """The policy loss: PPO-style clipping of the ratio, and the weight of the k3 KL to the frozen model."""

    clip: float = 0.2
    kl: float = 0.0
    minibatch: int = 4  # turns per forward


def training_turns(trajectories: Sequence[Trajectory]) -> list[tuple[Turn, float]]:
    """Every turn with a completion, carrying its trajectory's advantage (a turn of a 0-advantage group stays:
    it adds tokens to the normaliser and, with a KL, its divergence)."""
    return [(turn, trajectory.advantage) for trajectory in trajectories for turn in trajectory.turns if turn.completion]


def fixed_log_probs(
    loaded: Any, adapter: LoraAdapter | None, turns: Sequence[Turn], minibatch: int
) -> list[torch.Tensor]:
    """Log-probs without gradients: the behaviour policy's (``adapter`` on) before an update, or the frozen
    reference's (``adapter`` None: the backbone alone)."""
    result: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(turns), minibatch):
            part = turns[start : start + minibatch]
            with adapter.active() if adapter is not None else contextlib.nullcontext():
                result.extend(completion_log_probs(loaded, part))
    return result


def policy_loss_and_backward(
    loaded: Any,
    adapter: LoraAdapter,
    turns: Sequence[tuple[Turn, float]],
    old: Sequence[torch.Tensor] | None,
    settings: LossSettings,
    reference: Sequence[torch.Tensor] | None = None,
    rebuild: BlockRebuild | None = None,
) -> dict[str, float]:
    """Backpropagate one epoch's loss into the adapter, normalised by the tokens of every turn (token-level).

    ``old``: the behaviour policy's log-probs (``fixed_log_probs`` before the first epoch), so the first epoch's
    ratio is 1 and later epochs are bounded by the clip; None for a single epoch, whose behaviour policy is the
    current one (the ratio is 1 in value, its gradient the policy gradient), saving a forward; ``reference``: the frozen backbone's, for the KL term.
    """
    total = sum(len(turn.completion) for turn, _ in turns)
    if total == 0:
        return {"loss": 0.0, "kl": 0.0, "tokens": 0, "clipped": 0.0}
    if settings.kl > 0 and reference is None:
        raise ValueError("a KL weight needs the reference log-probs")
    loss_sum = kl_sum = clipped = 0.0
    for start in range(0, len(turns), settings.minibatch):
        part = turns[start : start + settings.minibatch]
        # Backward runs with the adapter on: peft drops requires_grad on a layer's LoRA when it is disabled.
        with adapter.active():
            current = completion_log_probs(loaded, [turn for turn, _ in part], rebuild)
            loss = current[0].new_zeros(())
            for index, ((_, advantage), new) in enumerate(zip(part, current), start=start):
                ratio = torch.exp(new - (old[index] if old is not None else new.detach()))
                bounded = torch.clamp(ratio, 1.0 - settings.clip, 1.0 + settings.clip)
                per_token = -torch.minimum(ratio * advantage, bounded * advantage)
                clipped += float(((ratio - bounded).abs() > 1e-6).sum())
                if reference is not None and settings.kl > 0:
                    gap = reference[index] - new
                    divergence = torch.exp(gap) - gap - 1.0
                    per_token = per_token + settings.kl * divergence
                    kl_sum += float(divergence.detach().sum())
                loss = loss + per_token.sum()
            (loss / total).backward()
        loss_sum += float(loss.detach())
    return {"loss": loss_sum / total, "kl": kl_sum / total, "tokens": total, "clipped": clipped / total}


def _any_rank(flag: bool, device: torch.device) -> bool:
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Mean of every rank's adapter gradients (a rank with nothing to learn adds zeros), in one flat all-reduce."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    offset = 0
    for parameter in parameters:
        count = parameter.numel()
        parameter.grad = flat[offset : offset + count].view_as(parameter).clone()
        offset += count


@contextlib.contextmanager
def only_these_train(
    modules: Sequence[torch.nn.Module], trainable: Sequence[torch.nn.Parameter]
) -> Iterator[list[torch.nn.Parameter]]:
    """Every parameter of ``modules`` frozen but ``trainable`` for the block (restoring each flag after)."""
    chosen = {id(parameter) for parameter in trainable}
    flags = [(parameter, parameter.requires_grad) for module in modules for parameter in module.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(id(parameter) in chosen)
        yield [parameter for parameter, _ in flags if id(parameter) in chosen]
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def differentiable_block(engine: Any, block: MemoryBlock) -> MemoryBlock:
    """``block`` recomputed by the engine's learned compressor with autograd on its memory weights: the frozen
    raw forward of opening + chunk runs without gradients, the memory tokens over it with them."""
    from ..compressors.learned import memory_stream
    from ..compressors.selection import run_chunks

    compressor, loaded = engine.compressor, engine.loaded
    opening = compressor.opening_for(loaded)
    prefix, chunk = opening.num_slots, block.token_ids.tolist()
    forward = run_chunks(loaded, [list(opening.token_ids) + chunk], None, prefix)
    raw_keys = [layer.clone() for layer in forward.keys]  # out of inference mode, so autograd may save them
    raw_values = [layer.clone() for layer in forward.values]
    keys, values = memory_stream(
        loaded, compressor.weights, raw_keys, raw_values, [len(chunk)], compressor.ratio, prefix
    )
    slots = block.keys.shape[2]
    return dataclasses.replace(
        block,
        keys=torch.stack([layer[0, :, :slots] for layer in keys]),
        values=torch.stack([layer[0, :, :slots] for layer in values]),
    )


@dataclass(frozen=True)
class RLSettings:
    """One GRPO run: group size, learning rate, sampling, epochs per rollout, reward, loss, adapter shape, seed."""

    group: int = 4
    learning_rate: float = 1e-5
    temperature: float = 1.0
    top_p: float = 1.0
    epochs: int = 1
    reward: RewardKind = "sub_em"
    scale_advantages: bool = True
    max_grad_norm: float = 1.0
    loss: LossSettings = LossSettings()
    shape: ReasonerAdapterShape = ReasonerAdapterShape()
    seed: int = 0
    train_reasoner: bool = True  # the reasoner's LoRA
    train_compressor: bool = False  # a learned compressor's memory weights, through the KV of the blocks read

    def __post_init__(self) -> None:
        if not (self.train_reasoner or self.train_compressor):
            raise ValueError("nothing to train: enable train_reasoner, train_compressor or both")
        if self.group < 2:
            raise ValueError(f"a group needs at least 2 rollouts to compare, got {self.group}")
        if self.epochs < 1 or not self.learning_rate > 0 or not self.temperature > 0:
            raise ValueError("epochs must be at least 1, and learning_rate and temperature positive")


class RLTrainer:
    """GRPO on the engine's reasoner: each ``step`` samples a group for one example and updates the LoRA adapter.

    ``reward`` (default: ``answer_reward`` of the settings' kind against the example's gold) may be replaced for
    toy tasks. Banks are built once per example (in memory, with the engine's compressor and no adapter).
    """

    def __init__(self, engine: Any, examples: Sequence[RLExample], settings: RLSettings = RLSettings(), reward=None):
        if not examples:
            raise ValueError("GRPO needs at least one training example")
        self.engine, self.examples, self.settings = engine, list(examples), settings
        # reward(trajectory, example) -> float; by default the answer's score against the gold
        self.reward = reward or (
            lambda trajectory, example: answer_reward(trajectory.answer, example.gold, settings.reward)
        )
        if engine.reasoner.adapter is not None:
            raise ConfigurationError(
                "RL trains a fresh reasoner adapter on the plain backbone: load the engine with reasoner_weights='none' "
                "(a run may start from a file's tensors with load_adapter_tensors)"
            )
        if settings.train_compressor and (engine.compressor.name != "learned" or engine.reasoner.read_mode != "kv"):
            raise ConfigurationError(
                "train_compressor trains a learned compressor through the KV the reasoner reads: the engine needs "
                f"compressor='learned' with its weights and read_mode='kv' (it has {engine.compressor.name!r}, "
                f"{engine.reasoner.read_mode!r})"
            )
        torch.manual_seed(settings.seed)
        self.adapter = new_reasoner_adapter(engine.loaded, settings.shape)
        self.trainable: list[torch.nn.Parameter] = []
        if settings.train_reasoner:
            self.trainable += self.adapter.parameters()
        if settings.train_compressor:
            self.trainable += list(engine.compressor.weights.parameters())
        self.optimizer = torch.optim.AdamW(self.trainable, lr=settings.learning_rate, weight_decay=0.0)
        self._banks: dict[int, Any] = {}
        # Data parallel (torchrun): each rank rolls out its own question, gradients are averaged before a step.
        self.data_parallel = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.data_parallel else 0
        self.world_size = torch.distributed.get_world_size() if self.data_parallel else 1

    def frozen_modules(self) -> list[torch.nn.Module]:
        """Everything whose parameters a step may touch: the backbone (with its adapters) and a learned compressor."""
        modules: list[torch.nn.Module] = [self.engine.loaded.model]
        if self.engine.compressor.name == "learned":
            modules.append(self.engine.compressor.weights)
        return modules

    def bank(self, position: int) -> Any:
        if position not in self._banks:
            self._banks[position] = self.engine.ingest(self.examples[position].documents, show_progress=False)
        return self._banks[position]

    def step(self, step: int, position: int | None = None) -> dict[str, float]:
        """One rollout group (for example ``position``, default ``step`` modulo the examples) and its update;
        returns reward, loss, KL, lengths and the seconds of each phase. A group whose rewards are all equal has
        no advantage: without a KL term it has no gradient either, so its update is skipped."""
        import time

        position = step % len(self.examples) if position is None else position
        example, settings, loaded = self.examples[position], self.settings, self.engine.loaded
        started = time.perf_counter()
        trajectories = rollout_group(
            self.engine,
            self.adapter,
            example.question,
            self.bank(position),
            settings.group,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=(settings.seed * 1_000_003 + step) * self.world_size + self.rank,
        )
        rewards = [self.reward(trajectory, example) for trajectory in trajectories]
        advantages = group_advantages(rewards, settings.scale_advantages)
        for trajectory, reward, advantage in zip(trajectories, rewards, advantages):
            trajectory.reward, trajectory.advantage = reward, advantage
        rolled = time.perf_counter()
        turns = training_turns(trajectories)
        stats: dict[str, float] = {"loss": 0.0, "kl": 0.0, "tokens": 0, "clipped": 0.0}
        updated = bool(turns) and (any(advantages) or settings.loss.kl > 0)
        if self.data_parallel:  # every rank steps together when any rank has something to learn
            updated = _any_rank(updated, self.trainable[0].device)
        if updated:
            just_turns = [turn for turn, _ in turns]
            # The reference is the backbone alone: computed before any adapter is switched on.
            reference = fixed_log_probs(loaded, None, just_turns, settings.loss.minibatch) if settings.loss.kl else None
            rebuild = (lambda block: differentiable_block(self.engine, block)) if settings.train_compressor else None
            with only_these_train(self.frozen_modules(), self.trainable):
                old = (
                    fixed_log_probs(loaded, self.adapter, just_turns, settings.loss.minibatch)
                    if settings.epochs > 1
                    else None
                )
                for _ in range(settings.epochs):
                    self.optimizer.zero_grad(set_to_none=True)
                    stats = policy_loss_and_backward(
                        loaded, self.adapter, turns, old, settings.loss, reference, rebuild
                    )
                    if self.data_parallel:
                        _average_gradients(self.trainable)
                    torch.nn.utils.clip_grad_norm_(self.trainable, settings.max_grad_norm)
                    self.optimizer.step()
            if settings.train_compressor:  # the banks' blocks came from the old memory weights: compress again
                self._banks.clear()
        finished = time.perf_counter()
        answers = [turn for trajectory in trajectories for turn in trajectory.turns if turn.kind == "answer"]
        updates = [turn for trajectory in trajectories for turn in trajectory.turns if turn.kind == "update"]
        return {
            "step": step,
            "example": example.key or str(position),
            "reward": sum(rewards) / len(rewards),
            "spread": float(any(advantages)),
            "updated": float(updated),
            "turns": len(turns),
            "blocks_read": sum(len(t.blocks_read) for t in trajectories) / len(trajectories),
            "answer_tokens": sum(len(t.completion) for t in answers) / max(1, len(answers)),
            "memory_tokens": sum(len(t.completion) for t in updates) / max(1, len(updates)),
            "rollout_seconds": rolled - started,
            "update_seconds": finished - rolled,
            **stats,
        }

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors (file names): what a run's checkpoint holds."""
        return self.adapter.state_tensors()

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor], source: str = "adapter tensors") -> None:
        """Load tensors :meth:`adapter_tensors` gave (a checkpoint, or a file to start from)."""
        self.adapter.load_tensors(tensors, source)
