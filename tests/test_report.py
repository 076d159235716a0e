"""`lychee report`: a ladder run in pieces merges into the tables one run would have written, and inputs are
never changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lychee_memory.cli import main
from lychee_memory.errors import ConfigurationError, DocumentError
from lychee_memory.eval.report import merge_runs


def _answer(method: str, target: int, sample: str, hit: bool, seconds: float, **extra) -> dict:
    return {
        "method": method,
        "task": "needle",
        "context_tokens": target - 10,
        "target_tokens": target,
        "sample_id": sample,
        "question": "What is the code?",
        "answers": ["123"],
        "prediction": "123" if hit else "no",
        "sub_em": hit,
        "exact_match": hit,
        "f1": 1.0 if hit else 0.0,
        "ingest_seconds": 10.0,
        "query_seconds": seconds,
        "blocks": 8,
        "blocks_read": 1,
        "gate_recall": 1.0 if hit else 0.0,
        "gate_precision": 1.0,
        "tokens": {},
        "skipped": None,
        **extra,
    }


def _eval_run(directory: Path, answers: list[dict], model: str | None = "tiny") -> Path:
    directory.mkdir(parents=True)
    (directory / "samples.jsonl").write_text("\n".join(json.dumps(a) for a in answers) + "\n")
    if model is not None:
        (directory / "summary.json").write_text(json.dumps({"task": "needle", "model": model, "rows": []}))
    return directory


def _bench_row(method: str, kind: str, target: int, phase: str, seconds: float, model: str = "tiny") -> dict:
    return {
        "method": method,
        "kind": kind,
        "task": "needle",
        "model": model,
        "context_tokens": target,
        "target_tokens": target,
        "phase": phase,
        "seconds": seconds,
        "peak_mb": 100.0,
        "accuracy": 1.0,
        "tokens_prefilled": 10,
        "tokens_generated": 2,
    }


def _bench_run(directory: Path, rows: list[dict]) -> Path:
    directory.mkdir(parents=True)
    (directory / "bench.json").write_text(json.dumps(rows))
    return directory


def test_eval_pieces_merge_per_length_and_a_later_answer_replaces_an_earlier_one(tmp_path):
    short = _eval_run(
        tmp_path / "short",
        [_answer("lychee", 7000, "s0", True, 2.0), _answer("lychee", 7000, "s1", False, 4.0)],
    )
    # an interrupted long run: answers written, no summary.json; it also re-ran sample s1 at 7K
    long = _eval_run(
        tmp_path / "long",
        [_answer("lychee", 7000, "s1", True, 6.0), _answer("lychee", 56000, "s0", True, 8.0)],
        model=None,
    )
    report = merge_runs([short, long], tmp_path / "out")
    rows = {row["target_tokens"]: row for row in report.eval_rows["needle"]}
    assert rows[7000]["samples"] == 2
    assert rows[7000]["sub_em"] == 1.0, "s1's later answer (a hit) replaced the miss"
    assert rows[7000]["query_seconds"] == pytest.approx(4.0)  # (2 + 6) / 2
    assert rows[56000]["samples"] == 1 and rows[56000]["sub_em"] == 1.0
    assert report.model == "tiny"
    summary = json.loads((tmp_path / "out" / "needle" / "summary.json").read_text())
    assert summary["model"] == "tiny" and len(summary["rows"]) == 2
    for name in ("accuracy_vs_length.png", "latency_vs_length.png"):
        assert (tmp_path / "out" / "needle" / name).read_bytes()[:4] == b"\x89PNG"


def test_bench_pieces_merge_into_one_ratio_table_with_growth(tmp_path):
    first = _bench_run(
        tmp_path / "b1",
        [
            _bench_row("lychee", "lychee", 7000, "warm", 2.0),
            _bench_row("memagent", "memagent", 7000, "warm", 20.0),
        ],
    )
    second = _bench_run(
        tmp_path / "b2",
        [
            _bench_row("lychee", "lychee", 224000, "warm", 6.0),
            _bench_row("memagent", "memagent", 224000, "warm", 640.0),
        ],
    )
    report = merge_runs([first, second], tmp_path / "out")
    assert len(report.bench_rows) == 4
    lychee_lines = [line for line in report.bench_table.splitlines() if line.startswith("lychee ")]
    assert lychee_lines[0].split()[-1] == "10.0x" and lychee_lines[1].split()[-1] == "106.7x"
    assert "warm growth lychee: 2.00 s at 7000 tokens -> 6.00 s at 224000 tokens = 3.0x for 32.0x" in report.bench_table
    assert json.loads((tmp_path / "out" / "bench.json").read_text()) == report.bench_rows
    assert (tmp_path / "out" / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_runs_of_different_models_do_not_merge(tmp_path):
    one = _eval_run(tmp_path / "a", [_answer("lychee", 7000, "s0", True, 1.0)], model="smollm2-135m")
    other = _bench_run(tmp_path / "b", [_bench_row("lychee", "lychee", 7000, "warm", 1.0, model="qwen-7b")])
    with pytest.raises(ConfigurationError, match="different models"):
        merge_runs([one, other], tmp_path / "out")


def test_the_report_never_writes_over_an_input(tmp_path):
    run = _eval_run(tmp_path / "run", [_answer("lychee", 7000, "s0", True, 1.0)])
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    with pytest.raises(ConfigurationError, match="new directory"):
        merge_runs([run], run)
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_bad_runs_are_named_in_the_error(tmp_path):
    with pytest.raises(DocumentError, match="not found"):
        merge_runs([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DocumentError, match="neither an eval run"):
        merge_runs([tmp_path / "empty"], tmp_path / "out")
    broken = _eval_run(tmp_path / "broken", [_answer("lychee", 7000, "s0", True, 1.0)])
    with (broken / "samples.jsonl").open("a") as handle:
        handle.write("{not json\n")
    with pytest.raises(DocumentError, match=r"samples.jsonl:2 "):
        merge_runs([broken], tmp_path / "out")
    (tmp_path / "rows.json").write_text(json.dumps([{"method": "lychee"}]))
    with pytest.raises(DocumentError, match="not a bench.json"):
        merge_runs([tmp_path / "rows.json"], tmp_path / "out")
    unmeasured = _bench_row("lychee", "lychee", 7000, "warm", 1.0)
    del unmeasured["peak_mb"]
    (tmp_path / "partial.json").write_text(json.dumps([unmeasured]))
    with pytest.raises(DocumentError, match="not a bench.json"):
        merge_runs([tmp_path / "partial.json"], tmp_path / "out")
    not_an_object = _eval_run(tmp_path / "numbers", [_answer("lychee", 7000, "s0", True, 1.0)])
    (not_an_object / "samples.jsonl").write_text("42\n")
    with pytest.raises(DocumentError, match=r"samples.jsonl:1 "):
        merge_runs([not_an_object], tmp_path / "out")
    bad_summary = _eval_run(tmp_path / "bad-summary", [_answer("lychee", 7000, "s0", True, 1.0)])
    (bad_summary / "summary.json").write_text("[1, 2]")
    with pytest.raises(DocumentError, match="not an eval summary.json"):
        merge_runs([bad_summary], tmp_path / "out")


def test_cli_report_prints_the_merged_tables(tmp_path, capsys):
    run = _eval_run(tmp_path / "run", [_answer("lychee", 7000, "s0", True, 1.0)])
    bench = _bench_run(tmp_path / "bench", [_bench_row("lychee", "lychee", 7000, "warm", 1.0)])
    assert main(["report", str(run), str(bench), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "# needle on tiny" in printed and "| lychee | 6990 | 1 |" in printed and "bench_plot" in printed
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err
