"""Evaluation: every method on the same samples, model and machine, scored with MemAgent's sub_em plus EM
and F1, with gate diagnostics, per-sample JSONL, a markdown table and plots (``lychee eval``).

Methods are named on the command line: ``lychee`` (the engine's defaults for the model), ``lychee:KEY=VALUE,...``
(engine options, e.g. ``lychee:compressor=attention,ratio=4``), ``lychee-variants`` (each compressor and each
gate), ``memagent`` (``memagent:use_presets=false``: the released prompts, memories up to 1024 tokens), ``full-context`` (skipped where the context does not fit the window) and ``rag``
(``rag:top_k=8,chunk_tokens=256``: LlamaIndex VectorStoreIndex over a local MiniLM, the same LLM answering) and
``hybrid-rag`` (the same with BM25 and MiniLM fused by reciprocal rank: ``rag:retrieval=hybrid``).
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from ..answer import Answer
from ..baselines import FullContext, MemAgent
from ..errors import ConfigurationError, ContextTooLongError
from .metrics import copying_failure, evidence_recall_precision, exact_match, f1_score, sub_em
from .plots import plot_rows
from .tasks import QASample, build_samples, source_name, task_source

MethodKind = Literal["lychee", "memagent", "full-context", "rag"]
DEFAULT_METHODS = "lychee,memagent,full-context,rag"


# Methods ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One way of answering: its label in reports, its kind, and its options."""

    label: str
    kind: MethodKind
    options: dict[str, Any] = field(default_factory=dict)


def _option_value(text: str) -> Any:
    """A method option's value: a boolean, ``null`` (Python None), a number, else the text itself. "none" stays
    text: it is a setting's own word (``compressor=none`` is raw KV, ``reasoner_weights=none`` the backbone), and
    as None it would mean "the preset's", silently the opposite."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_methods(text: str) -> list[Method]:
    """``"lychee,memagent,rag:top_k=8"`` -> methods; options follow a colon as comma-free ``key=value`` pairs
    separated by ``;`` or ``,`` inside one method (``lychee:compressor=attention;ratio=8``)."""
    methods: list[Method] = []
    kinds: dict[str, MethodKind] = {
        "lychee": "lychee",
        "memagent": "memagent",
        "full-context": "full-context",
        "full_context": "full-context",
        "rag": "rag",
        "hybrid-rag": "rag",
    }
    pending = [item.strip() for item in re.split(r",(?![^:,]*=)", text) if item.strip()]
    for item in pending:
        if item == "lychee-variants":
            for compressor in ("none", "attention", "key_norm"):
                methods.append(Method(f"lychee:compressor={compressor}", "lychee", {"compressor": compressor}))
            methods.append(Method("lychee:gate=prompt", "lychee", {"gate": "prompt"}))
            continue
        name, _, option_text = item.partition(":")
        if name not in kinds:
            raise ConfigurationError(
                f"unknown method {name!r}; choose from lychee, lychee:KEY=VALUE, lychee-variants, memagent, "
                "full-context, rag, hybrid-rag"
            )
        options = {}
        for pair in filter(None, re.split(r"[;,]", option_text)):
            key, equals, value = pair.partition("=")
            if not equals or not key.strip():
                raise ConfigurationError(f"method option {pair!r} in {item!r} is not KEY=VALUE")
            options[key.strip()] = _option_value(value.strip())
        if name == "hybrid-rag":
            options.setdefault("retrieval", "hybrid")
        methods.append(Method(item, kinds[name], options))
    if not methods:
        raise ConfigurationError("no methods given")
    labels = [method.label for method in methods]
    if len(set(labels)) != len(labels):
        raise ConfigurationError(f"a method is named twice in {text!r}")
    return methods


class MethodRunner:
    """Engines for every method over one loaded model (the weights are loaded once per process)."""

    def __init__(self, model: str | None, engine_options: dict[str, Any] | None = None):
        from ..config import EngineConfig
        from ..engine import LycheeMemory
        from ..model_loading import load_model

        self._options = dict(engine_options or {})
        self._options.setdefault("show_progress", False)
        base = EngineConfig.from_kwargs(None, **({"spec": model} if model else {}), **self._options)
        self._model = model
        self.loaded = load_model(base.model)
        self.engine = LycheeMemory(self.loaded, base)
        self._engines: dict[str, Any] = {}
        self._rags: dict[str, Any] = {}
        self._banks: dict[tuple[str, str, str], tuple[Any, float]] = {}  # the current sample's banks by recipe

    def engine_for(self, method: Method):
        """The engine that runs ``method``: the base engine, or one with the method's own settings."""
        from ..config import EngineConfig
        from ..engine import LycheeMemory

        if not method.options:
            return self.engine
        if method.label not in self._engines:
            options = {**self._options, **method.options}
            config = EngineConfig.from_kwargs(None, **({"spec": self._model} if self._model else {}), **options)
            self._engines[method.label] = LycheeMemory(self.loaded, config)
        return self._engines[method.label]

    def same_settings(self, methods: Sequence[Method]) -> list[tuple[str, str]]:
        """Pairs of LycheeMemory methods whose settings resolve to the same engine (a preset value named again, an
        option the engine does not take as written): their rows would measure one thing under two names."""
        first_with: dict[str, str] = {}
        pairs: list[tuple[str, str]] = []
        for method in methods:
            if method.kind != "lychee":
                continue
            settings = self.engine_for(method).config.model_dump_json()
            if settings in first_with:
                pairs.append((first_with[settings], method.label))
            else:
                first_with[settings] = method.label
        return pairs

    def bank_for(self, engine, sample: QASample) -> tuple[Any, float]:
        """The sample's bank and its ingest seconds: compressed once per block recipe, so methods that differ only
        in gate or reasoner settings read the same blocks (and report the same ingest time)."""
        key = (repr(engine.identity), repr(engine.index_spec), sample.context)
        if key not in self._banks:
            self._banks = {k: v for k, v in self._banks.items() if k[2] == sample.context}  # one sample at a time
            started = time.perf_counter()
            bank = engine.ingest([sample.context])
            self._banks[key] = (bank, time.perf_counter() - started)
        return self._banks[key]

    def rag_for(self, method: Method):
        from .rag import RagBaseline

        if method.label not in self._rags:
            self._rags[method.label] = RagBaseline(self.engine, **method.options)
        return self._rags[method.label]


