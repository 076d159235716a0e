"""``lychee train gate``: a LoRA classifier over (question, working memory, block) -> relevant.

States come from ``gate_data.GateExample``s: several examples are joined into one document (so each block is a
positive for one question and a negative for the others) and compressed once with the engine's own compressor
into a store under the output directory (a resumed run reuses them). For each example and each memory the scan
can reach (the first memory; after hop 1's note for chains; after either note otherwise), every block of its
document is a state: relevant when it holds evidence the memory still needs (for chains: only the next hop),
skipped when it holds only evidence already noted (the scan never judges a read block again).

Training: balanced batches (half relevant) and binary cross-entropy, or focal loss, on the logit
``logit(yes) - logit(no)`` after the block's KV and the gate prompt; only the adapter gets gradients. The
threshold is calibrated on the training states (``calibration.choose_threshold``: best recall within a read
budget), evaluation reports precision / recall / F1 on held-out questions, by source (HotpotQA, SQuAD, needles).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..blocks import MemoryBank
from ..config import DEFAULT_MODEL, DEFAULT_RELEVANCE_TEMPLATE
from ..documents import Document
from ..engine import LycheeMemory
from ..errors import ConfigurationError
from ..gate import GateRule, ScoreRequest, TrainedGateRule
from ..gate.adapter import GateAdapterSettings, new_gate, save_gate_file
from ..weight_files import base_geometry, file_digest
from .gate_data import GateExample, gate_examples, split_counts
from .runs import RunState, TrainingRun, moving_mean, save_curves, set_learning_rate, warmup_cosine, write_summary

logger = logging.getLogger(__name__)
WEIGHTS_NAME = "gate.safetensors"
SOURCES = {"hotpot": ("hotpot-bridge", "hotpot-comparison"), "squad": ("squad",)}


class GateTrainingConfig(BaseModel):
    """Everything a run depends on; stored in the output directory so a resumed run is the same run."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="the backbone (alias, HF dir or GGUF), frozen")
    data: str | None = Field(None, description="shared data dir (HotpotQA, SQuAD); None = generated needles only")
    rank: int = Field(8, ge=1, description="LoRA rank on the attention projections")
    alpha: float = Field(16.0, gt=0, description="LoRA scale (the update is alpha / rank times the delta)")
    targets: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, description="projections the LoRA adapts"
    )
    steps: int = Field(300, ge=1, description="optimiser steps, one batch of states each")
    batch_size: int = Field(8, ge=2, description="states per step, half of them relevant")
    learning_rate: float = Field(5e-4, gt=0, description="peak learning rate (warmup, then cosine to 0)")
    warmup_steps: int = Field(20, ge=0, description="steps of linear warmup to the peak learning rate")
    loss: Literal["bce", "focal"] = Field(
        "bce", description="binary cross-entropy, or focal loss (down-weights states already classified well)"
    )
    focal_gamma: float = Field(2.0, ge=0, description="focal loss: exponent on (1 - agreement); 0 = plain BCE")
    document_tokens: int = Field(1500, ge=128, description="tokens of each example's text (about 1.5 blocks)")
    examples_per_document: int = Field(4, ge=1, description="examples joined into one compressed document")
    per_family: dict[str, int] | None = Field(None, description="examples per family (gate_data defaults)")
    heldout_share: float = Field(
        0.4, gt=0, lt=1, description="share of questions held out for evaluation (fixed by a hash of the question)"
    )
    eval_every: int = Field(50, ge=1, description="steps between evaluations and checkpoints")
    eval_states: int = Field(240, ge=10, description="held-out states scored at each evaluation")
    calibration_states: int = Field(400, ge=10, description="training states the threshold is calibrated on")
    read_budget: float = Field(1.0, ge=0, description="false reads allowed per question and memory at calibration")
    template: str = Field(
        DEFAULT_RELEVANCE_TEMPLATE,
        description="question asked after a block ({question}, {memory}): the relevance prompt",
    )
    seed: int = Field(0, description="seed of the data, the batches and the adapter's initial weights")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps; auto = cuda when available, else cpu")
    dtype: str = Field("auto", description="float32, bfloat16 or float16; auto = bfloat16 on GPU, float32 on CPU")


