"""Cost vs context length for every method, in one run (``lychee bench``).

Each (method, length) runs in its own fresh process so its peak memory is its own: RSS on CPU, peak
allocated on CUDA. Model loading is timed apart and excluded. For each of ``n`` distinct questions the worker
records the cold time (ingest or index build included) and the warm time (bank or index already built);
LycheeMemory's and RAG's answers are streamed, so rows also give the time to the first answer token. MemAgent and
full context have nothing to build ahead, so their cold and warm times are the same query. With ``cli`` a
LycheeMemory method also gets a ``cli`` row: ``lychee ask --json`` over a stored bank in a fresh process.
Prints a table with mean/p50/p95 seconds, decodes per query, the ten-question amortised cost (ingest / 10 + warm
query), Lychee/RAG and Lychee/hybrid-RAG shares and the LycheeMemory/MemAgent and /full-context speedups, and
writes JSON rows (``method``, ``context_tokens``, ``phase``, ``seconds``, ``peak_mb``, ``accuracy``, tokens...)
and a PNG plot.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..answer import Answer, phase_timings
from ..choices import BLOCK_DTYPES
from ..errors import ConfigurationError, ContextTooLongError
from ..generation import DecodeStream, DecodingSettings
from ..kv_prefix import PromptRow
from ..questions import clean_question
from ..store import MemoryStore
from .metrics import sub_em
from .plots import plot_bench
from .runner import DEFAULT_METHODS, Method, MethodRunner, SampleResult, parse_methods, run_method, score_answer
from .tasks import QASample, build_samples, source_name, task_source

if TYPE_CHECKING:  # torch-loading modules: imported where a worker runs
    from ..choices import BlockDtype
    from ..engine import LycheeMemory
    from .rag import RagBaseline, RagIndex

QUICK_LENGTHS = [7_000]
QUICK_METHODS = f"{DEFAULT_METHODS},hybrid-rag"  # issue 28: LycheeMemory against dense and hybrid RAG and MemAgent


def peak_memory_mb(device_type: str) -> float:
    """Peak memory of this process so far: CUDA peak allocated on a GPU, else peak RSS."""
    if device_type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated between order statistics (numpy's
    default), so p50 of two questions is their mean and p95 of three lies between the two slowest."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    place = (len(ordered) - 1) * q / 100
    low = int(place)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (place - low)


@dataclass
class TimedAnswer:
    """One method's scored answer to one sample, with what streaming and counting the generations added."""

    result: SampleResult
    first_token_seconds: float | None = None  # wall time from the question to the first answer piece
    decodes: int = 0  # generations run for the question: one per note (or MemAgent chunk) plus the answer


def _streamed(pieces: Iterable[Any], started: float) -> tuple[float, float]:
    """Drain a stream of answer pieces: (seconds to the first piece, seconds to the end), both from ``started``."""
    first = None
    for _ in pieces:
        if first is None:
            first = time.perf_counter() - started
    total = time.perf_counter() - started
    return (first if first is not None else total), total


def stream_rag(rag: RagBaseline, question: str, index: RagIndex) -> tuple[Answer, float, float]:
    """RAG's answer to one question decoded as a stream, timed the way the engine's stream is: (answer, seconds to
    the first piece, seconds in all). Same retrieval, prompt and decoding as ``RagBaseline.ask``, so the same text."""
    engine = rag.engine
    question = clean_question(question)
    started = time.perf_counter()
    blocks = rag.retrieve(question, index)
    retrieved = time.perf_counter() - started
    row = PromptRow(engine.prompts.full_context_prompt(question, rag.context_text(blocks, index)))
    settings = DecodingSettings.for_reasoner(engine.config.reasoner, engine.config.reasoner.max_answer_tokens)
    if len(row.prompt_ids) + settings.max_new_tokens > engine.loaded.context_window:
        raise ContextTooLongError(
            f"RAG mode needs {len(row.prompt_ids)} prompt tokens plus {settings.max_new_tokens} answer tokens, more "
            f"than the model's context window of {engine.loaded.context_window}; lower top_k or chunk_tokens"
        )
    decode = DecodeStream(engine.loaded, [row], settings)
    first, total = _streamed(decode, started)
    assert decode.results is not None
    (generation,) = decode.results
    answer = Answer(
        question=question,
        text=generation.text,
        mode="rag",
        blocks=sorted(blocks, key=lambda block: block.index),
        timings=phase_timings(engine.loaded.load_seconds, 0.0, retrieve=retrieved, answer=total - retrieved),
        token_counts={
            "blocks": len(index),
            "blocks_read": len(blocks),
            "prompt_tokens": generation.prompt_tokens,
            "answer_tokens": len(generation.token_ids),
        },
    )
    return answer, first, total


