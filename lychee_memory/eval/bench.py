"""Cost vs context length for every method, in one run (``lychee bench``).

Each (method, length) runs in its own fresh process so its peak memory is its own: RSS on CPU, peak
allocated on CUDA. Model loading is timed apart and excluded. For each sample of the needle task the
worker records the cold time (ingest or index build included) and the warm time (bank or index already
built); MemAgent and full context have nothing to build ahead, so their cold and warm times are the same
query. Prints a table with LycheeMemory/MemAgent and LycheeMemory/full-context ratios, and writes JSON rows
(``method``, ``context_tokens``, ``phase``, ``seconds``, ``peak_mb``, ``accuracy``, tokens) and a PNG plot.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from .plots import plot_bench
from .runner import DEFAULT_METHODS, Method, MethodRunner, parse_methods, run_method
from .tasks import build_samples, source_name, task_source

QUICK_LENGTHS = [7_000]
QUICK_METHODS = DEFAULT_METHODS


def peak_memory_mb(device_type: str) -> float:
    """Peak memory of this process so far: CUDA peak allocated on a GPU, else peak RSS."""
    if device_type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one method at one length in this process and return its JSON rows (cold and warm)."""
    method = parse_methods(request["method"])[0]
    runner = MethodRunner(request["model"], request["options"])
    samples = build_samples(
        request["task"], runner.loaded.tokenizer, request["length"], request["n"], request["data"], request["seed"]
    )
    if runner.loaded.device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    results = []
    for sample in samples:
        tokens = len(runner.loaded.tokenizer(sample.context, add_special_tokens=False, verbose=False).input_ids)
        results.append(run_method(runner, method, sample, request["task"], request["length"], tokens))
    peak = peak_memory_mb(runner.loaded.device.type)
    text_source = source_name(request["task"], Path(request["data"]) if request["data"] else None)
    rows = []
    measured = {  # what every row says it measured
        "method": method.label,
        "kind": method.kind,
        "task": request["task"],
        "model": runner.loaded.resolved.spec,
        "source": text_source,
        "target_tokens": request["length"],
    }
    for phase in ("cold", "warm"):
        ran = [r for r in results if r.skipped is None]
        if not ran:
            rows.append(
                {
                    **measured,
                    "context_tokens": results[0].context_tokens,
                    "phase": phase,
                    "seconds": None,
                    "skipped": results[0].skipped,
                }
            )
            continue
        seconds = [r.cold_seconds if phase == "cold" else r.query_seconds for r in ran]
        prefilled = []
        for r in ran:
            count = r.tokens.get("reasoner_prompt_tokens", 0) + r.tokens.get("prompt_tokens", 0)
            if phase == "cold" and method.kind == "lychee":
                count += r.tokens.get("document_tokens", 0)  # ingest is a forward over every token
            prefilled.append(count)
        rows.append(
            {
                **measured,
                "context_tokens": round(sum(r.context_tokens for r in ran) / len(ran)),
                "phase": phase,
                "seconds": sum(seconds) / len(seconds),
                "peak_mb": round(peak, 1),
                "accuracy": sum(r.sub_em for r in ran) / len(ran),
                "tokens_prefilled": round(sum(prefilled) / len(prefilled)),
                "tokens_generated": round(
                    sum(r.tokens.get("memory_tokens", 0) + r.tokens.get("answer_tokens", 0) for r in ran) / len(ran)
                ),
                "gate_rows": round(sum(r.tokens.get("gate_rows", 0) for r in ran) / len(ran)),
                "blocks_read": sum(r.blocks_read for r in ran) / len(ran),
                "load_model_s": round(runner.loaded.load_seconds, 3),
                "device": str(runner.loaded.device),
                "answers": [r.prediction for r in ran],
            }
        )
    return rows