@dataclass
class SampleResult:
    """One method's outcome on one sample."""

    method: str
    task: str
    context_tokens: int
    target_tokens: int
    sample_id: str
    question: str
    answers: list[str]
    prediction: str = ""
    sub_em: bool = False
    exact_match: bool = False
    f1: float = 0.0
    ingest_seconds: float = 0.0
    query_seconds: float = 0.0
    blocks: int = 0
    blocks_read: int = 0
    gate_recall: float | None = None
    gate_precision: float | None = None
    candidate_recall: float | None = None  # evidence inside the blocks stage 1 passed on (LycheeMemory only)
    fact_order: str | None = None  # chained facts: "forward" (hop 1 first in the document) or "reversed"
    copying_failure: bool | None = None  # code answers: the prediction names a code the document does not hold
    tokens: dict[str, int] = field(default_factory=dict)
    skipped: str | None = None  # why the method could not run on this sample (e.g. it does not fit)

    @property
    def cold_seconds(self) -> float:
        return self.ingest_seconds + self.query_seconds


def run_method(
    runner: MethodRunner, method: Method, sample: QASample, task: str, target_tokens: int, context_tokens: int
) -> SampleResult:
    """Answer one sample with one method and score it."""
    result = SampleResult(
        method.label, task, context_tokens, target_tokens, sample.sample_id, sample.question, sample.answers
    )
    answer: Answer
    try:
        if method.kind == "lychee":
            engine = runner.engine_for(method)
            bank, result.ingest_seconds = runner.bank_for(engine, sample)
            answer = engine.ask(sample.question, bank)
            result.blocks = len(bank)
            passed = set().union(*answer.candidates) if answer.candidates else range(len(bank))
            spans = [(bank.spans[i].char_start, bank.spans[i].char_end) for i in sorted(passed)]
            result.candidate_recall = evidence_recall_precision(spans, sample.evidence)[0]
        elif method.kind == "rag":
            rag = runner.rag_for(method)
            index = rag.build([sample.context])
            result.ingest_seconds = index.build_seconds
            answer = rag.ask(sample.question, index)
            result.blocks = answer.token_counts.get("blocks", 0)
        else:
            baseline = MemAgent if method.kind == "memagent" else FullContext
            answer = baseline(runner.engine_for(method)).ask(sample.question, [sample.context])
            result.blocks = answer.token_counts.get("blocks", 1)
    except ContextTooLongError as error:
        result.skipped = str(error)
        return result
    result.query_seconds = answer.timings.get("query", 0.0)
    return score_answer(result, method, sample, answer)