def timed_answer(
    runner: MethodRunner, method: Method, sample: QASample, task: str, target_tokens: int, context_tokens: int
) -> TimedAnswer:
    """Answer one sample with one method: LycheeMemory and RAG streamed (time to first token), the rest as
    ``run_method`` does; with the number of generations the question cost."""
    if method.kind in ("memagent", "full-context"):
        result = run_method(runner, method, sample, task, target_tokens, context_tokens)
        reads = result.tokens.get("blocks_read", 0) if method.kind == "memagent" else 0
        return TimedAnswer(result, None, 0 if result.skipped else reads + 1)
    result = SampleResult(
        method.label, task, context_tokens, target_tokens, sample.sample_id, sample.question, sample.answers
    )
    try:
        if method.kind == "lychee":
            engine = runner.engine_for(method)
            bank, result.ingest_seconds = runner.bank_for(engine, sample)
            result.blocks = len(bank)
            stream = engine.stream(sample.question, bank)
            first, result.query_seconds = _streamed(stream, time.perf_counter())
            answer = stream.answer
            notes = len(answer.memory_steps) - 1 if engine.memory_strategy.name == "notes" else 0
            decodes = notes + 1
        else:
            rag = runner.rag_for(method)
            index = rag.build([sample.context])
            result.ingest_seconds = index.build_seconds
            answer, first, result.query_seconds = stream_rag(rag, sample.question, index)
            result.blocks = len(index)
            decodes = 1
    except ContextTooLongError as error:
        result.skipped = str(error)
        return TimedAnswer(result)
    return TimedAnswer(score_answer(result, method, sample, answer), first, decodes)


def cli_answer(store: Path, bank: str, question: str, config: Path) -> tuple[dict[str, Any], float]:
    """``lychee ask --json`` over a stored bank in a fresh process, as a CLI user runs it: (its JSON, wall seconds
    from spawning the process to its exit: interpreter start, imports, model load, bank opening and the query)."""
    command = [sys.executable, "-m", "lychee_memory.cli", "ask", "--store", str(store), "--bank", bank]
    command += ["-q", question, "--json", "--config", str(config), "--no-progress"]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"`lychee ask` failed on bank {bank} of {store}:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout), seconds


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"seconds_p50": percentile(values, 50), "seconds_p95": percentile(values, 95)}


def method_family(row: dict[str, Any]) -> str:
    """What a row is compared as: ``lychee``, ``rag`` (dense), ``hybrid-rag``, ``memagent`` or ``full-context``
    (rows written before the field existed are told by their kind and label)."""
    if "family" in row:
        return row["family"]
    if row["kind"] == "rag" and ("hybrid" in row["method"]):
        return "hybrid-rag"
    return row["kind"]


