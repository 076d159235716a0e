"""Ingest throughput of a checkout, and per block codec: generated needle documents ingested on the embedded default.

Without ``--codecs``: one generated 28K-token needle document ingested in memory 3 times after a warm-up. Prints one
JSON line (seconds per run, best tokens per second).

To compare two versions side by side, run it from each checkout in turn on a quiet machine, e.g. an older commit
in a worktree: ``git worktree add /tmp/old COMMIT`` (link ``lychee_memory/kernels`` -> ``../kernels`` and
``lychee_memory/integrations`` -> ``../integrations`` there), then
``PYTHONPATH=/tmp/old python benchmarks/ingest_throughput.py old`` and ``python benchmarks/ingest_throughput.py new``.

With ``--codecs``: per length, the same document written to a fresh store per block codec (``MemoryStore(...,
block_dtype=C)``, the engine's default gate index) and, as the row ``memory``, ingested in memory (the forward
alone, no store). Rows alternate within a round and each round starts one row later, so load drift is shared
rather than pinned on one codec. Encode-only milliseconds per block (``store.codec.encode_block``: quantise,
pack, safetensors, frame; what a store adds per block besides the forward, index and writes) are timed apart on
the in-memory bank's blocks, best of ``--encode-repeats``. JSON and markdown go to ``--out``.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/ingest_throughput.py --codecs bfloat16 int8 int4 k4v3 k4v2 int2 \\
        none --lengths 7000 28000 --rounds 1
    OMP_NUM_THREADS=1 python benchmarks/ingest_throughput.py --codecs bfloat16 int8 int4 k4v3 k4v2 int2 \\
        --lengths 2000 --encode-only     # wall and CPU ms per block, no store
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

IN_MEMORY = "memory"


def in_memory_runs(label: str) -> None:
    """The original measure: a 28K document ingested in memory 3 times after a warm-up; one JSON line."""
    from lychee_memory import LycheeMemory
    from lychee_memory.eval.tasks import build_samples

    engine = LycheeMemory.from_pretrained(show_progress=False)
    sample = build_samples("needle", engine.loaded.tokenizer, 28000, 1, seed=5)[0]
    engine.ingest(sample.context[:4000])  # warm-up
    times = []
    for _ in range(3):
        started = time.perf_counter()
        bank = engine.ingest(sample.context)
        times.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "label": label,
                "tokens": bank.num_tokens,
                "seconds": [round(t, 2) for t in times],
                "best_tokens_per_s": round(bank.num_tokens / min(times), 1),
            }
        )
    )


def encode_ms(bank, codec: str, identity, repeats: int, clock=time.perf_counter) -> float | None:
    """Best-of-``repeats`` mean milliseconds to encode one of the bank's blocks as the store frames it (None for
    the index-only tier, which encodes nothing); ``clock`` is wall time, or ``time.process_time`` for this
    process's CPU time (one thread: what the encode costs, whatever else the machine runs)."""
    from lychee_memory.store.codec import INDEX_ONLY, encode_block

    if codec == INDEX_ONLY:
        return None
    blocks = [bank.block(index) for index in range(len(bank))]
    best = float("inf")
    for _ in range(repeats):
        started = clock()
        for block in blocks:
            encode_block(block, codec, identity)
        best = min(best, (clock() - started) / len(blocks))
    return 1000 * best


def encode_only(args: argparse.Namespace) -> None:
    """Encode-only wall and CPU milliseconds per block per codec, on the blocks of the first length's document
    ingested in memory (no store, no per-codec forward); one JSON line per codec."""
    from lychee_memory import LycheeMemory
    from lychee_memory.eval.tasks import build_samples

    engine = LycheeMemory.from_pretrained(show_progress=False)
    bank = engine.ingest(
        build_samples("needle", engine.loaded.tokenizer, args.lengths[0], 1, seed=args.seed)[0].context
    )
    for codec in args.codecs:
        record = {
            "length": args.lengths[0],
            "blocks": len(bank),
            "slots": [block.num_slots for block in (bank.block(index) for index in range(len(bank)))],
            "row": codec,
            "encode_wall_ms_per_block": encode_ms(bank, codec, engine.identity, args.encode_repeats),
            "encode_cpu_ms_per_block": encode_ms(bank, codec, engine.identity, args.encode_repeats, time.process_time),
        }
        print(json.dumps(record), flush=True)


