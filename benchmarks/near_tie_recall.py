"""Does capping stage 1's near-ties (``gate.max_near_ties``) lose the needle's block? The first stage-1 ranking of
generated single-needle haystacks, recorded so any cap can be evaluated offline.

Per sample: the bank is ingested in memory with the default engine (SmolLM2), every block is ranked by stage 1
under the initial memory, and the record holds the number of blocks, the fact's block's rank, and how many blocks
fall within ``gate.candidate_margin`` of the best beyond ``gate.candidates`` (the near-ties). A cap c keeps the fact's
block when its rank is at most candidates + c and it is a candidate at all.

    OMP_NUM_THREADS=1 python benchmarks/near_tie_recall.py --lengths 7k,14k,28k --n 4,2,1 --seed 0 --out a.jsonl

Prints one JSON line per sample and a summary per cap.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

CAPS = (0, 1, 2, 4, 6, 8, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="7k,14k,28k")
    parser.add_argument("--n", default="4,2,1", help="samples per length (comma list, one per length)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--needles", type=int, default=1, help="distinct needles per haystack, each asked (one ingest)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from lychee_memory import LycheeMemory
    from lychee_memory.eval.haystack import generated_paragraphs
    from lychee_memory.eval.needles import distinct_needles
    from lychee_memory.eval.tasks import QASample, TokenCounter, haystack_with_facts, needle_samples, parse_lengths
    from lychee_memory.gate import choose_candidates

    engine = LycheeMemory.from_pretrained()
    gate = engine.config.gate
    pool = generated_paragraphs(count=1500)
    records = []
    banks: dict[str, object] = {}
    ingest = 0.0

    def samples(length: int, n: int) -> list:
        """n haystacks at ``length``, each with ``--needles`` distinct needles: one sample per needle."""
        if args.needles == 1:
            return needle_samples("needle", pool, engine.loaded.tokenizer, length, n, seed=args.seed)
        found = []
        for index in range(n):
            rng = random.Random(f"needles-{args.seed}-{index}-{length}")
            needles = distinct_needles(rng, args.needles)
            facts = [fact for fact, _, _ in needles]
            context, spans = haystack_with_facts(pool, TokenCounter(engine.loaded.tokenizer), length, facts, rng)
            for (_fact, question, answer), span in zip(needles, spans):
                found.append(QASample(question, [answer], context, f"needles-{index}-{length // 1000}k", [span]))
        return found

    for length, n in zip(parse_lengths(args.lengths), [int(part) for part in args.n.split(",")]):
        for sample in samples(length, n):
            if sample.context not in banks:
                started = time.perf_counter()
                banks.clear()
                banks[sample.context] = engine.ingest(sample.context, show_progress=False)
                ingest = time.perf_counter() - started
            bank = banks[sample.context]
            scorer = engine.prefilter_for(bank)
            scores, missing = scorer.rank(bank, sample.question, engine.config.prompts.initial_memory, range(len(bank)))
            ((start, end),) = sample.evidence
            fact = [i for i, s in enumerate(bank.spans) if s.char_start < end and start < s.char_end]
            ranked = sorted(scores, key=lambda i: (-scores[i], i))
            uncapped = choose_candidates(scores, gate.candidates, gate.candidate_margin)
            record = {
                "sample": sample.sample_id,
                "seed": args.seed,
                "blocks": len(bank),
                "tokens": bank.num_tokens,
                "fact_blocks": fact,
                "fact_rank": min(ranked.index(i) + 1 for i in fact),
                "candidates_uncapped": len(uncapped),
                "near_ties": len(uncapped) - gate.candidates,
                "kept": {
                    str(cap): any(
                        i in choose_candidates(scores, gate.candidates, gate.candidate_margin, cap) for i in fact
                    )
                    for cap in CAPS
                },
                "ingest_s": round(ingest, 1),
            }
            records.append(record)
            print(json.dumps(record), flush=True)
            with args.out.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
    for cap in CAPS:
        kept = sum(record["kept"][str(cap)] for record in records)
        print(f"cap {cap}: fact's block kept {kept} / {len(records)}")


if __name__ == "__main__":
    main()