@dataclass(frozen=True)
class GateState:
    """One training row: does ``block`` of bank ``split`` help ``question`` given ``memory``?"""

    example: str
    family: str
    split: str
    question: str
    memory: str
    block: int
    relevant: bool
    group: str  # example and memory: the unit a read budget is counted in


def memories_of(example: GateExample, initial: str) -> list[tuple[str, frozenset[int], frozenset[int]]]:
    """(memory text, evidence already noted, evidence still needed) for each memory the scan can reach."""
    count = len(example.evidence)
    noted_sets: list[frozenset[int]] = [frozenset()]
    if example.chain:
        noted_sets += [frozenset(range(k)) for k in range(1, count)]
    elif count > 1:
        noted_sets += [frozenset({k}) for k in range(count)]
    reached = []
    for noted in noted_sets:
        memory = " ".join(example.notes[k] for k in sorted(noted)) if noted else initial
        if example.chain:
            needed = frozenset({len(noted)}) if len(noted) < count else frozenset()
        else:
            needed = frozenset(range(count)) - noted
        reached.append((memory, noted, needed))
    return reached


def states_for(example: GateExample, spans: Sequence[tuple[int, int]], offset: int, first: int, initial: str):
    """Every state of ``example`` whose document starts at character ``offset`` of a bank document whose blocks
    (character ``spans``, bank indices from ``first``) cover it."""
    holding: dict[int, set[int]] = {}
    for piece, (start, _) in enumerate(example.evidence):
        for index, (block_start, block_end) in enumerate(spans):
            if block_start <= start + offset < block_end:
                holding.setdefault(index, set()).add(piece)
    states = []
    for memory, noted, needed in memories_of(example, initial):
        for index in range(len(spans)):
            pieces = holding.get(index, set())
            if pieces and pieces <= noted:
                continue  # only evidence already read: the scan never judges a read block again
            states.append(
                GateState(
                    example.key,
                    example.family,
                    example.split,
                    example.question,
                    memory,
                    first + index,
                    bool(pieces & needed),
                    f"{example.key}|{len(noted)}|{min(noted) if noted else -1}",
                )
            )
    return states


