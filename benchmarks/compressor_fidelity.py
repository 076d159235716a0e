"""Does a compressor keep what the gate finds and the reasoner reads? Compressed vs raw KV, side by side.

Held-out haystacks only: paragraphs of the held-out split (``training.compressor_data``: SQuAD paragraphs the
trainer never reads, and generated text with the held-out seed), each haystack cut into one document per
~``--segment-tokens`` so a planted needle changes one block and the store reuses every other block across
samples. Needles are the evaluation family (``eval.needles.single_needle``), whose vocabulary and template
training never uses. For each compressor and length: how often the stage-2 rule ranks the fact's block first
among all blocks, how often the default engine (prefilter on) answers right, and bytes stored per token
(blocks + gate index, what ``lychee ingest --json`` reports).

    python benchmarks/compressor_fidelity.py --data ../shared/data --weights run/compressor.safetensors \
        --lengths 28k:20,112k:5 --compressors raw learned attention
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path


def _haystack_segments(pool, tokenizer, total_tokens: int, segment_tokens: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    segments, current, current_tokens, tokens = [], [], 0, 0
    while tokens < total_tokens:
        paragraph = rng.choice(pool)
        size = len(tokenizer(paragraph.text, add_special_tokens=False)["input_ids"]) + 8
        if current and current_tokens + size > segment_tokens:
            segments.append("\n\n".join(current))
            current, current_tokens = [], 0
        current.append(f"{paragraph.title}\n{paragraph.text}")
        current_tokens += size
        tokens += size
    if current:
        segments.append("\n\n".join(current))
    return segments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("LYCHEE_DATA_DIR"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--weights", default=None, help="learned compressor weights (for 'learned')")
    parser.add_argument("--lengths", default="28k:20,112k:5", help="length:samples pairs")
    parser.add_argument("--compressors", nargs="+", default=["raw", "learned", "attention"])
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--segment-tokens", type=int, default=900)
    parser.add_argument("--storage", nargs="+", default=["bfloat16"], help="block dtypes whose bytes to report")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="", help="added to the result file's name")
    parser.add_argument("--plot", nargs="+", type=Path, default=None, help="draw result JSONs into one PNG and stop")
    args = parser.parse_args()
    if args.plot:
        plot(args.plot, args.out / "compressor_fidelity.png")
        return

    from lychee_memory import LycheeMemory
    from lychee_memory.eval.metrics import sub_em
    from lychee_memory.eval.needles import single_needle
    from lychee_memory.gate import ScoreRequest
    from lychee_memory.store import MemoryStore
    from lychee_memory.training.compressor_data import paragraph_pool

    options = {
        "raw": {"compressor": "none"},
        "learned": {"compressor": "learned", "compressor_weights": args.weights, "ratio": args.ratio},
        "attention": {"compressor": {"kind": "attention", "ratio": args.ratio}},
        "key_norm": {"compressor": {"kind": "key_norm", "ratio": args.ratio}},
    }
    pool = paragraph_pool(Path(args.data) if args.data else None, "heldout")
    lengths = [
        (int(part.split(":")[0].lower().rstrip("k")) * 1000, int(part.split(":")[1]))
        for part in args.lengths.split(",")
    ]
    results = {}
    for name in args.compressors:
        # Every compressor's blocks are read as KV: a text re-read would hide what compression lost.
        engine = LycheeMemory.from_pretrained(args.model, show_progress=False, read_mode="kv", **options[name])
        tokenizer = engine.loaded.tokenizer
        rows = []
        for total, count in lengths:
            segments = _haystack_segments(pool, tokenizer, total, args.segment_tokens, seed=total)
            with tempfile.TemporaryDirectory() as directory:
                stores = {dtype: MemoryStore(Path(directory) / dtype, block_dtype=dtype) for dtype in args.storage}
                started = time.perf_counter()
                base_store = stores[args.storage[0]]
                engine.ingest(segments, store=base_store, bank="base")
                ingest_seconds = time.perf_counter() - started
                tokens = engine.open_bank("base", base_store).num_tokens
                stored = {}
                for dtype, store in stores.items():
                    if store is not base_store:
                        engine.ingest(segments, store=store, bank="base")
                    dtype_info = store.bank_info("base")
                    stored[dtype] = (dtype_info.stored_bytes + dtype_info.index_bytes) / tokens
                for index in range(count):
                    rng = random.Random(f"fidelity-{total}-{index}")
                    facts, question, answer = single_needle(rng)
                    target_segment = rng.randrange(len(segments))
                    planted = list(segments)
                    paragraphs = planted[target_segment].split("\n\n")
                    where = rng.randrange(len(paragraphs))
                    paragraphs[where] = paragraphs[where] + " " + facts[0]
                    planted[target_segment] = "\n\n".join(paragraphs)
                    bank = engine.ingest(planted, store=base_store, bank=f"sample-{index}")
                    blocks = [bank.block(i) for i in range(len(bank))]
                    target = next(i for i, block in enumerate(blocks) if facts[0] in block.span.text)
                    memory = engine.config.prompts.initial_memory
                    scores = []
                    for start in range(0, len(blocks), 8):
                        requests = [ScoreRequest(question, memory, block) for block in blocks[start : start + 8]]
                        scores += engine.rule.score(engine.loaded, engine.prompts, requests)
                    rank = 1 + sum(score > scores[target] for i, score in enumerate(scores) if i != target)
                    reply = engine.ask(question, bank, show_progress=False)
                    right = sub_em(reply.text, [answer])
                    rows.append(
                        {
                            "length": total,
                            "sample": index,
                            "blocks": len(blocks),
                            "rank": rank,
                            "right": bool(right),
                            "in_candidates": not reply.candidates or any(target in picks for picks in reply.candidates),
                            "answer": reply.text[:80],
                        }
                    )
                    print(json.dumps({"compressor": name, **rows[-1]}), flush=True)
                summary_rows = [row for row in rows if row["length"] == total]
                print(
                    f"{name} {total // 1000}K: first {sum(r['rank'] == 1 for r in summary_rows)}/{len(summary_rows)}, "
                    f"right {sum(r['right'] for r in summary_rows)}/{len(summary_rows)}, candidates "
                    f"{sum(r['in_candidates'] for r in summary_rows)}/{len(summary_rows)}, bytes/token "
                    + ", ".join(f"{dtype} {value:.0f}" for dtype, value in stored.items())
                    + f", base ingest {ingest_seconds:.0f}s ({tokens / ingest_seconds:.0f} tok/s), "
                    f"{len(segments)} blocks",
                    flush=True,
                )
                results.setdefault(name, {})[str(total)] = {
                    "rows": summary_rows,
                    "bytes_per_token": stored,
                    "ingest_tokens_per_second": tokens / ingest_seconds,
                }
    args.out.mkdir(parents=True, exist_ok=True)
    path = (
        args.out / f"compressor-fidelity-{args.tag or '-'.join(args.compressors)}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.write_text(json.dumps(results, indent=2))
    print(f"results: {path}")


def plot(paths: list[Path], target: Path) -> None:
    """Rank-first, answer and stage-1 rates per compressor and length against bytes per token, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = []
    for path in paths:
        tag = path.stem.removeprefix("compressor-fidelity-").rsplit("-", 2)[0]
        for _name, by_length in json.loads(path.read_text()).items():
            for length, result in by_length.items():
                rows = result["rows"]
                bytes_per_token = next(iter(result["bytes_per_token"].values()))
                label = f"{tag}\n{int(length) // 1000}K, {bytes_per_token / 1000:.1f} KB/tok"
                rates = [
                    sum(r[key] if key != "rank" else r["rank"] == 1 for r in rows) / len(rows)
                    for key in ("rank", "right", "in_candidates")
                ]
                bars.append((label, rates))
    figure, axis = plt.subplots(figsize=(max(7, 1.3 * len(bars)), 4))
    width = 0.27
    for offset, name in enumerate(("gate ranks fact first", "answer right", "fact in stage-1 candidates")):
        axis.bar([i + (offset - 1) * width for i in range(len(bars))], [b[1][offset] for b in bars], width, label=name)
    axis.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    axis.set_ylabel("fraction of held-out needles")
    axis.set_title("compressed vs raw KV, SmolLM2-135M, held-out haystacks")
    axis.legend(fontsize=8)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    print(f"plot: {target}")


if __name__ == "__main__":
    main()
