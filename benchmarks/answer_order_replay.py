"""Replay recorded HotpotQA answers from their excerpts in reading order and most relevant first.

``hotpot_shared.py`` records the spans of the excerpts that reached each answer. This script rebuilds the same shared
haystack, turns the spans back into the excerpt memory (scored by the memory's own ``fit``, with no budget to meet)
and asks the final answer again with both ``reasoner.excerpt_answer_order`` values, through the memory strategy's own
``answer_memory``. Nothing is read again, so the order is the only change; the reading-order replay must reproduce
the recorded answers (the count is printed), which checks the replay itself.

    python benchmarks/answer_order_replay.py --data ../shared/data --lengths 56k \\
        --records benchmarks/plots/default_reading/hotpot56k/records.jsonl --method recipe --out replay.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

ORDERS = ("reading", "relevance")


def replay(engine: Any, haystack: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per record: the answer replayed in each order, its sub_em, and the recorded answer and sub_em."""
    from lychee_memory.config import ReasonerSettings
    from lychee_memory.eval.metrics import sub_em
    from lychee_memory.excerpts import Excerpt
    from lychee_memory.gate import ScanState
    from lychee_memory.working_memory import memory_strategy

    questions = {question.sample_id: question for question in haystack.questions}
    strategies = {order: memory_strategy("excerpts", ReasonerSettings(excerpt_answer_order=order)) for order in ORDERS}
    # the memory's own fit scores the recorded excerpts; with no budget to meet it drops none
    unbounded = replace(strategies["reading"], total_tokens=sys.maxsize)

    def count(text: str) -> int:
        return len(engine.prompts.encode_text(text))

    states = []
    for record in records:
        question = questions[record["sample_id"]].question
        kept = [Excerpt(haystack.context[start:end], "haystack", start, end, 0, 0.0) for start, end in record["spans"]]
        state = ScanState(question, "")
        state.excerpts = unbounded.fit(question, kept, count)
        state.memory = strategies["reading"].render(state.excerpts)
        states.append(state)
    memories = {order: [strategy.answer_memory(state) for state in states] for order, strategy in strategies.items()}
    answers = {order: engine.reasoner.answer([s.question for s in states], memories[order]) for order in ORDERS}
    rows = []
    for position, record in enumerate(records):
        row = {
            "sample_id": record["sample_id"],
            "split": record["split"],
            "method": record["method"],
            "recorded": record["answer"],
            "sub_em_recorded": record["sub_em"],
        }
        for order in ORDERS:
            text = answers[order][position].text
            row[order] = text
            row[f"sub_em_{order}"] = sub_em(text, list(record["answers"]))
            row[f"memory_{order}"] = memories[order][position]
        rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    """Per split: how many replays in reading order reproduced the recorded answer, sub_em per order, and the
    relevance order's wins and losses against reading order, paired by question."""
    lines = [
        "| split | n | reproduced | sub_em as read | sub_em best first | best first vs as read |",
        "|---|---|---|---|---|---|",
    ]
    for split in ("tuning", "confirming", "all"):
        chosen = [row for row in rows if split == "all" or row["split"] == split]
        if not chosen:
            continue
        same = sum(row["reading"].strip() == row["recorded"].strip() for row in chosen)
        wins = sum(row["sub_em_relevance"] and not row["sub_em_reading"] for row in chosen)
        losses = sum(row["sub_em_reading"] and not row["sub_em_relevance"] for row in chosen)
        reading = sum(row["sub_em_reading"] for row in chosen)
        relevance = sum(row["sub_em_relevance"] for row in chosen)
        lines.append(f"| {split} | {len(chosen)} | {same} | {reading} | {relevance} | +{wins} / -{losses} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from lychee_memory.errors import ConfigurationError
    from lychee_memory.eval.replay import add_replay_arguments, replay_inputs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_replay_arguments(parser)
    parser.add_argument("--method", required=True, help="the recorded method to replay (its evidence: excerpts)")
    parser.add_argument("--out", type=Path, default=Path("answer_order_replay.jsonl"))
    args = parser.parse_args(argv)
    try:
        inputs = replay_inputs(args, [args.method])
    except ConfigurationError as error:
        raise SystemExit(str(error)) from None
    if any(record["evidence"] != "excerpts" for record in inputs.records):
        raise SystemExit(f"method {args.method!r} answered from blocks, not excerpts: there is no order to replay")
    rows = replay(inputs.engine, inputs.haystack, inputs.records)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(summary(rows))


if __name__ == "__main__":
    main()
