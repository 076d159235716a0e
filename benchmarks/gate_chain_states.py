"""How each gate rule judges the states of chains: hop 2 before and after hop 1's note is in memory.

Rebuilds a `lychee train gate` run's held-out states (its blocks are in the run's store, so nothing is compressed
again), keeps those of chained examples (two-hop needles, HotpotQA bridge questions with a clear hop order), and
scores them with the trained gate (the run's gate.safetensors, at its calibrated threshold), query likelihood and
the prompt rule at the thresholds the run calibrated (summary.json).

    python benchmarks/gate_chain_states.py runs/gate
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="output directory of lychee train gate")
    args = parser.parse_args()

    from safetensors.torch import load_file

    from lychee_memory.gate import PromptRule
    from lychee_memory.training.gate import GateTrainer, GateTrainingConfig

    config = GateTrainingConfig(**json.loads((args.run / "config.json").read_text()))
    summary = json.loads((args.run / "summary.json").read_text())
    trainer = GateTrainer(config, args.run, show_progress=False)
    trainer.adapter.load_tensors(load_file(str(args.run / "gate.safetensors")), "gate.safetensors")
    chained = {e.key for e in trainer.examples if e.chain and e.split == "heldout"}
    states = [s for s in trainer.states["heldout"] if s.example in chained]
    prompt_rule = PromptRule(trainer.loaded.tokenizer)
    prompt_rule.opening = trainer.engine.opening
    rules = {"trained": trainer.rule, "query_likelihood": trainer.engine.rule, "prompt": prompt_rule}
    initial = trainer.initial
    print(f"{len(states)} held-out states of {len(chained)} chained examples")
    print("| rule | threshold | hop 1 first: passed | hop 2 after hop 1's note: passed | other blocks: passed |")
    print("|---|---|---|---|---|")
    results = {}
    for name, rule in rules.items():
        threshold = summary["comparison"][name]["threshold"]
        scores = trainer.score_states(rule, states, "heldout")
        groups = {"first": [], "after": [], "other": []}
        for state, score in zip(states, scores):
            key = "other" if not state.relevant else ("first" if state.memory == initial else "after")
            groups[key].append(score >= threshold)
        results[name] = {key: [sum(values), len(values)] for key, values in groups.items()}
        cells = " | ".join(f"{sum(v)} / {len(v)}" for v in groups.values())
        print(f"| {name} | {threshold:.3f} | {cells} |", flush=True)
    (args.run / "chain_states.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
