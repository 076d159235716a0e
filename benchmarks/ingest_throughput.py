"""Ingest throughput of a checkout: one generated 28K-token needle document ingested in memory 3 times after a
warm-up, on the embedded default. Prints one JSON line (seconds per run, best tokens per second).

To compare two versions side by side, run it from each checkout in turn on a quiet machine, e.g. an older commit
in a worktree: ``git worktree add /tmp/old COMMIT`` (link ``lychee_memory/kernels`` -> ``../kernels`` and
``lychee_memory/integrations`` -> ``../integrations`` there), then
``PYTHONPATH=/tmp/old python benchmarks/ingest_throughput.py old`` and ``python benchmarks/ingest_throughput.py new``.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    from lychee_memory import LycheeMemory
    from lychee_memory.eval.tasks import build_samples

    label = sys.argv[1] if len(sys.argv) > 1 else "this checkout"
    engine = LycheeMemory.from_pretrained(show_progress=False)
    sample = build_samples("needle", engine.loaded.tokenizer, 28000, 1, seed=5)[0]
    engine.ingest(sample.context[:4000])  # warm-up
    times = []
    for _ in range(3):
        started = time.perf_counter()
        bank = engine.ingest(sample.context)
        times.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "label": label,
                "tokens": bank.num_tokens,
                "seconds": [round(t, 2) for t in times],
                "best_tokens_per_s": round(bank.num_tokens / min(times), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