def scores_metrics(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of ``score >= threshold`` against the labels."""
    true_positive = sum(1 for s, y in zip(scores, labels) if y and s >= threshold)
    predicted = sum(1 for s in scores if s >= threshold)
    actual = sum(labels)
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "positives": actual, "states": len(labels)}


def ranking_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Chance that a relevant state outscores an irrelevant one (ties count half): threshold-free quality."""
    positives = [x for x, y in zip(scores, labels) if y]
    negatives = [x for x, y in zip(scores, labels) if not y]
    if not positives or not negatives:
        return 0.5
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def source_of(family: str) -> str:
    for source, families in SOURCES.items():
        if family in families:
            return source
    return "needle"


class GateTrainer(TrainingRun):
    """Builds the states once, then trains the adapter step by step (resumable, deterministic for a seed)."""

    label = "training gate"

    def __init__(self, config: GateTrainingConfig, out: Path, show_progress: bool = True):
        self.config, self.out = config, Path(out)
        self.show_progress = show_progress
        torch.manual_seed(config.seed)
        self.engine = LycheeMemory.from_pretrained(
            config.model, device=config.device, dtype=config.dtype, gate="query_likelihood", show_progress=False
        )
        self.loaded = self.engine.loaded
        self.initial = self.engine.config.prompts.initial_memory
        tokenizer = self.loaded.tokenizer
        self.settings = GateAdapterSettings(
            template=config.template,
            rank=config.rank,
            alpha=config.alpha,
            targets=tuple(config.targets),
            base=base_geometry(self.loaded.config),
            base_fingerprint=self.loaded.fingerprint(),
        )
        self.adapter = new_gate(self.loaded, self.settings)
        torch.manual_seed(config.seed)  # LoRA A is random: the same for a seed
        for module in self.adapter.layers():
            module.reset_lora_parameters(self.adapter.name, True)
        self.rule = TrainedGateRule(self.adapter, tokenizer)
        self.rule.opening = self.engine.opening
        self.parameters = self.adapter.parameters()
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, weight_decay=0.0)
        self.state = RunState()
        self.examples = gate_examples(
            Path(config.data) if config.data else None,
            tokens=config.document_tokens,
            per_family=config.per_family,
            seed=config.seed,
            heldout_share=config.heldout_share,
            count_tokens=lambda text: len(tokenizer(text, add_special_tokens=False).input_ids),
        )
        self.banks: dict[str, MemoryBank] = {}
        self.states: dict[str, list[GateState]] = {}
        for split in ("train", "heldout"):
            self.banks[split], self.states[split] = self._build(split)
        train = self.states["train"]
        self.positives = [s for s in train if s.relevant]
        self.negatives = [s for s in train if not s.relevant]
        if not self.positives or not self.negatives:
            raise ConfigurationError("the training data gave no relevant or no irrelevant states")
        heldout = self.states["heldout"]
        rng = random.Random(f"gate-eval-{config.seed}")
        self.eval_states = rng.sample(heldout, min(len(heldout), config.eval_states))

    def _build(self, split: str) -> tuple[MemoryBank, list[GateState]]:
        """Join the split's examples into documents, compress them into the run's store, and list the states."""
        examples = [e for e in self.examples if e.split == split]
        random.Random(f"gate-docs-{self.config.seed}-{split}").shuffle(examples)
        per = self.config.examples_per_document
        groups = [examples[i : i + per] for i in range(0, len(examples), per)]
        documents, layout = [], []
        for number, group in enumerate(groups):
            offsets, pieces, position = [], [], 0
            for example in group:
                offsets.append(position)
                pieces.append(example.text)
                position += len(example.text) + 2
            text = "\n\n".join(pieces)
            documents.append(Document(text, f"{split}-{number}-{Document.content_id(text)}"))
            layout.append((group, offsets))
        bank = self.engine.ingest(
            documents, store=self.out / "blocks", bank=f"gate-{split}", show_progress=self.show_progress
        )
        by_document: dict[str, list[int]] = {}
        for index, span in enumerate(bank.spans):
            by_document.setdefault(span.document_id, []).append(index)
        states: list[GateState] = []
        for document, (group, offsets) in zip(documents, layout):
            indices = by_document[document.id]
            spans = [(bank.spans[i].char_start, bank.spans[i].char_end) for i in indices]
            for example, offset in zip(group, offsets):
                states += states_for(example, spans, offset, indices[0], self.initial)
        return bank, states

    # Training -----------------------------------------------------------------------------------------------

    def batch(self, step: int) -> list[GateState]:
        rng = random.Random(f"gate-batch-{self.config.seed}-{step}")
        half = self.config.batch_size // 2
        return rng.sample(self.positives, min(half, len(self.positives))) + rng.sample(
            self.negatives, min(self.config.batch_size - half, len(self.negatives))
        )

    def requests(self, states: Sequence[GateState], split: str) -> list[ScoreRequest]:
        bank = self.banks[split]
        return [ScoreRequest(s.question, s.memory, bank.block(s.block)) for s in states]

    def loss(self, states: Sequence[GateState], split: str = "train") -> torch.Tensor:
        logits = self.rule.logits(self.loaded, self.engine.prompts, self.requests(states, split))
        labels = torch.tensor([float(s.relevant) for s in states], device=logits.device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        if self.config.loss == "focal":
            agreement = torch.exp(-loss)  # probability given to the right label
            loss = (1 - agreement) ** self.config.focal_gamma * loss
        return loss.mean()

    def learning_rate(self, step: int) -> float:
        """Warmup, then a cosine down to zero."""
        config = self.config
        return warmup_cosine(step, config.learning_rate, config.warmup_steps, config.steps)

    def train_step(self, step: int) -> dict[str, float]:
        set_learning_rate(self.optimizer, self.learning_rate(step))
        self.optimizer.zero_grad(set_to_none=True)
        started = time.perf_counter()
        with self.adapter.active():  # backward too: outside it the adapter's tensors stop requiring gradients
            loss = self.loss(self.batch(step))
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        return {"step": step, "loss": loss.item(), "seconds": time.perf_counter() - started}

    # Evaluation ---------------------------------------------------------------------------------------------

    def score_states(self, rule: GateRule, states: Sequence[GateState], split: str) -> list[float]:
        """Scores of ``rule`` (gains over the block-free prompt for rules that use one), batched."""
        scores: list[float] = []
        size = self.engine.config.gate.batch_size
        baselines: dict[tuple[str, str], float] = {}
        with torch.inference_mode():
            if rule.uses_block_free_baseline:
                keys = sorted({(s.question, s.memory) for s in states})
                for start in range(0, len(keys), size):
                    part = keys[start : start + size]
                    values = rule.score(self.loaded, self.engine.prompts, [ScoreRequest(q, m, None) for q, m in part])
                    baselines.update(zip(part, values))
            for start in range(0, len(states), size):
                part = list(states[start : start + size])
                values = rule.score(self.loaded, self.engine.prompts, self.requests(part, split))
                scores += [v - baselines.get((s.question, s.memory), 0.0) for s, v in zip(part, values)]
        return scores

    def evaluate(self, rule: GateRule | None = None, threshold: float = 0.5) -> dict[str, Any]:
        """Held-out precision / recall / F1 at ``threshold``, overall and per source."""
        rule = rule or self.rule
        states = self.eval_states
        scores = self.score_states(rule, states, "heldout")
        labels = [s.relevant for s in states]
        result: dict[str, Any] = {
            "all": {**scores_metrics(scores, labels, threshold), "auc": ranking_auc(scores, labels)}
        }
        for source in ("hotpot", "squad", "needle"):
            chosen = [(x, s.relevant) for x, s in zip(scores, states) if source_of(s.family) == source]
            if chosen:
                result[source] = scores_metrics([x for x, _ in chosen], [y for _, y in chosen], threshold)
        return result

    def calibrate(self, rule: GateRule) -> tuple[float, dict[str, Any]]:
        """The rule's threshold from training states: best recall within ``read_budget`` false reads per group."""
        from ..calibration import QuestionScores, choose_threshold

        # The training documents were shuffled when they were built, so the first states are a random subset.
        states = self.states["train"][: self.config.calibration_states]
        scores = self.score_states(rule, states, "train")
        by_group: dict[str, tuple[list[float], list[float]]] = {}
        for state, score in zip(states, scores):
            relevant, other = by_group.setdefault(state.group, ([], []))
            (relevant if state.relevant else other).append(score)
        choice = choose_threshold(
            [QuestionScores(tuple(relevant), tuple(other)) for relevant, other in by_group.values()],
            self.config.read_budget,
        )
        return choice.threshold, {"states": len(states), **asdict(choice)}

    # Running ------------------------------------------------------------------------------------------------

    def printed(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        return {"step": evaluation["step"], **evaluation["all"]}

    def keep(self, evaluation: dict[str, Any]) -> None:
        """The weights of the best held-out ranking (AUC: the threshold is calibrated afterwards), and the last."""
        if self.improves(evaluation["all"]["auc"], higher_is_better=True):
            self.save(self.out / "best.safetensors")
        self.save(self.out / "last.safetensors")

    def plot(self, path: Path) -> None:
        plot_gate_training(self.state, path)

    def save(self, path: Path, threshold: float | None = None, evidence: str = "") -> Path:
        settings = GateAdapterSettings(
            **{**asdict(self.settings), "threshold": threshold if threshold is not None else 0.5, "evidence": evidence}
        )
        return save_gate_file(path, self.adapter.state_tensors(), settings)

    def checkpoint(self) -> dict[str, Any]:
        return {"adapter": self.adapter.state_tensors(), "optimizer": self.optimizer.state_dict()}

    def restore(self, payload: dict[str, Any], source: str) -> None:
        self.adapter.load_tensors(payload["adapter"], source)
        self.optimizer.load_state_dict(payload["optimizer"])


def plot_gate_training(state: RunState, path: Path) -> None:
    """Training loss (smoothed) and held-out precision / recall / F1 against steps, one PNG."""

    def draw(axes) -> None:
        left, right = axes
        if state.history:
            steps = [r["step"] for r in state.history]
            left.plot(steps, moving_mean([r["loss"] for r in state.history]), label="loss (20-step mean)")
            left.legend()
        left.set_xlabel("step")
        left.set_title("training loss")
        if state.evaluations:
            steps = [r["step"] for r in state.evaluations]
            for key in ("precision", "recall", "f1", "auc"):
                right.plot(steps, [r["all"][key] for r in state.evaluations], marker="o", label=key)
            right.legend()
        right.set_ylim(0, 1)
        right.set_xlabel("step")
        right.set_title("held-out states (P/R/F1 at p >= 0.5; AUC)")

    save_curves(path, 2, draw)


def train_gate(config: GateTrainingConfig, out: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Train (or resume), calibrate every rule's threshold on training states, compare them on held-out states,
    and write ``gate.safetensors`` (the weights of the best held-out ranking, with their calibrated threshold)."""
    out = Path(out)
    trainer = GateTrainer(config, out, show_progress)
    state = trainer.run()
    from safetensors.torch import load_file

    trainer.adapter.load_tensors(load_file(str(out / "best.safetensors")), "best weights")
    comparison: dict[str, Any] = {}
    from ..gate import PromptRule, QueryLikelihoodRule

    prompt_rule = PromptRule(trainer.loaded.tokenizer)
    prompt_rule.opening = trainer.engine.opening
    rules: dict[str, GateRule] = {
        "trained": trainer.rule,
        "query_likelihood": trainer.engine.rule,
        "prompt": prompt_rule,
    }
    assert isinstance(trainer.engine.rule, QueryLikelihoodRule)
    thresholds: dict[str, float] = {}
    for name, rule in rules.items():
        threshold, calibration = trainer.calibrate(rule)
        thresholds[name] = threshold
        comparison[name] = {
            "threshold": threshold,
            "calibration": calibration,
            "heldout": trainer.evaluate(rule, threshold),
        }
    evidence = (
        f"lychee train gate: {state.step} steps, {state.seconds:.0f} s, {len(trainer.states['train'])} training states; "
        f"threshold {thresholds['trained']:.3f} calibrated on {comparison['trained']['calibration']['states']} training "
        f"states (read budget {config.read_budget}); held-out F1 {comparison['trained']['heldout']['all']['f1']:.3f} "
        f"(query likelihood {comparison['query_likelihood']['heldout']['all']['f1']:.3f}, "
        f"prompt {comparison['prompt']['heldout']['all']['f1']:.3f})"
    )
    weights = trainer.save(out / WEIGHTS_NAME, thresholds["trained"], evidence)
    summary = {
        "weights": str(weights),
        "sha256": file_digest(weights),
        "bytes": weights.stat().st_size,
        "steps": state.step,
        "seconds": round(state.seconds, 1),
        "examples": split_counts(trainer.examples),
        "states": {split: len(states) for split, states in trainer.states.items()},
        "positives": {split: sum(s.relevant for s in states) for split, states in trainer.states.items()},
        "comparison": comparison,
        "evaluations": state.evaluations,
    }
    return write_summary(out, summary)
