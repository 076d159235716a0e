"""Measure a model's defaults on generated needle documents (``lychee calibrate``) and make them a preset.

Three measurements, each on needle samples whose planted facts say which blocks matter:

- the gate threshold of each rule: every block of every sample is scored (minus the block-free baseline where the
  rule uses one), and the threshold is the one with the best recall of fact blocks within a budget of false reads;
  with ``end_to_end`` questions, the thresholds that recall rule picks at several read budgets are each answered
  end to end (the scan as it runs, memory updates included) and the one answering most, then reading least, wins;
- the prefilter heads: ``eval.head_probe.probe_heads`` on a raw-KV engine;
- the read mode: the same questions answered reading blocks as KV and as text; KV unless text answers more;
- the memory strategy: the same questions answered with each of ``MEMORY_STRATEGIES`` (generated notes, verbatim
  excerpts) in the chosen read mode; the one answering most, a tie going to the one decoding fewer tokens.

The result is a ``ModelPreset`` written as a user preset file, which ``presets.preset_for`` picks up for the model.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
import typing
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from .answer import Answer
from .blocks import MemoryBank
from .config import EngineConfig, MemoryMode
from .engine import LycheeMemory
from .errors import ConfigurationError, ContextTooLongError
from .eval.head_probe import ProbeResult, fact_blocks, probe_heads
from .eval.metrics import sub_em
from .eval.needles import NEEDLE_FAMILIES
from .eval.tasks import QASample, build_samples, source_name, task_source
from .gate import RULES, GateRule, ScoreRequest
from .presets import ARCHITECTURE_KEYS, ModelPreset, read_preset_file, shipped_preset_for, threshold_key
from .progress import progress_bar
from .working_memory import MEMORY_STRATEGIES

K = TypeVar("K", bound=Hashable)  # what names a reader: a threshold, a read mode, a memory strategy

DEFAULT_FAMILIES = ("needle", "needle-multikey")
# Compressors a preset may name as the model's default: the ones that need no trained weights.
TRAINING_FREE = ("attention", "key_norm", "none")
TIE = 1e-12  # slack for comparing means of counts


# Choosing a threshold -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuestionScores:
    """Gate scores of one question's blocks: the blocks holding its facts, and all the others."""

    fact: tuple[float, ...]
    other: tuple[float, ...]


@dataclass(frozen=True)
class ThresholdOutcome:
    """What one threshold does on a set of questions (a block passes when its score >= threshold)."""

    threshold: float
    recall: float  # share of fact blocks passing
    fact_hits: int
    facts: int
    false_reads: float  # mean number of other blocks passing, per question
    questions: int
    gap: float | None  # width of the empty score interval the threshold sits in (None: above every score)


class _SortedScores:
    """Scores pooled over questions and sorted, so a threshold is evaluated with a few bisections."""

    def __init__(self, scores: Sequence[QuestionScores]):
        if not scores:
            raise ConfigurationError("no questions to calibrate on")
        self.facts = sorted(value for question in scores for value in question.fact)
        self.others = sorted(value for question in scores for value in question.other)
        self.values = sorted(set(self.facts) | set(self.others))
        if not self.values:
            raise ConfigurationError("no block scores to calibrate on")
        self.questions = len(scores)

    def outcome(self, threshold: float) -> ThresholdOutcome:
        hits = len(self.facts) - bisect.bisect_left(self.facts, threshold)
        false = len(self.others) - bisect.bisect_left(self.others, threshold)
        below, above = self.neighbours(threshold)
        return ThresholdOutcome(
            threshold,
            hits / len(self.facts) if self.facts else 0.0,
            hits,
            len(self.facts),
            false / self.questions,
            self.questions,
            above - below if below is not None and above is not None else None,
        )

    def neighbours(self, threshold: float) -> tuple[float | None, float | None]:
        """The highest score below the threshold and the lowest score at or above it."""
        position = bisect.bisect_left(self.values, threshold)
        below = self.values[position - 1] if position > 0 else None
        above = self.values[position] if position < len(self.values) else None
        return below, above

    def margin(self, threshold: float) -> float:
        """Distance from the threshold to the nearest score: half the gap for a midpoint, 0 on a score."""
        below, above = self.neighbours(threshold)
        return min(
            threshold - below if below is not None else math.inf, above - threshold if above is not None else math.inf
        )


