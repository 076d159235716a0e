"""Held-out needle accuracy of the embedded default before and after `lychee train rl`, at 7K / 28K / 112K.

Each run answers the eval's own needle samples (``needle_samples``: another generator and paragraph pool than
the training needles, and every question checked absent from the run's training questions) with the default
engine and one reasoner adapter. Banks go into a store, so the second run reuses the first run's blocks (the
adapter never touches a block). A copying failure is a wrong answer although the gate read the fact's block.

    OMP_NUM_THREADS=1 python benchmarks/rl_heldout.py run --reasoner-weights none --out before.json
    OMP_NUM_THREADS=1 python benchmarks/rl_heldout.py run --reasoner-weights RUN/reasoner.safetensors --out after.json
    python benchmarks/rl_heldout.py compare before.json after.json --run RUN   # table, JSON and PNG in plots/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lychee_memory import Document, LycheeMemory
from lychee_memory.errors import BankNotFoundError, StoreError
from lychee_memory.eval.haystack import generated_paragraphs
from lychee_memory.eval.metrics import evidence_recall_precision, sub_em
from lychee_memory.eval.tasks import needle_samples
from lychee_memory.progress import progress_bar

PLOTS = Path(__file__).resolve().parent / "plots"


def run(args: argparse.Namespace) -> None:
    engine = LycheeMemory.from_pretrained(reasoner_weights=args.reasoner_weights, show_progress=False)
    lengths = [int(value) for value in args.lengths.split(",")]
    counts = [int(value) for value in args.n.split(",")]
    samples = [
        (length, sample)
        for length, count in zip(lengths, counts)
        for sample in needle_samples(
            "needle", generated_paragraphs(), engine.loaded.tokenizer, length, count, args.seed
        )
    ]
    rows = []
    bar = progress_bar(len(samples), f"needles ({args.reasoner_weights})", True, unit="question")
    for length, sample in samples:
        name = f"rl-heldout-{sample.sample_id}-s{args.seed}"
        started = time.perf_counter()
        try:
            bank = engine.open_bank(name, args.store)
        except (BankNotFoundError, StoreError):  # no store yet, or no such bank in it
            bank = engine.ingest([Document(sample.context, sample.sample_id)], store=args.store, bank=name)
        ingest_seconds = time.perf_counter() - started
        answer = engine.ask(sample.question, bank)
        read = [(block.char_start, block.char_end) for block in answer.blocks]
        recall, _ = evidence_recall_precision(read, sample.evidence)
        hit = sub_em(answer.text, sample.answers)
        rows.append(
            {
                "length": length,
                "sample_id": sample.sample_id,
                "question": sample.question,
                "gold": sample.answers,
                "prediction": answer.text,
                "sub_em": hit,
                "gate_recall": recall,
                "copy_failure": recall == 1.0 and not hit,
                "blocks": len(bank),
                "ingest_seconds": round(ingest_seconds, 2),
                "query_seconds": round(answer.timings.get("query", 0.0), 2),
            }
        )
        bar.update(1)
        bar.set_postfix(correct=sum(r["sub_em"] for r in rows))
    bar.close()
    info = engine.info()["reasoner"]
    Path(args.out).write_text(
        json.dumps(
            {"reasoner_weights": args.reasoner_weights, "sha256": info["weights_sha256"], "rows": rows}, indent=2
        )
    )
    print(json.dumps(by_length(rows), indent=2))


def by_length(rows: list[dict]) -> dict[str, dict[str, float]]:
    result = {}
    for length in sorted({row["length"] for row in rows}):
        part = [row for row in rows if row["length"] == length]
        result[str(length)] = {
            "n": len(part),
            "accuracy": sum(row["sub_em"] for row in part) / len(part),
            "gate_recall": sum(row["gate_recall"] or 0.0 for row in part) / len(part),
            "copy_failures": sum(row["copy_failure"] for row in part),
            "query_seconds": sum(row["query_seconds"] for row in part) / len(part),
        }
    return result


def training_questions(run_directory: Path) -> set[str]:
    """The questions a `lychee train rl` run trained on, rebuilt from its config.json."""
    from lychee_memory.training.rl_run import RLTrainingConfig

    config = RLTrainingConfig.model_validate_json((run_directory / "config.json").read_text())
    split = config.examples(LycheeMemory.from_pretrained(show_progress=False).loaded.tokenizer)
    return {example.question for example in split["train"]}


def compare(args: argparse.Namespace) -> None:
    before, after = (json.loads(Path(path).read_text()) for path in (args.before, args.after))
    if [r["sample_id"] for r in before["rows"]] != [r["sample_id"] for r in after["rows"]]:
        raise SystemExit("the two runs answered different samples")
    overlap = None
    if args.run:
        overlap = len({row["question"] for row in before["rows"]} & training_questions(Path(args.run)))
    first, second = by_length(before["rows"]), by_length(after["rows"])
    print("| length | n | accuracy before | after | copying failures before | after | gate recall |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for length in first:
        a, b = first[length], second[length]
        print(
            f"| {int(length) // 1000}K | {a['n']} | {a['accuracy']:.2f} | {b['accuracy']:.2f} | "
            f"{a['copy_failures']} | {b['copy_failures']} | {a['gate_recall']:.2f} |"
        )
    changed = [
        (x["sample_id"], x["prediction"][:60], y["prediction"][:60])
        for x, y in zip(before["rows"], after["rows"])
        if x["sub_em"] != y["sub_em"]
    ]
    print(f"\nanswers whose correctness changed: {len(changed)}")
    for sample_id, old, new in changed:
        print(f"  {sample_id}: {old!r} -> {new!r}")
    if overlap is not None:
        print(f"held-out questions that were training questions: {overlap}")
    PLOTS.mkdir(exist_ok=True)
    summary = {"before": first, "after": second, "after_sha256": after["sha256"], "training_overlap": overlap}
    (PLOTS / "rl_heldout.json").write_text(json.dumps(summary, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    positions = range(len(first))
    axis.bar([p - 0.2 for p in positions], [first[k]["accuracy"] for k in first], 0.4, label="untrained reasoner")
    axis.bar([p + 0.2 for p in positions], [second[k]["accuracy"] for k in second], 0.4, label="RL adapter")
    axis.set_xticks(list(positions), [f"{int(k) // 1000}K (n={first[k]['n']})" for k in first])
    axis.set_ylim(0, 1)
    axis.set_ylabel("held-out needle accuracy (sub_em)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(PLOTS / "rl_heldout.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run")
    runner.add_argument("--reasoner-weights", default="none")
    runner.add_argument("--out", required=True)
    runner.add_argument("--store", default="/tmp/lychee-rl-heldout-store", help="where the banks are kept")
    runner.add_argument("--lengths", default="7000,28000,112000")
    runner.add_argument("--n", default="20,20,5", help="samples per length")
    runner.add_argument("--seed", type=int, default=0, help="the eval's sample seed")
    comparer = commands.add_parser("compare")
    comparer.add_argument("before")
    comparer.add_argument("after")
    comparer.add_argument("--run", default=None, help="the training run (checks no held-out question was trained on)")
    args = parser.parse_args()
    run(args) if args.command == "run" else compare(args)


if __name__ == "__main__":
    main()