def codec_runs(args: argparse.Namespace) -> None:
    """Per length and round, every row (in-memory and one store per codec) on the same document."""
    from lychee_memory import LycheeMemory
    from lychee_memory.eval.tasks import build_samples
    from lychee_memory.store import MemoryStore

    engine = LycheeMemory.from_pretrained(show_progress=False)
    rows = [IN_MEMORY, *args.codecs]
    records = []
    engine.ingest(build_samples("needle", engine.loaded.tokenizer, 2000, 1, seed=args.seed)[0].context)  # warm-up
    for length in args.lengths:
        context = build_samples("needle", engine.loaded.tokenizer, length, 1, seed=args.seed)[0].context
        reference = None
        for round_number in range(args.rounds):
            shift = round_number % len(rows)
            for row in rows[shift:] + rows[:shift]:
                folder = Path(tempfile.mkdtemp(prefix="ingest_codec_", dir=args.scratch))
                try:
                    started = time.perf_counter()
                    if row == IN_MEMORY:
                        bank = engine.ingest(context)
                        reference = bank
                    else:
                        with MemoryStore(folder, block_dtype=row) as store:
                            bank = engine.ingest([context], store=store, bank="doc")
                    seconds = time.perf_counter() - started
                    stored = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
                record = {
                    "length": length,
                    "round": round_number,
                    "row": row,
                    "tokens": bank.num_tokens,
                    "blocks": len(bank),
                    "seconds": round(seconds, 3),
                    "tokens_per_s": round(bank.num_tokens / seconds, 1),
                    "store_bytes": stored if row != IN_MEMORY else 0,
                }
                records.append(record)
                print(json.dumps(record), flush=True)
        assert reference is not None
        for row in args.codecs:
            ms = encode_ms(reference, row, engine.identity, args.encode_repeats)
            records.append({"length": length, "row": row, "encode_ms_per_block": ms, "blocks": len(reference)})
            print(json.dumps(records[-1]), flush=True)
    summary = summarise(records, rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"rows": summary, "records": records}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(table(summary) + "\n")
    print(table(summary))


def summarise(records: list[dict], rows: list[str]) -> list[dict]:
    """Per length and row: tokens, blocks, median seconds and tokens/s over rounds, encode-only ms per block."""
    summary = []
    for length in dict.fromkeys(r["length"] for r in records):
        for row in rows:
            runs = [r for r in records if r["length"] == length and r["row"] == row and "seconds" in r]
            encode = [r for r in records if r["length"] == length and r["row"] == row and "encode_ms_per_block" in r]
            if not runs:
                continue
            summary.append(
                {
                    "length": length,
                    "row": row,
                    "tokens": runs[0]["tokens"],
                    "blocks": runs[0]["blocks"],
                    "rounds": len(runs),
                    "median_seconds": statistics.median(r["seconds"] for r in runs),
                    "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
                    "encode_ms_per_block": encode[0]["encode_ms_per_block"] if encode else None,
                    "store_bytes": runs[0]["store_bytes"],
                }
            )
    return summary


def table(summary: list[dict]) -> str:
    """The summary as a markdown table."""
    lines = [
        "| length | row | tokens | blocks | rounds | median s | median tokens/s | encode-only ms/block | store MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in summary:
        encode = entry["encode_ms_per_block"]
        lines.append(
            f"| {entry['length']:,} | {entry['row']} | {entry['tokens']:,} | {entry['blocks']} | {entry['rounds']} | "
            f"{entry['median_seconds']:.1f} | {entry['median_tokens_per_s']:.0f} | "
            f"{'-' if encode is None else f'{encode:.1f}'} | {entry['store_bytes'] / 2**20:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("label", nargs="?", default="this checkout", help="label of the in-memory run")
    parser.add_argument("--codecs", nargs="+", default=None, help="block codecs to write stores with")
    parser.add_argument("--lengths", nargs="+", type=int, default=[7000, 28000], help="document tokens")
    parser.add_argument("--rounds", type=int, default=1, help="times every row runs per length")
    parser.add_argument("--encode-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--scratch", type=Path, default=None, help="where the temporary stores go")
    parser.add_argument("--encode-only", action="store_true", help="only the encode ms per block of --codecs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "plots" / "ingest_codecs")
    args = parser.parse_args()
    if args.codecs is None:
        in_memory_runs(args.label)
    elif args.encode_only:
        encode_only(args)
    else:
        codec_runs(args)


if __name__ == "__main__":
    main()
