"""The lychee command in real subprocesses: JSON output, progress off, clean errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import FACTS_DOCUMENT

TINY = ["--model", "tiny-random-llama", "--chunk-tokens", "64", "--max-memory-tokens", "8", "--max-answer-tokens", "6"]


def lychee(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lychee_memory.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture
def document(tmp_path):
    path = tmp_path / "harbour.txt"
    path.write_text(FACTS_DOCUMENT, encoding="utf-8")
    return path


def test_ask_json_has_answer_blocks_and_timings(document):
    result = lychee("ask", str(document), "--question", "What is the code?", "--json", "--no-progress", *TINY)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data["answer"], str)
    assert data["blocks"] and {"index", "score", "doc", "start", "end"} <= set(data["blocks"][0])
    assert data["blocks"][0]["doc"] == str(document)
    timings = data["timings"]
    assert {"load_model", "ingest", "gate", "reason", "answer", "query", "total"} <= set(timings)
    assert timings["total"] >= timings["load_model"] + timings["ingest"]


def test_ask_streams_text_and_reports_sources(document):
    result = lychee("ask", str(document), "-q", "What is the code?", *TINY)
    assert result.returncode == 0, result.stderr
    assert "Sources:" in result.stderr and "Timings:" in result.stderr


def test_ask_lists_the_sentences_an_excerpt_memory_kept(document):
    result = lychee(
        "ask", str(document), "-q", "What is the code?", *TINY, "--memory", "excerpts", "--fallback-blocks", "1"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.split("Evidence:\n")[1].split("Timings:")[0].strip().splitlines()
    assert lines, result.stderr
    for line in lines:  # each one is the document's own text at the span it names
        where, text = line.strip().split(": ", 1)
        start, end = map(int, where.rsplit(" chars ", 1)[1].split("-"))
        assert where.startswith(str(document)) and " ".join(FACTS_DOCUMENT[start:end].split())[:157] == text[:157]


def test_ingest_reports_the_bank(document):
    result = lychee("ingest", str(document), "--json", "--no-progress", *TINY)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["blocks"] >= 2 and data["compression"] > 3


def test_info_without_loading():
    result = lychee("info", "--no-load", "--json", "--model", "tiny-random-qwen2")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model_spec"]["kind"] == "tiny" and "torch" in data["versions"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["ask", "{missing}", "-q", "why?"], "does not exist"),
        (["ask", "{document}", "-q", "  "], "question is empty"),
        (["ask", "{empty}", "-q", "why?"], "empty"),
        (["ask", "{latin1}", "-q", "why?"], "not UTF-8"),
        (["ask", "{document}", "-q", "why?", "--model", "nowhere/at-all"], "cannot resolve model spec"),
        (["ask", "{document}", "-q", "why?", "--chunk-tokens", "100000"], "context window"),
        (["ask", "{document}", "-q", "why?", "--ratio", "3"], "does not divide"),
        (["ask", "{document}", "-q", "why " * 5000], "question is"),
        (["ask", "{document}", "-q", "why?", "--threshold", "nan"], "gate.threshold: Input should be a finite number"),
        (["ask", "{document}", "-q", "why?", "--temperature", "inf"], "reasoner.temperature: Input should be a finite"),
    ],
)
def test_bad_input_exits_2_without_traceback(tmp_path, document, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    values = {
        "missing": str(tmp_path / "missing.txt"),
        "document": str(document),
        "empty": str(empty),
        "latin1": str(latin1),
    }
    filled = [arg.format(**values) for arg in args]
    model = [] if "--model" in filled else ["--model", "tiny-random-llama"]
    result = lychee(*filled, *model, "--no-progress")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr


def test_engine_flags_map_to_engine_options():
    from lychee_memory.cli import build_parser, engine_options

    args = build_parser().parse_args(
        ["ask", "doc.txt", "-q", "Why?", "--attention", "eager", "--ratio", "8", "--max-blocks", "3", "--no-progress"]
    )
    assert engine_options(args) == {"attention": "eager", "ratio": 8, "max_relevant_blocks": 3, "show_progress": False}


def test_prefilter_flags_map_to_gate_settings():
    from lychee_memory.cli import build_parser, engine_options
    from lychee_memory.config import EngineConfig

    args = build_parser().parse_args(
        ["ask", "doc.txt", "-q", "Why?", "--prefilter", "keys", "--candidates", "6", "--prefilter-heads", "[[1, 2]]"]
    )
    config = EngineConfig.from_kwargs(None, **engine_options(args))
    assert (config.gate.prefilter, config.gate.candidates, config.gate.prefilter_heads) == ("keys", 6, [(1, 2)])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ask", "doc.txt", "-q", "Why?", "--prefilter-heads", "[1, 2"])


def test_ask_json_splits_prefilter_from_gate_and_info_shows_the_index(document):
    result = lychee("ask", str(document), "-q", "What is the code?", "--json", "--scores", "--no-progress", *TINY)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    timings = data["timings"]
    # "query" is the sum of the four phases before rounding; each of the five is rounded to 4 decimals, so they can
    # differ by up to 5 x 5e-5
    assert timings["query"] == pytest.approx(
        timings["prefilter"] + timings["gate"] + timings["reason"] + timings["answer"], abs=2.5e-4 + 1e-9
    )
    assert "candidates" in data and "candidates" in data["tokens"]
    info = json.loads(lychee("info", "--json", *TINY).stdout)["engine"]["gate"]
    assert info["prefilter"] == "keys" and info["candidates"] == 4 and info["prefilter_index"]["heads"]


def test_probe_heads_reports_ranked_heads(tmp_path):
    out = tmp_path / "heads.json"
    result = lychee(
        "probe",
        "heads",
        "--lengths",
        "1k",
        "--n",
        "2",
        "--heldout-lengths",
        "1k",
        "--heldout-n",
        "1",
        "--count",
        "3",
        "--json",
        str(out),
        "--no-progress",
        *TINY,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert len(data["chosen_heads"]) == 3 and len(data["probe_ranks"]) == 2 and len(data["heldout_ranks"]) == 1
    assert data["top_heads"][0]["mrr"] >= data["top_heads"][-1]["mrr"]
    assert "chosen heads:" in result.stdout and "--prefilter-heads" in result.stdout
