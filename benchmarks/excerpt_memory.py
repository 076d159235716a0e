"""What the excerpt memory keeps of the evidence when the gate reads the evidence blocks (no model forward).

For each sample the blocks holding its evidence (planted facts; HotpotQA's gold paragraphs) are read in document
order by ``working_memory.ExcerptMemory`` exactly as the scan would hand them over, with the engine's chunking and
tokenizer and the default budgets. Reported per task and length: the share of evidence spans the memory keeps a
sentence of (for a two-hop chain, fact 1 kept = the bridge entity kept), the share of samples whose gold answer is
in the final memory verbatim (what the answer can copy), and the memory's tokens. The gate is left out on purpose:
this isolates what the memory loses (the 135M notes kept the bridge 0 times in 12, brief section 13).

    python benchmarks/excerpt_memory.py --data ../shared/data --tasks needle needle-multikey needle-twohop ruler-hqa \
        --lengths 7k 28k --n 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=os.environ.get("LYCHEE_DATA_DIR"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=["needle", "needle-multikey", "needle-twohop", "ruler-hqa"])
    parser.add_argument("--lengths", nargs="+", default=["7k", "28k"])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from lychee_memory import LycheeMemory
    from lychee_memory.blocks import MemoryBank, SourceSpan
    from lychee_memory.documents import Document
    from lychee_memory.eval.metrics import normalize_answer
    from lychee_memory.eval.tasks import build_samples, parse_lengths
    from lychee_memory.gate import ScanState
    from lychee_memory.working_memory import ExcerptMemory

    engine = LycheeMemory.from_pretrained(args.model, show_progress=False)
    strategy = ExcerptMemory.from_settings(engine.config.reasoner)
    lengths = parse_lengths(",".join(args.lengths))
    print(
        f"budgets: {strategy.read_tokens} tokens per read, {strategy.total_tokens} in all; chunk {engine.chunk_tokens}"
    )
    print("\n| task | length | n | evidence kept | answer in memory | memory tokens |\n|---|---|---|---|---|---|")
    for task in args.tasks:
        for length in lengths:
            samples = build_samples(task, engine.loaded.tokenizer, length, args.n, args.data, args.seed)
            kept_shares, answered, sizes = [], [], []
            for sample in samples:
                document = Document.from_text(sample.context)
                chunks = engine.chunk([document])
                spans = [
                    SourceSpan(c.document_id, 0, c.char_start, c.char_end, c.token_start, c.token_end, c.text)
                    for c in chunks
                ]
                bank = MemoryBank([document], spans, [0] * len(spans), engine.identity)
                blocks = sorted(
                    {
                        i
                        for start, _ in sample.evidence
                        for i, s in enumerate(spans)
                        if s.char_start <= start < s.char_end
                    }
                )
                state = ScanState(sample.question, engine.config.prompts.initial_memory)

                class Reading:  # what the strategy reads of the reasoner: its prompt builder, to count tokens
                    prompts = engine.prompts

                for index in blocks:
                    (state.memory,) = strategy.update(Reading(), bank, [(state, index)])  # type: ignore[arg-type]
                covered = [
                    any(min(end, e.char_end) - max(start, e.char_start) > 0 for e in state.excerpts)
                    for start, end in sample.evidence
                ]
                kept_shares.append(sum(covered) / len(covered) if covered else 0.0)
                memory = normalize_answer(state.memory)
                answered.append(any(normalize_answer(answer) in memory for answer in sample.answers if answer))
                sizes.append(len(engine.prompts.encode_text(state.memory)))
            print(
                f"| {task} | {length // 1000}K | {len(samples)} | {statistics.mean(kept_shares):.2f} | "
                f"{sum(answered)}/{len(samples)} | {statistics.mean(sizes):.0f} |",
                flush=True,
            )
    print(json.dumps({"seed": args.seed, "n": args.n}))


if __name__ == "__main__":
    main()
