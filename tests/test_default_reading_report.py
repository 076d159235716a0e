"""benchmarks/default_reading.py's table: counts, and the time ratios computed per question then medianed."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import benchmark_script

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "default_reading.py"


def script():
    """The benchmark script as a module."""
    return benchmark_script("default_reading")


def record(setting: str, sample: str, seconds: float, right: bool = True) -> dict:
    return {
        "haystack": "D",
        "sample": f"{sample}-224k",
        "setting": setting,
        "right": right,
        "copying_failure": False,
        "fact_in_stage1": True,
        "fact_read": right,
        "blocks_read": [1, 2],
        "decode_passes": 1,
        "query_s": seconds,
        "first_token_s": None if setting == "memagent" else seconds / 2,
        "tokens": 224_000,
    }


def test_the_table_gives_per_question_ratios_and_the_memagent_speedup(tmp_path):
    rows = [record("before", "q1", 20.0), record("before", "q2", 30.0)]
    rows += [record("recipe", "q0", 12.0)]  # RAG and the earlier settings never asked q0: no ratio for it
    rows += [record("recipe", "q1", 10.0), record("recipe", "q2", 20.0, right=False)]
    rows += [record("rag", "q1", 40.0), record("rag", "q2", 10.0)]
    rows += [record("memagent", "q1", 3000.0)]  # MemAgent asked only the first question
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = {line.split("|")[3].strip(): line for line in script().report(path).splitlines()[2:]}
    recipe = [cell.strip() for cell in table["recipe"].split("|")[1:-1]]
    # right 2 of 3; warm median 12 s, p95 10 + (20 - 10) * 0.9 = 19.2 (over 10, 12, 20), first token median 6 s
    assert recipe[3:5] == ["3", "2"] and recipe[10:13] == ["12.00", "19.20", "6.00"]
    # / before: median(10/20, 20/30) = 0.58; / rag: median(0.25, 2.0) = 1.12; no hybrid-rag; MemAgent 3000/10 on q1
    assert recipe[13:17] == ["0.58", "1.12", "-", "300x"]
    memagent = [cell.strip() for cell in table["memagent"].split("|")[1:-1]]
    assert memagent[12] == "-" and memagent[16] == "1x"  # MemAgent is not streamed
    script().plot(path, tmp_path / "plot.png")  # a log axis when MemAgent is in it
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_a_variant_is_the_recipe_with_options_changed():
    import pytest

    module = script()
    name, options = module.variant("min2:min_blocks=2;excerpt_total_tokens=512")
    assert name == "min2" and options == {**module.SETTINGS["recipe"], "min_blocks": 2, "excerpt_total_tokens": 512}
    for bad in ("recipe:min_blocks=2", "x:min_blocks", ":min_blocks=2"):
        with pytest.raises(SystemExit):
            module.variant(bad)
