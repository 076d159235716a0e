"""Toward the paper's 1.75M tokens: one stored bank of about a million tokens, asked in fresh processes.

Builds needle documents from the project's generated haystack (no dataset needed): a small one (default 7K
tokens), a middle one (default 30K) and a large one (default 1M), each with its own planted code, ingests each
into its own bank of one store with the real ``lychee ingest`` command, then asks each bank its question with
``lychee ask --store --bank --json`` in a fresh process (twice). The query time in the JSON is the warm latency
(model loaded, bank built); wall time and peak RSS come from /usr/bin/time.

    python benchmarks/million_tokens.py --out benchmarks/results/million

Prints a table and writes million.json to --out.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run(command: list[str], label: str) -> dict[str, Any]:
    """Run a command with /usr/bin/time; wall seconds, peak RSS (MiB) and stdout."""
    started = time.perf_counter()
    completed = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True, env={"TQDM_DISABLE": "1", **_env()}
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"[{label}] failed:\n{completed.stderr[-3000:]}")
    peak_kib = int(completed.stderr.strip().splitlines()[-1])
    print(f"[{label}] {wall:.1f}s, peak RSS {peak_kib / 1024:.0f} MiB", flush=True)
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(peak_kib / 1024, 1), "stdout": completed.stdout}


def _path_key(store: Path) -> str:
    """A short stable name for a store directory."""
    import hashlib

    return hashlib.sha256(str(store.resolve()).encode()).hexdigest()[:12]


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="7k,30k,1000k", help="document lengths in tokens")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--store", type=Path, default=None, help="store directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/million"))
    parser.add_argument("--keep-store", action="store_true")
    parser.add_argument(
        "--ask-only", action="store_true", help="the banks are in --store already (a kept store): only ask them"
    )
    args = parser.parse_args()
    if args.ask_only and args.store is None:
        parser.error("--ask-only needs the --store that holds the banks")

    from lychee_memory.config import ModelSettings
    from lychee_memory.eval.haystack import generated_paragraphs
    from lychee_memory.eval.needles import single_needle
    from lychee_memory.eval.tasks import TokenCounter, haystack_with_facts, parse_lengths
    from lychee_memory.model_loading import load_model

    tokenizer = load_model(ModelSettings()).tokenizer
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.store or Path(tempfile.mkdtemp(prefix="lychee-million-"))
    lychee = [sys.executable, "-m", "lychee_memory.cli"]
    pool = generated_paragraphs(count=5000)  # about 1.1M tokens: a 1M haystack without repeats
    results: dict[str, Any] = {"store": str(store), "banks": {}}
    try:
        questions = {}
        for length in parse_lengths(args.lengths):  # every bank is built first, then all are asked
            rng = random.Random(f"million-{args.seed}-{length}")
            facts, question, answer = single_needle(rng)
            text, _ = haystack_with_facts(pool, TokenCounter(tokenizer), length, facts, rng)
            tokens = len(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)
            name = f"doc{length // 1000}k"
            questions[name] = (question, answer)
            results["banks"][name] = {"document_tokens": tokens, "expected": answer, "asks": []}
            if args.ask_only:
                continue
            # The document's id is its path: one path per store, so a rerun replaces the document instead of
            # adding its text again under another id (its chunks are stored already, so nothing is compressed).
            documents = Path(tempfile.gettempdir()) / f"lychee-million-{_path_key(store)}"
            documents.mkdir(parents=True, exist_ok=True)
            path = documents / f"document-{length // 1000}k.txt"
            path.write_text(text, encoding="utf-8")
            ingest = run(
                [*lychee, "ingest", str(path), "--store", str(store), "--bank", name, "--json", "--no-progress"],
                f"ingest {tokens:,} tokens",
            )
            path.unlink()
            results["banks"][name].update(
                ingest_wall_s=ingest["wall_s"],
                ingest_peak_rss_mib=ingest["peak_rss_mib"],
                ingest=json.loads(ingest["stdout"]),
            )
        for attempt in range(2):
            for name, (question, answer) in questions.items():
                asked = run(
                    [
                        *lychee,
                        "ask",
                        "--store",
                        str(store),
                        "--bank",
                        name,
                        "--question",
                        question,
                        "--json",
                        "--no-progress",
                    ],
                    f"ask {name} #{attempt + 1}",
                )
                reply = json.loads(asked["stdout"])
                results["banks"][name]["asks"].append(
                    {
                        "answer": reply["answer"],
                        "correct": answer in reply["answer"],
                        "timings": reply["timings"],
                        "tokens": reply["tokens"],
                        "wall_s": asked["wall_s"],
                        "peak_rss_mib": asked["peak_rss_mib"],
                    }
                )
        du = run([*lychee, "store", "du", "--store", str(store), "--json"], "store du")
        results["du"] = json.loads(du["stdout"])
    finally:
        if not args.keep_store and args.store is None:
            shutil.rmtree(store, ignore_errors=True)
    (args.out / "million.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    first = None
    print(
        "| bank | tokens | ingest s | answer | correct | warm query s (best of 2) | prefilter s | gate s | "
        "peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, bank in results["banks"].items():
        best = min(bank["asks"], key=lambda a: a["timings"]["query"])
        first = first or best["timings"]["query"]
        ingested = f"{bank['ingest_wall_s']:.0f}" if "ingest_wall_s" in bank else "stored before"
        print(
            f"| {name} | {bank['document_tokens']:,} | {ingested} | {best['answer'][:40]} | "
            f"{best['correct']} | {best['timings']['query']:.2f} ({best['timings']['query'] / first:.2f}x) | "
            f"{best['timings'].get('prefilter', 0):.2f} | {best['timings']['gate']:.2f} | {best['peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