def fact_order(sample: QASample) -> str | None:
    """Where a chained sample's facts sit: "forward" when they appear in the document in the order they chain
    (hop 1 first), "reversed" otherwise; None for a single fact."""
    if len(sample.evidence) < 2:
        return None
    starts = [start for start, _ in sample.evidence]
    return "forward" if starts == sorted(starts) else "reversed"


def score_answer(result: SampleResult, method: Method, sample: QASample, answer: Answer) -> SampleResult:
    """Fill ``result`` from ``answer``: the prediction and its scores, what was read, and the token counts."""
    result.fact_order = fact_order(sample) if result.task == "needle-twohop" else None
    if sample.answers and all(answer.isdigit() and 4 <= len(answer) <= 6 for answer in sample.answers):
        result.copying_failure = copying_failure(answer.text, sample.context)
    result.prediction = answer.text
    result.sub_em = sub_em(answer.text, sample.answers)
    result.exact_match = exact_match(answer.text, sample.answers)
    result.f1 = round(f1_score(answer.text, sample.answers), 4)
    read = [(block.char_start, block.char_end) for block in answer.blocks]
    result.blocks_read = len(read) if method.kind != "full-context" else 1
    if method.kind == "full-context":
        read = [(0, len(sample.context))]
    result.gate_recall, result.gate_precision = evidence_recall_precision(read, sample.evidence)
    result.tokens = dict(answer.token_counts)
    return result


# Reports ---------------------------------------------------------------------------------------------------


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _count(flags: Sequence[bool | None]) -> int | None:
    present = [flag for flag in flags if flag is not None]
    return sum(present) if present else None


def summarize(results: Sequence[SampleResult]) -> list[dict[str, Any]]:
    """One row per (method, length): accuracy, latency and gate diagnostics averaged over samples that ran."""
    groups: dict[tuple[str, int], list[SampleResult]] = {}
    for result in results:
        groups.setdefault((result.method, result.target_tokens), []).append(result)
    rows = []
    for (method, target), group in groups.items():
        ran = [r for r in group if r.skipped is None]
        rows.append(
            {
                "method": method,
                "task": group[0].task,
                "target_tokens": target,
                "context_tokens": round(sum(r.context_tokens for r in group) / len(group)),
                "samples": len(group),
                "skipped": len(group) - len(ran),
                "sub_em": _mean([float(r.sub_em) for r in ran]),
                "exact_match": _mean([float(r.exact_match) for r in ran]),
                "f1": _mean([r.f1 for r in ran]),
                "query_seconds": _mean([r.query_seconds for r in ran]),
                "cold_seconds": _mean([r.cold_seconds for r in ran]),
                "blocks": _mean([float(r.blocks) for r in ran]),
                "blocks_read": _mean([float(r.blocks_read) for r in ran]),
                "gate_recall": _mean([r.gate_recall for r in ran]),
                "gate_precision": _mean([r.gate_precision for r in ran]),
                "candidate_recall": _mean([r.candidate_recall for r in ran]),
                "copying_failures": _count([r.copying_failure for r in ran]),
                "candidates": _mean([float(r.tokens["candidates"]) for r in ran if "candidates" in r.tokens]),
            }
        )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as a markdown table (``-`` where a value is undefined or the method was skipped)."""

    def show(value: Any, kind: str) -> str:
        if value is None:
            return "-"
        if kind == "pct":
            return f"{100 * value:.1f}"
        if kind == "s":
            return f"{value:.2f}"
        if kind == "f":
            return f"{value:.1f}"
        return str(value)

    columns = [
        ("method", "method", ""),
        ("context tokens", "context_tokens", ""),
        ("n", "samples", ""),
        ("skipped", "skipped", ""),
        ("sub_em %", "sub_em", "pct"),
        ("EM %", "exact_match", "pct"),
        ("F1 %", "f1", "pct"),
        ("query s (warm)", "query_seconds", "s"),
        ("cold s", "cold_seconds", "s"),
        ("blocks read / blocks", None, ""),
        ("gate recall %", "gate_recall", "pct"),
        ("gate precision %", "gate_precision", "pct"),
        ("stage-1 recall %", "candidate_recall", "pct"),
        ("copying failures", "copying_failures", ""),
        ("candidates", "candidates", "f"),
    ]
    lines = [
        "| " + " | ".join(title for title, _, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in sorted(rows, key=lambda r: (r["target_tokens"], r["method"])):
        cells = []
        for _, key, kind in columns:
            if key is None:
                cells.append(f"{show(row['blocks_read'], 'f')} / {show(row['blocks'], 'f')}")
            else:
                cells.append(show(row[key], kind))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class EvalRun:
    """What ``lychee eval`` produced: every sample's result, the summary rows and the files written."""

    results: list[SampleResult]
    rows: list[dict[str, Any]]
    files: dict[str, Path]