def worker(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one method at one length in this process and return its JSON rows (cold and warm, and with
    ``request["cli"]`` for LycheeMemory a ``cli`` row: ``lychee ask`` in a fresh process over a stored bank)."""
    method = parse_methods(request["method"])[0]
    runner = MethodRunner(request["model"], request["options"])
    samples = build_samples(
        request["task"], runner.loaded.tokenizer, request["length"], request["n"], request["data"], request["seed"]
    )
    if runner.loaded.device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    timed = []
    cli_runs: list[tuple[dict[str, Any], float, QASample]] = []  # (lychee ask's JSON, wall seconds, sample)
    cli_failed: str | None = None
    with tempfile.TemporaryDirectory(prefix="lychee-bench-") as folder:
        for sample in samples:
            tokens = len(runner.loaded.tokenizer(sample.context, add_special_tokens=False, verbose=False).input_ids)
            timed.append(timed_answer(runner, method, sample, request["task"], request["length"], tokens))
            if request.get("cli") and method.kind == "lychee" and timed[-1].result.skipped is None and not cli_failed:
                try:
                    cli_runs.append((*cli_run(runner, method, sample, Path(folder), len(cli_runs)), sample))
                except RuntimeError as error:  # the in-process rows stand; the cli row says why the process failed
                    cli_failed = str(error)
    results = [t.result for t in timed]
    peak = peak_memory_mb(runner.loaded.device.type)
    text_source = source_name(request["task"], Path(request["data"]) if request["data"] else None)
    rows = []
    measured = {  # what every row says it measured
        "method": method.label,
        "kind": method.kind,
        "family": "hybrid-rag" if method.options.get("retrieval") == "hybrid" else method.kind,
        "task": request["task"],
        "model": runner.loaded.resolved.spec,
        "source": text_source,
        "target_tokens": request["length"],
    }
    ran = [t for t in timed if t.result.skipped is None]
    if not ran:
        return [
            {
                **measured,
                "context_tokens": results[0].context_tokens,
                "phase": phase,
                "seconds": None,
                "skipped": results[0].skipped,
            }
            for phase in ("cold", "warm")
        ]
    ingest = sum(t.result.ingest_seconds for t in ran) / len(ran)
    warm = [t.result.query_seconds for t in ran]
    for phase in ("cold", "warm"):
        seconds = [t.result.cold_seconds if phase == "cold" else t.result.query_seconds for t in ran]
        prefilled = []
        for t in ran:
            r = t.result
            count = r.tokens.get("reasoner_prompt_tokens", 0) + r.tokens.get("prompt_tokens", 0)
            if phase == "cold" and method.kind == "lychee":
                count += r.tokens.get("document_tokens", 0)  # ingest is a forward over every token
            prefilled.append(count)
        streamed = all(t.first_token_seconds is not None for t in ran)
        firsts = [(t.first_token_seconds or 0.0) + (t.result.ingest_seconds if phase == "cold" else 0.0) for t in ran]
        rows.append(
            {
                **measured,
                "context_tokens": round(sum(t.result.context_tokens for t in ran) / len(ran)),
                "phase": phase,
                "samples": len(ran),
                "seconds": sum(seconds) / len(seconds),
                **_spread(seconds),
                "first_token_seconds": sum(firsts) / len(firsts) if streamed else None,
                "first_token_p50": percentile(firsts, 50) if streamed else None,
                "first_token_p95": percentile(firsts, 95) if streamed else None,
                "ingest_seconds": ingest,
                "amortised10_seconds": ingest / 10 + sum(warm) / len(warm),  # one bank (or index), ten questions
                "peak_mb": round(peak, 1),
                "accuracy": sum(t.result.sub_em for t in ran) / len(ran),
                "tokens_prefilled": round(sum(prefilled) / len(prefilled)),
                "tokens_generated": round(
                    sum(t.result.tokens.get("memory_tokens", 0) + t.result.tokens.get("answer_tokens", 0) for t in ran)
                    / len(ran)
                ),
                "decodes_per_query": sum(t.decodes for t in ran) / len(ran),
                "gate_rows": round(sum(t.result.tokens.get("gate_rows", 0) for t in ran) / len(ran)),
                "blocks_read": sum(t.result.blocks_read for t in ran) / len(ran),
                "load_model_s": round(runner.loaded.load_seconds, 3),
                "device": str(runner.loaded.device),
                "answers": [t.result.prediction for t in ran],
            }
        )
    if cli_failed is not None:
        rows.append({**measured, "context_tokens": rows[-1]["context_tokens"], "phase": "cli", "seconds": None})
        rows[-1]["skipped"] = cli_failed
    elif cli_runs:
        rows.append(_cli_row(runner.engine_for(method), cli_runs, rows[-1]))
    return rows


def cli_run(
    runner: MethodRunner, method: Method, sample: QASample, folder: Path, position: int
) -> tuple[dict[str, Any], float]:
    """The sample's bank (the one the warm rows read) saved to a store in its resident dtype, then asked by
    ``lychee ask --json`` in a fresh process: (its JSON, wall seconds)."""
    engine = runner.engine_for(method)
    bank, _ = runner.bank_for(engine, sample)
    config = folder / "engine.json"
    if not config.exists():
        config.write_text(engine.config.model_dump_json())
    dtype = str(bank.resident_dtype()).removeprefix("torch.")
    if dtype not in BLOCK_DTYPES:
        raise RuntimeError(f"a bank held as {dtype} cannot be stored for the cli rows; choose from {BLOCK_DTYPES}")
    store = MemoryStore(folder / "store", create=True, block_dtype=cast("BlockDtype", dtype))
    store.save_bank(bank, f"s{position}")
    return cli_answer(store.location, f"s{position}", sample.question, config)


def _cli_decodes(engine: LycheeMemory, data: dict[str, Any]) -> int:
    """Generations behind one ``lychee ask --json`` answer: a note per memory step after the first (notes memory)
    and the answer."""
    return (len(data["memory"]) - 1 if engine.memory_strategy.name == "notes" else 0) + 1


def _cli_row(
    engine: LycheeMemory, runs: Sequence[tuple[dict[str, Any], float, QASample]], warm: dict[str, Any]
) -> dict[str, Any]:
    """The ``cli`` row from each question's fresh ``lychee ask`` process; amortised with the in-process ingest."""
    answers = [(data, sample) for data, _, sample in runs]
    seconds = [wall for _, wall, _ in runs]
    loads = [data["timings"].get("load_model", 0.0) for data, _, _ in runs]
    predictions = [data["answer"] for data, _ in answers]
    ingest = warm["ingest_seconds"]
    return {
        **{key: warm[key] for key in ("method", "kind", "family", "task", "model", "source", "target_tokens")},
        "context_tokens": warm["context_tokens"],
        "phase": "cli",
        "samples": len(seconds),
        "seconds": sum(seconds) / len(seconds),
        **_spread(seconds),
        "first_token_seconds": None,
        "first_token_p50": None,
        "first_token_p95": None,
        "ingest_seconds": ingest,
        "amortised10_seconds": ingest / 10 + sum(seconds) / len(seconds),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "accuracy": sum(sub_em(data["answer"], sample.answers) for data, sample in answers) / len(answers),
        "tokens_prefilled": round(
            sum(data["tokens"].get("reasoner_prompt_tokens", 0) for data, _ in answers) / len(answers)
        ),
        "tokens_generated": round(
            sum(data["tokens"].get("memory_tokens", 0) + data["tokens"].get("answer_tokens", 0) for data, _ in answers)
            / len(answers)
        ),
        "decodes_per_query": sum(_cli_decodes(engine, data) for data, _ in answers) / len(answers),
        "load_model_s": round(sum(loads) / len(loads), 3),
        "device": warm["device"],
        "answers": predictions,
        "same_answers_as_warm": sum(a == b for a, b in zip(predictions, warm["answers"])),
    }


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
    """Seconds per method and phase at each length: mean, p50 and p95 over questions, time to first answer token,
    decodes per query, the ten-question amortised cost; Lychee/RAG and Lychee/hybrid-RAG (under 1.00: LycheeMemory
    is faster) and the LycheeMemory/MemAgent and /full-context speedups. ``-`` where a row did not measure a value."""
    lines = [
        f"{'method':<28} {'tokens':>7} {'phase':>5} {'n':>3} {'seconds':>9} {'p50':>8} {'p95':>8} {'ttft':>7} "
        f"{'peak MB':>8} {'acc':>5} {'prefilled':>9} {'generated':>9} {'decodes':>7} {'amort10':>8} "
        f"{'L/rag':>6} {'L/hyb':>6} {'vs memagent':>12} {'vs full ctx':>12}"
    ]
    by_key = {(method_family(r), r["target_tokens"], r["phase"]): r for r in rows if r.get("seconds") is not None}

    def show(row: dict[str, Any], key: str, width: int, digits: int = 2) -> str:
        value = row.get(key)
        return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"

    for row in sorted(rows, key=lambda r: (r["target_tokens"], r["method"], r["phase"])):
        if row.get("seconds") is None:
            why = "failed" if row["phase"] == "cli" else "does not fit"
            lines.append(f"{row['method']:<28} {row['context_tokens']:>7} {row['phase']:>5}   skipped: {why}")
            continue
        lychee = row["kind"] == "lychee" and row["seconds"] > 0
        shares = []  # LycheeMemory's seconds over RAG's: at most 1.00 means never slower than RAG
        for family in ("rag", "hybrid-rag"):
            other = by_key.get((family, row["target_tokens"], row["phase"]))
            shares.append(f"{row['seconds'] / other['seconds']:.2f}" if lychee and other and other["seconds"] else "")
        ratios = []
        for family in ("memagent", "full-context"):
            other = by_key.get((family, row["target_tokens"], row["phase"]))
            ratios.append(f"{other['seconds'] / row['seconds']:.1f}x" if lychee and other is not None else "")
        lines.append(
            f"{row['method']:<28} {row['context_tokens']:>7} {row['phase']:>5} {row.get('samples', '-'):>3} "
            f"{row['seconds']:>9.2f} {show(row, 'seconds_p50', 8)} {show(row, 'seconds_p95', 8)} "
            f"{show(row, 'first_token_seconds', 7)} {row['peak_mb']:>8.0f} {row['accuracy']:>5.2f} "
            f"{row['tokens_prefilled']:>9} {row['tokens_generated']:>9} {show(row, 'decodes_per_query', 7, 1)} "
            f"{show(row, 'amortised10_seconds', 8)} {shares[0]:>6} {shares[1]:>6} {ratios[0]:>12} {ratios[1]:>12}"
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
    cli: bool = False,
) -> BenchRun:
    """Measure every method at every length, each in a fresh process; write JSON rows and a PNG.

    ``n`` distinct questions per length give each row's mean, p50 and p95. With ``cli`` each LycheeMemory method
    also gets a ``cli`` row: its banks stored, then each question asked by ``lychee ask --json`` in a fresh process
    (model load included: what a command-line user waits for), apart from the warm in-process rows.
    """
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
                "cli": cli,
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