def candidate_thresholds(scores: Sequence[QuestionScores]) -> list[float]:
    """Every observed score, the midpoints between neighbouring ones, and one above them all (nothing passes)."""
    values = _SortedScores(scores).values
    midpoints = [(low + high) / 2 for low, high in zip(values, values[1:])]
    return sorted([*values, *midpoints, values[-1] + 1.0])


def evaluate_threshold(scores: Sequence[QuestionScores], threshold: float) -> ThresholdOutcome:
    """Recall and false reads of ``threshold`` on ``scores``."""
    return _SortedScores(scores).outcome(threshold)


def choose_threshold(
    scores: Sequence[QuestionScores], read_budget: float = 1.0, target_recall: float | None = None
) -> ThresholdOutcome:
    """The threshold with the best fact recall whose false reads per question stay within ``read_budget``.

    Among thresholds with that recall, the one farthest from any score wins (the midpoint of the widest gap,
    so it holds on new documents), then the higher one. With ``target_recall`` the budget is not used: the
    threshold with the fewest false reads reaching that recall wins, with the same tie-breaks.
    """
    pooled = _SortedScores(scores)
    outcomes = [pooled.outcome(threshold) for threshold in candidate_thresholds(scores)]
    if target_recall is None:
        allowed = [outcome for outcome in outcomes if outcome.false_reads <= read_budget + TIE]
        best = max(outcome.fact_hits for outcome in allowed)  # the top candidate passes nothing: never empty
        tied = [outcome for outcome in allowed if outcome.fact_hits == best]
    else:
        reaching = [outcome for outcome in outcomes if outcome.recall >= target_recall - TIE]
        fewest = min(outcome.false_reads for outcome in reaching)  # the lowest candidate passes every block
        tied = [outcome for outcome in reaching if outcome.false_reads <= fewest + TIE]
    return max(tied, key=lambda outcome: (pooled.margin(outcome.threshold), outcome.threshold))


# Choosing a threshold by answers ------------------------------------------------------------------------

