"""Does stage 1 of the gate keep what the full scan finds? Recall of the key prefilter, side by side.

Each sample is ingested once; the same bank is then asked with the default gate (key prefilter, then the rule
on the candidates) and, with --full-scan, with the prefilter off (the rule judges every block, as before). Per
sample it records whether the evidence blocks were among the candidates (over every ranking, so a two-hop fact
found after the first memory update counts), whether the answers match and what each phase cost. For ruler-hqa,
--rag-top-k also retrieves MiniLM top-k 256-token chunks, for recall at a comparable number of tokens.

--scorers compares stage-1 scorers (``gate.prefilter`` names) on the same bank: each ranks every block for the
question (the first ranking, before any read), and the recall of the evidence in its best C blocks (--at, C blocks
of chunk_tokens each) is set beside MiniLM and hybrid (BM25 + MiniLM, reciprocal rank) RAG top-k over 256-token
chunks at the same tokens (k = C * chunk_tokens / 256). --no-ask skips the engine's own answer (stage 1 only).

    python benchmarks/prefilter_recall.py --task needle --lengths 7k,14k,28k --n 20 --full-scan
    python benchmarks/prefilter_recall.py --task ruler-hqa --lengths 28k --n 20 --data ../shared/data --rag-top-k 16
    python benchmarks/prefilter_recall.py --task ruler-hqa --lengths 28k --n 20 --data ../shared/data --no-ask \
        --scorers keys,lexical,hybrid,hybrid_sum --at 2,4,8

--shared (ruler-hqa, with --no-ask) puts many questions in one haystack: consecutive HotpotQA questions' own
paragraphs (gold and distractors) are shuffled together, up to the length, topped up with SQuAD paragraphs; one
ingest then serves every question in it (n questions, as many haystacks as they need).

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
    parser.add_argument("--scorers", default="", help="stage-1 scorers to compare on each bank (comma list)")
    parser.add_argument("--at", default="4", help="candidate counts (blocks) for --scorers' recall (comma list)")
    parser.add_argument("--chunk-tokens", type=int, default=None, help="block size (default: the engine's)")
    parser.add_argument("--no-ask", action="store_true", help="skip the engine's own answer (with --scorers)")
    parser.add_argument("--shared", action="store_true", help="ruler-hqa: many questions per haystack (--no-ask)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prefilter"))
    args = parser.parse_args()
    scorer_names = [name for name in args.scorers.split(",") if name]
    counts = sorted({int(count) for count in args.at.split(",") if count})
    if args.no_ask and not scorer_names:
        parser.error("--no-ask needs --scorers")
    if args.shared and (args.task != "ruler-hqa" or not args.no_ask or not args.data):
        parser.error("--shared needs --task ruler-hqa, --data and --no-ask")

    from tqdm import tqdm

    from lychee_memory import LycheeMemory
    from lychee_memory.eval.metrics import sub_em
    from lychee_memory.eval.tasks import build_samples, parse_lengths

    options: dict[str, Any] = {"show_progress": False}
    if args.candidates is not None:
        options["candidates"] = args.candidates
    if args.chunk_tokens is not None:
        options["chunk_tokens"] = args.chunk_tokens
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
    rankers = {name: _with_prefilter(engine, name) for name in scorer_names}
    fused_rag = dense_rag = None
    if scorer_names:
        from lychee_memory.eval.rag import RagBaseline

        deepest = max(1, max(counts) * engine.chunk_tokens // RAG_CHUNK_TOKENS)
        fused_rag = RagBaseline(engine, top_k=deepest, show_progress=False, retrieval="hybrid")
        dense_rag = RagBaseline(engine, top_k=deepest, show_progress=False)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    lengths = parse_lengths(args.lengths)
    if args.shared:
        samples = [
            (length, s)
            for length in lengths
            for s in shared_samples(Path(args.data), engine.loaded.tokenizer, length, args.n, args.seed)
        ]
    else:
        samples = [
            (length, s)
            for length in lengths
            for s in build_samples(args.task, engine.loaded.tokenizer, length, args.n, args.data, args.seed)
        ]
    banks: dict[str, tuple[Any, float]] = {}
    with open(args.out / "samples.jsonl", "w", encoding="utf-8") as log:
        for length, sample in tqdm(samples, desc="samples"):
            if sample.context not in banks:
                banks.clear()  # one haystack at a time
                started = time.perf_counter()
                banks[sample.context] = (engine.ingest(sample.context), time.perf_counter() - started)
            bank, ingest = banks[sample.context]

            def spans(picks: list[int], bank=bank) -> list[tuple[int, int]]:
                return [(bank.spans[i].char_start, bank.spans[i].char_end) for i in picks]

            row: dict[str, Any] = {
                "task": args.task,
                "target_tokens": length,
                "sample": sample.sample_id,
                "blocks": len(bank),
                "chunk_tokens": engine.chunk_tokens,
                "ingest_seconds": round(ingest, 3),
            }
            if scorer_names:
                row["stage1"] = _stage_one(rankers, bank, sample, counts, spans)
                assert fused_rag is not None and dense_rag is not None
                row["stage1"].update(_rag_recall(fused_rag, dense_rag, sample, counts, engine.chunk_tokens))
            if args.no_ask:
                rows.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                continue
            answer = engine.ask(sample.question, bank)
            passed = sorted(set().union(*answer.candidates)) if answer.candidates else list(range(len(bank)))
            first = answer.candidates[0] if answer.candidates else list(range(len(bank)))

            row.update(
                {
                    "candidates": len(passed),
                    "evidence_in_candidates": _covered(spans(passed), sample.evidence),
                    "evidence_in_first_ranking": _covered(spans(first), sample.evidence),
                    "evidence_read": _covered(spans([b.index for b in answer.blocks]), sample.evidence),
                    "sub_em": sub_em(answer.text, sample.answers),
                    "answer": answer.text,
                    "timings": {k: round(v, 4) for k, v in answer.timings.items()},
                }
            )
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
    asked = [row for row in rows if "timings" in row]
    summary = summarize(asked) if asked else ""
    if scorer_names:
        summary += "\n" + summarize_stage_one(rows, scorer_names, counts)
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


RAG_CHUNK_TOKENS = 256  # the RAG baselines' chunk size (their default)


def shared_samples(directory: Path, tokenizer: Any, target_tokens: int, n: int, seed: int) -> list[Any]:
    """The first ``n`` HotpotQA questions, consecutive ones sharing a haystack of ``target_tokens``: their own
    paragraphs shuffled together, topped up with SQuAD paragraphs; each sample's evidence is its gold paragraphs."""
    import random

    from lychee_memory.eval.tasks import (
        QASample,
        TokenCounter,
        draw_paragraphs,
        hotpot_paragraphs,
        join_paragraphs,
        load_hotpot,
        load_squad_paragraphs,
    )

    rows = load_hotpot(directory)[:n]
    count = TokenCounter(tokenizer)
    groups: list[list[dict]] = [[]]
    used = 0
    for row in rows:
        tokens = sum(count(*p) for p in hotpot_paragraphs(row))
        if groups[-1] and used + tokens > target_tokens:
            groups.append([])
            used = 0
        groups[-1].append(row)
        used += tokens
    samples = []
    squad = load_squad_paragraphs(directory)
    for number, group in enumerate(groups):
        rng = random.Random(seed + number)
        paragraphs = list(dict.fromkeys(p for row in group for p in hotpot_paragraphs(row)))
        titles = {title for title, _ in paragraphs}
        start = sum(count(*p) for p in paragraphs)
        paragraphs += draw_paragraphs(
            squad, count, target_tokens, rng, start_tokens=start, keep=lambda p, titles=titles: p[0] not in titles
        )
        rng.shuffle(paragraphs)
        for row in group:
            gold = set(row["supporting_facts"]["title"])
            own = dict(hotpot_paragraphs(row))
            marked = {i for i, (title, text) in enumerate(paragraphs) if title in gold and own.get(title) == text}
            context, spans = join_paragraphs(paragraphs, marked)
            index = rows.index(row)
            samples.append(QASample(row["question"], [row["answer"]], context, f"hotpot-{index}-shared{number}", spans))
    return samples


