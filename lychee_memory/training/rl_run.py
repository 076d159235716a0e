"""A ``lychee train rl`` run: settings, data, held-out evaluation, checkpoints, the curves PNG and the summary.

The run trains the reasoner adapter with :class:`RLTrainer` (GRPO over whole trajectories) on training
questions, and every ``eval_every`` steps answers the same held-out questions greedily with the current adapter
(step 0 is the untrained reasoner: a fresh adapter's B is 0). It is resumable (a checkpoint at every
evaluation holds the adapter, the optimizer and the history) and deterministic for a seed (example order,
LoRA initialisation and every rollout's sampling seed derive from it).
"""

from __future__ import annotations

import os
import random
import resource
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..compressors.memory_weights import save_memory_weights
from ..config import DEFAULT_MODEL
from ..engine import LycheeMemory
from ..eval.metrics import f1_score, normalize_answer, sub_em
from ..reasoner_weights import REASONER_TARGETS, ReasonerAdapterShape, save_reasoner_file
from .rl import LossSettings, RLSettings, RLTrainer, policy_of
from .rl_data import RLExample, rl_examples
from .runs import RunState, TrainingRun, moving_mean, save_curves, write_summary

ADAPTER_NAME = "reasoner.safetensors"
COMPRESSOR_NAME = "compressor.safetensors"


class RLTrainingConfig(BaseModel):
    """Everything a run depends on; stored in the output directory so a resumed run is the same run."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="the backbone (alias, HF dir or GGUF), frozen under the LoRA")
    data: str | None = Field(None, description="shared data dir (HotpotQA, SQuAD); None = generated needles only")
    per_family: dict[str, int] | None = Field(None, description="questions per family (rl_data defaults)")
    document_tokens: int = Field(1500, ge=128, description="tokens of each question's document (training length)")
    heldout_share: float = Field(
        0.4, gt=0, lt=1, description="share of questions held out for evaluation (fixed by a hash of the question)"
    )
    steps: int = Field(120, ge=1, description="rollout groups (one training question each)")
    group: int = Field(8, ge=2, description="sampled trajectories per question (GRPO's G)")
    learning_rate: float = Field(3e-5, gt=0, description="AdamW learning rate (constant)")
    temperature: float = Field(0.8, gt=0, description="sampling temperature of the rollouts")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the rollouts; 1 = all tokens")
    epochs: int = Field(1, ge=1, description="updates per rollout group (more than 1 makes the clip bite)")
    reward: Literal["sub_em", "em", "f1"] = Field(
        "sub_em",
        description="outcome reward of an answer: sub_em = gold in answer or answer in gold, em = exact match, "
        "f1 = token F1",
    )
    kl: float = Field(0.0, ge=0, description="weight of the k3 KL to the frozen backbone (0 = no reference pass)")
    clip: float = Field(0.2, gt=0, lt=1, description="PPO clip range of the probability ratio")
    minibatch: int = Field(4, ge=1, description="turns per forward of the update")
    max_grad_norm: float = Field(1.0, gt=0, description="gradients are clipped to this norm")
    rank: int = Field(8, ge=1, description="LoRA rank of the reasoner adapter")
    alpha: float = Field(16.0, gt=0, description="LoRA scale (the update is alpha / rank times the delta)")
    targets: list[str] = Field(
        list(REASONER_TARGETS), min_length=1, description="projections the reasoner's LoRA adapts"
    )
    max_memory_tokens: int = Field(
        160,
        ge=8,
        description="cap on the working memory while training and evaluating: each note, or all the excerpts (the "
        "preset's excerpt budgets shrink to it; the engine's default is 1024)",
    )
    max_answer_tokens: int = Field(48, ge=4, description="cap on each final answer while training and evaluating")
    eval_every: int = Field(20, ge=1, description="steps between evaluations and checkpoints")
    eval_questions: int = Field(24, ge=1, description="held-out questions answered at each evaluation")
    compressor_weights: str | None = Field(
        None, description="a learned compressor's weights (lychee train compressor): banks use it, read as KV"
    )
    chunk_tokens: int | None = Field(None, ge=16, description="tokens per block (None = the model's default)")
    train_reasoner: bool = Field(True, description="train the reasoner's LoRA")
    train_compressor: bool = Field(False, description="also train the learned compressor through the blocks read")
    seed: int = Field(0, description="seed of the generated data, the question order and the rollouts' sampling")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps; auto = cuda when available, else cpu")
    dtype: str = Field("auto", description="float32, bfloat16 or float16; auto = bfloat16 on GPU, float32 on CPU")

    def examples(self, tokenizer) -> dict[str, list[RLExample]]:
        """The run's training and held-out questions (``rl_data.rl_examples``), token counts by ``tokenizer``."""
        return rl_examples(
            Path(self.data) if self.data else None,
            tokens=self.document_tokens,
            per_family=self.per_family,
            seed=self.seed,
            heldout_share=self.heldout_share,
            count_tokens=lambda text: len(tokenizer(text, add_special_tokens=False).input_ids),
        )

    def settings(self) -> RLSettings:
        return RLSettings(
            group=self.group,
            learning_rate=self.learning_rate,
            temperature=self.temperature,
            top_p=self.top_p,
            epochs=self.epochs,
            reward=self.reward,
            max_grad_norm=self.max_grad_norm,
            loss=LossSettings(clip=self.clip, kl=self.kl, minibatch=self.minibatch),
            shape=ReasonerAdapterShape(self.rank, self.alpha, tuple(self.targets)),
            seed=self.seed,
            train_reasoner=self.train_reasoner,
            train_compressor=self.train_compressor,
        )


