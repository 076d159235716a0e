"""Issue 28: one decode batch with finished rows kept (an older generation.py, e.g. the base commit's) vs dropped
(the installed one), on the rows ``GeneratedNotes(answer_with_note=True)`` decodes: the note row and the answer row
read after the same 7K-needle block. The two run alternately in one process, so machine load hits both alike;
every repetition checks both give the same token ids.

usage: OMP_NUM_THREADS=1 python benchmarks/decode_rows.py OLD_GENERATION_PY OUT.json --n 3 --reps 3 --seed 1
"""

import argparse
import importlib.util
import json
import statistics
import sys
import time

from lychee_memory import generation, reasoner
from lychee_memory.eval.runner import MethodRunner
from lychee_memory.eval.tasks import build_samples
from lychee_memory.working_memory import GeneratedNotes

parser = argparse.ArgumentParser()
parser.add_argument("old_generation")
parser.add_argument("out")
parser.add_argument("--task", default="needle")
parser.add_argument("--length", type=int, default=7000)
parser.add_argument("--n", type=int, default=3)
parser.add_argument("--reps", type=int, default=3)
parser.add_argument("--seed", type=int, default=1)
args = parser.parse_args()

spec = importlib.util.spec_from_file_location("lychee_memory.generation_rows_kept", args.old_generation)
kept = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = kept  # dataclasses look their module up there
spec.loader.exec_module(kept)

captured: list[tuple[list, object]] = []
original_generate = reasoner.generate


def capturing(loaded, rows, settings, *rest):
    if len(rows) == 2:
        captured.append((rows, settings))
    return original_generate(loaded, rows, settings, *rest)


reasoner.generate = capturing
runner = MethodRunner(None, {"show_progress": False})
engine = runner.engine
engine.memory_strategy = GeneratedNotes(answer_with_note=True)
records = []
for sample in build_samples(args.task, runner.loaded.tokenizer, args.length, args.n, None, args.seed):
    bank, _ = runner.bank_for(engine, sample)
    captured.clear()
    engine.ask(sample.question, bank)
    for batch, (rows, settings) in enumerate(captured):
        timings: dict[str, list[float]] = {"kept": [], "dropped": []}
        tokens: dict[str, list[list[int]]] = {}
        for rep in range(args.reps):
            order = [("kept", kept), ("dropped", generation)]
            for name, module in order if rep % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                results = module.generate(engine.loaded, rows, settings)
                timings[name].append(time.perf_counter() - started)
                tokens.setdefault(name, [result.token_ids for result in results])
                assert tokens[name] == [result.token_ids for result in results]
        record = {
            "sample": sample.sample_id,
            "batch": batch,
            "row_tokens": [len(ids) for ids in tokens["dropped"]],
            "same_tokens": tokens["kept"] == tokens["dropped"],
            "kept_s": timings["kept"],
            "dropped_s": timings["dropped"],
            "kept_median_s": statistics.median(timings["kept"]),
            "dropped_median_s": statistics.median(timings["dropped"]),
        }
        records.append(record)
        print(json.dumps(record), flush=True)
with open(args.out, "w") as handle:
    json.dump(records, handle, indent=1)
