"""Two-hop needles in one shared haystack: ten chains (a person's employer, then that employer's city) planted in
one generated document, five stating the person first and five the company first, one question per chain
(``eval.tasks.many_twohop_sample``). One ingest answers all ten, so a 112K length costs one ingest, not ten.

Every question is asked of the embedded default, MiniLM RAG and hybrid RAG (top 4 of 256-token chunks) in one
process, the order rotated per question; ``--memagent N`` then runs MemAgent on the first N. Per question and
method: right (sub_em), how many of the chain's two facts were read (blocks read, or chunks retrieved) and, for
the default, how many reached the answer (its excerpts), blocks read, warm seconds.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/twohop_shared.py --tokens 112000 --store /tmp/twohop112k \\
        --records /tmp/twohop112k/records.jsonl
    python benchmarks/twohop_shared.py --report /tmp/twohop112k/records.jsonl

The bank is kept in ``--store``/store (bank ``twohop``; the text beside it), so a second run asks without ingesting again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from codec_answers import answer_outcome, rotated

from lychee_memory.eval.bench import stream_rag
from lychee_memory.eval.rag import RagBaseline

BANK = "twohop"
RAGS = {"rag": "dense", "hybrid-rag": "hybrid"}


def overlapping(spans: list[tuple[int, int]], pieces: list[tuple[int, int]]) -> int:
    """How many of ``spans`` overlap at least one of ``pieces`` (character ranges of one document)."""
    return sum(any(start < end_ and start_ < end for start_, end_ in pieces) for start, end in spans)


def ask(asker, bank, sample, context: str) -> dict:
    load = os.getloadavg()[0]
    started = time.perf_counter()
    if isinstance(asker, RagBaseline):
        answer, _, _ = stream_rag(asker, sample.question, bank)
        read = [(b.char_start, b.char_end) for b in answer.blocks]
        reached = overlapping(sample.evidence, read)  # what it retrieved is what reached the answer
        blocks = [b.index for b in answer.blocks]
    else:
        stream = asker.stream(sample.question, bank)
        for _ in stream:
            pass
        answer = stream.answer
        read = [(bank.spans[b.index].char_start, bank.spans[b.index].char_end) for b in answer.blocks]
        reached = overlapping(sample.evidence, [(e.char_start, e.char_end) for e in answer.evidence])
        blocks = [b.index for b in answer.blocks]
    seconds = time.perf_counter() - started
    return {
        **answer_outcome(sample, answer.text, context),
        "facts_read": overlapping(sample.evidence, read),
        "facts_reached_answer": reached,
        "blocks_read": blocks,
        "query_s": round(seconds, 3),
        "load_1min": round(load, 2),
    }


def run(args: argparse.Namespace) -> None:
    from lychee_memory.baselines import MemAgent
    from lychee_memory.engine import LycheeMemory
    from lychee_memory.errors import BankNotFoundError
    from lychee_memory.eval.haystack import generated_paragraphs
    from lychee_memory.eval.tasks import many_twohop_sample
    from lychee_memory.store import MemoryStore

    engine = LycheeMemory.from_pretrained(args.model, show_progress=False)
    pool = generated_paragraphs(count=max(1500, round(1500 * args.tokens / 28_000)))
    samples = many_twohop_sample(pool, engine.loaded.tokenizer, args.tokens, args.chains, args.seed)
    context = samples[0].context
    args.store.mkdir(parents=True, exist_ok=True)
    saved = args.store / "context.txt"
    if saved.exists() and saved.read_text(encoding="utf-8") != context:
        raise SystemExit(f"{args.store} holds another haystack; give a new --store")
    saved.write_text(context, encoding="utf-8")
    store = MemoryStore(args.store / "store")
    try:
        bank = engine.open_bank(BANK, store)
        print(f"bank {BANK}: {bank.num_tokens:,} tokens, stored before", flush=True)
    except BankNotFoundError:
        started = time.perf_counter()
        bank = engine.ingest([context], store=store, bank=BANK)
        print(f"bank {BANK}: {bank.num_tokens:,} tokens ingested in {time.perf_counter() - started:.0f} s", flush=True)
    askers: dict = {"default": engine}
    banks: dict = {"default": bank}
    for name, kind in RAGS.items():
        askers[name] = RagBaseline(engine, retrieval=kind, show_progress=False)
        banks[name] = askers[name].build([context])
    for name in askers:  # warm-up: caches, term counts, index
        askers[name].ask("Where is the harbour?", banks[name])
    chosen = samples[: args.questions or None]
    for turn, sample in enumerate(chosen):
        for position, name in enumerate(rotated(list(askers), turn)):
            record = ask(askers[name], banks[name], sample, context)
            record.update(method=name, position=position, tokens=bank.num_tokens)
            with args.records.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            print(
                f"{name:10s} {sample.sample_id}: right={record['right']} facts read={record['facts_read']} "
                f"reached={record['facts_reached_answer']} {record['query_s']:.1f}s {record['answer'][:60]!r}",
                flush=True,
            )
    store.close()
    for sample in chosen[: args.memagent]:
        started = time.perf_counter()
        answer = MemAgent(engine).ask(sample.question, [context])
        record = {
            **answer_outcome(sample, answer.text, context),
            "facts_read": 2,
            "facts_reached_answer": None,
            "blocks_read": list(range(len(answer.blocks))),
            "query_s": round(time.perf_counter() - started, 3),
            "load_1min": round(os.getloadavg()[0], 2),
            "method": "memagent",
            "position": 0,
            "tokens": bank.num_tokens,
        }
        with args.records.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"memagent   {sample.sample_id}: right={record['right']} {record['query_s']:.1f}s", flush=True)


def report(path: Path) -> str:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = [
        "| tokens | method | n | right | person first | company first | both facts read | both reached the answer "
        "| copying failures | warm s (median) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[int, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["tokens"], record["method"]), []).append(record)
    for (tokens, method), rows in sorted(groups.items()):
        first = [r for r in rows if "person-first" in r["sample"]]
        second = [r for r in rows if "company-first" in r["sample"]]
        reached = [r["facts_reached_answer"] for r in rows if r["facts_reached_answer"] is not None]
        lines.append(
            f"| {tokens:,} | {method} | {len(rows)} | {sum(r['right'] for r in rows)} "
            f"| {sum(r['right'] for r in first)}/{len(first)} | {sum(r['right'] for r in second)}/{len(second)} "
            f"| {sum(r['facts_read'] == 2 for r in rows)} | {sum(n == 2 for n in reached) if reached else '-'} "
            f"| {sum(r['copying_failure'] for r in rows)} | {statistics.median(r['query_s'] for r in rows):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=112_000)
    parser.add_argument("--chains", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--questions", type=int, default=0, help="ask only the first N chains' questions")
    parser.add_argument("--memagent", type=int, default=0, help="MemAgent also asks the first N questions, last")
    parser.add_argument("--store", type=Path, help="where the bank is kept (required to run)")
    parser.add_argument("--records", type=Path, default=Path("twohop_shared.jsonl"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--report", type=Path, help="print the table of these records and stop")
    args = parser.parse_args()
    if args.report:
        print(report(args.report))
        return
    if args.store is None:
        parser.error("--store DIR is required to run (the bank is kept there)")
    run(args)


if __name__ == "__main__":
    main()
