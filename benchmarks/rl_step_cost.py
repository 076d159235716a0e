"""Cost of one GRPO step on the embedded default at ~7K tokens: rollout vs update, peak memory (issue 15 WIP).

OMP_NUM_THREADS=2 python benchmarks/rl_step_cost.py
"""

import json
import resource
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from lychee_memory import Document, LycheeMemory
from lychee_memory.eval.haystack import generated_paragraphs
from lychee_memory.eval.tasks import needle_samples
from lychee_memory.training.rl import LossSettings, RLExample, RLSettings, RLTrainer

engine = LycheeMemory.from_pretrained(show_progress=False)
samples = needle_samples("needle", generated_paragraphs(), engine.loaded.tokenizer, 7000, 2, seed=0)
examples = [RLExample(s.question, list(s.answers), [Document(text=s.context, id=s.sample_id)]) for s in samples]
trainer = RLTrainer(engine, examples, RLSettings(group=4, learning_rate=1e-5, loss=LossSettings(minibatch=2)))
started = time.perf_counter()
trainer.bank(0)
trainer.bank(1)
print("banks", round(time.perf_counter() - started, 1), "s", flush=True)
rows = []
for step in range(1):
    stats = trainer.step(step)
    stats["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()}), flush=True)