def run_eval(
    task: str,
    lengths: Sequence[int],
    *,
    n: int = 8,
    methods: Sequence[Method] | str = DEFAULT_METHODS,
    model: str | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    engine_options: dict[str, Any] | None = None,
    show_progress: bool = True,
    on_result: Callable[[SampleResult], None] | None = None,
) -> EvalRun:
    """Build ``n`` samples of ``task`` per length, run every method on each, and write the reports.

    Files in ``out``: ``samples.jsonl`` (one line per method and sample, written as each finishes),
    ``summary.json``, ``summary.md``, ``accuracy_vs_length.png`` and ``latency_vs_length.png``.
    """
    chosen = parse_methods(methods) if isinstance(methods, str) else list(methods)
    if not lengths:
        raise ConfigurationError("no context lengths given")
    source = task_source(task, data)
    runner = MethodRunner(model, engine_options)
    for first, second in runner.same_settings(chosen):
        warnings.warn(
            f"methods {first!r} and {second!r} resolve to the same settings: their rows will measure one thing twice",
            stacklevel=2,
        )
    tokenizer = runner.loaded.tokenizer
    directory = Path(out) if out is not None else Path("eval-results") / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    directory.mkdir(parents=True, exist_ok=True)
    per_sample = directory / "samples.jsonl"
    per_sample.write_text("")
    groups = [(target, build_samples(task, tokenizer, target, n, source, seed)) for target in lengths]
    if source is not None and source.is_file():  # a published file: its own contexts, one group
        groups = groups[:1]
    results: list[SampleResult] = []
    total = sum(len(samples) for _, samples in groups) * len(chosen)
    with tqdm(total=total, desc=f"eval {task}", unit="answer", disable=not show_progress, dynamic_ncols=True) as bar:
        for target, samples in groups:
            for sample in samples:
                tokens = len(tokenizer(sample.context, add_special_tokens=False, verbose=False).input_ids)
                for method in chosen:
                    bar.set_postfix_str(f"{method.label} @ {tokens} tokens")
                    result = run_method(runner, method, sample, task, target, tokens)
                    results.append(result)
                    with per_sample.open("a", encoding="utf-8") as handle:
                        handle.write(json.dumps(asdict(result)) + "\n")
                    if on_result is not None:
                        on_result(result)
                    bar.update(1)
    rows, files = write_eval_reports(directory, task, runner.loaded.resolved.spec, results, source_name(task, source))
    return EvalRun(results, rows, {"samples": per_sample, **files})


def write_eval_reports(
    directory: Path, task: str, model: str, results: Sequence[SampleResult], text_source: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Summarise ``results`` into ``summary.json``, ``summary.md`` and the accuracy and latency PNGs."""
    rows = summarize(results)
    files = {"summary_json": directory / "summary.json", "summary_md": directory / "summary.md"}
    summary = {"task": task, "model": model, "source": text_source, "rows": rows}
    files["summary_json"].write_text(json.dumps(summary, indent=2))
    origin = f" (text: {text_source})" if text_source else ""
    files["summary_md"].write_text(f"# {task} on {model}{origin}\n\n{markdown_table(rows)}")
    files["accuracy_plot"] = directory / "accuracy_vs_length.png"
    plot_rows(rows, "sub_em", "sub_em, %", f"{task}: accuracy vs context length", files["accuracy_plot"])
    files["latency_plot"] = directory / "latency_vs_length.png"
    plot_rows(
        rows,
        "query_seconds",
        "seconds per query (warm, log)",
        f"{task}: latency vs context length",
        files["latency_plot"],
        log=True,
    )
    return rows, files
