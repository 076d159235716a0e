"""One ladder from many runs (``lychee report``): merge the output directories of several ``lychee eval`` and
``lychee bench`` runs into the tables and plots one long run would have written.

A 7K..224K ladder takes hours on a CPU, so it is run in pieces (a few lengths per command, or a run that was
interrupted: its ``samples.jsonl`` is written as each answer finishes). Inputs are only read, never changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, DocumentError
from .bench import ratio_table
from .plots import plot_bench
from .runner import SampleResult, markdown_table, write_eval_reports

_SAMPLE_FIELDS = {item.name for item in fields(SampleResult)}
_BENCH_KEYS = ("method", "kind", "target_tokens", "context_tokens", "phase")
_MEASURED_KEYS = ("seconds", "peak_mb", "accuracy", "tokens_prefilled", "tokens_generated")  # rows that ran


@dataclass
class EvalPiece:
    """The answers of one eval run (or its partial ``samples.jsonl``)."""

    source: Path
    model: str | None
    results: list[SampleResult]


@dataclass
class BenchPiece:
    """The JSON rows of one bench run."""

    source: Path
    rows: list[dict[str, Any]]


@dataclass
class Report:
    """What ``merge_runs`` wrote: summary rows per task, bench rows with their ratio table, and the files."""

    eval_rows: dict[str, list[dict[str, Any]]]
    bench_rows: list[dict[str, Any]]
    bench_table: str
    files: dict[str, Path]
    model: str | None


def _read_samples(path: Path) -> EvalPiece:
    results = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            results.append(SampleResult(**{key: value for key, value in data.items() if key in _SAMPLE_FIELDS}))
        except (json.JSONDecodeError, TypeError, AttributeError) as error:  # not JSON, not an object, missing keys
            raise DocumentError(f"{path}:{number} is not a line of an eval samples.jsonl ({error})") from error
    model = None
    summary = path.parent / "summary.json"
    if summary.is_file():
        try:
            model = json.loads(summary.read_text(encoding="utf-8")).get("model")
        except (json.JSONDecodeError, AttributeError) as error:
            raise DocumentError(f"{summary} is not an eval summary.json ({error})") from error
    return EvalPiece(path, model, results)


def _read_bench(path: Path) -> BenchPiece:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DocumentError(f"{path} is not JSON ({error})") from error

    def complete(row: Any) -> bool:
        if not isinstance(row, dict) or not all(key in row for key in _BENCH_KEYS):
            return False
        return row.get("seconds") is None or all(key in row for key in _MEASURED_KEYS)

    if not isinstance(rows, list) or not all(complete(row) for row in rows):
        raise DocumentError(
            f"{path} is not a bench.json: expected a list of rows with {', '.join(_BENCH_KEYS)} "
            f"(and {', '.join(_MEASURED_KEYS)} where the run was measured)"
        )
    return BenchPiece(path, rows)


def read_run(path: str | Path) -> list[EvalPiece | BenchPiece]:
    """The runs in ``path``: an eval or bench output directory, a ``samples.jsonl`` or a bench JSON file."""
    path = Path(path)
    if path.is_dir():
        pieces: list[EvalPiece | BenchPiece] = []
        if (path / "samples.jsonl").is_file():
            pieces.append(_read_samples(path / "samples.jsonl"))
        if (path / "bench.json").is_file():
            pieces.append(_read_bench(path / "bench.json"))
        if not pieces:
            raise DocumentError(f"{path} holds neither an eval run (samples.jsonl) nor a bench run (bench.json)")
        return pieces
    if path.is_file():
        return [_read_samples(path) if path.suffix == ".jsonl" else _read_bench(path)]
    raise DocumentError(f"run {str(path)!r} not found")


def _one_model(pieces: list[EvalPiece | BenchPiece]) -> str | None:
    models = {piece.model for piece in pieces if isinstance(piece, EvalPiece) and piece.model}
    models |= {
        row["model"] for piece in pieces if isinstance(piece, BenchPiece) for row in piece.rows if "model" in row
    }
    if len(models) > 1:
        raise ConfigurationError(f"these runs used different models ({', '.join(sorted(models))}); report each alone")
    return next(iter(models), None)


def merge_runs(paths: list[str | Path], out: str | Path) -> Report:
    """Merge eval and bench runs into ``out``: per task ``<task>/summary.{json,md}`` and PNGs, and
    ``bench.json``, ``bench.txt`` and ``bench.png``. A later run's answer for the same method, length and
    sample (or bench row for the same method, length and phase) replaces an earlier one."""
    if not paths:
        raise ConfigurationError("no runs given: name eval or bench output directories")
    out = Path(out)
    pieces = [piece for path in paths for piece in read_run(path)]
    for piece in pieces:
        if out.resolve() in (piece.source.resolve(), piece.source.parent.resolve()):
            raise ConfigurationError(f"write the report to a new directory: {out} holds the input {piece.source}")
    model = _one_model(pieces)

    by_task: dict[str, dict[tuple[str, int, str], SampleResult]] = {}
    for piece in pieces:
        if isinstance(piece, EvalPiece):
            for result in piece.results:
                by_task.setdefault(result.task, {})[(result.method, result.target_tokens, result.sample_id)] = result
    bench: dict[tuple[str, int, str], dict[str, Any]] = {}
    for piece in pieces:
        if isinstance(piece, BenchPiece):
            for row in piece.rows:
                bench[(row["method"], row["target_tokens"], row["phase"])] = row
    bench_tasks = {row["task"] for row in bench.values() if "task" in row}
    if len(bench_tasks) > 1:
        raise ConfigurationError(f"these bench runs measured different tasks ({', '.join(sorted(bench_tasks))})")

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    eval_rows: dict[str, list[dict[str, Any]]] = {}
    for task, results in sorted(by_task.items()):
        directory = out / task
        directory.mkdir(exist_ok=True)
        rows, written = write_eval_reports(directory, task, model or "unknown model", list(results.values()))
        eval_rows[task] = rows
        files.update({f"{task} {name}": path for name, path in written.items()})
    bench_rows = sorted(bench.values(), key=lambda r: (r["target_tokens"], r["method"], r["phase"]))
    table = ""
    if bench_rows:
        table = ratio_table(bench_rows)
        files["bench_json"] = out / "bench.json"
        files["bench_json"].write_text(json.dumps(bench_rows, indent=2))
        files["bench_table"] = out / "bench.txt"
        files["bench_table"].write_text(table + "\n")
        files["bench_plot"] = out / "bench.png"
        plot_bench(bench_rows, files["bench_plot"])
    return Report(eval_rows, bench_rows, table, files, model)


def format_report(report: Report) -> str:
    """The merged tables as text, for the terminal."""
    parts = [
        f"# {task} on {report.model or 'unknown model'}\n\n{markdown_table(rows)}"
        for task, rows in report.eval_rows.items()
    ]
    if report.bench_table:
        parts.append(f"# bench\n\n{report.bench_table}\n")
    return "\n".join(parts)