# Read budgets (false reads per question) whose best-recall thresholds are answered end to end.
END_TO_END_BUDGETS = (0.0, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class AnsweredThreshold:
    """One threshold asked end to end: questions answered right (sub_em) and blocks read per question."""

    threshold: float
    right: int
    questions: int
    blocks_read: float  # mean blocks the reasoner read per question, fallback reads included


def answer_candidates(
    scores: Sequence[QuestionScores], read_budgets: Sequence[float] = END_TO_END_BUDGETS, also: Sequence[float] = ()
) -> list[float]:
    """The thresholds worth answering with: the best-recall one within each read budget, and ``also``; distinct,
    highest first."""
    return sorted({*(choose_threshold(scores, budget).threshold for budget in read_budgets), *also}, reverse=True)


def choose_by_answers(rows: Sequence[AnsweredThreshold]) -> AnsweredThreshold:
    """The threshold answering most questions; among those the one reading fewest blocks, then the higher one."""
    if not rows:
        raise ConfigurationError("no thresholds were answered")
    return max(rows, key=lambda row: (row.right, -round(row.blocks_read, 9), row.threshold))


def answer_at_thresholds(
    engine: LycheeMemory,
    rule: str,
    thresholds: Sequence[float],
    samples: Sequence[QASample],
    options: dict[str, Any],
    show_progress: bool,
) -> list[AnsweredThreshold]:
    """Ask every sample with the rule at each threshold (one bank per sample, shared by all thresholds)."""
    if not samples:
        raise ConfigurationError("no questions to answer end to end")
    readers = {threshold: engine_variant(engine, gate=rule, threshold=threshold, **options) for threshold in thresholds}
    answers = answers_of(readers, engine, samples, f"answering at {len(readers)} {rule} thresholds", show_progress)
    return [
        AnsweredThreshold(
            threshold,
            right_count(answers[threshold], samples),
            len(samples),
            sum(block.selected for answer in answers[threshold] for block in answer.blocks) / len(samples),
        )
        for threshold in readers
    ]


def answers_of(
    readers: Mapping[K, LycheeMemory],
    bank_maker: LycheeMemory,
    samples: Sequence[QASample],
    description: str,
    show_progress: bool,
) -> dict[K, list[Answer]]:
    """Every reader's answer to every sample, in sample order: each sample is ingested once (by ``bank_maker``)
    and its bank is read by all readers, so they differ only in how they read."""
    answers: dict[K, list[Answer]] = {key: [] for key in readers}
    with progress_bar(len(samples), description, show_progress, unit="question") as bar:
        for sample in samples:
            bank = bank_maker.ingest(sample.context, show_progress=False)
            for key, reader in readers.items():
                answers[key].append(reader.ask(sample.question, bank, show_progress=False))
            bar.update(1)
    return answers


def right_count(answers: Sequence[Answer], samples: Sequence[QASample]) -> int:
    """How many answers are right (sub_em against their sample's answers)."""
    return sum(sub_em(answer.text, sample.answers) for answer, sample in zip(answers, samples, strict=True))


# Settings and results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationSettings:
    """What to measure and on which samples; invalid values raise ConfigurationError at construction."""

    lengths: tuple[int, ...] = (7000,)
    n: int = 6  # probe samples per family and length
    heldout_n: int = 4  # held-out samples (another seed) per family and length; 0 = none
    families: tuple[str, ...] = DEFAULT_FAMILIES
    rules: tuple[str, ...] | None = None  # None = the engine's resolved rule
    read_budget: float = 1.0  # mean false reads per question a threshold may let through
    target_recall: float | None = None
    data: str | None = None  # SQuAD haystack directory; None = the generated haystack (or $LYCHEE_DATA_DIR)
    seed: int = 0
    head_count: int = 8
    skip_heads: bool = False
    skip_read_mode: bool = False
    skip_memory: bool = False
    read_questions: int = 4  # probe questions answered in each read mode and each memory strategy
    end_to_end: int = 0  # probe questions answered at each candidate threshold; 0 = choose by block recall alone
    show_progress: bool = True

    def __post_init__(self) -> None:
        if not self.lengths or any(length < 1 for length in self.lengths):
            raise ConfigurationError(f"lengths must be positive token counts, got {list(self.lengths)}")
        for name, least in (("n", 1), ("heldout_n", 0), ("head_count", 1), ("read_questions", 1), ("end_to_end", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigurationError(f"--{name.replace('_', '-')} must be an integer >= {least}, got {value!r}")
        if not math.isfinite(self.read_budget) or self.read_budget < 0:
            raise ConfigurationError(f"--read-budget must be a number of blocks >= 0, got {self.read_budget}")
        if self.target_recall is not None and not 0 < self.target_recall <= 1:
            raise ConfigurationError(f"--target-recall must be in (0, 1], got {self.target_recall}")
        if self.end_to_end and self.target_recall is not None:
            raise ConfigurationError(
                "--end-to-end chooses among read budgets; it does not combine with --target-recall"
            )
        unknown = [family for family in self.families if family not in NEEDLE_FAMILIES]
        if not self.families or unknown:
            raise ConfigurationError(
                f"unknown needle family {unknown[0] if unknown else '(none given)'!r}; "
                f"choose from {', '.join(NEEDLE_FAMILIES)}"
            )
        for rule in self.rules or ():
            if rule not in RULES:
                raise ConfigurationError(f"unknown gate rule {rule!r}; choose from {', '.join(RULES)}")
            if not RULES[rule].needs_model:
                raise ConfigurationError(f"gate rule {rule!r} reads every block: it has no threshold to calibrate")


@dataclass(frozen=True)
class RuleCalibration:
    """The threshold chosen for one rule, and how it does on the held-out samples."""

    rule: str
    compressor: str
    chosen: ThresholdOutcome
    heldout: ThresholdOutcome | None
    # With end_to_end: each candidate answered on probe questions, and on held-out ones the chosen threshold and the
    # one block recall alone picked (so a choice that does not carry over shows).
    answered: tuple[AnsweredThreshold, ...] = ()
    heldout_answered: tuple[AnsweredThreshold, ...] = ()
    by_recall: float | None = None  # the threshold block recall alone picked, when answers were measured


@dataclass(frozen=True)
class ReadModeResult:
    """Questions answered right (sub_em) reading blocks as KV and as text; None: that mode does not fit."""

    correct: dict[str, int | None]
    questions: int
    chosen: str


@dataclass(frozen=True)
class MemoryResult:
    """Per memory strategy: questions answered right (sub_em) and tokens decoded (memory and answers)."""

    correct: dict[str, int]
    decoded: dict[str, int]
    questions: int
    chosen: str


@dataclass(frozen=True)
class Calibration:
    """Everything ``calibrate`` measured, and the preset made from it."""

    preset: ModelPreset
    shipped: ModelPreset | None
    rules: list[RuleCalibration]
    heads: ProbeResult | None
    read_mode: ReadModeResult | None
    samples: int
    heldout_samples: int
    memory: MemoryResult | None = None


# Measuring ----------------------------------------------------------------------------------------------


def focus_on_answer(sample: QASample) -> QASample:
    """The sample with only the evidence that states the answer (the asked code, not look-alike ones) as facts.

    Samples whose evidence never states the answer (a two-hop chain's first hop) keep all of it.
    """
    answers = [answer.lower() for answer in sample.answers if answer]
    stating = [
        (start, end) for start, end in sample.evidence if any(a in sample.context[start:end].lower() for a in answers)
    ]
    return dataclasses.replace(sample, evidence=stating or list(sample.evidence))


def calibration_samples(settings: CalibrationSettings, tokenizer: Any, n: int, seed: int) -> list[QASample]:
    """``n`` samples per family and length, families interleaved, facts focused on the answer."""
    samples = []
    for length in settings.lengths:
        per_family = [build_samples(family, tokenizer, length, n, settings.data, seed) for family in settings.families]
        samples.extend(focus_on_answer(sample) for group in zip(*per_family) for sample in group)
    return samples


def block_gains(engine: LycheeMemory, rule: GateRule, bank: MemoryBank, question: str) -> list[float]:
    """The rule's score of every block for ``question`` under the initial memory, minus the block-free baseline
    when the rule uses one: exactly what the scan compares with the threshold."""
    memory = engine.config.prompts.initial_memory
    requests = [ScoreRequest(question, memory, None)] if rule.uses_block_free_baseline else []
    requests += [ScoreRequest(question, memory, bank.block(index)) for index in range(len(bank))]
    step = engine.config.gate.batch_size
    scores: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(requests), step):
            scores.extend(rule.score(engine.loaded, engine.prompts, requests[start : start + step]))
    if rule.uses_block_free_baseline:
        baseline = scores.pop(0)
        scores = [score - baseline for score in scores]
    return scores


def score_samples(
    engine: LycheeMemory,
    rules: Sequence[GateRule],
    samples: Sequence[QASample],
    progress: Callable[[int], object] | None = None,
) -> dict[str, list[QuestionScores]]:
    """Per rule, the fact and other block gains of every sample (each document ingested once)."""
    found: dict[str, list[QuestionScores]] = {rule.name: [] for rule in rules}
    for sample in samples:
        bank = engine.ingest(sample.context, show_progress=False)
        facts = set(fact_blocks(bank, sample))
        for rule in rules:
            gains = block_gains(engine, rule, bank, sample.question)
            found[rule.name].append(
                QuestionScores(
                    tuple(gain for index, gain in enumerate(gains) if index in facts),
                    tuple(gain for index, gain in enumerate(gains) if index not in facts),
                )
            )
        if progress is not None:
            progress(1)
    return found


def _rules(engine: LycheeMemory, names: Sequence[str] | None) -> list[GateRule]:
    """The rules to calibrate: the engine's own, or each built by an engine variant using it (so any rule works)."""
    return [
        engine.rule if name == engine.rule.name else engine_variant(engine, gate=name).rule
        for name in names or [engine.rule.name]
    ]


def engine_variant(engine: LycheeMemory, **options: Any) -> LycheeMemory:
    """An engine on the same loaded model with the resolved settings of ``engine`` and these options."""
    return LycheeMemory(engine.loaded, EngineConfig.from_kwargs(engine.config, show_progress=False, **options))


def measure_read_mode(
    engine: LycheeMemory, samples: Sequence[QASample], options: dict[str, Any], show_progress: bool
) -> ReadModeResult:
    """Answer ``samples`` reading blocks as KV and as text; KV (no re-encoding) unless text answers more."""
    readers: dict[str, LycheeMemory | None] = {}
    for mode in ("kv", "text"):
        try:
            readers[mode] = engine_variant(engine, read_mode=mode, **options)
        except ContextTooLongError:  # e.g. a text read of a whole chunk does not fit the window
            readers[mode] = None
    bank_maker = readers["kv"] or readers["text"]
    if bank_maker is None:
        raise ConfigurationError("neither read mode fits the model's window with these settings")
    available = {mode: reader for mode, reader in readers.items() if reader is not None}
    answers = answers_of(available, bank_maker, samples, "answering in both read modes", show_progress)
    correct = {mode: right_count(answers[mode], samples) if mode in answers else None for mode in readers}
    kv, text = correct["kv"], correct["text"]
    chosen = "text" if kv is None or (text is not None and text > kv) else "kv"
    return ReadModeResult(correct, len(samples), chosen)


def _answering_options(
    results: Sequence[RuleCalibration], heads: ProbeResult | None, engine: LycheeMemory
) -> dict[str, Any]:
    """Engine options answering as the calibrated preset will: the chosen heads and the engine rule's threshold."""
    options: dict[str, Any] = {"prefilter_heads": heads.chosen} if heads is not None else {}
    own = next((result for result in results if result.rule == engine.rule.name), None)
    if own is not None:
        options["threshold"] = own.chosen.threshold
    return options


def measure_memory(
    engine: LycheeMemory, samples: Sequence[QASample], options: dict[str, Any], show_progress: bool
) -> MemoryResult:
    """Answer ``samples`` with every memory strategy; the most answered wins, a tie the fewest decoded tokens."""
    names = [name for name in typing.get_args(MemoryMode) if name in MEMORY_STRATEGIES]  # those a setting can name
    readers = {name: engine_variant(engine, memory=name, **options) for name in names}
    answers = answers_of(readers, engine, samples, "answering with each memory", show_progress)
    correct = {name: right_count(answers[name], samples) for name in readers}
    decoded = {
        name: sum(a.token_counts["memory_tokens"] + a.token_counts["answer_tokens"] for a in answers[name])
        for name in readers
    }
    chosen = min(readers, key=lambda name: (-correct[name], decoded[name], name != "notes"))
    return MemoryResult(correct, decoded, len(samples), chosen)


def choose_end_to_end(
    engine: LycheeMemory,
    result: RuleCalibration,
    scores: tuple[Sequence[QuestionScores], Sequence[QuestionScores]],
    probe: Sequence[QASample],
    heldout: Sequence[QASample],
    options: dict[str, Any],
    settings: CalibrationSettings,
) -> RuleCalibration:
    """``result`` with its threshold chosen by answers: the candidates asked on the first ``end_to_end`` probe
    questions, then the chosen one and the recall choice asked on as many held-out questions."""
    count = settings.end_to_end
    probe_scores, heldout_scores = scores
    candidates = answer_candidates(probe_scores, also=[result.chosen.threshold])
    answered = answer_at_thresholds(engine, result.rule, candidates, probe[:count], options, settings.show_progress)
    best = choose_by_answers(answered)
    heldout_answered: list[AnsweredThreshold] = []
    if heldout:
        checked = sorted({best.threshold, result.chosen.threshold}, reverse=True)
        heldout_answered = answer_at_thresholds(
            engine, result.rule, checked, heldout[:count], options, settings.show_progress
        )
    return dataclasses.replace(
        result,
        chosen=evaluate_threshold(probe_scores, best.threshold),
        heldout=evaluate_threshold(heldout_scores, best.threshold) if heldout_scores else None,
        answered=tuple(answered),
        heldout_answered=tuple(heldout_answered),
        by_recall=result.chosen.threshold,
    )


def calibrate(engine: LycheeMemory, settings: CalibrationSettings, command: str = "") -> Calibration:
    """Measure thresholds, heads and read mode for the engine's model and compressor; return them as a preset."""
    rules = _rules(engine, settings.rules)
    tokenizer = engine.loaded.tokenizer
    probe = calibration_samples(settings, tokenizer, settings.n, settings.seed)
    heldout = (
        calibration_samples(settings, tokenizer, settings.heldout_n, settings.seed + 1) if settings.heldout_n else []
    )
    with progress_bar(len(probe) + len(heldout), "scoring blocks", settings.show_progress, unit="document") as bar:
        probe_scores = score_samples(engine, rules, probe, bar.update)
        heldout_scores = score_samples(engine, rules, heldout, bar.update)
    compressor = engine.config.compressor.kind
    results = []
    for rule in rules:
        chosen = choose_threshold(probe_scores[rule.name], settings.read_budget, settings.target_recall)
        check = evaluate_threshold(heldout_scores[rule.name], chosen.threshold) if heldout else None
        results.append(RuleCalibration(rule.name, compressor, chosen, check))
    heads = None
    if not settings.skip_heads:
        raw = engine if compressor == "none" else engine_variant(engine, compressor="none")
        heads = probe_heads(raw, probe, heldout, count=settings.head_count, show_progress=settings.show_progress)
    if settings.end_to_end:
        options = {"prefilter_heads": heads.chosen} if heads is not None else {}
        results = [
            choose_end_to_end(
                engine,
                result,
                (probe_scores[result.rule], heldout_scores[result.rule]),
                probe,
                heldout,
                options,
                settings,
            )
            for result in results
        ]
    read_mode = None
    if not settings.skip_read_mode:
        options = _answering_options(results, heads, engine)
        read_mode = measure_read_mode(engine, probe[: settings.read_questions], options, settings.show_progress)
    memory = None
    if not settings.skip_memory:
        chosen_options = _answering_options(results, heads, engine)
        if read_mode is not None:
            chosen_options["read_mode"] = read_mode.chosen
        memory = measure_memory(engine, probe[: settings.read_questions], chosen_options, settings.show_progress)
    preset = ModelPreset(
        name=engine.loaded.resolved.spec,
        architecture={key: getattr(engine.loaded.config, key, None) for key in ARCHITECTURE_KEYS},
        compressor=compressor if compressor in TRAINING_FREE else None,
        chunk_tokens=engine.chunk_tokens,
        read_mode=read_mode.chosen if read_mode is not None else None,
        memory=memory.chosen if memory is not None else None,
        thresholds={(result.compressor, result.rule): result.chosen.threshold for result in results},
        prefilter_heads=tuple(heads.chosen) if heads is not None else (),
        fingerprint=engine.loaded.fingerprint(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        source="calibrated",
    )
    calibration = Calibration(
        preset, shipped_preset_for(engine.loaded.config), results, heads, read_mode, len(probe), len(heldout), memory
    )
    evidence = _evidence(calibration, settings, engine, command)
    return dataclasses.replace(calibration, preset=dataclasses.replace(preset, evidence=evidence))


# Reporting ----------------------------------------------------------------------------------------------


def _outcome_text(outcome: ThresholdOutcome, label: str = "") -> str:
    gap = f", gap {outcome.gap:.3f}" if outcome.gap is not None and not label else ""
    return (
        f"{label}recall {outcome.recall:.2f} ({outcome.fact_hits}/{outcome.facts}), "
        f"{outcome.false_reads:.2f} false reads per question{gap}, n={outcome.questions}"
    )


def _answered_text(rows: Sequence[AnsweredThreshold]) -> str:
    return "; ".join(
        f"at {row.threshold:.4f} {row.right}/{row.questions} right, {row.blocks_read:.2f} blocks read" for row in rows
    )


def _rule_text(result: RuleCalibration) -> str:
    held = f"; {_outcome_text(result.heldout, 'held out: ')}" if result.heldout is not None else ""
    answered = f"; answered, probe: {_answered_text(result.answered)}" if result.answered else ""
    if result.heldout_answered:
        answered += f"; held out: {_answered_text(result.heldout_answered)}"
    return _outcome_text(result.chosen) + held + answered


def _heads_text(heads: ProbeResult) -> str:
    held = f"; held out {heads.heldout_ranks}" if heads.heldout_ranks else ""
    return f"rank of the fact's block: probe {heads.probe_ranks}{held}"


def _read_mode_text(result: ReadModeResult) -> str:
    return ", ".join(
        f"{mode} {count}/{result.questions}" if count is not None else f"{mode} does not fit"
        for mode, count in result.correct.items()
    )


def _memory_text(result: MemoryResult) -> str:
    return ", ".join(
        f"{name} {result.correct[name]}/{result.questions} ({result.decoded[name]} tokens decoded)"
        for name in result.correct
    )


def _evidence(calibration: Calibration, settings: CalibrationSettings, engine: LycheeMemory, command: str) -> str:
    """The preset's evidence: what was measured, on what, by which command, and the numbers."""
    source = source_name(settings.families[0], task_source(settings.families[0], settings.data))
    lengths = ", ".join(str(length) for length in settings.lengths)
    held_seed = f", held out seed {settings.seed + 1}" if calibration.heldout_samples else ""
    compressor = engine.config.compressor
    parts = [
        f"Calibrated on {calibration.preset.created} by `{command or 'lychee calibrate'}`: {calibration.samples} "
        f"probe and {calibration.heldout_samples} held-out samples ({', '.join(settings.families)} at {lengths} "
        f"tokens, {source}, seed {settings.seed}{held_seed}), {engine.chunk_tokens}-token chunks, "
        f"compressor {compressor.kind} at ratio {compressor.ratio}."
    ]
    choice = (
        f"the fewest false reads reaching recall {settings.target_recall}"
        if settings.target_recall is not None
        else f"the best recall within {settings.read_budget} false reads per question"
    )
    for result in calibration.rules:
        how = choice
        if result.answered:
            budgets = ", ".join(f"{budget:g}" for budget in END_TO_END_BUDGETS)
            how = (
                f"of the best-recall thresholds within {budgets} false reads per question, the one answering most of "
                f"{result.answered[0].questions} probe questions end to end, then reading fewest blocks; block recall "
                f"alone chose {result.by_recall:.4f}"
            )
        parts.append(
            f"Gate {threshold_key(result.compressor, result.rule)}: threshold {result.chosen.threshold:.4f} "
            f"({how}): {_rule_text(result)}."
        )
    if calibration.heads is not None:
        heads = [list(head) for head in calibration.heads.chosen]
        parts.append(f"Prefilter heads {heads}: {_heads_text(calibration.heads)}.")
    if calibration.read_mode is not None:
        mode = calibration.read_mode
        parts.append(f"Read mode {mode.chosen}: questions answered (sub_em) {_read_mode_text(mode)}.")
    if calibration.memory is not None:
        memory = calibration.memory
        parts.append(
            f"Memory {memory.chosen} (most answered, a tie to fewer decoded tokens): questions answered (sub_em) "
            f"{_memory_text(memory)}."
        )
    return " ".join(parts)


def format_table(calibration: Calibration) -> str:
    """A markdown table of what was measured, beside the shipped preset's values where the model has one."""
    preset, shipped = calibration.preset, calibration.shipped

    def before(value: object) -> str:
        return "-" if shipped is None or value in (None, (), []) else str(value)

    lines = [
        f"calibration of {preset.name} (fingerprint {preset.fingerprint})\n",
        "| setting | calibrated | shipped preset | measured on |",
        "|---|---|---|---|",
    ]
    for result in calibration.rules:
        key = (result.compressor, result.rule)
        shipped_threshold = shipped.thresholds.get(key) if shipped is not None else None
        lines.append(
            f"| gate threshold {threshold_key(*key)} | {result.chosen.threshold:.4f} | {before(shipped_threshold)} "
            f"| {_rule_text(result)} |"
        )
    if calibration.heads is not None:
        shipped_heads = [list(head) for head in shipped.prefilter_heads] if shipped is not None else None
        heads = [list(head) for head in calibration.heads.chosen]
        lines.append(f"| prefilter heads | {heads} | {before(shipped_heads)} | {_heads_text(calibration.heads)} |")
    if calibration.read_mode is not None:
        same = shipped is not None and shipped.compressor == preset.compressor
        mode = calibration.read_mode
        lines.append(
            f"| read mode | {mode.chosen} | {before(shipped.read_mode if same else None)} | {_read_mode_text(mode)} |"
        )
    if calibration.memory is not None:
        memory = calibration.memory
        shipped_memory = shipped.memory if shipped is not None else None
        lines.append(f"| memory | {memory.chosen} | {before(shipped_memory)} | {_memory_text(memory)} |")
    lines.append(f"| chunk tokens | {preset.chunk_tokens} | {before(shipped.chunk_tokens if shipped else None)} | |")
    for result in calibration.rules:
        if result.chosen.fact_hits == 0:
            lines.append(
                f"\nwarning: no {result.rule} threshold within the budget passes a fact block with compressor "
                f"{result.compressor} (the gate will fall back to its top block); raise --read-budget"
                + (" or try --compressor none" if result.compressor != "none" else "")
            )
    return "\n".join(lines)


# Where the preset goes ----------------------------------------------------------------------------------


def merge_earlier(preset: ModelPreset, path: Path) -> tuple[ModelPreset, list[str]]:
    """Keep from a preset of the same model already at ``path`` what this run did not measure (other thresholds,
    heads, the read mode), with its evidence; returns the preset and what was kept."""
    try:
        earlier = read_preset_file(path) if path.is_file() else None
    except ConfigurationError:
        earlier = None  # a damaged file is replaced
    if earlier is None or (earlier.architecture, earlier.fingerprint) != (preset.architecture, preset.fingerprint):
        return preset, []
    thresholds = {key: value for key, value in earlier.thresholds.items() if key not in preset.thresholds}
    kept = [f"threshold {threshold_key(*key)}" for key in thresholds]
    updates: dict[str, Any] = {"thresholds": {**thresholds, **preset.thresholds}}
    if not preset.prefilter_heads and earlier.prefilter_heads:
        updates["prefilter_heads"], kept = earlier.prefilter_heads, [*kept, "prefilter heads"]
    if preset.read_mode is None and earlier.read_mode is not None and earlier.compressor == preset.compressor:
        updates["read_mode"], kept = earlier.read_mode, [*kept, "read mode"]
    if preset.memory is None and earlier.memory is not None:
        updates["memory"], kept = earlier.memory, [*kept, "memory"]
    if kept:
        updates["evidence"] = f"{preset.evidence} Kept from the earlier calibration: {earlier.evidence}"
    return dataclasses.replace(preset, **updates), kept
