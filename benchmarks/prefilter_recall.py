"""Does stage 1 of the gate keep what the full scan finds? Recall of the key prefilter, side by side.

Each sample is ingested once; the same bank is then asked with the default gate (key prefilter, then the rule
on the candidates) and, with --full-scan, with the prefilter off (the rule judges every block, as before). Per
sample it records whether the evidence blocks were among the candidates (over every ranking, so a two-hop fact
found after the first memory update counts), whether the answers match and what each phase cost. For ruler-hqa,
--rag-top-k also retrieves MiniLM top-k 256-token chunks, for recall at a comparable number of tokens.

    python benchmarks/prefilter_recall.py --task needle --lengths 7k,14k,28k --n 20 --full-scan
    python benchmarks/prefilter_recall.py --task ruler-hqa --lengths 28k --n 20 --data ../shared/data --rag-top-k 16

Writes samples.jsonl and summary.md to --out and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def _covered(spans: list[tuple[int, int]], evidence: list[tuple[int, int]]) -> list[bool]:
    return [any(start < e_end and e_start < end for start, end in spans) for e_start, e_end in evidence]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="needle", choices=["needle", "needle-multikey", "needle-twohop", "ruler-hqa"])
    parser.add_argument("--lengths", default="7k")
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--data", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--candidates", type=int, default=None, help="gate.candidates (default: the engine's)")
    parser.add_argument("--full-scan", action="store_true", help="also ask with the prefilter off, same bank")
    parser.add_argument("--rag-top-k", type=int, default=0, help="MiniLM top-k recall for comparison (0 = off)")
    parser.add_argument(
        "--text-read", action="store_true", help="also ask with read_mode=text (re-encode each chunk), same bank"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prefilter"))
    args = parser.parse_args()

    from tqdm import tqdm

    from lychee_memory import LycheeMemory
    from lychee_memory.eval.metrics import sub_em
    from lychee_memory.eval.tasks import build_samples, parse_lengths

    options: dict[str, Any] = {"show_progress": False}
    if args.candidates is not None:
        options["candidates"] = args.candidates
    engine = LycheeMemory.from_pretrained(args.model, **options)
    full = (
        LycheeMemory(
            engine.loaded,
            engine.config.model_copy(update={"gate": engine.config.gate.model_copy(update={"prefilter": "off"})}),
        )
        if args.full_scan
        else None
    )
    text = None
    if args.text_read:
        reasoner = engine.config.reasoner.model_copy(update={"read_mode": "text"})
        text = LycheeMemory(engine.loaded, engine.config.model_copy(update={"reasoner": reasoner}))
    rag = None
    if args.rag_top_k:
        from lychee_memory.eval.rag import RagBaseline

        rag = RagBaseline(engine, top_k=args.rag_top_k, show_progress=False)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    lengths = parse_lengths(args.lengths)
    samples = [
        (length, s)
        for length in lengths
        for s in build_samples(args.task, engine.loaded.tokenizer, length, args.n, args.data, args.seed)
    ]
    with open(args.out / "samples.jsonl", "w", encoding="utf-8") as log:
        for length, sample in tqdm(samples, desc="samples"):
            started = time.perf_counter()
            bank = engine.ingest(sample.context)
            ingest = time.perf_counter() - started
            answer = engine.ask(sample.question, bank)
            passed = sorted(set().union(*answer.candidates)) if answer.candidates else list(range(len(bank)))
            first = answer.candidates[0] if answer.candidates else list(range(len(bank)))

            def spans(picks: list[int], bank=bank) -> list[tuple[int, int]]:
                return [(bank.spans[i].char_start, bank.spans[i].char_end) for i in picks]

            row: dict[str, Any] = {
                "task": args.task,
                "target_tokens": length,
                "sample": sample.sample_id,
                "blocks": len(bank),
                "candidates": len(passed),
                "evidence_in_candidates": _covered(spans(passed), sample.evidence),
                "evidence_in_first_ranking": _covered(spans(first), sample.evidence),
                "evidence_read": _covered(spans([b.index for b in answer.blocks]), sample.evidence),
                "sub_em": sub_em(answer.text, sample.answers),
                "answer": answer.text,
                "timings": {k: round(v, 4) for k, v in answer.timings.items()},
                "ingest_seconds": round(ingest, 3),
            }
            if full is not None:
                other = full.ask(sample.question, bank)
                row["full_scan"] = {
                    "sub_em": sub_em(other.text, sample.answers),
                    "answer": other.text,
                    "evidence_read": _covered(spans([b.index for b in other.blocks]), sample.evidence),
                    "timings": {k: round(v, 4) for k, v in other.timings.items()},
                }
            if text is not None:
                other = text.ask(sample.question, bank)
                row["text_read"] = {
                    "answer": other.text,
                    "same_answer": other.text == answer.text,
                    "sub_em": sub_em(other.text, sample.answers),
                    "updates": len(other.blocks),
                    "reason_seconds": round(other.timings["reason"], 4),
                    "reasoner_prompt_tokens": other.token_counts["reasoner_prompt_tokens"],
                }
                row["kv_read"] = {
                    "updates": len(answer.blocks),
                    "reason_seconds": round(answer.timings["reason"], 4),
                    "reasoner_prompt_tokens": answer.token_counts["reasoner_prompt_tokens"],
                }
            if rag is not None:
                index = rag.build([sample.context])
                retrieved = rag.retrieve(sample.question, index)
                row["rag"] = {
                    "top_k": args.rag_top_k,
                    "tokens": args.rag_top_k * rag.chunk_tokens,
                    "evidence_retrieved": _covered([(b.char_start, b.char_end) for b in retrieved], sample.evidence),
                }
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
    summary = summarize(rows)
    reads = [r for r in rows if "text_read" in r]
    if reads:
        same = sum(r["text_read"]["same_answer"] for r in reads)
        kv = sum(r["kv_read"]["reason_seconds"] for r in reads) / max(1, sum(r["kv_read"]["updates"] for r in reads))
        txt = sum(r["text_read"]["reason_seconds"] for r in reads) / max(
            1, sum(r["text_read"]["updates"] for r in reads)
        )
        summary += (
            f"\nKV read vs text read on the same banks: identical answers {same}/{len(reads)}; seconds per memory "
            f"update {kv:.2f} (KV) vs {txt:.2f} (text), {txt / kv:.2f}x\n"
        )
    (args.out / "summary.md").write_text(summary, encoding="utf-8")
    print(summary)


def summarize(rows: list[dict[str, Any]]) -> str:
    def pct(values: list[bool]) -> str:
        return f"{100 * sum(values) / len(values):.1f}" if values else "-"

    def mean(values: list[float]) -> str:
        return f"{sum(values) / len(values):.2f}" if values else "-"

    lines = [
        "| task | tokens | n | blocks | candidates | evidence in candidates % | all evidence in candidates % | "
        "sub_em % | full scan sub_em % | evidence read % | full scan evidence read % | prefilter s | gate s | "
        "query s | full scan query s | RAG evidence % (tokens) |",
        "|" + "---|" * 16,
    ]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["target_tokens"]), []).append(row)
    for (task, length), group in sorted(groups.items()):
        evidence = [hit for r in group for hit in r["evidence_in_candidates"]]
        complete = [all(r["evidence_in_candidates"]) for r in group]
        read = [hit for r in group for hit in r["evidence_read"]]
        full = [r["full_scan"] for r in group if "full_scan" in r]
        rag = [r["rag"] for r in group if "rag" in r]
        lines.append(
            "| "
            + " | ".join(
                [
                    task,
                    f"{length:,}",
                    str(len(group)),
                    mean([r["blocks"] for r in group]),
                    mean([r["candidates"] for r in group]),
                    pct(evidence),
                    pct(complete),
                    pct([r["sub_em"] for r in group]),
                    pct([f["sub_em"] for f in full]),
                    pct(read),
                    pct([hit for f in full for hit in f["evidence_read"]]),
                    mean([r["timings"].get("prefilter", 0.0) for r in group]),
                    mean([r["timings"]["gate"] for r in group]),
                    mean([r["timings"]["query"] for r in group]),
                    mean([f["timings"]["query"] for f in full]),
                    f"{pct([hit for g in rag for hit in g['evidence_retrieved']])} ({rag[0]['tokens']})"
                    if rag
                    else "-",
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
