"""``lychee bench`` for issue 28: streamed answers (time to first token) equal to the unstreamed ones, every
generation counted, percentiles as numpy computes them, the RAG shares and cli rows in the table and plot."""

from __future__ import annotations

import random

import numpy
import pytest

from lychee_memory.cli import build_parser
from lychee_memory.eval.bench import method_family, percentile, ratio_table, stream_rag, timed_answer, worker
from lychee_memory.eval.plots import plot_bench
from lychee_memory.eval.rag import RagBaseline
from lychee_memory.eval.runner import MethodRunner, parse_methods
from lychee_memory.eval.tasks import build_samples

from .conftest import make_engine

TEXT = " ".join(
    f"Paragraph {i} talks about the weather in town number {i} and the harvest of that year." for i in range(30)
)
TEXT += " The secret code of the cellar is KX-4471, kept by Ines. " + TEXT
QUESTION = "What is the secret code of the cellar?"
OPTIONS = {"chunk_tokens": 128, "max_memory_tokens": 8, "max_answer_tokens": 6, "show_progress": False}


@pytest.fixture
def generated_haystack(monkeypatch, tmp_path):
    """Needle samples from the generated haystack, whatever datasets this machine has."""
    monkeypatch.delenv("LYCHEE_DATA_DIR", raising=False)
    monkeypatch.setattr("lychee_memory.eval.tasks.default_data_places", lambda: [tmp_path])


@pytest.fixture
def rows_decoded(decode_passes):
    """Rows of every decode run in this process, one entry per generation pass."""
    return decode_passes


def test_percentiles_are_numpys_linear_ones():
    generator = random.Random(5)
    for size in (1, 2, 3, 7, 10):
        values = [generator.uniform(0.1, 9.0) for _ in range(size)]
        for q in (0, 50, 95, 100):
            assert percentile(values, q) == pytest.approx(float(numpy.percentile(values, q)), abs=1e-12)
    with pytest.raises(ValueError):
        percentile([], 50)


@pytest.mark.parametrize("retrieval", ["dense", "hybrid"])
def test_streamed_rag_answers_what_rag_ask_answers(retrieval):
    engine = make_engine("llama")
    rag = RagBaseline(engine, top_k=2, chunk_tokens=32, retrieval=retrieval)
    index = rag.build([TEXT])
    answer, first, total = stream_rag(rag, QUESTION, index)
    reference = rag.ask(QUESTION, index)
    assert answer.text == reference.text and answer.text, "the same prompt, greedy decoding, the same text"
    assert [b.index for b in answer.blocks] == [b.index for b in reference.blocks]
    for key in ("prompt_tokens", "answer_tokens", "blocks_read", "blocks"):
        assert answer.token_counts[key] == reference.token_counts[key]
    assert 0 < first <= total
    assert answer.timings["query"] == pytest.approx(total)


@pytest.mark.parametrize("memory", ["notes", "excerpts"])
def test_lychee_is_streamed_and_every_generation_is_counted(memory, generated_haystack, rows_decoded):
    runner = MethodRunner("tiny-random-llama", {**OPTIONS, "memory": memory})
    (method,) = parse_methods("lychee")
    (sample,) = build_samples("needle", runner.loaded.tokenizer, 900, 1, None, 0)
    runner.bank_for(runner.engine, sample)  # ingest decodes nothing, but keep it out of the count anyway
    rows_decoded.clear()
    timed = timed_answer(runner, method, sample, "needle", 900, 900)
    streamed_rows = sum(rows_decoded)
    assert timed.decodes == streamed_rows, "decodes per query = generation rows actually run (notes + answer)"
    notes = streamed_rows - 1
    assert (notes > 0) if memory == "notes" else (notes == 0), "excerpts decode nothing before the answer"
    assert timed.result.blocks_read >= 1
    assert 0 < timed.first_token_seconds <= timed.result.query_seconds
    reference = runner.engine.ask(sample.question, runner.bank_for(runner.engine, sample)[0])
    assert timed.result.prediction == reference.text, "streaming does not change the answer"
    assert timed.result.tokens["answer_tokens"] == reference.token_counts["answer_tokens"]


def test_memagent_decodes_a_note_per_chunk_and_the_answer(generated_haystack, rows_decoded):
    runner = MethodRunner("tiny-random-llama", {**OPTIONS, "max_memory_tokens": 4})
    (method,) = parse_methods("memagent")
    (sample,) = build_samples("needle", runner.loaded.tokenizer, 900, 1, None, 0)
    timed = timed_answer(runner, method, sample, "needle", 900, 900)
    assert timed.decodes == sum(rows_decoded) == timed.result.blocks_read + 1
    assert timed.first_token_seconds is None, "MemAgent's answer is not streamed: no time to first token"


