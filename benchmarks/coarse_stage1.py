"""Which cheap first pass could prune a bank before exact stage-1 key scores (issue 28 item 2, the coarse level),
measured on stored banks: does it keep the fact's block, and does the pruned ranking pick the exact candidates?

Stage 1 today scores every block: per chosen head, the mean over the question's tokens of logsumexp(s q . k) over
the block's index keys, minus the same for a null question, z-scored across the bank and averaged over heads. A
pass over the stacked index is memory-bound (every float16 key is upcast and multiplied once, whatever the number
of query tokens), so a coarse pass only saves time if it reads fewer keys. Variants (the engine is not changed):

  - ``bounds:P``  Quest-style page bounds: per page of P keys the max and min of each channel; the page's
    logsumexp is at most s (q+ . max + q- . min) + log(count) (an upper bound of the block's exact score).
  - ``means:P``   page centroids: s q . mean + log(count) per page (a lower bound, by Jensen).
  - ``heads:i,j`` the exact keys of a subset of the index's heads (positions in the bank's head list): the
    pass reads only those heads' (layer, KV head) pairs. This one runs the engine's own coarse pass
    (``gate.coarse_keep`` / ``gate.coarse_heads``, ``lychee_memory/gate/coarse.py``), built from this measurement.

Each variant runs the key scorer's own calibration on its per-block values, keeps the best K blocks, scores them
and an even sample of the pruned ones exactly (``--sample``; each sampled block stands for pruned/sampled blocks in
the z-score statistics, so with a sample holding every pruned block the kept scores are the exact ones), and picks
candidates as stage 1 does (``candidates`` best plus near-ties). Per (bank, question, pass: the initial memory, then
a one-line note) it records the exact rank of the fact's block (a block whose text holds the gold answer), whether
each variant kept it and put it among the candidates, whether the candidates equal the exact ones, and the seconds
of each pass with the engine's index cache warm (best of --repeats; the coarse pass plus the exact rescoring).

    OMP_NUM_THREADS=1 python benchmarks/coarse_stage1.py --bank /tmp/codec_answers/A/k4v3+i8:haystack \\
        --records /tmp/codec_answers/records.jsonl --keep 4,8 --sample 4 --variant bounds:16 --variant heads:2,3
    OMP_NUM_THREADS=1 python benchmarks/coarse_stage1.py --bank /tmp/s1c/store:copies1m \\
        --question "What is the access code for the southern vault?=69765" --keep 64 --variant heads:2,3

Prints one line per (bank, question, pass) and a summary per (variant, K); writes ``--out`` (JSON).
``--report A.json B.json --out P.png`` draws, per run, the share of passes whose fact's block each variant kept
against its median time relative to the exact pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

NOTE = "The note so far: the question asks for an access code."  # a memory with notes: the second pass's queries


def page_summary(keys: torch.Tensor, valid: torch.Tensor, page: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One summary key per page of ``page`` index keys: [n, pairs, pages, 2D + 1] (bounds: max, min, log count) or
    [n, pairs, pages, D + 1] (means: centroid, log count); and which pages hold a real key [n, pages]."""
    blocks, pairs, tokens, head_dim = keys.shape
    pages = -(-tokens // page)
    pad = pages * page - tokens
    keys = torch.nn.functional.pad(keys.float(), (0, 0, 0, pad))
    valid = torch.nn.functional.pad(valid, (0, pad))
    paged = keys.view(blocks, pairs, pages, page, head_dim)
    real = valid.view(blocks, 1, pages, page, 1)
    counts = valid.view(blocks, pages, page).sum(dim=2)
    log_counts = counts.clamp(min=1).float().log()[:, None, :, None].expand(blocks, pairs, pages, 1)
    if kind == "bounds":
        highest = paged.masked_fill(~real, float("-inf")).amax(dim=3)
        lowest = paged.masked_fill(~real, float("inf")).amin(dim=3)
        empty = (counts == 0)[:, None, :, None]
        parts = [highest.masked_fill(empty, 0.0), lowest.masked_fill(empty, 0.0)]
    else:
        parts = [(paged * real).sum(dim=3) / counts.clamp(min=1)[:, None, :, None].float()]
    return torch.cat([*parts, log_counts], dim=-1), counts > 0


def summary_queries(vectors: torch.Tensor, scale: float, kind: str) -> torch.Tensor:
    """Queries as the page summaries read them: (q+, q-, 1/s) for bounds, (q, 1/s) for means."""
    last = torch.full((*vectors.shape[:-1], 1), 1.0 / scale)
    parts = [vectors.clamp(min=0.0), vectors.clamp(max=0.0)] if kind == "bounds" else [vectors]
    return torch.cat([*parts, last], dim=-1)


def coarse_means(scorer, query, bank, indices: list[int], variant: str) -> tuple[list[int], torch.Tensor]:
    """(blocks, group means [n, heads, 3]) of a page-summary pass ``variant`` over the bank's cached index batches."""
    from lychee_memory.kernels import key_logsumexp

    kind, _, argument = variant.partition(":")
    used = query.weights.sum(dim=0) > 0
    vectors, weights = query.vectors[:, used].float(), query.weights[:, used]
    head_pairs = torch.tensor(scorer.spec.head_pairs, dtype=torch.long)
    if kind not in ("bounds", "means"):
        raise SystemExit(f"unknown variant {variant!r}: bounds:P, means:P or heads:i,j")
    vectors = summary_queries(vectors, scorer.scale, kind)
    scored, results = [], []
    for positions, batch in scorer.batches(bank.gate_keys, indices, bank):
        rows = [row for row, ok in enumerate(batch.usable) if ok and positions[row] is not None]
        keys, valid = page_summary(batch.keys, batch.valid, int(argument), kind)
        lse = key_logsumexp(vectors, keys, valid, head_pairs, scorer.scale)
        results.append(torch.einsum("nhq,gq->nhg", lse, weights)[rows])
        scored.extend(positions[row] for row in rows)
    return scored, torch.cat(results)


def exact_means(scorer, query, bank, indices: list[int]) -> tuple[list[int], torch.Tensor]:
    """(blocks, exact group means) of ``indices`` only: their rows of the cached batches, not whole batches."""
    from lychee_memory.kernels import key_logsumexp

    used = query.weights.sum(dim=0) > 0
    vectors, weights = query.vectors[:, used].float(), query.weights[:, used]
    head_pairs = torch.tensor(scorer.spec.head_pairs, dtype=torch.long)
    scored, results = [], []
    for positions, batch in scorer.batches(bank.gate_keys, indices, bank):
        rows = [row for row, ok in enumerate(batch.usable) if ok and positions[row] is not None]
        picked = torch.tensor(rows, dtype=torch.long)
        lse = key_logsumexp(vectors, batch.keys[picked], batch.valid[picked], head_pairs, scorer.scale)
        results.append(torch.einsum("nhq,gq->nhg", lse, weights))
        scored.extend(positions[row] for row in rows)
    return scored, torch.cat(results)


def pruned_scores(scorer, query, bank, everything, variant, keep, sample) -> dict[int, float]:
    """Exact calibrated scores of the blocks the coarse pass keeps (statistics from them and the sample). ``heads``
    variants run the engine's own coarse pass (``gate.coarse_heads``); page variants are computed here."""
    kind, _, argument = variant.partition(":")
    if kind == "heads":
        import lychee_memory.gate.key_scorer as key_scorer

        key_scorer.SAMPLE_BLOCKS = sample
        chosen = tuple(scorer.spec.heads[int(value)] for value in argument.split(","))
        coarse = replace(scorer, prune=True, context=replace(scorer.context, coarse_keep=keep, coarse_heads=chosen))
        return coarse.scores(query, bank.gate_keys, everything, bank)[0]
    from lychee_memory.gate.coarse import kept_and_sample, sample_weights, weighted_zscore
    from lychee_memory.gate.key_scorer import zscore

    blocks, means = coarse_means(scorer, query, bank, everything, variant)
    coarse = dict(zip(blocks, scorer.combined(means, query.has_memory, zscore).tolist()))
    kept, sampled = kept_and_sample(coarse, keep, sample)
    scored, means = exact_means(scorer, query, bank, sorted(kept + sampled))
    weights = sample_weights(scored, kept, len(blocks) - len(kept), len(sampled))
    combined = scorer.combined(means.double(), query.has_memory, lambda values: weighted_zscore(values, weights))
    return {at: value for at, value in zip(scored, combined.tolist()) if at in set(kept)}


def questions_from(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(question, gold) pairs from ``--question Q=GOLD`` and ``--records`` (JSONL rows with question and gold)."""
    pairs: list[tuple[str, str]] = []
    for item in args.question:
        question, _, gold = item.rpartition("=")
        if not question or not gold:
            raise SystemExit(f"--question {item!r}: expected QUESTION=GOLD")
        pairs.append((question, gold))
    for path in args.records:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            pair = (row["question"], str(row["gold"]))
            if pair not in pairs:
                pairs.append(pair)
    if not pairs:
        raise SystemExit("no questions: give --question or --records")
    return pairs


def timed(repeats: int, function, *arguments) -> tuple[Any, float]:
    """``function(*arguments)`` and its best time over ``repeats`` runs."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function(*arguments)
        best = min(best, time.perf_counter() - started)
    return result, best


def report(paths: list[Path], out: Path) -> None:
    """One panel per record: fact's block kept (share of passes) vs median seconds relative to the exact pass."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(paths), figsize=(5.2 * len(paths), 4.2), squeeze=False)
    for axis, path in zip(axes[0], paths):
        record = json.loads(path.read_text(encoding="utf-8"))
        summary, rows = record["summary"], record["rows"]
        blocks = sorted({row["blocks"] for row in rows})
        exact = summary["exact"]
        axis.axhline(exact["fact_in_candidates"] / exact["passes"], color="grey", linestyle="--", linewidth=1)
        axis.scatter([1.0], [exact["fact_in_candidates"] / exact["passes"]], color="black", zorder=3)
        axis.annotate("exact (fact in candidates)", (1.0, exact["fact_in_candidates"] / exact["passes"]), fontsize=7)
        for name, values in summary.items():
            if name == "exact":
                continue
            share = values["fact_kept"] / values["passes"]
            marker = "o" if name.startswith("heads") else "x"
            axis.scatter([values["median_seconds_ratio_to_exact"]], [share], marker=marker)
            axis.annotate(name, (values["median_seconds_ratio_to_exact"], share), fontsize=7)
        axis.set_xscale("log")
        axis.set_ylim(-0.05, 1.05)
        axis.set_xlabel("median pass seconds / exact pass")
        axis.set_ylabel("fact's block kept (share of passes)")
        axis.set_title(f"{path.stem}: {len(rows)} passes, {blocks[0]}-{blocks[-1]} blocks", fontsize=9)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", nargs="+", type=Path, default=None, help="records to draw (no measuring)")
    parser.add_argument("--bank", action="append", default=[], help="STORE:BANK (repeat)")
    parser.add_argument("--question", action="append", default=[], help="QUESTION=GOLD (repeat)")
    parser.add_argument("--records", action="append", default=[], help="JSONL rows with question and gold")
    parser.add_argument("--variant", action="append", default=[], help="bounds:P | means:P | heads:i,j (repeat)")
    parser.add_argument("--keep", default="16,64", help="comma-separated blocks kept by the coarse pass")
    parser.add_argument("--sample", type=int, default=32, help="pruned blocks scored exactly for the statistics")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/plots/coarse_stage1.json"))
    args = parser.parse_args()
    if args.report:
        report(args.report, args.out)
        return
    if not args.bank:
        parser.error("--bank is required (or --report)")

    from lychee_memory import LycheeMemory
    from lychee_memory.gate import choose_candidates
    from lychee_memory.store import MemoryStore

    variants = args.variant or ["bounds:16", "means:4", "heads:2,3"]
    keeps = [int(value) for value in args.keep.split(",") if value.strip()]
    engine = LycheeMemory.from_pretrained()
    gate = engine.config.gate
    rows: list[dict[str, Any]] = []

    def candidates_of(scores: dict[int, float]) -> list[int]:
        return choose_candidates(scores, gate.candidates, gate.candidate_margin, gate.max_near_ties)

    for target in args.bank:
        store_path, _, bank_name = target.rpartition(":")
        bank = engine.open_bank(bank_name, MemoryStore(store_path))
        scorer = engine.prefilter_for(bank)
        everything = list(range(len(bank)))
        texts = [span.text for span in bank.spans]
        for question, gold in questions_from(args):
            holding = [at for at, text in enumerate(texts) if gold in text]
            if not holding:
                continue  # a question of another haystack
            for label, memory in (("first", engine.config.prompts.initial_memory), ("second", NOTE)):
                query = scorer.query(question, memory)
                scorer.scores(query, bank.gate_keys, everything, bank)  # fills the index cache
                (exact, _), exact_s = timed(args.repeats, scorer.scores, query, bank.gate_keys, everything, bank)
                ranked = sorted(exact, key=lambda at: (-exact[at], at))
                exact_candidates = candidates_of(exact)
                row: dict[str, Any] = {
                    "bank": target,
                    "blocks": len(bank),
                    "question": question,
                    "gold": gold,
                    "pass": label,
                    "fact_blocks": holding,
                    "exact_fact_rank": min(ranked.index(at) for at in holding) + 1,
                    "exact_fact_in_candidates": any(at in exact_candidates for at in holding),
                    "exact_s": round(exact_s, 4),
                    "variants": {},
                }
                for variant in variants:
                    for keep in keeps:
                        pruned, pruned_s = timed(
                            args.repeats,
                            pruned_scores,
                            *(scorer, query, bank, everything, variant, keep, args.sample),
                        )
                        picked = candidates_of(pruned)
                        row["variants"][f"{variant} K={keep}"] = {
                            "fact_kept": any(at in pruned for at in holding),
                            "fact_in_candidates": any(at in picked for at in holding),
                            "same_candidates": picked == exact_candidates,
                            "seconds": round(pruned_s, 4),
                        }
                rows.append(row)
                print(
                    f"{bank_name} {question[:40]!r} {label}: exact rank {row['exact_fact_rank']} {exact_s:.3f} s | "
                    + " | ".join(
                        f"{name}: kept {v['fact_kept']} cand {v['fact_in_candidates']} {v['seconds']:.3f} s"
                        for name, v in row["variants"].items()
                    ),
                    flush=True,
                )
    summary: dict[str, Any] = {
        "exact": {
            "passes": len(rows),
            "fact_in_candidates": sum(row["exact_fact_in_candidates"] for row in rows),
            "median_seconds": statistics.median(row["exact_s"] for row in rows) if rows else None,
        }
    }
    for name in rows[0]["variants"] if rows else []:
        picked = [row["variants"][name] for row in rows]
        ratios = [row["variants"][name]["seconds"] / row["exact_s"] for row in rows if row["exact_s"] > 0]
        summary[name] = {
            "passes": len(picked),
            "fact_kept": sum(v["fact_kept"] for v in picked),
            "fact_in_candidates": sum(v["fact_in_candidates"] for v in picked),
            "same_candidates": sum(v["same_candidates"] for v in picked),
            "median_seconds_ratio_to_exact": round(statistics.median(ratios), 3) if ratios else None,
        }
    for name, values in summary.items():
        print(f"{name}: {values}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows, "summary": summary}, indent=1),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