def _with_prefilter(engine: Any, name: str) -> Any:
    """An engine over the same loaded model whose stage 1 is scorer ``name`` (it only ranks the bank given)."""
    from lychee_memory import LycheeMemory

    gate = engine.config.gate.model_copy(update={"prefilter": name})
    return LycheeMemory(engine.loaded, engine.config.model_copy(update={"gate": gate}))


def _stage_one(rankers: dict[str, Any], bank: Any, sample: Any, counts: list[int], spans: Any) -> dict[str, Any]:
    """Per scorer: evidence covered by its best C blocks (first ranking: the question alone) and seconds; and,
    for each evidence span taken as the memory (an excerpt memory after reading hop 1), whether the other
    evidence is in the best C of the blocks that do not hold the first (the ranking after a read).

    A fused scorer's ranking is its ``fuse`` of the key and lexical scores computed for the same call (what its
    ``rank`` does, tests/test_stage1_scorers.py), so the key forward runs once per (question, memory)."""
    from lychee_memory.gate import HybridScorer

    cache: dict[tuple[str, str, tuple[int, ...]], tuple[dict[int, float], list[int], float]] = {}

    def scored(name: str, memory: str, indices: list[int]) -> tuple[dict[int, float], list[int], float]:
        key = (name, memory, tuple(indices))
        if key not in cache:
            scorer = rankers[name].prefilter_for(bank)
            if isinstance(scorer, HybridScorer) and scorer.keys is not None and {"keys", "lexical"} <= set(rankers):
                keys, missing, key_seconds = scored("keys", memory, indices)
                lexical, _, lexical_seconds = scored("lexical", memory, indices)
                started = time.perf_counter()
                fused = scorer.fuse(keys, {index: lexical[index] for index in keys})
                cache[key] = (fused, missing, key_seconds + lexical_seconds + time.perf_counter() - started)
            else:
                started = time.perf_counter()
                scores, missing = scorer.rank(bank, sample.question, memory, indices)
                cache[key] = (scores, missing, time.perf_counter() - started)
        return cache[key]

    def ranked(name: str, memory: str, indices: list[int]) -> tuple[list[int], float]:
        scores, missing, seconds = scored(name, memory, indices)
        return sorted(missing) + sorted(scores, key=lambda index: (-scores[index], index)), seconds

    found: dict[str, Any] = {}
    for name, ranker in rankers.items():
        order, seconds = ranked(name, ranker.config.prompts.initial_memory, list(range(len(bank))))
        after: dict[str, list[bool]] = {str(count): [] for count in counts}
        if len(sample.evidence) == 2:
            for first, second in (sample.evidence, sample.evidence[::-1]):
                holding = {i for i in range(len(bank)) if _covered(spans([i]), [first])[0]}
                if holding & {i for i in range(len(bank)) if _covered(spans([i]), [second])[0]}:
                    continue  # both in one block: nothing left to find
                memory = sample.context[first[0] : first[1]]
                then, _ = ranked(name, memory, [i for i in range(len(bank)) if i not in holding])
                for count in counts:
                    after[str(count)].append(_covered(spans(then[:count]), [second])[0])
        found[name] = {
            "order": order[: max(counts)],
            "seconds": round(seconds, 4),
            "covered": {str(count): _covered(spans(order[:count]), sample.evidence) for count in counts},
            "second_after_first": after,
        }
    return found