def test_the_worker_adds_a_fresh_cli_process_row_with_the_same_answers(generated_haystack):
    request = {
        "method": "lychee",
        "model": "tiny-random-llama",
        "options": OPTIONS,
        "task": "needle",
        "length": 700,
        "n": 2,
        "data": None,
        "seed": 0,
        "cli": True,
    }
    cold, warm, cli = worker(request)
    assert [row["phase"] for row in (cold, warm, cli)] == ["cold", "warm", "cli"]
    assert warm["samples"] == cli["samples"] == 2
    assert cli["same_answers_as_warm"] == 2 and cli["answers"] == warm["answers"], "the stored bank answers alike"
    assert cli["accuracy"] == warm["accuracy"] and cli["decodes_per_query"] == warm["decodes_per_query"]
    assert cli["seconds"] > cli["load_model_s"] > 0, "the fresh process loads the model before it answers"
    assert cli["seconds"] > warm["seconds"]
    for row in (cold, warm, cli):
        assert row["seconds_p50"] <= row["seconds_p95"]
        queries = cli["seconds"] if row["phase"] == "cli" else warm["seconds"]
        assert row["amortised10_seconds"] == pytest.approx(row["ingest_seconds"] / 10 + queries)
    assert warm["first_token_seconds"] <= warm["seconds"] and cold["first_token_seconds"] > warm["first_token_seconds"]
    assert warm["decodes_per_query"] >= 2, "notes (the default memory) decode before the answer"
    assert cold["family"] == "lychee"


def _row(method: str, kind: str, phase: str, seconds: float, **extra) -> dict:
    return {
        "method": method,
        "kind": kind,
        "task": "needle",
        "context_tokens": 7000,
        "target_tokens": 7000,
        "phase": phase,
        "seconds": seconds,
        "peak_mb": 100.0,
        "accuracy": 1.0,
        "tokens_prefilled": 10,
        "tokens_generated": 2,
        **extra,
    }


def test_the_table_gives_lychee_over_each_rag_and_keeps_old_rows_readable():
    new = {"samples": 3, "seconds_p50": 1.9, "seconds_p95": 2.4, "first_token_seconds": 1.5, "decodes_per_query": 2.0}
    rows = [
        _row("lychee", "lychee", "warm", 2.0, family="lychee", amortised10_seconds=2.5, **new),
        _row("lychee", "lychee", "cli", 9.0, family="lychee", samples=3),
        _row("rag", "rag", "warm", 4.0, family="rag"),
        _row("rag:retrieval=hybrid", "rag", "warm", 5.0),  # a row from before the family field
        _row("memagent", "memagent", "warm", 30.0),
    ]
    assert method_family(rows[3]) == "hybrid-rag" and method_family(rows[4]) == "memagent"
    table = ratio_table(rows)
    header, *lines = table.splitlines()
    assert header.split()[-7:] == ["L/rag", "L/hyb", "vs", "memagent", "vs", "full", "ctx"]
    (warm,) = [line for line in lines if line.startswith("lychee ") and " warm " in line]
    cells = warm.split()
    assert cells[-3:] == ["0.50", "0.40", "15.0x"], "2 / 4, 2 / 5 and 30 / 2"
    assert cells[3:9] == ["3", "2.00", "1.90", "2.40", "1.50", "100"]
    assert "2.0" in cells and "2.50" in cells, "decodes per query and the amortised cost"
    (cli,) = [line for line in lines if " cli " in line]
    assert cli.split()[-1] == "-", "nothing to compare a fresh process with: no share, no speedup"
    (old,) = [line for line in lines if line.startswith("rag:retrieval=hybrid")]
    assert old.split()[3:8] == ["-", "5.00", "-", "-", "-"], "old rows show '-' where they measured nothing"


def test_the_plot_draws_cli_rows_and_time_to_first_token(tmp_path):
    rows = [
        _row("lychee", "lychee", "warm", 2.0, first_token_p50=1.0, first_token_p95=1.4),
        _row("lychee", "lychee", "cold", 5.0, first_token_p50=4.0, first_token_p95=4.4),
        _row("lychee", "lychee", "cli", 12.0),
        {**_row("lychee", "lychee", "warm", 2.5, first_token_p50=1.2, first_token_p95=1.3), "context_tokens": 28000},
        _row("memagent", "memagent", "warm", 30.0),
        _row("rag", "rag", "warm", 1.0),  # an old row: no time to first token
    ]
    plot_bench(rows, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    plot_bench([_row("rag", "rag", "warm", 1.0)], tmp_path / "old.png")  # nothing streamed at all
    assert (tmp_path / "old.png").stat().st_size > 0


def test_bench_takes_samples_and_can_skip_the_cli_rows():
    args = build_parser().parse_args(["bench", "--samples", "3", "--no-cli"])
    assert args.n == 3 and args.no_cli
    args = build_parser().parse_args(["bench", "--n", "2"])
    assert args.n == 2 and not args.no_cli
