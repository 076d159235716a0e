"""Issue 28 item 2: today's notes (note decode, then answer decode) vs the answer row batched with the note
(kept when the scan reads nothing more), on the same banks, embedded default model (SmolLM2), needle tasks.

usage: OMP_NUM_THREADS=1 python benchmarks/one_decode.py OUT.jsonl --tasks needle,needle-multikey,needle-twohop
       --length 7000 --n 5 --seed 0
"""

import argparse
import json
import time

from lychee_memory import generation
from lychee_memory.eval.metrics import sub_em
from lychee_memory.eval.runner import MethodRunner
from lychee_memory.eval.tasks import build_samples
from lychee_memory.working_memory import GeneratedNotes

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--tasks", default="needle,needle-multikey,needle-twohop")
parser.add_argument("--length", type=int, default=7000)
parser.add_argument("--n", type=int, default=5)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

passes: list[int] = []
original = generation.DecodeStream.__init__


def counting(self, loaded, rows, *rest, **kwargs):
    passes.append(len(rows))
    original(self, loaded, rows, *rest, **kwargs)


generation.DecodeStream.__init__ = counting
runner = MethodRunner(None, {"show_progress": False})
engine = runner.engine
print("model", runner.loaded.resolved.spec, "memory", engine.memory_strategy.name, flush=True)
variants = {"today": GeneratedNotes(), "batched": GeneratedNotes(answer_with_note=True)}
with open(args.out, "a") as handle:
    for task in args.tasks.split(","):
        samples = build_samples(task, runner.loaded.tokenizer, args.length, args.n, None, args.seed)
        for position, sample in enumerate(samples):
            bank, ingest = runner.bank_for(engine, sample)
            order = list(variants) if position % 2 == 0 else list(variants)[::-1]
            record = {"task": task, "sample": sample.sample_id, "answers": sample.answers, "ingest_s": ingest}
            for name in order:
                engine.memory_strategy = variants[name]
                passes.clear()
                started = time.perf_counter()
                answer = engine.ask(sample.question, bank)
                record[name] = {
                    "text": answer.text,
                    "sub_em": sub_em(answer.text, sample.answers),
                    "seconds": time.perf_counter() - started,
                    "decode_passes": len(passes),
                    "rows": sum(passes),
                    "blocks_read": len(answer.blocks),
                    "answer_s": answer.timings.get("answer"),
                    "reason_s": answer.timings.get("reason"),
                }
            record["equal"] = record["today"]["text"] == record["batched"]["text"]
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            print(
                task,
                position,
                record["equal"],
                record["today"]["seconds"],
                record["batched"]["seconds"],
                record["today"]["decode_passes"],
                record["batched"]["decode_passes"],
                flush=True,
            )
