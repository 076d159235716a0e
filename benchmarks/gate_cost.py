"""Seconds per block of each gate rule: every block of one generated haystack scored in the scan's batches.

    python benchmarks/gate_cost.py --tokens 16000 --rules query_likelihood trained prompt

Query likelihood also scores its block-free baseline (one row per question and memory); the trained and prompt
rules need none. Run it on a quiet machine: it times forwards.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=16000)
    parser.add_argument("--rules", nargs="+", default=["query_likelihood", "trained", "prompt"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    from lychee_memory import LycheeMemory
    from lychee_memory.config import EngineConfig
    from lychee_memory.eval.tasks import build_samples
    from lychee_memory.gate import ScoreRequest

    base = LycheeMemory.from_pretrained(args.model, show_progress=False)
    sample = build_samples("needle", base.loaded.tokenizer, args.tokens, 1)[0]
    bank = base.ingest(sample.context)
    memory = "Security note: the access code for the quiet archive is 77120."
    print(f"{len(bank)} blocks of {bank.num_tokens} tokens; batches of {base.config.gate.batch_size}")
    print("| rule | rows | seconds per block (median of repeats) |\n|---|---|---|")
    for rule_name in args.rules:
        engine = LycheeMemory(base.loaded, EngineConfig.from_kwargs(spec=args.model, gate=rule_name))
        rule, size = engine.rule, engine.config.gate.batch_size
        requests = [ScoreRequest(sample.question, memory, bank.block(i)) for i in range(len(bank))]
        if rule.uses_block_free_baseline:
            requests.append(ScoreRequest(sample.question, memory, None))
        timings = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            with torch.inference_mode():
                for start in range(0, len(requests), size):
                    rule.score(engine.loaded, engine.prompts, requests[start : start + size])
            timings.append((time.perf_counter() - started) / len(bank))
        timings.sort()
        print(f"| {rule_name} | {len(requests)} | {timings[len(timings) // 2]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
