"""How well does the gate find a planted fact, per compressor? The measurement behind presets.py.

Plants each built-in needle (eval.NEEDLES) at several depths of a SQuAD haystack, compresses the
document with each compressor, scores every block with the query-likelihood rule against the
block-free baseline, and reports where the needle's block ranks and the gap to the best other block.

    python benchmarks/gate_calibration.py --data ../shared/data --tokens 27000 --compressors none key_norm attention

Writes a JSON of every score summary and a PNG of needle gain vs best other block to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

COMPRESSORS = {
    "none": {"compressor": "none"},
    "key_norm": {"compressor": {"kind": "key_norm", "ratio": 4}},
    "key_norm_high": {"compressor": {"kind": "key_norm", "ratio": 4, "key_norm_keep": "high"}},
    "attention": {"compressor": {"kind": "attention", "ratio": 4}},
    "key_norm_8x": {"compressor": {"kind": "key_norm", "ratio": 8}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=os.environ.get("LYCHEE_DATA_DIR"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=27000)
    parser.add_argument("--chunk-tokens", type=int, default=1024)
    parser.add_argument("--placements", type=int, default=2, help="depths per needle")
    parser.add_argument("--compressors", nargs="+", default=list(COMPRESSORS), choices=list(COMPRESSORS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    from lychee_memory import LycheeMemory
    from lychee_memory.documents import load_documents
    from lychee_memory.eval.needles import NEEDLES
    from lychee_memory.eval.tasks import data_dir, load_squad_paragraphs, needle_document
    from lychee_memory.gate import ScoreRequest

    paragraphs = load_squad_paragraphs(data_dir(args.data))
    results: dict[str, list[dict]] = {}
    cases = None
    for name in args.compressors:
        engine = LycheeMemory.from_pretrained(
            args.model,
            chunk_tokens=args.chunk_tokens,
            gate="query_likelihood",
            show_progress=False,
            **COMPRESSORS[name],
        )
        if cases is None:
            cases = [
                (needle, 0.15 + 0.7 * ((index * args.placements + depth) % 4) / 3, 100 + 10 * index + depth)
                for index, needle in enumerate(NEEDLES)
                for depth in range(args.placements)
            ]
            documents = [
                needle_document(paragraphs, engine.loaded.tokenizer, args.tokens, n, d, s) for n, d, s in cases
            ]
        started = time.perf_counter()
        rows = []
        for (needle, depth, _), document in zip(cases, documents, strict=True):
            blocks = engine.compress_documents(load_documents([document]), show_progress=False)
            target = next(i for i, block in enumerate(blocks) if needle.fact in block.span.text)
            memory = engine.config.prompts.initial_memory
            scores = []
            for start in range(0, len(blocks), 8):
                requests = [ScoreRequest(needle.question, memory, block) for block in blocks[start : start + 8]]
                scores += engine.rule.score(engine.loaded, engine.prompts, requests)
            baseline = engine.rule.score(engine.loaded, engine.prompts, [ScoreRequest(needle.question, memory, None)])[
                0
            ]
            gains = [score - baseline for score in scores]
            others = sorted((g for i, g in enumerate(gains) if i != target), reverse=True)
            rank = 1 + sum(g > gains[target] for g in others)
            rows.append(
                {
                    "needle": needle.answer,
                    "depth": round(depth, 2),
                    "blocks": len(blocks),
                    "rank": rank,
                    "needle_gain": gains[target],
                    "best_other_gain": others[0],
                    "median_other_gain": others[len(others) // 2],
                }
            )
        results[name] = rows
        firsts = sum(row["rank"] == 1 for row in rows)
        gap = min(row["needle_gain"] for row in rows) - max(row["best_other_gain"] for row in rows)
        print(
            f"{name:>14}: needle ranked first {firsts}/{len(rows)}; ranks {[r['rank'] for r in rows]}; "
            f"needle gain {min(r['needle_gain'] for r in rows):.2f}..{max(r['needle_gain'] for r in rows):.2f}, "
            f"best other {max(r['best_other_gain'] for r in rows):.2f}; separating gap {gap:+.2f} ({time.perf_counter() - started:.0f}s)",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"gate-{stamp}.json").write_text(json.dumps(results, indent=2))
    _plot(results, args.out / f"gate-{stamp}.png")
    print(f"results: {args.out / f'gate-{stamp}.json'}")


def _plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for offset, rows in enumerate(results.values()):
        x = [offset + 0.1 * (i - len(rows) / 2) for i in range(len(rows))]
        axis.scatter(
            x,
            [r["needle_gain"] for r in rows],
            marker="o",
            color="tab:green",
            label="needle block" if offset == 0 else None,
        )
        axis.scatter(
            x,
            [r["best_other_gain"] for r in rows],
            marker="x",
            color="tab:red",
            label="best other block" if offset == 0 else None,
        )
    axis.set_xticks(range(len(results)), list(results))
    axis.set_ylabel("query-likelihood gain (nats)")
    axis.set_title("Gate: needle block vs best other block, per compressor")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
