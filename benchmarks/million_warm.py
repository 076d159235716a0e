"""The kept banks of ``million_tokens.py`` asked by one warm in-process engine (what server and library users see):
model loaded once, both banks open, each warmed up by another question (term counts and caches filled), then each
bank's planted question asked ``--repeats`` times, the banks alternating. ``million_tokens.py`` measures the fresh
``lychee ask`` process instead.

    OMP_NUM_THREADS=2 python benchmarks/million_warm.py --store /tmp/million --out million_warm.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

WARM_UP = "Who repaired the lighthouse lamp after the winter storm?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True, help="million_tokens.py's --store (kept)")
    parser.add_argument("--lengths", default="7k,1000k", help="the lengths its banks were built at")
    parser.add_argument("--seed", type=int, default=7, help="million_tokens.py's --seed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("million_warm.json"))
    args = parser.parse_args()

    from lychee_memory import LycheeMemory
    from lychee_memory.eval.needles import single_needle
    from lychee_memory.eval.tasks import parse_lengths
    from lychee_memory.store import MemoryStore

    engine = LycheeMemory.from_pretrained(show_progress=False)
    store = MemoryStore(args.store, create=False)
    questions = {}
    for length in parse_lengths(args.lengths):  # million_tokens.py's question for each bank
        _, question, answer = single_needle(random.Random(f"million-{args.seed}-{length}"))
        questions[f"doc{length // 1000}k"] = (question, answer)
    banks = {name: engine.open_bank(name, store) for name in questions}
    for bank in banks.values():
        engine.ask(WARM_UP, bank)
    rows = []
    for turn in range(args.repeats):
        for name in list(questions) if turn % 2 == 0 else list(reversed(questions)):
            question, answer = questions[name]
            started = time.perf_counter()
            reply = engine.ask(question, banks[name])
            rows.append(
                {
                    "bank": name,
                    "query_s": round(time.perf_counter() - started, 3),
                    "right": answer in reply.text,
                    "stage1_s": round(reply.timings.get("prefilter", 0.0), 4),
                    "gate_rows": reply.token_counts["gate_rows"],
                    "timings": {k: round(v, 3) for k, v in reply.timings.items()},
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    store.close()
    first = next(iter(questions))
    base = statistics.median(r["query_s"] for r in rows if r["bank"] == first)
    summary = {}
    print("| bank | blocks | warm query s, median | / the first bank's | stage 1 s | stage-2 rows | right |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, bank in banks.items():
        mine = [r for r in rows if r["bank"] == name]
        median = statistics.median(r["query_s"] for r in mine)
        summary[name] = {"blocks": len(bank), "median_s": median, "ratio": round(median / base, 3)}
        print(
            f"| {name} | {len(bank)} | {median:.2f} | {median / base:.2f} | "
            f"{max(r['stage1_s'] for r in mine):.3f} | {max(r['gate_rows'] for r in mine)} | "
            f"{sum(r['right'] for r in mine)}/{len(mine)} |"
        )
    args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
