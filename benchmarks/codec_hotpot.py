"""HotpotQA 28K gold coverage per block codec at a fixed number of blocks read (issue 27, must show).

The shared 28K haystack of the HotpotQA shared file (``eval.shared_haystack``: all 60 questions' gold paragraphs
among the others' paragraphs, seed 0) is ingested ONCE in bfloat16 into a store under ``--store``; every other row
is a copy of it converted by the store's own model-free ``lychee store recompress`` (``--codec``,
``--index-dtype``) and ``lychee store gc`` in a fresh process, its bytes from ``lychee store du --json``. Per
question and row the gate ranks the bank's blocks as the engine's first ranking does (engine defaults, initial
memory): stage 1 picks its candidates (``gate.choose_candidates``), stage 2 (the engine's rule) scores each
candidate's gain, and the ranking is the candidates by gain, then the other blocks by stage-1 score. For k = 1, 2
and 4 the top k blocks are the evidence: both gold paragraphs covered (every supporting sentence inside the blocks,
``eval.evidence``) and at least one; and against bfloat16: the same first block, the same top-4 set. No answers
are written (ranking only); ``--answers ROW ...`` also asks the engine (``engine.ask``) for those rows.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/codec_hotpot.py --data /work/shared/data
    python benchmarks/codec_hotpot.py --report   # JSON + markdown + PNG from --records

Records (one JSON line per question and row) go to ``--records``; the report to ``benchmarks/plots/codec_hotpot.*``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from codec_answers import lychee, prepared_store  # the same ingest-once-then-recompress stores as the needle ladder

# row label -> (block codec, gate index dtype); bfloat16 + float16 is the reference every row is converted from
ROWS = {
    "bfloat16": ("bfloat16", "float16"),
    "k4v3+i8": ("k4v3", "int8"),
    "int4+i8": ("int4", "int8"),
    "k4v2+i8": ("k4v2", "int8"),
    "int2+i8": ("int2", "int8"),
    "none": ("none", "float16"),
}
TOP = (1, 2, 4)
BANK = "hotpot"
PLOTS = Path(__file__).resolve().parent / "plots"


def ranking(engine, bank, question: str) -> dict:
    """The gate's first ranking of ``bank`` for ``question`` under the initial memory: stage-1 candidates by
    stage-2 gain, then the other blocks by stage-1 score (blocks without an index first, as the scan does)."""
    from lychee_memory.gate import GateScan, ScanState, choose_candidates

    settings = engine.config.gate
    prefilter = engine.prefilter_for(bank)
    scan = GateScan(
        engine.loaded,
        engine.prompts,
        engine.rule,
        settings,
        engine.threshold,
        settings.boundary_tolerance,
        None,
        prefilter,
    )
    state = ScanState(question, engine.config.prompts.initial_memory)
    everything = list(range(len(bank)))
    started = time.perf_counter()
    if prefilter is None:
        first, candidates = everything, everything
    else:
        scores, missing = prefilter.rank(bank, question, state.memory, everything)
        first = sorted(missing) + sorted(scores, key=lambda index: (-scores[index], index))
        picked = choose_candidates(scores, settings.candidates, settings.candidate_margin, settings.max_near_ties)
        candidates = sorted(set(picked) | set(missing)) if len(everything) > settings.candidates else everything
    stage1_seconds = time.perf_counter() - started
    gains = dict(zip(candidates, scan.gains(bank, state, candidates)))
    ranked = sorted(candidates, key=lambda index: (-gains[index], index))
    ranked += [index for index in first if index not in gains]
    return {
        "stage1_order": first,
        "candidates": candidates,
        "gains": {str(index): round(gain, 4) for index, gain in gains.items()},
        "ranking": ranked,
        "stage1_s": round(stage1_seconds, 3),
        "ranking_s": round(time.perf_counter() - started, 3),
    }


def coverage(bank, ranked: list[int], gold_facts) -> dict:
    """Gold paragraphs covered by the top k blocks, for each k of ``TOP``."""
    from lychee_memory.eval.evidence import paragraphs_covered

    spans = [(span.char_start, span.char_end) for span in bank.spans]
    return {str(k): paragraphs_covered([spans[index] for index in ranked[:k]], gold_facts) for k in TOP}


def run(args: argparse.Namespace) -> None:
    from lychee_memory import LycheeMemory
    from lychee_memory.eval.metrics import sub_em
    from lychee_memory.eval.shared_haystack import DEFAULT_GOLD_SHARE, build_shared_haystack
    from lychee_memory.eval.tasks import TokenCounter, data_dir, load_hotpot
    from lychee_memory.store import MemoryStore

    # float16 index pinned for the bfloat16 ingest every row converts from; a block cache holding a whole 28K bank
    # of encoded blocks, so the index-only row encodes each block at most once
    engine = LycheeMemory.from_pretrained(
        show_progress=False, gate={"index_dtype": "float16"}, compressor={"block_cache_mb": args.block_cache_mb}
    )
    rows = load_hotpot(data_dir(args.data))
    haystack = build_shared_haystack(rows, TokenCounter(engine.loaded.tokenizer), args.tokens, args.seed)
    questions = haystack.questions[args.skip : args.skip + args.n] if args.n else haystack.questions[args.skip :]
    print(
        f"{args.tokens} tokens: {haystack.paragraphs} paragraphs, {len(haystack.questions)} questions in it "
        f"({len(haystack.left_out)} left out, gold share {DEFAULT_GOLD_SHARE}), {len(questions)} asked",
        flush=True,
    )
    args.store.mkdir(parents=True, exist_ok=True)
    args.records.parent.mkdir(parents=True, exist_ok=True)
    for row in args.rows:
        where, _ = prepared_store(args.store, row, engine, haystack.context, BANK)
        parts = lychee("store", "du", "--store", str(where))["bank_parts"][BANK]["per_token"]
        store = MemoryStore(where, create=False)
        bank = engine.open_bank(BANK, store)
        if bank.documents[0].text != haystack.context:
            raise SystemExit(f"{where}: the stored document is not the haystack (offsets would not line up)")
        for number, item in enumerate(questions, 1):
            found = ranking(engine, bank, item.question)
            record = {
                "row": row,
                "codec": ROWS[row][0],
                "index_dtype": ROWS[row][1],
                "sample": item.sample_id,
                "split": item.split,
                "kind": item.kind,
                "gold_paragraphs": len(item.gold_facts),
                "covered": coverage(bank, found["ranking"], item.gold_facts),
                "blocks": len(bank),
                "tokens": bank.num_tokens,
                "bytes_per_token": parts,
                **found,
            }
            if row in args.answers:
                started = time.perf_counter()
                answer = engine.ask(item.question, bank)
                record["answer"] = answer.text
                record["sub_em"] = sub_em(answer.text, item.answers)
                record["blocks_read"] = [block.index for block in answer.blocks]
                record["answer_s"] = round(time.perf_counter() - started, 2)
            print(
                f"{row:9s} {number:2d}/{len(questions)} {item.sample_id}: top={found['ranking'][:4]} "
                f"covered={record['covered']} of {record['gold_paragraphs']} {found['ranking_s']:.1f}s"
                + (f" sub_em={record['sub_em']}" if "sub_em" in record else ""),
                flush=True,
            )
            with args.records.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        del bank
        store.close()


def summarise(records: list[dict]) -> list[dict]:
    """Per row: both-gold and at-least-one shares at each k, and ranking changes against bfloat16 (the questions
    every row answered only)."""
    by_row: dict[str, dict[str, dict]] = {}
    for record in records:
        by_row.setdefault(record["row"], {})[record["sample"]] = record  # a rerun's record replaces the older one
    common = set.intersection(*(set(group) for group in by_row.values()))
    reference = by_row.get("bfloat16", {})
    summary = []
    for row in [name for name in ROWS if name in by_row]:
        group = [by_row[row][sample] for sample in sorted(common)]
        entry = {"row": row, "n": len(group), "bytes_per_token": group[0]["bytes_per_token"]["total"]}
        for k in TOP:
            entry[f"both@{k}"] = sum(r["covered"][str(k)] >= r["gold_paragraphs"] for r in group)
            entry[f"one@{k}"] = sum(r["covered"][str(k)] >= 1 for r in group)
        for split in ("tuning", "confirming"):
            part = [r for r in group if r["split"] == split]
            entry[f"{split}_n"] = len(part)
            entry[f"{split}_both@4"] = sum(r["covered"]["4"] >= r["gold_paragraphs"] for r in part)
        if reference:
            theirs = [reference[r["sample"]] for r in group]
            entry["same_top1"] = sum(r["ranking"][0] == t["ranking"][0] for r, t in zip(group, theirs))
            entry["same_top4_set"] = sum(set(r["ranking"][:4]) == set(t["ranking"][:4]) for r, t in zip(group, theirs))
            entry["same_candidates"] = sum(set(r["candidates"]) == set(t["candidates"]) for r, t in zip(group, theirs))
            entry["coverage_changed@4"] = [
                f"{r['sample']} ({t['covered']['4']}->{r['covered']['4']})"
                for r, t in zip(group, theirs)
                if r["covered"]["4"] != t["covered"]["4"]
            ]
            drift = [
                abs(gain - t["gains"][index])
                for r, t in zip(group, theirs)
                for index, gain in r["gains"].items()
                if index in t["gains"]
            ]
            entry["gain_drift_max"] = max(drift) if drift else None
            entry["gain_drift_median"] = statistics.median(drift) if drift else None
        entry["median_ranking_s"] = statistics.median(r["ranking_s"] for r in group)
        answered = [r for r in group if "sub_em" in r]
        if answered:
            entry["sub_em"] = sum(r["sub_em"] for r in answered)
            entry["answered"] = len(answered)
        summary.append(entry)
    return summary


def table(summary: list[dict]) -> str:
    """The summary as a markdown table."""
    lines = [
        "| row (blocks + index) | n | all-in B/token | both gold @1 / @2 / @4 | at least one @1 / @2 / @4 | "
        "both @4 tuning / confirming | same top-1 vs bf16 | same top-4 set | same stage-1 candidates | "
        "gain drift max / median | coverage @4 changed | median ranking s |",
        "|---|---:|---:|---|---|---|---:|---:|---:|---|---|---:|",
    ]
    for e in summary:
        n = e["n"]
        drift = "-" if e.get("gain_drift_max") is None else f"{e['gain_drift_max']:.3f} / {e['gain_drift_median']:.3f}"
        lines.append(
            f"| {e['row']} | {n} | {e['bytes_per_token']:,.0f} | "
            + " / ".join(f"{e[f'both@{k}']}" for k in TOP)
            + " | "
            + " / ".join(f"{e[f'one@{k}']}" for k in TOP)
            + f" | {e['tuning_both@4']}/{e['tuning_n']} / {e['confirming_both@4']}/{e['confirming_n']} | "
            f"{e.get('same_top1', '-')}/{n} | {e.get('same_top4_set', '-')}/{n} | {e.get('same_candidates', '-')}/{n} | "
            f"{drift} | {', '.join(e.get('coverage_changed@4', [])) or '-'} | {e['median_ranking_s']:.1f} |"
        )
    answered = [e for e in summary if "sub_em" in e]
    if answered:
        lines.append("")
        lines.append("| row | answered | sub_em |")
        lines.append("|---|---:|---:|")
        lines += [f"| {e['row']} | {e['answered']} | {e['sub_em']}/{e['answered']} |" for e in answered]
    return "\n".join(lines)


def plot(summary: list[dict], path: Path) -> None:
    """Both-gold and at-least-one coverage at each k, one group of bars per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / (2 * len(TOP))
    for number, entry in enumerate(summary):
        for position, k in enumerate(TOP):
            x = number + (position - len(TOP)) * width
            axis.bar(x, entry[f"one@{k}"] / entry["n"], width, color=f"C{position}", alpha=0.35)
            axis.bar(x + len(TOP) * width, entry[f"both@{k}"] / entry["n"], width, color=f"C{position}")
    axis.set_xticks(range(len(summary)))
    axis.set_xticklabels([f"{e['row']}\n{e['bytes_per_token']:,.0f} B/tok" for e in summary], fontsize=8)
    axis.set_ylabel("share of questions")
    axis.set_ylim(0, 1)
    axis.set_title(
        "HotpotQA 28K shared haystack, top-k of the gate's ranking (k = 1, 2, 4: colours); "
        "pale: at least one gold, solid: both",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(records: list[dict], out: Path) -> str:
    """JSON summary, markdown table and PNG of the records (a rerun's record of a question replaces the older)."""
    records = list({(record["row"], record["sample"]): record for record in records}.values())
    summary = summarise(records)
    out.mkdir(parents=True, exist_ok=True)
    (out / "codec_hotpot.json").write_text(json.dumps({"rows": summary, "records": records}, indent=1) + "\n")
    text = table(summary) + "\n"
    (out / "codec_hotpot.md").write_text(text)
    plot(summary, out / "codec_hotpot.png")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="dataset directory holding hotpotqa/ (else $LYCHEE_DATA_DIR)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--answers", nargs="*", default=[], choices=list(ROWS), help="rows also answered")
    parser.add_argument("--tokens", type=int, default=28_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=0, help="questions asked, in haystack order (0 = all)")
    parser.add_argument("--skip", type=int, default=0)
    parser.add_argument("--block-cache-mb", type=float, default=2048.0, help="the engine's block cache (none row)")
    parser.add_argument("--store", type=Path, default=Path("/tmp/codeccost/hotpot"), help="stores kept here")
    parser.add_argument("--records", type=Path, default=Path("/tmp/codeccost/hotpot/records.jsonl"))
    parser.add_argument("--report", action="store_true", help="only write the report from --records")
    parser.add_argument("--out", type=Path, default=PLOTS)
    args = parser.parse_args()
    if not args.report:
        run(args)
    records = [json.loads(line) for line in args.records.read_text().splitlines() if line.strip()]
    print(report(records, args.out))


if __name__ == "__main__":
    main()