def _balanced(examples: list[RLExample], count: int) -> list[RLExample]:
    """Up to ``count`` examples taken in turn from each family (so every family is in a small held-out set)."""
    by_family: dict[str, list[RLExample]] = {}
    for example in examples:
        by_family.setdefault(example.family, []).append(example)
    chosen: list[RLExample] = []
    while len(chosen) < count and any(by_family.values()):
        for family in list(by_family):
            if by_family[family] and len(chosen) < count:
                chosen.append(by_family[family].pop(0))
    return chosen


def _holds_answer(text: str, gold: list[str]) -> bool:
    """Whether a block's text contains a gold answer (normalised): the reasoner read what it needed."""
    normalised = normalize_answer(text)
    return any(normalize_answer(answer) and normalize_answer(answer) in normalised for answer in gold)


def peak_memory_gib(device: torch.device) -> float:
    """The process's peak resident memory (CPU) or peak allocated accelerator memory, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def start_data_parallel(device: str) -> tuple[int, int, str]:
    """Join the process group torchrun set up (WORLD_SIZE > 1): (rank, world size, this rank's device).

    NCCL with one GPU per rank (LOCAL_RANK) on CUDA, gloo on CPU; a single process returns (0, 1, device).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    distributed = torch.distributed
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not distributed.is_initialized():
        distributed.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return distributed.get_rank(), distributed.get_world_size(), device


class RLRun(TrainingRun):
    """Loads the backbone and the questions once, then trains step by step (resumable, deterministic).

    Under ``torchrun`` each rank rolls out its own question per step and the adapter's gradients are averaged
    (``RLTrainer`` data parallel); rank 0 evaluates, writes the outputs and checks every rank holds the same
    adapter at each checkpoint.
    """

    label = "training reasoner (GRPO)"

    def __init__(self, config: RLTrainingConfig, out: str | Path, show_progress: bool = True):
        self.config, self.out = config, Path(out)
        self.rank, self.world_size, device = start_data_parallel(config.device)
        self.show_progress = show_progress and self.rank == 0
        torch.manual_seed(config.seed)
        options: dict[str, Any] = {"chunk_tokens": config.chunk_tokens} if config.chunk_tokens else {}
        if config.compressor_weights:
            options.update(compressor="learned", compressor_weights=config.compressor_weights)
        self.engine = LycheeMemory.from_pretrained(
            config.model,
            **options,
            device=device,
            dtype=config.dtype,
            reasoner_weights="none",
            max_memory_tokens=config.max_memory_tokens,
            max_answer_tokens=config.max_answer_tokens,
            show_progress=False,
        )
        self.loaded = self.engine.loaded
        split = config.examples(self.loaded.tokenizer)
        self.train_examples = split["train"]
        self.heldout = _balanced(split["heldout"], config.eval_questions)
        self.order = list(range(len(self.train_examples)))
        random.Random(f"rl-order-{config.seed}").shuffle(self.order)
        self.trainer = RLTrainer(self.engine, self.train_examples, config.settings())
        self.state = RunState()
        self._heldout_banks: dict[int, Any] = {}

    # Evaluation ---------------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """Greedy answers to the held-out questions with the current adapter: sub_em, F1, and how often the
        answer was wrong although a block holding it was read (the reasoner copied the wrong thing)."""
        rows = []
        with policy_of(self.engine, self.trainer.adapter):
            for position, example in enumerate(self.heldout):
                if position not in self._heldout_banks:
                    self._heldout_banks[position] = self.engine.ingest(example.documents, show_progress=False)
                answer = self.engine.ask(example.question, self._heldout_banks[position])
                text = example.documents[0].text
                found = any(_holds_answer(text[b.char_start : b.char_end], example.gold) for b in answer.blocks)
                hit = sub_em(answer.text, example.gold)
                rows.append(
                    {
                        "family": example.family,
                        "sub_em": float(hit),
                        "f1": f1_score(answer.text, example.gold),
                        "found": float(found),
                        "copy_failure": float(found and not hit),
                    }
                )

        def summary(part: list[dict[str, Any]]) -> dict[str, float]:
            count = max(1, len(part))
            return {key: sum(row[key] for row in part) / count for key in ("sub_em", "f1", "found")} | {
                "copy_failures": sum(row["copy_failure"] for row in part),
                "n": len(part),
            }

        families = sorted({row["family"] for row in rows})
        return {"all": summary(rows), **{f: summary([r for r in rows if r["family"] == f]) for f in families}}

    # Running ------------------------------------------------------------------------------------------------

    def train_step(self, step: int) -> dict[str, Any]:
        """One rollout group for this rank's question of the step, and its update (with the peak memory so far)."""
        position = self.order[(step * self.world_size + self.rank) % len(self.order)]
        record = self.trainer.step(step, position)
        record["peak_memory_gib"] = round(peak_memory_gib(self.loaded.device), 3)
        return record

    def progress(self, record: dict[str, Any]) -> dict[str, str]:
        rewards = [r["reward"] for r in self.state.history]
        return {
            "reward": f"{moving_mean(rewards)[-1]:.2f}",
            "kl": f"{record['kl']:.4f}",
            "length": f"{record['answer_tokens']:.0f}/{record['memory_tokens']:.0f}",
        }

    def printed(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        return {"step": evaluation["step"], **evaluation["all"]}

    def record_evaluation(self) -> None:
        """Rank 0 evaluates and writes while the other ranks wait (after checking they all hold one adapter)."""
        if self.world_size > 1:
            self._check_ranks_agree()
            if self.rank != 0:
                torch.distributed.barrier()
                return
        super().record_evaluation()
        if self.world_size > 1:
            torch.distributed.barrier()

    def keep(self, evaluation: dict[str, Any]) -> None:
        """The adapter (and a jointly trained compressor) after every evaluation."""
        self.save(self.out / ADAPTER_NAME)
        if self.config.train_compressor:
            self.save_compressor(self.out / COMPRESSOR_NAME)

    def plot(self, path: Path) -> None:
        plot_rl_training(self.state, path)

    def _check_ranks_agree(self) -> None:
        """Every rank must hold the same adapter (they apply the same averaged gradients); stop if not."""
        total = torch.stack([p.detach().double().sum() for p in self.trainer.adapter.parameters()]).sum().reshape(1)
        gathered = [torch.zeros_like(total) for _ in range(self.world_size)]
        torch.distributed.all_gather(gathered, total)
        if any(not torch.allclose(value, gathered[0], rtol=1e-5, atol=1e-7) for value in gathered):
            raise RuntimeError(f"data-parallel ranks hold different adapters at step {self.state.step}: {gathered}")

    def evidence(self) -> str:
        evaluations = self.state.evaluations
        if not evaluations:
            return ""
        first, last = evaluations[0], evaluations[-1]
        return (
            f"lychee train rl: {self.state.step} steps, group {self.config.group}, lr {self.config.learning_rate}, "
            f"{self.config.document_tokens}-token documents; held-out sub_em {first['all']['sub_em']:.3f} at step 0 "
            f"-> {last['all']['sub_em']:.3f} at step {last['step']} (n={last['all']['n']})"
        )

    def save(self, path: Path) -> Path:
        return save_reasoner_file(
            path, self.trainer.adapter, self.trainer.settings.shape, self.loaded.fingerprint(), self.evidence()
        )

    def save_compressor(self, path: Path) -> str:
        """The jointly trained memory weights, in the compressor trainer's format (its sha256 is a new identity)."""
        compressor = self.engine.compressor
        return save_memory_weights(path, compressor.weights, compressor.settings)

    def save_checkpoint(self) -> None:
        if self.rank == 0:  # every rank holds the same adapter: one writes it
            super().save_checkpoint()

    def checkpoint(self) -> dict[str, Any]:
        return {
            "compressor": self.engine.compressor.weights.state_dict() if self.config.train_compressor else None,
            "adapter": self.trainer.adapter_tensors(),
            "optimizer": self.trainer.optimizer.state_dict(),
        }

    def restore(self, payload: dict[str, Any], source: str) -> None:
        self.trainer.load_adapter_tensors(payload["adapter"], source)
        if payload.get("compressor") is not None:
            self.engine.compressor.weights.load_state_dict(payload["compressor"])
        self.trainer.optimizer.load_state_dict(payload["optimizer"])

    def summary(self) -> dict[str, Any]:
        """The run in numbers: held-out before/after, cost per step and its split, peak memory."""
        history = self.state.history
        count = max(1, len(history))
        rollout = sum(r["rollout_seconds"] for r in history) / count
        update = sum(r["update_seconds"] for r in history) / count
        return {
            "steps": self.state.step,
            "rank": self.rank,
            "world_size": self.world_size,
            "train_questions": len(self.train_examples),
            "heldout_questions": len(self.heldout),
            "seconds": round(self.state.seconds, 1),
            "seconds_per_step": round(rollout + update, 2),
            "rollout_seconds_per_step": round(rollout, 2),
            "update_seconds_per_step": round(update, 2),
            "groups_with_spread": sum(r["spread"] for r in history) / count,
            "mean_reward": sum(r["reward"] for r in history) / count,
            "peak_memory_gib": max((r.get("peak_memory_gib", 0.0) for r in history), default=0.0),
            "before": self.state.evaluations[0] if self.state.evaluations else None,
            "after": self.state.evaluations[-1] if self.state.evaluations else None,
            "adapter": str(self.out / ADAPTER_NAME),
            "compressor": str(self.out / COMPRESSOR_NAME) if self.config.train_compressor else None,
        }


def plot_rl_training(state: RunState, path: Path) -> None:
    """Reward (per step and smoothed), held-out sub_em, KL and completion lengths against steps, one PNG."""

    def draw(axes) -> None:
        reward_axis, heldout_axis, length_axis = axes
        if state.history:
            steps = [r["step"] + 1 for r in state.history]
            rewards = [r["reward"] for r in state.history]
            reward_axis.plot(steps, rewards, ".", alpha=0.3, label="group mean reward")
            reward_axis.plot(steps, moving_mean(rewards), label="20-step mean")
            reward_axis.legend()
            length_axis.plot(steps, moving_mean([r["answer_tokens"] for r in state.history]), label="answer tokens")
            length_axis.plot(steps, moving_mean([r["memory_tokens"] for r in state.history]), label="memory tokens")
            kl_axis = length_axis.twinx()
            kl_axis.plot(steps, [r["kl"] for r in state.history], color="grey", alpha=0.5, label="KL (right)")
            kl_axis.set_ylabel("KL to the backbone")
            length_axis.legend(loc="upper left")
        reward_axis.set_xlabel("step")
        reward_axis.set_title("training reward")
        if state.evaluations:
            steps = [r["step"] for r in state.evaluations]
            heldout_axis.plot(steps, [r["all"]["sub_em"] for r in state.evaluations], marker="o", label="sub_em")
            heldout_axis.plot(steps, [r["all"]["f1"] for r in state.evaluations], marker="o", label="F1")
            heldout_axis.legend()
        heldout_axis.set_ylim(0, 1)
        heldout_axis.set_xlabel("step")
        heldout_axis.set_title("held-out questions (greedy)")
        length_axis.set_xlabel("step")
        length_axis.set_title("completion lengths (20-step mean)")

    save_curves(path, 3, draw, width=15)


def train_rl(config: RLTrainingConfig, out: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a GRPO run into ``out``; returns :meth:`RLRun.summary` (also written to summary.json)."""
    run = RLRun(config, out, show_progress)
    run.run()
    summary = run.summary()
    if run.rank == 0:
        write_summary(run.out, summary)
    return summary
