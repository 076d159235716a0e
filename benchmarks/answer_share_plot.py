"""Plot the default against ``excerpt_answer_share`` from the runs' own records: right answers per needle run, and
HotpotQA's both-gold share, answer-in-evidence share and sub_em.

    python benchmarks/answer_share_plot.py --eval benchmarks/plots/answer_limits/twohop7k_squad_share \\
        --eval benchmarks/plots/answer_limits/twohop28k_share --eval benchmarks/plots/answer_limits/multikey7k_share \\
        --hotpot benchmarks/plots/answer_limits/hotpot28k_records.jsonl --out benchmarks/plots/answer_share.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT, SHARE = "the default", "excerpt_answer_share 0.5"


def eval_counts(directory: Path) -> tuple[str, dict[str, float]]:
    """(label, share right per method) of a `lychee eval` run with the default (``lychee``) and one variant."""
    rows = [json.loads(line) for line in (directory / "samples.jsonl").read_text().splitlines() if line.strip()]
    label = f"{rows[0]['task'].removeprefix('needle-')} {rows[0]['target_tokens'] // 1000}K\n({directory.name})"
    shares = {}
    for method, name in (("lychee", DEFAULT), (None, SHARE)):
        chosen = [r for r in rows if (r["method"] == method if method else r["method"] != "lychee")]
        shares[name] = sum(r["sub_em"] for r in chosen) / len(chosen)
    return label, shares


def hotpot_counts(path: Path, methods: tuple[str, str]) -> list[tuple[str, dict[str, float]]]:
    """Both gold, answer in evidence and sub_em shares of the two methods' HotpotQA records."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    bars = []
    for key, label in (
        ("both_gold", "HotpotQA 28K\nboth gold at the answer"),
        ("answer_in_evidence", "HotpotQA 28K\nanswer in evidence"),
        ("sub_em", "HotpotQA 28K\nsub_em"),
    ):
        shares = {}
        for method, name in zip(methods, (DEFAULT, SHARE)):
            known = [r[key] for r in rows if r["method"] == method and r.get(key) is not None]
            shares[name] = sum(map(bool, known)) / len(known)
        bars.append((label, shares))
    return bars


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", type=Path, action="append", default=[], help="a lychee eval output directory")
    parser.add_argument("--hotpot", type=Path, default=None, help="hotpot_shared.py records.jsonl")
    parser.add_argument("--hotpot-methods", default="recipe,share", help="the default's and the option's names")
    parser.add_argument("--out", type=Path, default=Path("answer_share.png"))
    args = parser.parse_args(argv)

    from lychee_memory.eval.plots import pyplot

    bars = [eval_counts(directory) for directory in args.eval]
    if args.hotpot is not None:
        first, second = args.hotpot_methods.split(",")
        bars += hotpot_counts(args.hotpot, (first, second))
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(1.6 * len(bars) + 2, 4.4))
    width = 0.38
    for offset, name in ((-width / 2, DEFAULT), (width / 2, SHARE)):
        heights = [100 * shares[name] for _, shares in bars]
        axis.bar([i + offset for i in range(len(bars))], heights, width, label=name)
    axis.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=7)
    axis.set_ylabel("% of questions")
    axis.set_ylim(0, 105)
    axis.set_title("The answer reading only the excerpts near the best one (SmolLM2-135M, CPU)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
