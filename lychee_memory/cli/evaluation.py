"""``lychee eval``, ``lychee bench`` and ``lychee report``: accuracy and cost of every method, and merged runs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..choices import TASKS
from .options import add_engine_options, evaluation_options


def _command_eval(args: argparse.Namespace) -> int:
    from ..eval.runner import run_eval
    from ..eval.tasks import parse_lengths

    model, options = evaluation_options(args)
    run = run_eval(
        args.task,
        parse_lengths(args.lengths),
        n=args.n,
        methods=args.methods,
        model=model,
        data=args.data,
        out=args.out,
        seed=args.sample_seed,
        engine_options=options,
        show_progress=not args.no_progress,
    )
    print(run.files["summary_md"].read_text(encoding="utf-8"))
    for name, path in run.files.items():
        print(f"{name:>14}: {path}")
    return 0


def _command_bench(args: argparse.Namespace) -> int:
    from ..eval.bench import QUICK_LENGTHS, QUICK_METHODS, run_bench
    from ..eval.tasks import parse_lengths

    model, options = evaluation_options(args)
    if args.quick:
        lengths = parse_lengths(args.lengths) if args.lengths else QUICK_LENGTHS
        methods = args.methods or QUICK_METHODS
    else:
        lengths = parse_lengths(args.lengths or "7k,14k,28k")
        methods = args.methods or QUICK_METHODS
    run = run_bench(
        lengths,
        methods=methods,
        model=model,
        task=args.task,
        n=args.n,
        data=args.data,
        seed=args.sample_seed,
        engine_options=options,
        out=args.out,
        json_path=args.json,
        show_progress=not args.no_progress,
        cli=not (args.quick or args.no_cli),
    )
    print(
        "model loading excluded from cold/warm rows (cli rows: a fresh `lychee ask` process, load included); peak "
        "memory is each run's process (RSS on CPU, allocated on CUDA); ttft: seconds to the first answer token; "
        "amort10: ingest / 10 + warm query; L/rag, L/hyb: LycheeMemory seconds / RAG's (<= 1: not slower)\n"
    )
    print(run.table)
    print(f"\nrows: {run.files['json']}\nplot: {run.files['plot']}")
    return 0


def _command_report(args: argparse.Namespace) -> int:
    from ..eval.report import format_report, merge_runs

    out = args.out or str(Path("reports") / time.strftime("%Y%m%d-%H%M%S"))
    report = merge_runs(args.runs, out)
    print(format_report(report))
    for name, path in report.files.items():
        print(f"{name:>26}: {path}")
    return 0


def add_eval_command(commands: Any) -> None:
    """Register ``lychee eval``."""
    evaluate = commands.add_parser("eval", help="accuracy of every method on RULER-HQA-style or needle tasks")
    evaluate.add_argument("task", choices=TASKS)
    evaluate.add_argument("--lengths", default="7k", help="context lengths in tokens, e.g. 7k,14k,28k (default 7k)")
    evaluate.add_argument("--n", type=int, default=8, help="samples per length (default 8)")
    evaluate.add_argument(
        "--methods",
        default="lychee,memagent,full-context,rag",
        help="comma list: lychee, lychee:KEY=VALUE;..., lychee-variants, memagent, full-context, rag[:top_k=K], "
        "hybrid-rag[:top_k=K] (BM25 + MiniLM, reciprocal rank)",
    )
    evaluate.add_argument(
        "--data",
        default=None,
        help="dataset dir (hotpotqa/, squad/) or a RULER-HQA file; default $LYCHEE_DATA_DIR "
        "or shared/data found above the working directory",
    )
    evaluate.add_argument("--out", default=None, help="output directory (default eval-results/TASK-TIME)")
    evaluate.add_argument("--sample-seed", type=int, default=0, help="seed of the sample construction")
    add_engine_options(evaluate)
    evaluate.set_defaults(handler=_command_eval)


def add_bench_command(commands: Any) -> None:
    """Register ``lychee bench``."""
    bench = commands.add_parser("bench", help="cost vs context length of every method, side by side")
    bench.add_argument("--quick", action="store_true", help="one short length, every method: minutes on a CPU")
    bench.add_argument("--lengths", default=None, help="context lengths (default 7k,14k,28k; --quick: 7k)")
    bench.add_argument(
        "--methods", default=None, help="as for eval (default lychee,memagent,full-context,rag,hybrid-rag)"
    )
    bench.add_argument("--task", choices=TASKS, default="needle")
    bench.add_argument(
        "--n", "--samples", dest="n", type=int, default=1, help="distinct questions per length, for p50/p95 (default 1)"
    )
    bench.add_argument("--data", default=None, help="dataset dir, as for eval")
    bench.add_argument("--json", default=None, help="write the JSON rows here (default OUT/bench.json)")
    bench.add_argument("--out", default=None, help="output directory (default bench-results/TIME)")
    bench.add_argument("--sample-seed", type=int, default=0)
    bench.add_argument(
        "--no-cli",
        action="store_true",
        help="skip the cli rows (`lychee ask --json` in a fresh process over a stored bank; --quick skips them too)",
    )
    add_engine_options(bench)
    bench.set_defaults(handler=_command_bench)


def add_report_command(commands: Any) -> None:
    """Register ``lychee report``."""
    report = commands.add_parser(
        "report", help="merge several eval and bench runs (a ladder run in pieces) into one set of tables and plots"
    )
    report.add_argument("runs", nargs="+", help="eval or bench output directories, samples.jsonl or bench JSON files")
    report.add_argument("--out", default=None, help="a new output directory (default reports/TIME)")
    report.set_defaults(handler=_command_report)
