"""LycheeMemory vs MemAgent on the same model and documents, measured side by side in one run.

For each document size, a planted fact (a needle) is hidden in a haystack of SQuAD paragraphs and asked
about. Each (size, mode) runs in a fresh subprocess so its peak RSS is its own; model loading is timed
separately and excluded from the query times.

    python benchmarks/speed_vs_memagent.py --data ../shared/data --sizes 30000 120000

Reports LycheeMemory warm (bank built) and cold (ingest included) query time, MemAgent query time, the
ratios, whether each answer is right (sub_em), and peak RSS; writes JSON and a PNG plot to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> dict:
    """One measurement in this process: load, build the document, run one mode."""
    from lychee_memory import LycheeMemory
    from lychee_memory.eval import sub_em
    from lychee_memory.eval.tasks import NEEDLES, data_dir, load_squad_paragraphs, needle_document

    options = json.loads(args.options)
    engine = LycheeMemory.from_pretrained(args.model, show_progress=False, **options)
    rss_after_load = peak_rss_mib()
    needle = NEEDLES[args.needle]
    paragraphs = load_squad_paragraphs(data_dir(args.data))
    document = needle_document(paragraphs, engine.loaded.tokenizer, args.size, needle, args.depth, args.seed)
    tokens = len(engine.loaded.tokenizer(document, add_special_tokens=False, verbose=False).input_ids)
    result: dict = {
        "mode": args.worker,
        "size": args.size,
        "document_tokens": tokens,
        "load_model_s": engine.loaded.load_seconds,
    }
    if args.worker == "lychee":
        started = time.perf_counter()
        bank = engine.ingest([document])
        ingest = time.perf_counter() - started
        started = time.perf_counter()
        answer = engine.ask(needle.question, bank)
        warm = time.perf_counter() - started
        result.update(
            ingest_s=ingest,
            warm_s=warm,
            cold_s=ingest + warm,
            blocks=len(bank),
            blocks_read=[b.index for b in answer.blocks],
            needle_block=[i for i, span in enumerate(bank.spans) if needle.fact in span.text],
            phases=answer.timings,
        )
    else:
        started = time.perf_counter()
        answer = engine.ask(needle.question, [document], mode="memagent")
        result.update(
            query_s=time.perf_counter() - started,
            chunks=len(answer.blocks),
            memory_tokens=answer.token_counts["memory_tokens"],
        )
    result.update(
        answer=answer.text,
        expected=needle.answer,
        correct=sub_em(answer.text, needle.answer),
        peak_rss_mib=peak_rss_mib(),
        rss_after_load_mib=rss_after_load,
        config=engine.info()["compressor"] | {"read_mode": engine.config.reasoner.read_mode, "gate": engine.rule.name},
    )
    return result


def run_worker(args: argparse.Namespace, mode: str, size: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        "--size",
        str(size),
        "--model",
        args.model,
        "--needle",
        str(args.needle),
        "--depth",
        str(args.depth),
        "--seed",
        str(args.seed),
        "--options",
        args.options,
    ]
    if args.data:
        command += ["--data", str(args.data)]
    print(f"[{time.strftime('%H:%M:%S')}] {mode} at ~{size} tokens ...", file=sys.stderr, flush=True)
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{mode} worker failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in results})
    series = {"LycheeMemory warm": [], "LycheeMemory cold": [], "MemAgent": []}
    for size in sizes:
        lychee = next(r for r in results if r["size"] == size and r["mode"] == "lychee")
        memagent = next(r for r in results if r["size"] == size and r["mode"] == "memagent")
        series["LycheeMemory warm"].append(lychee["warm_s"])
        series["LycheeMemory cold"].append(lychee["cold_s"])
        series["MemAgent"].append(memagent["query_s"])
    figure, axis = plt.subplots(figsize=(7, 4))
    width = 0.27
    for offset, (label, values) in enumerate(series.items()):
        positions = [i + (offset - 1) * width for i in range(len(sizes))]
        bars = axis.bar(positions, values, width, label=label)
        axis.bar_label(bars, labels=[f"{v:.1f}s" for v in values], fontsize=8)
    axis.set_xticks(range(len(sizes)), [f"~{s // 1000}K tokens" for s in sizes])
    axis.set_yscale("log")
    axis.set_ylabel("query time, seconds (log scale)")
    axis.set_title("Needle question, same model: LycheeMemory vs MemAgent (model load excluded)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, default=os.environ.get("LYCHEE_DATA_DIR"), help="dataset dir (holds squad/)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[30000, 120000])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--needle", type=int, default=0)
    parser.add_argument("--depth", type=float, default=0.55)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--options", default="{}", help="engine options as JSON, e.g. '{\"ratio\": 8}'")
    parser.add_argument("--modes", default="lychee,memagent")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--worker", choices=["lychee", "memagent"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results = [run_worker(args, mode, size) for size in args.sizes for mode in args.modes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"speed-{stamp}.json").write_text(json.dumps(results, indent=2))
    print(f"\nmodel {args.model}; model loading excluded from every time below")
    print(
        f"{'size':>8} {'tokens':>7} {'lychee warm':>12} {'lychee cold':>12} {'memagent':>10} {'warm x':>8} {'cold x':>8}  answers (lychee / memagent)   peak RSS MiB (lychee / memagent)"
    )
    for size in args.sizes:
        lychee = next((r for r in results if r["size"] == size and r["mode"] == "lychee"), None)
        memagent = next((r for r in results if r["size"] == size and r["mode"] == "memagent"), None)
        if lychee is None or memagent is None:
            continue
        print(
            f"{size:>8} {lychee['document_tokens']:>7} {lychee['warm_s']:>11.2f}s {lychee['cold_s']:>11.2f}s {memagent['query_s']:>9.1f}s "
            f"{memagent['query_s'] / lychee['warm_s']:>7.1f}x {memagent['query_s'] / lychee['cold_s']:>7.1f}x  "
            f"{lychee['answer'][:20]!r} {'ok' if lychee['correct'] else 'WRONG'} / {memagent['answer'][:20]!r} {'ok' if memagent['correct'] else 'WRONG'}   "
            f"{lychee['peak_rss_mib']:.0f} / {memagent['peak_rss_mib']:.0f}"
        )
    if any(r["mode"] == "lychee" for r in results) and any(r["mode"] == "memagent" for r in results):
        plot(results, args.out / f"speed-{stamp}.png")
        print(f"\nresults: {args.out / f'speed-{stamp}.json'}\nplot:    {args.out / f'speed-{stamp}.png'}")


if __name__ == "__main__":
    main()
