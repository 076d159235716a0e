"""Index-only (``none``) latency at 28K with the engine's block cache cold and warm, against a k4v3 + int8 bank.

The stores of ``benchmarks/codec_answers.py`` haystack A (seed 0, 10 needle facts in 28K tokens): its ``none`` bank
(gate index and texts only) and its ``k4v3+i8`` bank, copied from ``--source`` to ``--store`` first (the originals
are only read). Per question, in one process sharing one loaded model: a fresh engine (``LycheeMemory(loaded,
config)``: an empty block cache and index cache) opens the ``none`` bank and asks (cold: it encodes every block
stage 2 scores or the reasoner reads), then asks the same question again (warm: the block cache holds them); the
block cache's encodes are counted for each. A k4v3 + int8 engine, warmed by one question first, asks the same
question once (warm). Each query's gate, reason and answer seconds come from ``Answer.timings``.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/index_only_latency.py --n 10

JSON + markdown to ``benchmarks/plots/index_only_latency.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

BANK = "haystack"
ROWS = ("none cold", "none warm", "k4v3+i8 warm")


def timed(engine, question: str, bank) -> tuple[float, object]:
    started = time.perf_counter()
    answer = engine.ask(question, bank)
    return time.perf_counter() - started, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("/tmp/codec_answers/A"), help="codec_answers haystack A")
    parser.add_argument("--store", type=Path, default=Path("/tmp/codeccost/latency"), help="where the copies go")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "plots" / "index_only_latency")
    args = parser.parse_args()

    from lychee_memory import LycheeMemory
    from lychee_memory.eval.haystack import generated_paragraphs
    from lychee_memory.eval.metrics import sub_em
    from lychee_memory.eval.tasks import many_needle_sample
    from lychee_memory.store import MemoryStore

    for row in ("none", "k4v3+i8"):
        if not (args.store / row).exists():
            shutil.copytree(args.source / row, args.store / row)
    # the engine codec_answers.py read these banks with (its float16 index pin changes nothing stored here)
    base = LycheeMemory.from_pretrained(show_progress=False, gate={"index_dtype": "float16"})
    samples = many_needle_sample(generated_paragraphs(count=1500), base.loaded.tokenizer, 28_000, 10, 0)[: args.n]
    context = (args.source / "context.txt").read_text(encoding="utf-8")
    if samples[0].context != context:
        raise SystemExit(f"{args.source}: context.txt is not haystack A (seed 0): the questions would not match")
    stores = {row: MemoryStore(args.store / row, create=False) for row in ("none", "k4v3+i8")}
    quantised = LycheeMemory(base.loaded, base.config)
    kept_bank = quantised.open_bank(BANK, stores["k4v3+i8"])
    quantised.ask(samples[0].question, kept_bank)  # warm-up: caches, index
    capacity_mb = base.config.compressor.block_cache_mb
    records = []
    for number, sample in enumerate(samples, 1):
        fresh = LycheeMemory(base.loaded, base.config)  # empty block cache and index cache, same model
        bank = fresh.open_bank(BANK, stores["none"])
        measured = {}
        for row in ROWS[:2]:
            before = fresh.block_cache.stats().encodes
            measured[row] = (*timed(fresh, sample.question, bank), fresh.block_cache.stats().encodes - before)
        measured[ROWS[2]] = (*timed(quantised, sample.question, kept_bank), 0)
        for row, (seconds, answer, encodes) in measured.items():
            record = {
                "sample": sample.sample_id,
                "row": row,
                "seconds": round(seconds, 3),
                "timings": {name: round(value, 3) for name, value in answer.timings.items()},
                "blocks_encoded": encodes,
                "stage2_rows": answer.token_counts.get("gate_rows"),
                "blocks_read": [block.index for block in answer.blocks],
                "right": sub_em(answer.text, sample.answers),
                "answer": answer.text,
            }
            records.append(record)
            print(json.dumps(record), flush=True)
        print(f"[{number}/{len(samples)}] cache: {fresh.block_cache.stats()}", flush=True)
        del bank, fresh
    for store in stores.values():
        store.close()
    summary = []
    for row in ROWS:
        group = [r for r in records if r["row"] == row]
        summary.append(
            {
                "row": row,
                "n": len(group),
                "median_s": statistics.median(r["seconds"] for r in group),
                "min_s": min(r["seconds"] for r in group),
                "max_s": max(r["seconds"] for r in group),
                "median_gate_s": statistics.median(r["timings"].get("gate", 0.0) for r in group),
                "blocks_encoded_mean": statistics.mean(r["blocks_encoded"] for r in group),
                "blocks_encoded_range": [
                    min(r["blocks_encoded"] for r in group),
                    max(r["blocks_encoded"] for r in group),
                ],
                "right": sum(r["right"] for r in group),
            }
        )
    lines = [
        f"block cache: {capacity_mb:.0f} MB (compressor.block_cache_mb, the default); n = {len(samples)}",
        "",
        "| row | n | median s | min - max s | median gate s | blocks encoded mean (min-max) | right |",
        "|---|---:|---:|---|---:|---|---:|",
    ]
    for e in summary:
        low, high = e["blocks_encoded_range"]
        lines.append(
            f"| {e['row']} | {e['n']} | {e['median_s']:.1f} | {e['min_s']:.1f} - {e['max_s']:.1f} | "
            f"{e['median_gate_s']:.1f} | {e['blocks_encoded_mean']:.1f} ({low}-{high}) | {e['right']}/{e['n']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"block_cache_mb": capacity_mb, "rows": summary, "records": records}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