def _run_worker(request: dict[str, Any]) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "lychee_memory.eval.bench", "--worker", json.dumps(request)]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if completed.returncode != 0:
        raise RuntimeError(
            f"the {request['method']} worker at {request['length']} tokens failed:\n{completed.stderr[-3000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


@dataclass
class BenchRun:
    rows: list[dict[str, Any]]
    table: str
    files: dict[str, Path]


def ratio_table(rows: Sequence[dict[str, Any]]) -> str:
    """Seconds per method and phase at each length, with LycheeMemory/MemAgent and /full-context speedups."""
    lines = [
        f"{'method':<28} {'tokens':>7} {'phase':>5} {'seconds':>9} {'peak MB':>8} {'acc':>5} "
        f"{'prefilled':>9} {'generated':>9} {'vs memagent':>12} {'vs full ctx':>12}"
    ]
    by_key = {(r["kind"], r["target_tokens"], r["phase"]): r for r in rows if r.get("seconds") is not None}
    for row in sorted(rows, key=lambda r: (r["target_tokens"], r["method"], r["phase"])):
        if row.get("seconds") is None:
            lines.append(f"{row['method']:<28} {row['context_tokens']:>7} {row['phase']:>5}   skipped: does not fit")
            continue
        ratios = []
        for kind in ("memagent", "full-context"):
            other = by_key.get((kind, row["target_tokens"], row["phase"]))
            if row["kind"] == "lychee" and other is not None and row["seconds"] > 0:
                ratios.append(f"{other['seconds'] / row['seconds']:.1f}x")
            else:
                ratios.append("")
        lines.append(
            f"{row['method']:<28} {row['context_tokens']:>7} {row['phase']:>5} {row['seconds']:>9.2f} "
            f"{row['peak_mb']:>8.0f} {row['accuracy']:>5.2f} {row['tokens_prefilled']:>9} {row['tokens_generated']:>9} "
            f"{ratios[0]:>12} {ratios[1]:>12}"
        )
    return "\n".join(lines + growth_lines(rows))


def growth_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """How much each method's warm time grows from the shortest to the longest length it ran at."""
    lines = []
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted(
            (r["context_tokens"], r["seconds"])
            for r in rows
            if r["method"] == method and r["phase"] == "warm" and r.get("seconds") is not None
        )
        if len(points) >= 2 and points[0][1] > 0:
            (short, first), (long, last) = points[0], points[-1]
            lines.append(
                f"warm growth {method}: {first:.2f} s at {short} tokens -> {last:.2f} s at {long} tokens "
                f"= {last / first:.1f}x for {long / short:.1f}x the context"
            )
    return [""] + lines if lines else []


def run_bench(
    lengths: Sequence[int],
    *,
    methods: Sequence[Method] | str = DEFAULT_METHODS,
    model: str | None = None,
    task: str = "needle",
    n: int = 1,
    data: str | Path | None = None,
    seed: int = 0,
    engine_options: dict[str, Any] | None = None,
    out: str | Path | None = None,
    json_path: str | Path | None = None,
    show_progress: bool = True,
) -> BenchRun:
    """Measure every method at every length, each in a fresh process; write JSON rows and a PNG."""
    from tqdm.auto import tqdm

    chosen = parse_methods(methods) if isinstance(methods, str) else list(methods)
    if not lengths:
        raise ConfigurationError("no context lengths given")
    if n < 1:
        raise ConfigurationError(f"--n must be at least 1, got {n}")
    source = task_source(task, data)
    directory = Path(out) if out is not None else Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    directory.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    jobs = [(length, method) for length in lengths for method in chosen]
    with tqdm(total=len(jobs), desc="bench", unit="run", disable=not show_progress, dynamic_ncols=True) as bar:
        for length, method in jobs:
            bar.set_postfix_str(f"{method.label} @ {length // 1000}K")
            request = {
                "method": method.label,
                "model": model,
                "options": engine_options or {},
                "task": task,
                "length": length,
                "n": n,
                "data": str(source) if source is not None else None,
                "seed": seed,
            }
            rows.extend(_run_worker(request))
            bar.update(1)
    files = {"json": Path(json_path) if json_path else directory / "bench.json", "plot": directory / "bench.png"}
    files["json"].parent.mkdir(parents=True, exist_ok=True)
    files["json"].write_text(json.dumps(rows, indent=2))
    plot_bench(rows, files["plot"])
    return BenchRun(rows, ratio_table(rows), files)


def _worker_main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--worker":
        print(
            "usage: python -m lychee_memory.eval.bench --worker REQUEST_JSON (internal; use `lychee bench`)",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(worker(json.loads(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
