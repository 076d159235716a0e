"""``lychee train compressor``: distil a raw-KV read into the learned compressor's memory slots.

The teacher and the student share the frozen backbone. For each training chunk, one no-grad forward gives the
chunk's raw KV (after the engine's opening, as served); the teacher reads continuations after
``[opening | raw KV]``, the student after ``[opening | memory slots]`` made from that same raw KV by
``memory_stream``, at the same positions. Continuations are the prompts the engine really sends after a block:
the gate's question-likelihood prompt and the reasoner's update prompt followed by the note it should write,
plus the text that follows the chunk. The loss, over continuation tokens:

- ``kl``: KL(teacher || student) of the next-token distributions, each token weighted by how much it depends
  on the block (``dependence_floor`` + its KL between the teacher with and without the block, normalised), so
  codes and names the block supplies count most (the "lost if surprise" failure of gist compressors);
- ``answer``: cross-entropy of the target note / answer tokens;
- ``match``: per layer, the student's hidden states against the teacher's at the continuation tokens
  (relative squared error), which carries the attention outputs' agreement into every layer.

Only ``MemoryWeights`` (low-rank q/k/v deltas and the memory embedding) get gradients.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from transformers import DynamicCache

from ..compressors.learned import memory_stream
from ..compressors.memory_weights import (
    LearnedSettings,
    MemoryWeights,
    read_memory_file,
    save_memory_weights,
)
from ..config import DEFAULT_MODEL, EngineConfig, ModelSettings
from ..engine import LycheeMemory
from ..errors import ConfigurationError
from ..model_loading import LoadedModel, load_model
from ..weight_files import base_geometry, file_digest
from .compressor_data import TrainingSample, make_samples, paragraph_pool
from .runs import (
    CURVE_NAME,
    RunState,
    TrainingRun,
    moving_mean,
    save_curves,
    set_learning_rate,
    warmup_cosine,
    write_summary,
)

logger = logging.getLogger(__name__)
WEIGHTS_NAME = "compressor.safetensors"


class CompressorTrainingConfig(BaseModel):
    """Everything a run depends on; stored in the output directory so a resumed run is the same run."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="the backbone (alias, HF dir or GGUF), frozen")
    ratios: list[int] = Field([4], min_length=1, description="compression ratios to train; one drawn per step")
    rank: int = Field(32, ge=1, description="rank of the memory q/k/v deltas")
    chunk_tokens: list[int] = Field([1024], min_length=1, description="training chunk lengths; one drawn per step")
    steps: int = Field(400, ge=1, description="optimiser steps, one training chunk each")
    learning_rate: float = Field(2e-3, gt=0, description="peak learning rate (warmup, then cosine to a tenth)")
    warmup_steps: int = Field(20, ge=0, description="steps of linear warmup to the peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay of the trained weights")
    questions_per_chunk: int = Field(2, ge=1, description="questions asked after each chunk (2 rows each)")
    kl_weight: float = Field(1.0, ge=0, description="weight of the KL to the raw-KV teacher in the loss")
    answer_weight: float = Field(0.5, ge=0, description="weight of the target note / answer cross-entropy")
    match_weight: float = Field(
        0.1, ge=0, description="weight of the per-layer hidden-state match to the teacher; 0 = skip it"
    )
    dependence_floor: float = Field(
        0.25, ge=0, description="KL weight every continuation token keeps, on top of how much it depends on the block"
    )
    train_samples: int = Field(2000, ge=1, description="distinct training chunks generated (cycled)")
    eval_every: int = Field(50, ge=1, description="steps between evaluations and checkpoints")
    eval_samples: int = Field(12, ge=1, description="held-out chunks per chunk length scored at each evaluation")
    seed: int = Field(0, description="seed of the data, the step draws and the initial weights")
    init_weights: str | None = Field(None, description="start from this weights file (e.g. 4x weights for an 8x run)")
    data: str | None = Field(None, description="directory of the shared HotpotQA/SQuAD pools; None = generated text")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps; auto = cuda when available, else cpu")
    dtype: str = Field("auto", description="float32, bfloat16 or float16; auto = bfloat16 on GPU, float32 on CPU")
    gradient_checkpointing: bool | None = Field(None, description="None = on for GPUs, off on CPU")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, value: list[int]) -> list[int]:
        if min(value) < 2:
            raise ValueError(f"compression ratios must be at least 2, got {value}")
        return sorted(set(value))

    @field_validator("chunk_tokens")
    @classmethod
    def _chunks(cls, value: list[int]) -> list[int]:
        if min(value) < 64:
            raise ValueError(f"training chunks must be at least 64 tokens, got {value}")
        return sorted(set(value))


