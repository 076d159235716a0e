"""Where one pass of the default stage 1 (lexical: BM25 over the blocks' own text) spends its time, on stored banks
of distinct text, from 7K to 1M tokens: the part of a query that could grow with the bank.

Per bank, best of ``--repeats``: open (the manifest and the documents' text from the store, as ``lychee ask`` does),
count (every block's term counts, a fresh cache: what a fresh process pays in its first pass), statistics (the
bank's document frequencies), score (BM25 of the question's terms for every block, then z-scores); then whole
passes as the scan runs them: the first (fresh process: counts computed), the second after a memory update (the
memory's terms too; counts and statistics kept), and a later question's first pass (everything kept).

    OMP_NUM_THREADS=1 python benchmarks/lexical_stage1_profile.py \\
        --bank doc7k=/tmp/million:doc7k --bank doc1000k=/tmp/million:doc1000k --out /tmp/lexical_profile.json

A bank is NAME=STORE:BANK (any stored bank; the question defaults to a generic one, ``--question`` sets it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

QUESTION = "What is the access code for the east pier storage shed?"
MEMORY = "The access code for the east pier storage shed is 58213, noted by the harbour master in March."
LATER = "Who repaired the lighthouse lamp after the winter storm?"


def best(values: list[float]) -> float:
    return round(min(values), 4)


def profile(engine, store: str, name: str, question: str, repeats: int) -> dict[str, Any]:
    from lychee_memory.gate.lexical_scorer import LexicalScorer
    from lychee_memory.lexical import Bm25Statistics, TermCountCache, terms
    from lychee_memory.store import MemoryStore

    times: dict[str, list[float]] = {
        k: [] for k in ("open", "count", "statistics", "score", "first", "second", "later")
    }
    bank = None
    for _ in range(repeats):
        began = time.perf_counter()
        opened = MemoryStore(store, create=False)
        bank = engine.open_bank(name, opened)
        texts = [span.text for span in bank.spans]
        times["open"].append(time.perf_counter() - began)
        cache = TermCountCache()
        began = time.perf_counter()
        counts = [cache.get(text) for text in texts]
        times["count"].append(time.perf_counter() - began)
        began = time.perf_counter()
        statistics = Bm25Statistics.of(counts)
        times["statistics"].append(time.perf_counter() - began)
        began = time.perf_counter()
        query = terms(question)
        [statistics.score(query, c) for c in counts]
        times["score"].append(time.perf_counter() - began)
        scorer = LexicalScorer(engine.stage_one.context)  # a fresh process's scorer: nothing counted yet
        everything = list(range(len(bank)))
        began = time.perf_counter()
        scorer.rank(bank, question, engine.stage_one.context.questions.initial_memory, everything)
        times["first"].append(time.perf_counter() - began)
        began = time.perf_counter()
        scorer.rank(bank, question, MEMORY, everything[1:])
        times["second"].append(time.perf_counter() - began)
        began = time.perf_counter()
        scorer.rank(bank, LATER, engine.stage_one.context.questions.initial_memory, everything)
        times["later"].append(time.perf_counter() - began)
        opened.close()
    assert bank is not None
    return {
        "blocks": len(bank),
        "tokens": bank.num_tokens,
        "text_mb": round(sum(len(span.text.encode("utf-8")) for span in bank.spans) / 2**20, 2),
        **{k: best(v) for k, v in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", action="append", required=True, help="NAME=STORE:BANK (repeat)")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("lexical_stage1_profile.json"))
    args = parser.parse_args()

    from lychee_memory import LycheeMemory

    engine = LycheeMemory.from_pretrained(show_progress=False)
    if engine.config.gate.prefilter != "lexical":
        raise SystemExit(f"the engine's stage 1 is {engine.config.gate.prefilter!r}, not lexical: nothing to profile")
    results: dict[str, Any] = {}
    for spec in args.bank:
        label, _, where = spec.partition("=")
        store, _, name = where.rpartition(":")
        if not (label and store and name):
            raise SystemExit(f"--bank {spec!r}: expected NAME=STORE:BANK")
        results[label] = profile(engine, store, name, args.question, args.repeats)
        print(label, json.dumps(results[label]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print()
    print("| bank | blocks | tokens | text MB | open | count | statistics | score | pass: 1st (fresh) / 2nd / later |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for label, r in results.items():
        print(
            f"| {label} | {r['blocks']} | {r['tokens']:,} | {r['text_mb']} | {r['open']:.3f} | {r['count']:.3f} | "
            f"{r['statistics']:.3f} | {r['score']:.3f} | {r['first']:.3f} / {r['second']:.3f} / {r['later']:.3f} |"
        )


if __name__ == "__main__":
    main()
