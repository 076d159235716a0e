"""benchmarks/codec_hotpot.py: the gate's first ranking it reports is the engine's own (same stage-1 candidates,
same stage-2 gains as the scan's first judgements), and its coverage counts at k blocks, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import benchmark_script, make_engine

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "codec_hotpot.py"


def script():
    """The benchmark script as a module."""
    return benchmark_script("codec_hotpot")


TEXT = " ".join(
    f"Paragraph {number} says the {word} gate of the harbour opens at {number + 3} in the morning."
    for number, word in enumerate("north south east west upper lower inner outer amber quiet hollow iron".split() * 3)
)


def test_the_ranking_is_the_engine_first_ranking():
    engine = make_engine(gate={"candidates": 2, "candidate_margin": 0.0})
    bank = engine.ingest(TEXT)
    question = "When does the amber gate open?"
    found = script().ranking(engine, bank, question)
    answer = engine.ask(question, bank)
    assert len(bank) > 4 and answer.candidates, "the bank is large enough for stage 1 to pick candidates"
    assert found["candidates"] == answer.candidates[0]  # stage 1 picked what the engine's scan picked
    first = [score for score in answer.gate_scores if score.memory_step == 0]
    assert first and all(str(score.index) in found["gains"] for score in first)
    for score in first:  # stage 2: the scan's first judgements under the initial memory
        assert found["gains"][str(score.index)] == pytest.approx(score.score, abs=1e-3)
    ranked = found["ranking"]
    assert sorted(ranked) == list(range(len(bank)))
    gains = [found["gains"][str(index)] for index in ranked[: len(found["candidates"])]]
    assert gains == sorted(gains, reverse=True)  # candidates by gain, best first
    rest = [index for index in found["stage1_order"] if index not in found["candidates"]]
    assert ranked[len(found["candidates"]) :] == rest  # then stage 1's order


def record(row: str, sample: str, ranking: list[int], covered: dict[str, int], split: str = "tuning") -> dict:
    return {
        "row": row,
        "sample": sample,
        "split": split,
        "gold_paragraphs": 2,
        "covered": covered,
        "ranking": ranking,
        "candidates": ranking[:2],
        "gains": {str(ranking[0]): 1.0, str(ranking[1]): 0.5},
        "ranking_s": 1.0,
        "bytes_per_token": {"total": 100.0},
    }


def test_the_summary_counts_coverage_at_k_and_changes_against_bfloat16():
    records = [
        record("bfloat16", "q1", [0, 1, 2, 3, 4], {"1": 1, "2": 2, "4": 2}),
        record("bfloat16", "q2", [5, 6, 7, 8, 9], {"1": 0, "2": 1, "4": 1}, split="confirming"),
        record("k4v3+i8", "q1", [1, 0, 2, 3, 4], {"1": 1, "2": 2, "4": 2}),
        record("k4v3+i8", "q2", [5, 6, 7, 9, 0], {"1": 0, "2": 0, "4": 2}, split="confirming"),
        record("k4v3+i8", "q3", [5, 6, 7, 9, 0], {"1": 2, "2": 2, "4": 2}),  # bfloat16 lacks q3: left out
    ]
    rows = {entry["row"]: entry for entry in script().summarise(records)}
    quantised = rows["k4v3+i8"]
    assert quantised["n"] == 2
    assert (quantised["both@1"], quantised["both@2"], quantised["both@4"]) == (0, 1, 2)
    assert (quantised["one@1"], quantised["one@2"], quantised["one@4"]) == (1, 1, 2)
    assert quantised["same_top1"] == 1 and quantised["same_top4_set"] == 1
    assert quantised["coverage_changed@4"] == ["q2 (1->2)"]
    assert (quantised["tuning_both@4"], quantised["confirming_both@4"]) == (1, 1)
    assert rows["bfloat16"]["same_top1"] == 2 and rows["bfloat16"]["gain_drift_max"] == 0