@dataclass
class ContinuationRow:
    """Token ids read after a block, which of their targets count for KL and for the answer loss."""

    ids: list[int]
    answer_start: int | None = None  # index of the first target token (answer loss on ids[answer_start:])
    kind: str = "gate"
    value: tuple[int, int] | None = None  # token span of the asked value (code, name, date) inside ids


@dataclass
class StepRows:
    chunk_ids: list[int]
    rows: list[ContinuationRow]


class CompressorTrainer(TrainingRun):
    """Holds the frozen backbone, the trained weights, the data and the optimiser of one run."""

    label = "training compressor"

    def __init__(self, config: CompressorTrainingConfig, out: Path, loaded: LoadedModel | None = None):
        self.config = config
        self.out = Path(out)
        torch.manual_seed(config.seed)
        self.loaded = loaded or load_model(
            ModelSettings(spec=config.model, device=config.device, dtype=config.dtype, compressor_weights="none")
        )
        if self.loaded.family not in ("llama", "qwen2", "mistral"):
            raise ConfigurationError(
                f"lychee train compressor supports llama, qwen2 and mistral, not {self.loaded.family}"
            )
        engine = LycheeMemory(
            self.loaded,
            EngineConfig.from_kwargs(compressor="none", chunk_tokens=max(config.chunk_tokens), prefilter="off"),
        )
        self.prompts = engine.prompts
        self.prompt_settings = engine.config.prompts
        self.opening_ids = list(engine.opening.token_ids) if engine.opening is not None else []
        self.weights = MemoryWeights.initial(self.loaded, config.rank).float()
        if config.init_weights is not None:
            tensors, memory_config, _ = read_memory_file(config.init_weights)
            start = LearnedSettings.from_checkpoint_config(memory_config)
            if start.rank != config.rank:
                raise ConfigurationError(
                    f"{config.init_weights} has rank {start.rank}; train with --rank {start.rank} to start from it"
                )
            self.weights.load_state_dict(MemoryWeights.from_tensors(self.loaded.config, tensors, start).state_dict())
        self.weights.to(self.loaded.device)
        self.optimizer = torch.optim.AdamW(
            self.weights.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.checkpointing = (
            self.loaded.device.type == "cuda"
            if config.gradient_checkpointing is None
            else config.gradient_checkpointing
        )
        data = Path(config.data).expanduser() if config.data else None
        tokenizer = self.loaded.tokenizer
        self.train_samples = _samples_by_length(
            paragraph_pool(data, "train"), tokenizer, config.chunk_tokens, config.train_samples, config.seed
        )
        self.eval_samples = _samples_by_length(
            paragraph_pool(data, "heldout"), tokenizer, config.chunk_tokens, config.eval_samples, config.seed + 10_000
        )
        self.state = RunState()

    # Rows ------------------------------------------------------------------------------------------------

    def rows_for(self, sample: TrainingSample, rng: random.Random) -> StepRows:
        """The continuations asked after this chunk: per question the gate's prompt and an update with its note."""
        asked: list[tuple[str, str, str]] = [(fact.question, fact.sentence, fact.answer) for fact in sample.facts]
        asked += [(question, answer, answer) for question, answer in sample.questions]
        rng.shuffle(asked)
        rows = []
        initial = self.prompt_settings.initial_memory
        for question, target, value in asked[: self.config.questions_per_chunk]:
            gate_ids = self.prompts.segments(self.prompt_settings.query_likelihood, question=question).token_ids
            rows.append(ContinuationRow(list(gate_ids), kind="gate"))
            update = list(self.prompts.update_prompt(question, initial, None))
            # The note, tokenized in pieces so the asked value's tokens are known exactly.
            where = target.rfind(value)
            before, after = target[:where].rstrip(), target[where + len(value) :]
            head = list(self.prompts.encode_text(" " + before)) if before else []
            value_ids = list(self.prompts.encode_text(" " + value))
            tail = list(self.prompts.encode_text(after)) if after else []
            value_start = len(update) + len(head)
            rows.append(
                ContinuationRow(
                    update + head + value_ids + tail,
                    answer_start=len(update),
                    kind="update",
                    value=(value_start, value_start + len(value_ids)),
                )
            )
        if sample.probe_ids:
            rows.append(ContinuationRow(list(sample.probe_ids), kind="probe"))
        return StepRows(list(sample.chunk_ids), rows)

    # Forwards --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def raw_forward(self, chunk_ids: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ids = torch.tensor([self.opening_ids + chunk_ids], device=self.loaded.device)
        cache = DynamicCache(config=self.loaded.model.config)
        self.loaded.model.get_decoder()(input_ids=ids, past_key_values=cache, use_cache=True)
        return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]

    def read_rows(
        self,
        prefix: Sequence[tuple[torch.Tensor, torch.Tensor]],
        rows: list[ContinuationRow],
        start: int,
        hidden_states: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Log-probabilities [R, T-1, V] of each row's next tokens after ``prefix`` (per layer [1, H, S, D])."""
        count, width = len(rows), max(len(row.ids) for row in rows)
        pad = self.loaded.tokenizer.pad_token_id
        ids = torch.full((count, width), pad, dtype=torch.long, device=self.loaded.device)
        for index, row in enumerate(rows):
            ids[index, : len(row.ids)] = torch.tensor(row.ids, device=self.loaded.device)
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(count, -1, -1, -1), v.expand(count, -1, -1, -1)) for k, v in prefix],
            config=self.loaded.model.config,
        )
        positions = (start + torch.arange(width, device=self.loaded.device))[None].expand(count, -1)
        # Right padding needs no mask: causal attention never lets a pad token reach the real ones before it.
        output = self.loaded.model.get_decoder()(
            input_ids=ids,
            past_key_values=cache,
            position_ids=positions,
            use_cache=True,
            output_hidden_states=hidden_states,
        )
        head = self.loaded.model.get_output_embeddings()
        logits = head(output.last_hidden_state[:, :-1]).float()
        states = output.hidden_states[1:] if hidden_states else None
        return logits.log_softmax(-1), states

    def losses(self, step_rows: StepRows, ratio: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The three loss terms for one chunk, and diagnostics."""
        loaded, rows = self.loaded, step_rows.rows
        raw_keys, raw_values = self.raw_forward(step_rows.chunk_ids)
        opening = len(self.opening_ids)
        length = len(step_rows.chunk_ids)
        start = opening + length
        matching = self.config.match_weight > 0
        with torch.no_grad():
            teacher, teacher_states = self.read_rows(list(zip(raw_keys, raw_values)), rows, start, matching)
            bare = [(k[:, :, :opening], v[:, :, :opening]) for k, v in zip(raw_keys, raw_values)]
            without_block, _ = self.read_rows(bare, rows, start, False)
        memory_keys, memory_values = memory_stream(
            loaded, self.weights, raw_keys, raw_values, [length], ratio, opening, self.checkpointing
        )
        student_prefix = [
            (torch.cat([k[:, :, :opening], mk], dim=2), torch.cat([v[:, :, :opening], mv], dim=2))
            for k, v, mk, mv in zip(raw_keys, raw_values, memory_keys, memory_values)
        ]
        student, student_states = self.read_rows(student_prefix, rows, start, matching)
        valid = torch.zeros(teacher.shape[:2], dtype=torch.bool, device=teacher.device)
        answer = torch.zeros_like(valid)
        targets = torch.zeros(teacher.shape[:2], dtype=torch.long, device=teacher.device)
        for index, row in enumerate(rows):
            valid[index, : len(row.ids) - 1] = True
            targets[index, : len(row.ids) - 1] = torch.tensor(row.ids[1:], device=teacher.device)
            if row.answer_start is not None:
                answer[index, row.answer_start - 1 : len(row.ids) - 1] = True
        teacher_probs = teacher.exp()
        dependence = (teacher_probs * (teacher - without_block)).sum(-1).clamp(min=0)
        mean_dependence = dependence[valid].mean().clamp(min=1e-6)
        weight = (self.config.dependence_floor + dependence / mean_dependence) * valid
        divergence = (teacher_probs * (teacher - student)).sum(-1)
        kl = (weight * divergence).sum() / weight.sum()
        picked = student.gather(-1, targets[..., None])[..., 0]
        answer_loss = -(picked[answer]).mean() if answer.any() else student.new_zeros(())
        match = student.new_zeros(())
        if matching:
            terms = []
            for mine, theirs in zip(student_states, teacher_states):
                mine, theirs = mine[:, :-1][valid].float(), theirs[:, :-1][valid].float()
                terms.append((mine - theirs).pow(2).mean() / theirs.pow(2).mean().clamp(min=1e-6))
            match = torch.stack(terms).mean()
        with torch.no_grad():
            teacher_answer = teacher.gather(-1, targets[..., None])[..., 0]
            diagnostics = {
                "student_answer_nll": float(-(picked[answer]).mean()) if answer.any() else 0.0,
                "raw_answer_nll": float(-(teacher_answer[answer]).mean()) if answer.any() else 0.0,
                "plain_kl": float(divergence[valid].mean()),
            }
        return {"kl": kl, "answer": answer_loss, "match": match}, diagnostics

    # Loop ------------------------------------------------------------------------------------------------

    def learning_rate(self, step: int) -> float:
        """Warmup, then a cosine down to a tenth of the peak."""
        config = self.config
        return warmup_cosine(step, config.learning_rate, config.warmup_steps, config.steps, floor=0.1)

    def train_step(self, step: int) -> dict[str, float]:
        rng = random.Random(f"step-{self.config.seed}-{step}")
        chunk_tokens = rng.choice(self.config.chunk_tokens)
        pool = self.train_samples[chunk_tokens]
        sample = pool[step % len(pool)]
        ratio = rng.choice(self.config.ratios)
        rows = self.rows_for(sample, rng)
        set_learning_rate(self.optimizer, self.learning_rate(step))
        terms, diagnostics = self.losses(rows, ratio)
        loss = (
            self.config.kl_weight * terms["kl"]
            + self.config.answer_weight * terms["answer"]
            + self.config.match_weight * terms["match"]
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.weights.parameters(), 1.0)
        self.optimizer.step()
        self.state.tokens_seen += len(rows.chunk_ids) + sum(len(row.ids) for row in rows.rows)
        return {
            "step": step,
            "loss": float(loss.detach()),
            **{k: float(v.detach()) for k, v in terms.items()},
            **diagnostics,
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out fidelity: KL to the raw read and answer-token accuracy of raw vs compressed, per ratio."""
        results: dict[str, float] = {}
        for ratio in self.config.ratios:
            kls, student_right, raw_right, nll = [], 0, 0, []
            for index, sample in enumerate(sample for pool in self.eval_samples.values() for sample in pool):
                rows = self.rows_for(sample, random.Random(f"eval-{index}"))
                terms, diagnostics = self.losses(rows, ratio)
                kls.append(diagnostics["plain_kl"])
                nll.append(diagnostics["student_answer_nll"])
                right = self._answers_right(rows, ratio)
                student_right += right[0]
                raw_right += right[1]
            results[f"heldout_kl_x{ratio}"] = sum(kls) / len(kls)
            results[f"heldout_answer_nll_x{ratio}"] = sum(nll) / len(nll)
            results[f"heldout_answers_x{ratio}"] = student_right
            results["heldout_answers_raw"] = raw_right
        return results

    def _answers_right(self, step_rows: StepRows, ratio: int) -> tuple[int, int]:
        """Update rows whose asked value (code, name, date, SQuAD answer) is the argmax at every one of its tokens,
        teacher-forced after the note's words before it: compressed and raw."""
        rows = [row for row in step_rows.rows if row.answer_start is not None]
        raw_keys, raw_values = self.raw_forward(step_rows.chunk_ids)
        opening, length = len(self.opening_ids), len(step_rows.chunk_ids)
        memory_keys, memory_values = memory_stream(
            self.loaded, self.weights, raw_keys, raw_values, [length], ratio, opening
        )
        student_prefix = [
            (torch.cat([k[:, :, :opening], mk], dim=2), torch.cat([v[:, :, :opening], mv], dim=2))
            for k, v, mk, mv in zip(raw_keys, raw_values, memory_keys, memory_values)
        ]
        counts = []
        for prefix in (student_prefix, list(zip(raw_keys, raw_values))):
            logprobs, _ = self.read_rows(prefix, rows, opening + length, False)
            right = 0
            for index, row in enumerate(rows):
                start, end = row.value
                predicted = logprobs[index, start - 1 : end - 1].argmax(-1).tolist()
                right += int(predicted == row.ids[start:end])
            counts.append(right)
        return counts[0], counts[1]

    def progress(self, record: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{record['loss']:.3f}", "kl": f"{record['kl']:.3f}", "ans": f"{record['answer']:.2f}"}

    def keep(self, evaluation: dict[str, Any]) -> None:
        """The weights of the lowest held-out KL at the first ratio, and the last weights."""
        if self.improves(evaluation[f"heldout_kl_x{self.config.ratios[0]}"], higher_is_better=False):
            self.save_weights(self.out / WEIGHTS_NAME)
        self.save_weights(self.out / "last.safetensors")

    def plot(self, path: Path) -> None:
        plot_training(self.state, path)

    def settings(self) -> LearnedSettings:
        return LearnedSettings(
            ratios=tuple(self.config.ratios),
            window=max(self.config.chunk_tokens),
            rank=self.config.rank,
            base=base_geometry(self.loaded.config),
        )

    def save_weights(self, path: Path) -> str:
        return save_memory_weights(path, self.weights, self.settings())

    def checkpoint(self) -> dict[str, Any]:
        return {"weights": self.weights.state_dict(), "optimizer": self.optimizer.state_dict()}

    def restore(self, payload: dict[str, Any], source: str) -> None:
        self.weights.load_state_dict(payload["weights"])
        self.optimizer.load_state_dict(payload["optimizer"])


def _samples_by_length(pool, tokenizer, lengths: list[int], n: int, seed: int) -> dict[int, list[TrainingSample]]:
    return {length: make_samples(pool, tokenizer, length, n, seed + length) for length in lengths}


def plot_training(state: RunState, path: Path) -> None:
    """Training loss (smoothed) and held-out metrics against steps, one PNG."""

    def draw(axes) -> None:
        left, right = axes
        if state.history:
            steps = [record["step"] for record in state.history]
            for key in ("loss", "kl", "answer"):
                left.plot(steps, moving_mean([record[key] for record in state.history]), label=f"{key} (20-step mean)")
            left.legend()
        left.set_xlabel("step")
        left.set_title("training loss")
        if state.evaluations:
            steps = [record["step"] for record in state.evaluations]
            for key in state.evaluations[0]:
                if key.startswith("heldout_kl") or key.startswith("heldout_answer_nll"):
                    right.plot(steps, [record[key] for record in state.evaluations], marker="o", label=key)
            right.legend()
        right.set_xlabel("step")
        right.set_title("held-out (lower is better)")

    save_curves(path, 2, draw)


def train_compressor(config: CompressorTrainingConfig, out: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) training; returns a summary with the weights file, its digest and the held-out curve (also
    written to summary.json)."""
    trainer = CompressorTrainer(config, Path(out))
    state = trainer.run(show_progress=show_progress)
    weights = Path(out) / WEIGHTS_NAME
    summary = {
        "weights": str(weights),
        "sha256": file_digest(weights),
        "steps": state.step,
        "seconds": round(state.seconds, 1),
        "tokens_seen": state.tokens_seen,
        "evaluations": state.evaluations,
        "curve": str(Path(out) / CURVE_NAME),
    }
    return write_summary(Path(out), summary)
