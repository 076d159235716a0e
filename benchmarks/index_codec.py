"""The compact gate index (``gate.index_dtype``): bytes per document token and stage-1 fidelity, float16 vs int8.

Each needle haystack is ingested once (float16 index, in memory); the same bank's index is then scored as stored
(float16) and through the int8 codec (``gate/index_format.py``: asymmetric, a scale and zero per (pair, channel)
over the tokens; encode and decode in-process), and, for the choice of layout, through a symmetric int8 variant
(one scale per (pair, channel): max |key| / 127) that is not offered as a setting. Per sample: the largest and mean |drift| of the stage-1 score (z-scores across the bank's
blocks, so in units of their spread), whether the first block and the best C (``gate.candidates``) are the same,
and the fact block's rank (its best block, 1 = first). Bytes are the framed index items as the store writes them.

    OMP_NUM_THREADS=1 python benchmarks/index_codec.py --lengths 7k,28k --n 5

Prints the table and writes benchmarks/plots/index_codec.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch


def symmetric_int8(keys: torch.Tensor) -> torch.Tensor:
    """Keys after a symmetric int8 round trip: per (pair, channel) scale max |key| / 127 over the tokens."""
    values = keys.float()
    peak = values.abs().amax(dim=1, keepdim=True)
    scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))
    return (torch.round(values / scale).clamp_(-127, 127) * scale).to(torch.float16)


def rank_of(order: list[int], wanted: set[int]) -> int:
    return min(order.index(block) for block in wanted) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="needle", choices=["needle", "needle-multikey", "needle-twohop"])
    parser.add_argument("--lengths", default="7k")
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/plots/index_codec.json"))
    args = parser.parse_args()

    from lychee_memory import LycheeMemory
    from lychee_memory.eval.tasks import build_samples, parse_lengths
    from lychee_memory.gate.heads import model_geometry
    from lychee_memory.gate.index_format import IndexSpec, dequantize_index, quantize_index
    from lychee_memory.store.gate_index import encode_index

    engine = LycheeMemory.from_pretrained(args.model, show_progress=False)
    candidates = engine.config.gate.candidates
    head_dim = model_geometry(engine.loaded.config)[3]
    codecs = {"int8": lambda keys: dequantize_index(*quantize_index(keys)), "int8-sym": symmetric_int8}
    rows: list[dict[str, Any]] = []
    bytes_by = {"float16": 0, "int8": 0}
    tokens_indexed = tokens_total = 0
    for length in parse_lengths(args.lengths):
        for sample in build_samples(args.task, engine.loaded.tokenizer, length, args.n, None, args.seed):
            started = time.perf_counter()
            bank = engine.ingest(sample.context)
            ingest_s = time.perf_counter() - started
            spec = IndexSpec.from_description(bank.gate_index)
            int8 = IndexSpec.from_description({**bank.gate_index, "dtype": "int8"})
            for index in range(len(bank)):
                keys = bank.gate_keys(index)
                bytes_by["float16"] += len(encode_index(keys, "b" * 64, spec.describe(), head_dim))
                bytes_by["int8"] += len(encode_index(keys, "b" * 64, int8.describe(), head_dim))
                tokens_indexed += keys.shape[1]
                tokens_total += bank.spans[index].token_end - bank.spans[index].token_start
            fact = {
                index
                for index, span in enumerate(bank.spans)
                if any(span.char_start < end and start < span.char_end for start, end in sample.evidence)
            }
            prefilter = engine.prefilter_for(bank)
            query = prefilter.query(sample.question, engine.config.prompts.initial_memory)
            blocks = list(range(len(bank)))

            def scored(index_keys, prefilter=prefilter, query=query, blocks=blocks) -> list[float]:
                scores, missing = prefilter.scores(query, index_keys, blocks)
                assert not missing
                return [scores[block] for block in blocks]

            reference = scored(bank.gate_keys)
            order = sorted(blocks, key=lambda block: -reference[block])
            row: dict[str, Any] = {
                "id": sample.sample_id,
                "length": length,
                "blocks": len(bank),
                "ingest_s": round(ingest_s, 1),
                "fact_rank": {"float16": rank_of(order, fact)},
            }
            for name, codec in codecs.items():
                started = time.perf_counter()
                decoded = [codec(bank.gate_keys(block)) for block in blocks]
                codec_ms = (time.perf_counter() - started) * 1000 / len(blocks)
                other = scored(lambda block, decoded=decoded: decoded[block])
                drift = [abs(a - b) for a, b in zip(reference, other)]
                other_order = sorted(blocks, key=lambda block: -other[block])
                row[name] = {
                    "max_drift": max(drift),
                    "mean_drift": statistics.fmean(drift),
                    "same_first": other_order[0] == order[0],
                    "same_candidates": set(other_order[:candidates]) == set(order[:candidates]),
                    "codec_ms_per_block": codec_ms,
                }
                row["fact_rank"][name] = rank_of(other_order, fact)
            rows.append(row)
            print(json.dumps(row), flush=True)

    per_token = {name: total / tokens_total for name, total in bytes_by.items()}
    lines = [
        f"Gate index bytes per document token ({args.model}, framed items as stored, {tokens_total} tokens): "
        + ", ".join(f"{name} {value:.1f} B" for name, value in per_token.items()),
        "",
        "| length | codec | n | max drift (mean over samples) | mean drift | same first block | same best "
        f"{candidates} | fact ranked first f16 -> codec | fact rank changed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for length in sorted({row["length"] for row in rows}):
        subset = [row for row in rows if row["length"] == length]
        for name in codecs:
            first16 = sum(row["fact_rank"]["float16"] == 1 for row in subset)
            first = sum(row["fact_rank"][name] == 1 for row in subset)
            changed = sum(row["fact_rank"][name] != row["fact_rank"]["float16"] for row in subset)
            lines.append(
                f"| {length // 1000}K | {name} | {len(subset)} | {statistics.fmean(r[name]['max_drift'] for r in subset):.4f}"
                f" | {statistics.fmean(r[name]['mean_drift'] for r in subset):.4f}"
                f" | {sum(r[name]['same_first'] for r in subset)}/{len(subset)}"
                f" | {sum(r[name]['same_candidates'] for r in subset)}/{len(subset)}"
                f" | {first16}/{len(subset)} -> {first}/{len(subset)} | {changed}/{len(subset)} |"
            )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"model": args.model, "task": args.task, "bytes_per_token": per_token, "rows": rows, "table": table},
            indent=1,
        ),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
