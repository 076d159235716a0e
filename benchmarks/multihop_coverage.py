"""Do the blocks read cover both hops of real multi-hop questions? LycheeMemory's gates vs RAG at equal tokens.

RULER-HQA-style samples (eval.tasks.ruler_hqa_samples) of the HotpotQA questions the gate trainer held out
(training/gate_data.question_split), bridge and comparison counted apart. Each sample is compressed once; each
gate configuration answers over the same bank; RAG (MiniLM top-k over 256-token chunks) retrieves as many
tokens as that LycheeMemory run read. A gold paragraph is covered when its start lies in a block read.

    python benchmarks/multihop_coverage.py --data ../shared/data --lengths 28k --n 10 \
        --gates query_likelihood trained --gate-weights runs/gate/gate.safetensors

Prints a table per length and writes every sample's reads and answers to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def covered(spans, gold_starts) -> int:
    return sum(any(start <= gold < end for start, end in spans) for gold in gold_starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=os.environ.get("LYCHEE_DATA_DIR"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="28k")
    parser.add_argument("--n", type=int, default=10, help="held-out questions per length (bridge and comparison)")
    parser.add_argument("--gates", nargs="+", default=["query_likelihood"])
    parser.add_argument("--gate-weights", default=None, help="the trained gate file, for --gates trained")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "multihop_coverage.json")
    args = parser.parse_args()

    from lychee_memory import LycheeMemory
    from lychee_memory.config import EngineConfig
    from lychee_memory.eval.metrics import sub_em
    from lychee_memory.eval.rag import RagBaseline
    from lychee_memory.eval.tasks import load_hotpot, parse_lengths, ruler_hqa_samples
    from lychee_memory.training.gate_data import question_split

    base = LycheeMemory.from_pretrained(args.model, show_progress=False)
    engines = {}
    for gate in args.gates:
        options = {"gate": gate, "show_progress": False}
        if gate == "trained":
            options["gate_weights"] = args.gate_weights
        engines[gate] = LycheeMemory(base.loaded, EngineConfig.from_kwargs(spec=args.model, **options))
    rag = RagBaseline(base, show_progress=False)
    rows = load_hotpot(args.data)
    kinds = {row["question"]: row["type"] for row in rows}
    heldout = {row["question"] for row in rows if question_split(row["question"]) == "heldout"}
    results = []
    for length in parse_lengths(args.lengths):
        samples = [
            s for s in ruler_hqa_samples(args.data, base.loaded.tokenizer, length, None) if s.question in heldout
        ]
        samples = samples[: args.n]
        for number, sample in enumerate(samples, 1):
            started = time.perf_counter()
            bank = base.ingest(sample.context)
            gold = [start for start, _ in sample.evidence]
            rag_index = rag.build(sample.context)
            record = {"length": length, "question": sample.question, "type": kinds[sample.question], "gold": len(gold)}
            record["ingest_seconds"] = round(time.perf_counter() - started, 1)
            for gate, engine in engines.items():
                began = time.perf_counter()
                answer = engine.ask(sample.question, bank)
                spans = [(block.char_start, block.char_end) for block in answer.blocks]
                tokens = sum(len(bank.block(block.index).token_ids) for block in answer.blocks)
                record[gate] = {
                    "blocks_read": len(answer.blocks),
                    "tokens_read": tokens,
                    "covered": covered(spans, gold),
                    "rejudged": answer.token_counts.get("rejudged_blocks", 0),
                    "sub_em": sub_em(answer.text, sample.answers),
                    "seconds": round(time.perf_counter() - began, 1),
                }
                rag.top_k = max(1, round(tokens / rag.chunk_tokens))  # as many tokens as this run read
                retrieved = rag.retrieve(sample.question, rag_index)
                record[f"rag@{gate}"] = {
                    "chunks": len(retrieved),
                    "covered": covered([(b.char_start, b.char_end) for b in retrieved], gold),
                }
            results.append(record)
            print(json.dumps(record), flush=True)
            print(f"[{number}/{len(samples)} at {length}]", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for length in sorted({r["length"] for r in results}):
        print(f"\n{length} tokens | both gold paragraphs covered / questions (at least one)")
        print("| type | n | " + " | ".join(f"{g} | RAG at {g}'s tokens" for g in engines) + " |")
        print("|---|---|" + "---|---|" * len(engines))
        for kind in ("bridge", "comparison"):
            chosen = [r for r in results if r["length"] == length and r["type"] == kind]
            if not chosen:
                continue
            cells = []
            for gate in engines:
                for key in (gate, f"rag@{gate}"):
                    both = sum(r[key]["covered"] == r["gold"] for r in chosen)
                    one = sum(r[key]["covered"] > 0 for r in chosen)
                    cells.append(f"{both} ({one})")
            print(f"| {kind} | {len(chosen)} | " + " | ".join(cells) + " |")
        for gate in engines:
            chosen = [r for r in results if r["length"] == length]
            reads = sum(r[gate]["blocks_read"] for r in chosen) / len(chosen)
            right = sum(r[gate]["sub_em"] for r in chosen)
            print(f"{gate}: {reads:.2f} blocks read per question, {right}/{len(chosen)} answered (sub_em)")


if __name__ == "__main__":
    main()
