"""The evaluation helpers: sub_em's normalisation and empty guard, RULER-HQA and needle construction."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from lychee_memory.errors import ConfigurationError, DocumentError
from lychee_memory.eval import (
    evidence_recall_precision,
    exact_match,
    f1_score,
    normalize_answer,
    parse_methods,
    run_eval,
    sub_em,
)
from lychee_memory.eval.metrics import stated_polarity, sub_em_stated
from lychee_memory.eval.needles import NEEDLES
from lychee_memory.eval.tasks import (
    PoolRepeatWarning,
    TokenCounter,
    build_samples,
    data_dir,
    draw_paragraphs,
    needle_document,
    parse_lengths,
    published_samples,
    ruler_hqa_at_length,
)
from lychee_memory.testing import build_tiny_tokenizer


@pytest.mark.parametrize(
    "prediction,gold,hit",
    [
        ("The answer is Chief of Protocol.", "Chief of Protocol", True),
        ("chief of protocol", "The Chief of Protocol!", True),
        ("Protocol", "Chief of Protocol", True),  # the prediction inside the gold counts too
        ("Secretary of State", "Chief of Protocol", False),
        ("", "yes", False),
        ("   ", "yes", False),
        ("the", "the", False),  # normalises to nothing: never a hit
        ("Paris", ["London", "paris"], True),
    ],
)
def test_sub_em(prediction, gold, hit):
    assert sub_em(prediction, gold) is hit


@pytest.mark.parametrize(
    "prediction,gold,plain,stated",
    [
        # plain sub_em finds "no" inside "not": the stated variant needs the word itself
        ("Both airports are not in the same state.", "no", True, False),
        ('No, the answer is not "yes."', "yes", True, False),
        ('No, the answer is not "yes."', "no", True, True),
        ("The answer is yes.", "yes", True, True),
        ("Yes, both are genera of plants; neither is not one.", "yes", True, True),
        ("Yes.", ["no"], False, False),
        ("They know Norway well.", "no", True, False),  # "no" inside "know" and "norway"
        ("", "no", False, False),
        # golds other than yes or no are judged as plain sub_em does
        ("The population is 35,124.", "35,124", True, True),
        ("Secretary of State", "Chief of Protocol", False, False),
    ],
)
def test_sub_em_stated_judges_yes_no_by_the_word_stated(prediction, gold, plain, stated):
    assert sub_em(prediction, gold) is plain
    assert sub_em_stated(prediction, gold) is stated


def test_stated_polarity_is_the_first_yes_or_no_word():
    assert stated_polarity("No, the answer is not yes.") == "no"
    assert stated_polarity("The answer is: YES!") == "yes"
    assert stated_polarity("Nobody knows; yesterday it was not.") is None


def test_normalisation_drops_articles_punctuation_and_case():
    assert normalize_answer("  The  Silver-Heron, a SHIP ") == "silverheron ship"


def _hotpot_rows(count: int) -> list[dict]:
    rows = []
    for index in range(count):
        titles = [f"Title {index}-{k}" for k in range(10)]
        sentences = [[f"Sentence about {title}.", " More."] for title in titles]
        rows.append(
            {
                "_id": str(index),
                "question": f"Question {index}?",
                "answer": f"answer {index}",
                "context": {"title": titles, "sentences": sentences},
                "supporting_facts": {"title": titles[:2], "sent_id": [0, 0]},
            }
        )
    return rows


def test_needle_document_places_the_fact_and_reaches_the_size():
    tokenizer = build_tiny_tokenizer()
    paragraphs = [(f"Title {i}", f"Paragraph number {i} talks about the weather in town {i}. " * 3) for i in range(200)]
    needle = NEEDLES[0]
    text = needle_document(paragraphs, tokenizer, 3000, needle, depth=0.5, seed=3)
    assert text.count(needle.fact) == 1
    assert len(tokenizer(text).input_ids) >= 3000
    position = text.index(needle.fact) / len(text)
    assert 0.3 < position < 0.7
    with pytest.warns(PoolRepeatWarning, match="holds only"):
        repeated = needle_document(paragraphs[:3], tokenizer, 3000, needle, 0.5, 3)
    assert repeated.count(needle.fact) == 1 and len(tokenizer(repeated).input_ids) >= 2900


def test_data_dir_errors_are_specific(tmp_path, monkeypatch):
    monkeypatch.delenv("LYCHEE_DATA_DIR", raising=False)
    monkeypatch.setattr("lychee_memory.eval.tasks.default_data_places", lambda: [tmp_path])
    with pytest.raises(DocumentError, match="LYCHEE_DATA_DIR"):
        data_dir(None)
    with pytest.raises(DocumentError, match="does not exist"):
        data_dir(tmp_path / "nope")


SHARED = Path(os.environ.get("LYCHEE_DATA_DIR", Path(__file__).parent.parent.parent / "shared" / "data"))


@pytest.mark.skipif(not (SHARED / "hotpotqa").is_dir(), reason="the shared dataset directory is not present")
def test_our_ruler_hqa_format_matches_the_reference_samples():
    reference = published_samples(SHARED / "hotpotqa" / "lycheememory_reference_samples.json")
    assert reference and all(sample.context.count("Document ") >= 50 for sample in reference)
    first = reference[0].context.split("\n\n")[0]
    assert first.startswith("Document 1:\n") and first.count("\n") == 2


# Metrics and specs ---------------------------------------------------------------------------------------


def test_exact_match_and_f1_follow_squad():
    assert exact_match("The Silver Heron.", "silver heron") and not exact_match("the Silver Heron ship", "Silver Heron")
    assert not exact_match("", "")
    assert f1_score("the Silver Heron ship", "Silver Heron") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert f1_score("nothing alike", ["Silver Heron", "nothing"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score("", "yes") == 0.0


def test_evidence_recall_and_precision_count_overlaps():
    evidence = [(100, 150), (400, 420)]
    assert evidence_recall_precision([(0, 120), (200, 300)], evidence) == (0.5, 0.5)
    assert evidence_recall_precision([(0, 1000)], evidence) == (1.0, 1.0)
    assert evidence_recall_precision([], evidence) == (0.0, None)
    assert evidence_recall_precision([(0, 10)], []) == (None, None)


def test_lengths_and_methods_parse_or_fail_clearly():
    assert parse_lengths("7k, 14k,28000,1.5k") == [7000, 14000, 28000, 1500]
    with pytest.raises(ConfigurationError, match="cannot read context length"):
        parse_lengths("7k,lots")
    methods = parse_methods("lychee,lychee:compressor=attention;ratio=8,memagent,rag:top_k=2,full-context")
    assert [m.kind for m in methods] == ["lychee", "lychee", "memagent", "rag", "full-context"]
    assert methods[1].options == {"compressor": "attention", "ratio": 8} and methods[3].options == {"top_k": 2}
    assert parse_methods("lychee:compressor=key_norm,ratio=4,rag")[0].options == {"compressor": "key_norm", "ratio": 4}
    assert len(parse_methods("lychee-variants")) == 4
    assert parse_methods("memagent:use_presets=false")[0].options == {"use_presets": False}
    # "none" is a setting's own word (raw KV, the backbone reasoner), never "unset": only null is None
    assert parse_methods("lychee:compressor=none;reasoner_weights=none;threshold=null")[0].options == {
        "compressor": "none", "reasoner_weights": "none", "threshold": None
    }  # fmt: skip
    for bad, message in (
        ("vector", "unknown method"),
        ("lychee:ratio", "KEY=VALUE"),
        ("rag,rag", "twice"),
    ):
        with pytest.raises(ConfigurationError, match=message):
            parse_methods(bad)


# Samples -------------------------------------------------------------------------------------------------


def _squad_file(directory: Path, paragraphs: int = 200) -> None:
    articles = [
        {
            "title": f"Article_{a}",
            "paragraphs": [
                {"context": f"Paragraph {a}-{p} describes the weather and the harvest in the valley town {a}. " * 3}
                for p in range(paragraphs // 10)
            ],
        }
        for a in range(10)
    ]
    (directory / "squad").mkdir(parents=True, exist_ok=True)
    (directory / "squad" / "squad_dev_v2_subset.json").write_text(json.dumps({"data": articles}))


def _data(tmp_path: Path) -> Path:
    _squad_file(tmp_path)
    (tmp_path / "hotpotqa").mkdir()
    (tmp_path / "hotpotqa" / "hotpot_dev_distractor_q0-59.json").write_text(json.dumps(_hotpot_rows(6)))
    return tmp_path


def test_ruler_hqa_by_length_reaches_the_length_and_keeps_its_gold(tmp_path):
    tokenizer = build_tiny_tokenizer()
    data = _data(tmp_path)
    samples = build_samples("ruler-hqa", tokenizer, 2000, n=2, data=data, seed=3)
    assert [s.answers for s in samples] == [["answer 0"], ["answer 1"]]
    for index, sample in enumerate(samples):
        tokens = len(tokenizer(sample.context).input_ids)
        assert 1940 <= tokens < 2600, "about the length asked for"
        for k in range(10):
            assert f"\nTitle {index}-{k}\n" in sample.context
        assert len(sample.evidence) == 2
        assert all(sample.context[a:b].startswith("Document ") for a, b in sample.evidence)
    assert build_samples("ruler-hqa", tokenizer, 2000, n=2, data=data, seed=3) == samples
    with pytest.raises(DocumentError, match="no usable paragraph"):
        ruler_hqa_at_length(_hotpot_rows(1)[0], [], TokenCounter(tokenizer), 50_000, 0, "x")


def test_a_pool_smaller_than_the_target_repeats_every_paragraph_before_any_twice(recwarn):
    tokenizer = build_tiny_tokenizer()
    count = TokenCounter(tokenizer)
    pool = [(f"T{i}", f"Paragraph number {i} about the river.") for i in range(30)]
    pool_tokens = sum(count(*paragraph) for paragraph in pool)
    rng = random.Random(5)
    small = draw_paragraphs(pool, count, pool_tokens // 2, rng)
    assert len(set(small)) == len(small) and not recwarn.list, "below the pool size: no repeats, no warning"
    with pytest.warns(PoolRepeatWarning, match="repeat"):
        drawn = draw_paragraphs(pool, count, int(pool_tokens * 2.5), random.Random(5))
    assert sum(count(*paragraph) for paragraph in drawn) >= pool_tokens * 2.5
    assert sorted(drawn[:30]) == sorted(pool) and sorted(drawn[30:60]) == sorted(pool), "whole passes first"
    assert drawn[:30] != drawn[30:60], "each pass in a fresh order"
    with pytest.raises(DocumentError, match="no usable paragraph"):
        draw_paragraphs(pool, count, 100, rng, keep=lambda paragraph: False)


def test_ruler_hqa_past_its_pool_keeps_one_copy_of_each_gold_paragraph(tmp_path):
    tokenizer = build_tiny_tokenizer()
    data = _data(tmp_path)
    with pytest.warns(PoolRepeatWarning):
        sample = build_samples("ruler-hqa", tokenizer, 60_000, n=1, data=data, seed=0)[0]
    assert len(tokenizer(sample.context).input_ids) >= 58_500
    for k in range(10):
        assert sample.context.count(f"\nTitle 0-{k}\n") == 1, "the question's own paragraphs are never repeated"
    assert len(sample.evidence) == 2


@pytest.mark.parametrize(
    "prediction,failed",
    [
        ("The access code is 58213.", False),
        ("58213", False),
        ("The code is 5821.", True),  # a dropped digit
        ("The code is 582133.", True),  # a doubled digit
        ("The code is 21776.", True),  # a code of another document
        ("It was built in 1973.", False),  # a number the document holds
        ("The code is 123.", False),  # too short to be a code
        ("Tollan", False),
    ],
)
def test_a_copying_failure_is_a_code_the_document_does_not_hold(prediction, failed):
    from lychee_memory.eval.metrics import copying_failure

    context = "Built in 1973. Security note: the access code for the east shed is 58213. Pier 41221 holds 12 boats."
    assert copying_failure(prediction, context) is failed
    assert copying_failure("The code is 1221.", context), "a number inside a longer one is not the document's"


def test_eval_records_count_copying_failures_for_code_answers_only(tmp_path):
    from lychee_memory.answer import Answer
    from lychee_memory.eval.runner import Method, SampleResult, score_answer, summarize

    tokenizer = build_tiny_tokenizer()
    data = _data(tmp_path)
    (needle,) = build_samples("needle", tokenizer, 1500, n=1, data=data, seed=4)
    (twohop,) = build_samples("needle-twohop", tokenizer, 1500, n=1, data=data, seed=4)
    method = Method("lychee", "lychee")
    results = []
    for sample, text in ((needle, f"It is {needle.answers[0]}."), (needle, "It is 99999."), (twohop, "It is 99999.")):
        result = SampleResult("lychee", "needle", 1500, 1500, sample.sample_id, sample.question, sample.answers)
        results.append(score_answer(result, method, sample, Answer(sample.question, text, "lychee")))
    assert "99999" not in needle.context
    assert [r.copying_failure for r in results] == [False, True, None]  # a city answer has no code to copy
    assert summarize(results[:2])[0]["copying_failures"] == 1


def test_two_hop_records_say_which_fact_comes_first_in_the_document(tmp_path):
    from lychee_memory.eval.runner import fact_order

    tokenizer = build_tiny_tokenizer()
    data = _data(tmp_path)
    samples = build_samples("needle-twohop", tokenizer, 1500, n=12, data=data, seed=3)
    orders = []
    for sample in samples:
        person = sample.question.split("where ")[1].removesuffix(" works?")
        hop_one = sample.context.index(f"Personnel record: {person} works")
        hop_two = sample.context.index("Company register: ")
        orders.append(fact_order(sample))
        assert orders[-1] == ("forward" if hop_one < hop_two else "reversed")
    assert set(orders) == {"forward", "reversed"}, "the family plants both orders"
    assert fact_order(build_samples("needle", tokenizer, 1500, n=1, data=data, seed=3)[0]) is None


@pytest.mark.parametrize("family,facts", [("needle", 1), ("needle-multikey", 4), ("needle-twohop", 2)])
def test_needle_families_plant_their_facts_and_answer_from_them(tmp_path, family, facts):
    tokenizer = build_tiny_tokenizer()
    data = _data(tmp_path)
    samples = build_samples(family, tokenizer, 1500, n=3, data=data, seed=1)
    assert len({s.question for s in samples}) == 3, "each sample asks something else"
    for sample in samples:
        assert len(sample.evidence) == facts
        planted = [sample.context[a:b] for a, b in sample.evidence]
        assert all(sample.context.count(fact) == 1 for fact in planted)
        assert any(sample.answers[0] in fact for fact in planted)
        if family == "needle-twohop":
            person = sample.question.split("where ")[1].removesuffix(" works?")
            hop_one = next(fact for fact in planted if person in fact)
            company = hop_one.split(" at ")[1].rstrip(".")
            assert any(company in fact and sample.answers[0] in fact for fact in planted)
        assert len(tokenizer(sample.context).input_ids) >= 1450
    assert build_samples(family, tokenizer, 1500, n=3, data=data, seed=1) == samples
    with pytest.warns(PoolRepeatWarning):
        (long,) = build_samples(family, tokenizer, 40_000, n=1, data=data, seed=1)
    assert len(tokenizer(long.context).input_ids) >= 39_000
    assert all(long.context.count(long.context[a:b]) == 1 for a, b in long.evidence), "each fact planted once"
    assert build_samples(family, tokenizer, 1500, n=3, data=data, seed=2) != samples


def test_published_ruler_hqa_files_are_read_in_both_formats(tmp_path):
    memagent = [{"context": "Document 1:\nA\nText.", "input": "Who?", "answers": ["Ann"], "index": 7}]
    (tmp_path / "eval_50.json").write_text(json.dumps(memagent))
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(row) for row in memagent * 2))
    samples = published_samples(tmp_path / "eval_50.json")
    assert samples[0].question == "Who?" and samples[0].answers == ["Ann"] and samples[0].sample_id == "eval_50-7"
    assert len(published_samples(tmp_path / "rows.jsonl")) == 2
    (tmp_path / "bad.json").write_text(json.dumps([{"context": "x"}]))
    with pytest.raises(DocumentError, match="neither"):
        published_samples(tmp_path / "bad.json")
    with pytest.raises(DocumentError, match="not found"):
        published_samples(tmp_path / "missing.json")


# Running -------------------------------------------------------------------------------------------------


def test_eval_runs_every_method_and_writes_reports(tmp_path):
    data = _data(tmp_path / "data")
    out = tmp_path / "out"
    run = run_eval(
        "needle",
        [600, 4500],
        n=2,
        methods="lychee,lychee:compressor=key_norm;ratio=2,memagent,full-context,rag:top_k=2;chunk_tokens=128",
        model="tiny-random-llama",
        data=data,
        out=out,
        engine_options={"chunk_tokens": 128, "max_memory_tokens": 12, "max_answer_tokens": 6},
        show_progress=False,
    )
    assert len(run.results) == 2 * 2 * 5
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 20 and json.loads(lines[0])["method"] == "lychee"
    rows = {(row["method"], row["target_tokens"]): row for row in run.rows}
    assert set(rows) == {
        (m, t)
        for m in (
            "lychee",
            "lychee:compressor=key_norm;ratio=2",
            "memagent",
            "full-context",
            "rag:top_k=2;chunk_tokens=128",
        )
        for t in (600, 4500)
    }
    memagent = rows[("memagent", 4500)]
    assert memagent["gate_recall"] == 1.0, "MemAgent reads every chunk, so it reads the evidence"
    lychee = rows[("lychee", 4500)]
    assert lychee["blocks"] > 1 and 1 <= lychee["blocks_read"] <= lychee["blocks"]
    assert lychee["cold_seconds"] > lychee["query_seconds"] > 0
    full = rows[("full-context", 4500)]
    assert full["skipped"] == 2 and full["sub_em"] is None, "the tiny model's window is 4096 tokens"
    assert rows[("full-context", 600)]["skipped"] == 0
    rag = rows[("rag:top_k=2;chunk_tokens=128", 4500)]
    assert rag["blocks_read"] == 2 and rag["blocks"] > 2 and rag["cold_seconds"] > rag["query_seconds"]
    for result in run.results:
        assert result.sub_em == sub_em(result.prediction, result.answers)
    table = (out / "summary.md").read_text()
    assert "| full-context | " in table and table.count("\n") >= 10
    for name in ("accuracy_vs_length.png", "latency_vs_length.png", "summary.json"):
        assert (out / name).stat().st_size > 0


def test_eval_warns_when_two_methods_resolve_to_one_engine(tmp_path):
    """Two labels, one engine (here an option naming the default): the run says so before measuring twice."""
    with pytest.warns(UserWarning, match="'lychee' and 'lychee:threshold=null' resolve to the same settings"):
        run = run_eval(
            "needle",
            [600],
            n=1,
            methods="lychee,lychee:threshold=null",
            model="tiny-random-llama",
            data=_data(tmp_path / "data"),
            out=tmp_path / "out",
            engine_options={"chunk_tokens": 128, "max_memory_tokens": 12, "max_answer_tokens": 6},
            show_progress=False,
        )
    assert [r.prediction for r in run.results[:1]] == [r.prediction for r in run.results[1:]]


def test_bench_measures_each_method_in_its_own_process_and_reports_ratios(tmp_path):
    from lychee_memory.eval.bench import ratio_table, run_bench

    data = _data(tmp_path / "data")
    run = run_bench(
        [900],
        methods="lychee,memagent,full-context",
        model="tiny-random-qwen2",
        data=data,
        engine_options={"chunk_tokens": 128, "max_memory_tokens": 12, "max_answer_tokens": 6},
        out=tmp_path / "out",
        json_path=tmp_path / "rows.json",
        show_progress=False,
    )
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert rows == run.rows and len(rows) == 6
    for row in rows:
        assert {"method", "context_tokens", "phase", "seconds", "peak_mb", "accuracy"} <= set(row)
        assert row["task"] == "needle" and row["model"] == "tiny-random-qwen2", "rows say what they measured"
        assert row["seconds"] > 0 and row["peak_mb"] > 50 and row["context_tokens"] >= 850
    lychee = {row["phase"]: row for row in rows if row["method"] == "lychee"}
    assert lychee["cold"]["seconds"] > lychee["warm"]["seconds"]
    assert lychee["cold"]["tokens_prefilled"] >= lychee["warm"]["tokens_prefilled"] + 850, "ingest reads every token"
    memagent = {row["phase"]: row for row in rows if row["method"] == "memagent"}
    assert memagent["cold"]["seconds"] == memagent["warm"]["seconds"], "nothing to build ahead"
    expected = memagent["warm"]["seconds"] / lychee["warm"]["seconds"]
    assert f"{expected:.1f}x" in ratio_table(rows)
    assert (tmp_path / "out" / "bench.png").stat().st_size > 0


def test_cli_eval_and_bench(tmp_path, capsys):
    from lychee_memory.cli import main

    data = _data(tmp_path / "data")
    common = ["--model", "tiny-random-llama", "--data", str(data), "--no-progress", "--chunk-tokens", "128"]
    status = main(
        [
            "eval",
            "needle-twohop",
            "--lengths",
            "700",
            "--n",
            "1",
            "--methods",
            "lychee",
            "--out",
            str(tmp_path / "e"),
            *common,
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0 and "| lychee |" in printed and (tmp_path / "e" / "summary.md").is_file()
    for arguments, message in (
        (["eval", "needle", "--lengths", "7k,lots", *common], "cannot read context length"),
        (["eval", "needle", "--methods", "vector", *common], "unknown method"),
        (["eval", "needle", "--n", "0", *common], "--n must be at least 1"),
        (["bench", "--lengths", "0", *common], "at least one token"),
        (["eval", "ruler-hqa", "--model", "tiny-random-llama", "--data", str(tmp_path / "nowhere")], "does not exist"),
    ):
        assert main(arguments) == 2
        assert message in capsys.readouterr().err


def test_needle_tasks_and_bench_run_without_any_dataset(tmp_path, monkeypatch, capsys):
    """A fresh clone has no dataset: needle evals and `lychee bench --quick` plant facts in generated text."""
    from lychee_memory.cli import main
    from lychee_memory.eval.haystack import generated_paragraphs

    monkeypatch.delenv("LYCHEE_DATA_DIR", raising=False)
    monkeypatch.setattr("lychee_memory.eval.tasks.default_data_places", lambda: [tmp_path])
    monkeypatch.chdir(tmp_path)
    tokenizer = build_tiny_tokenizer()
    (sample,) = build_samples("needle", tokenizer, 1500, 1, None, seed=0)
    assert sample.answers[0] in sample.context
    assert any(text[:80] in sample.context for _, text in generated_paragraphs())
    with pytest.raises(DocumentError, match="LYCHEE_DATA_DIR"):
        build_samples("ruler-hqa", tokenizer, 1500, 1, None)  # RULER-HQA needs HotpotQA and says so
    common = ["--model", "tiny-random-llama", "--no-progress", "--chunk-tokens", "128", "--max-memory-tokens", "8"]
    status = main(["eval", "needle", "--lengths", "900", "--n", "1", "--methods", "lychee", "--out", "e", *common])
    assert status == 0, capsys.readouterr().err
    assert "(text: generated haystack)" in (tmp_path / "e" / "summary.md").read_text()
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["source"] == "generated haystack"
    status = main(["bench", "--quick", "--lengths", "900", "--methods", "lychee", "--out", "b", *common])
    assert status == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert {row["source"] for row in rows} == {"generated haystack"} and all(row["seconds"] > 0 for row in rows)


def test_methods_that_differ_only_in_gate_share_one_bank_per_sample(monkeypatch):
    from lychee_memory.engine import LycheeMemory
    from lychee_memory.eval.runner import MethodRunner, parse_methods, run_method
    from lychee_memory.eval.tasks import QASample

    from .conftest import FACTS_DOCUMENT

    runner = MethodRunner("tiny-random-llama", {"chunk_tokens": 64, "max_memory_tokens": 8, "max_answer_tokens": 4})
    calls = []
    original = LycheeMemory.ingest

    def counting(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LycheeMemory, "ingest", counting)
    methods = parse_methods("lychee,lychee:gate=prompt,lychee:compressor=key_norm;ratio=2")
    # a method that names the base's own values resolves to the same engine: flagged, the others are not
    assert runner.same_settings([*methods, *parse_methods("lychee:max_answer_tokens=4;threshold=null")]) == [
        ("lychee", "lychee:max_answer_tokens=4;threshold=null")
    ]
    assert runner.same_settings(methods) == []
    for context in (FACTS_DOCUMENT, FACTS_DOCUMENT + " One more line."):
        sample = QASample("What is the access code?", ["58213"], context, "s", [(0, 10)])
        results = [run_method(runner, method, sample, "needle", 100, 100) for method in methods]
        assert results[0].ingest_seconds == results[1].ingest_seconds > 0
    assert len(calls) == 4, "once per sample for the raw-KV recipe and once for key_norm"