_RAG_INDEX: dict[str, Any] = {}  # the current haystack's RAG index (a shared haystack serves many questions)


def _rag_recall(fused: Any, dense: Any, sample: Any, counts: list[int], chunk_tokens: int) -> dict[str, Any]:
    """MiniLM and hybrid RAG: evidence covered by their top-k 256-token chunks at each C's tokens."""
    if sample.context not in _RAG_INDEX:
        _RAG_INDEX.clear()
        _RAG_INDEX[sample.context] = fused.build([sample.context])
    index = _RAG_INDEX[sample.context]
    found: dict[str, Any] = {}
    for label, rag in (("minilm_rag", dense), ("hybrid_rag", fused)):
        started = time.perf_counter()
        retrieved = rag.retrieve(sample.question, index)  # best first
        seconds = time.perf_counter() - started
        found[label] = {
            "seconds": round(seconds, 4),
            "covered": {
                str(count): _covered(
                    [(b.char_start, b.char_end) for b in retrieved[: max(1, count * chunk_tokens // RAG_CHUNK_TOKENS)]],
                    sample.evidence,
                )
                for count in counts
            },
        }
    return found


def summarize_stage_one(rows: list[dict[str, Any]], names: list[str], counts: list[int]) -> str:
    """Evidence recall of each stage-1 scorer and both RAGs at each candidate count, at the same tokens."""
    methods = [*names, "minilm_rag", "hybrid_rag"]
    lines = [
        "Stage-1 recall: evidence (all evidence) in the best C blocks, % (first ranking, question only)",
        "",
        "| task | tokens | n | blocks | C | candidate tokens | " + " | ".join(methods) + " |",
        "|" + "---|" * (6 + len(methods)),
    ]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["target_tokens"]), []).append(row)
    for (task, length), group in sorted(groups.items()):
        for count in counts:
            cells = []
            for method in methods:
                hits = [r["stage1"][method]["covered"][str(count)] for r in group]
                flat = [hit for row_hits in hits for hit in row_hits]
                every = [all(row_hits) for row_hits in hits]
                cells.append(f"{100 * sum(flat) / len(flat):.0f} ({100 * sum(every) / len(every):.0f})")
            blocks = sum(r["blocks"] for r in group) / len(group)
            lines.append(
                f"| {task} | {length:,} | {len(group)} | {blocks:.1f} | {count} | {count * group[0]['chunk_tokens']:,} | "
                + " | ".join(cells)
                + " |"
            )
    lines += [
        "",
        "After a read: the other evidence in the best C remaining blocks, % (memory = one evidence span's text)",
        "",
        "| task | tokens | pairs | C | " + " | ".join(names) + " |",
        "|" + "---|" * (4 + len(names)),
    ]
    for (task, length), group in sorted(groups.items()):
        for count in counts:
            cells, pairs = [], 0
            for name in names:
                hits = [hit for r in group for hit in r["stage1"][name]["second_after_first"][str(count)]]
                pairs = len(hits)
                cells.append(f"{100 * sum(hits) / len(hits):.0f}" if hits else "-")
            lines.append(f"| {task} | {length:,} | {pairs} | {count} | " + " | ".join(cells) + " |")
    seconds = {m: [r["stage1"][m]["seconds"] for r in rows] for m in methods}
    lines.append("")
    lines.append(
        "Seconds per ranking (mean): "
        + ", ".join(f"{m} {sum(v) / len(v):.3f}" for m, v in seconds.items() if v)
        + " (RAG: retrieval only, index built before)"
    )
    return "\n".join(lines) + "\n"


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
