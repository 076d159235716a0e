"""benchmarks/ten_questions.py's totals: a method's build plus its questions, the batched engine sharing the
ingest, and each total against LycheeMemory's."""

from __future__ import annotations

import json

from .conftest import benchmark_script


def question(method: str, seconds: float, right: bool = True, batch: int = 1) -> dict:
    return {"method": method, "step": "question", "seconds": seconds, "right": right, "batch": batch}


def test_totals_add_the_build_and_share_the_ingest_with_the_batched_run(tmp_path):
    rows = [
        {"method": "lychee", "step": "build", "seconds": 100.0},
        {"method": "rag", "step": "build", "seconds": 20.0},
        question("lychee", 5.0),
        question("lychee", 7.0, right=False),
        question("lychee", 6.0),
        question("lychee-batched", 3.0, batch=3),
        question("lychee-batched", 3.0, batch=3),
        question("lychee-batched", 3.0, batch=3),
        question("rag", 4.0, right=False),
        question("rag", 4.0),
        question("rag", 10.0),
        question("memagent", 400.0, batch=3),
        question("memagent", 400.0, batch=3),
        question("memagent", 400.0, batch=3),
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    module = benchmark_script("ten_questions")
    totals = module.totals(module.load(path))
    assert totals["lychee"]["total_s"] == 118.0 and totals["lychee"]["right"] == 2
    assert totals["lychee-batched"]["total_s"] == 109.0  # the same ingest, 9 s of batched questions
    assert totals["rag"]["total_s"] == 38.0 and totals["rag"]["median_question_s"] == 4.0
    assert totals["memagent"]["build_s"] == 0.0 and totals["memagent"]["batch"] == 3
    assert "hybrid-rag" not in totals  # never asked: no row
    table = {line.split("|")[1].strip(): line for line in module.report(path).splitlines()[2:]}
    # each total over LycheeMemory's one-at-a-time total: 38 / 118, 1200 / 118
    assert table["rag"].rstrip(" |").endswith("0.32") and table["memagent"].rstrip(" |").endswith("10.17")
    module.plot(path, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000
