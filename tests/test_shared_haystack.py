"""HotpotQA in one shared haystack: the haystack, evidence coverage, supporting-fact recall, exact paired
intervals, and the benchmark script end to end on a tiny model with fake HotpotQA records."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lychee_memory.errors import ConfigurationError, DocumentError
from lychee_memory.eval.evidence import (
    answer_evidence,
    answer_in_evidence,
    fact_recall,
    held,
    merge_spans,
    paragraphs_covered,
)
from lychee_memory.eval.metrics import sub_em
from lychee_memory.eval.paired import clopper_pearson, paired_comparison, sign_test_p
from lychee_memory.eval.shared_bench import (
    RAG_VARIANTS,
    bank_recipe,
    method_engine,
    paired_table,
    parse_method,
    parse_methods,
    rag_matches,
    rag_variants,
    run_shared,
    share_table,
)
from lychee_memory.eval.shared_haystack import build_shared_haystack, question_split_name

from .conftest import benchmark_script

REPOSITORY = Path(__file__).resolve().parents[1]
SCRIPT = REPOSITORY / "benchmarks" / "hotpot_shared.py"


def fake_row(tag: str, answer: str, shared: tuple[str, list[str]] | None = None) -> dict:
    """A HotpotQA record with 6 paragraphs: gold ``{tag} one`` (fact: sentence 1) and ``{tag} two`` (fact:
    sentence 0), four distractors; ``shared`` replaces the last distractor (a paragraph of another record)."""
    titles = [f"{tag} one", f"{tag} two", *(f"{tag} filler {i}" for i in range(4))]
    sentences = [
        [f"The {tag} tower stands by the river.", f" Its keeper was {answer} of {tag}ville.", " It has a bell."],
        [f"{answer} of {tag}ville was born in the year {len(tag) + 1900}.", " He liked boats."],
        *([f"Filler {tag} paragraph {i} talks about grain.", f" Barley grows in field {i}."] for i in range(4)),
    ]
    if shared is not None:
        titles[-1], sentences[-1] = shared
    return {
        "question": f"When was the keeper of the {tag} tower born?",
        "answer": answer,
        "type": "bridge",
        "supporting_facts": {"title": [f"{tag} one", f"{tag} two", f"{tag} two"], "sent_id": [1, 0, 7]},
        "context": {"title": titles, "sentences": sentences},
    }


def words(title: str, text: str) -> int:
    """A stand-in token counter: words plus the header."""
    return len(text.split()) + 3


def all_tokens(rows: list[dict]) -> int:
    """Tokens of every distinct paragraph of ``rows``: a target that places each of them once."""
    paragraphs = {(t, "".join(s)) for row in rows for t, s in zip(row["context"]["title"], row["context"]["sentences"])}
    return sum(words(title, text) for title, text in paragraphs)


@pytest.fixture
def rows() -> list[dict]:
    first = fake_row("Arvel", "Odile Fenwick")
    second = fake_row("Kestrel", "Bram Holt", shared=(first["context"]["title"][0], first["context"]["sentences"][0]))
    return [first, second]


# The haystack ----------------------------------------------------------------------------------------------


def test_every_gold_paragraph_appears_exactly_once_and_spans_point_at_it(rows):
    haystack = build_shared_haystack(rows, words, all_tokens(rows), seed=3)
    assert [q.sample_id for q in haystack.questions] == ["hotpot-0", "hotpot-1"]
    # "Arvel one" is gold for the first record and a distractor of the second: still placed once.
    for row in rows:
        for title, sentences in zip(row["context"]["title"], row["context"]["sentences"]):
            if title in row["supporting_facts"]["title"]:
                assert haystack.context.count("".join(sentences)) == 1, title
    assert haystack.paragraphs == 11  # 12 paragraphs, one shared
    for question, row in zip(haystack.questions, rows):
        gold = [haystack.context[start:end] for start, end in question.gold]
        assert [piece.split("\n")[1] for piece in gold] == row["supporting_facts"]["title"][:2]
        assert all(piece.startswith("Document ") for piece in gold)
        # sentence 1 of paragraph one and sentence 0 of paragraph two; the out-of-range id 7 is skipped
        expected = [[row["context"]["sentences"][0][1].strip()], [row["context"]["sentences"][1][0].strip()]]
        assert [[haystack.context[s:e] for s, e in facts] for facts in question.gold_facts] == expected
        for (start, end), facts in zip(question.gold, question.gold_facts):
            assert all(start <= s < e <= end for s, e in facts)
        assert question.split == question_split_name(row["question"])


def test_the_haystack_is_deterministic_by_seed(rows):
    target = all_tokens(rows)
    first = build_shared_haystack(rows, words, target, seed=0)
    assert build_shared_haystack(rows, words, target, seed=0) == first
    assert any(build_shared_haystack(rows, words, target, seed=s).context != first.context for s in range(1, 6))


def test_questions_whose_gold_does_not_fit_are_left_out(rows):
    # each record's gold holds 18 + 13 words (+3 each) -> 37 tokens; 60 % of 100 fits one record only
    haystack = build_shared_haystack(rows, words, 100, seed=0, gold_share=0.6)
    assert [q.sample_id for q in haystack.questions] == ["hotpot-0"]
    assert haystack.left_out == ("hotpot-1",)
    with pytest.raises(DocumentError, match="fit"):
        build_shared_haystack(rows, words, 20, seed=0)
    with pytest.raises(ConfigurationError, match="gold_share"):
        build_shared_haystack(rows, words, 100, gold_share=0)


# Coverage and supporting-fact recall -----------------------------------------------------------------------


def test_coverage_and_fact_recall_against_hand_computed_values():
    assert merge_spans([(5, 10), (0, 3), (3, 4), (9, 12), (7, 7)]) == [(0, 4), (5, 12)]
    assert held((2, 8), [(0, 5), (5, 9)])  # a sentence cut by a block boundary, both blocks read
    assert not held((2, 8), [(0, 5), (6, 9)])
    assert fact_recall([(0, 5), (5, 9)], [(2, 8), (10, 12), (0, 1)]) == pytest.approx(2 / 3)
    assert fact_recall([(0, 5)], []) is None
    gold_facts = [[(2, 8)], [(10, 12), (0, 1)], []]
    assert paragraphs_covered([(0, 9)], gold_facts) == 1  # the second misses (10, 12); the third records none
    assert paragraphs_covered([(0, 13)], gold_facts) == 2
    block = SimpleNamespace(char_start=0, char_end=100)
    excerpt = SimpleNamespace(char_start=10, char_end=20)
    assert answer_evidence(SimpleNamespace(blocks=[block])) == ("blocks", [(0, 100)])
    assert answer_evidence(SimpleNamespace(blocks=[block], evidence=[])) == ("blocks", [(0, 100)])
    assert answer_evidence(SimpleNamespace(blocks=[block], evidence=[excerpt])) == ("excerpts", [(10, 20)])


def test_answer_in_evidence_against_hand_worked_cases():
    context = "The Hour of Bewilderbeast is by Badly Drawn Boy. It sold 19,990 copies in 1999."
    boy = (context.index("Badly"), context.index(". It"))
    sold = (context.index("It sold"), len(context))
    assert answer_in_evidence(context, [boy], ["badly drawn boy!"])  # case and punctuation do not count
    assert not answer_in_evidence(context, [sold], ["Badly Drawn Boy"])  # the answer is outside the evidence
    assert answer_in_evidence(context, [sold], ["1999"]) and answer_in_evidence(context, [sold], ["19990"])
    assert not answer_in_evidence(context, [sold], ["199"])  # whole words: 199 is only part of 1999
    assert answer_in_evidence(context, [(0, 10), (10, 25)], ["Hour of Bewilderbeast"])  # across touching spans
    assert answer_in_evidence(context, [boy], ["Wolf Alice", "Drawn Boy"])  # any gold answer
    assert not answer_in_evidence(context, [], ["Badly Drawn Boy"])
    assert answer_in_evidence(context, [boy], ["yes"]) is None  # a yes/no answer is in no evidence's words
    assert answer_in_evidence(context, [boy], ["No", ""]) is None


def test_summary_tables_judge_yes_no_answers_by_the_word_stated():
    def record(method, sample, answer, gold, **extra):
        return {
            "length": 600, "block_tokens": 48, "sample_id": sample, "split": "confirming", "method": method,
            "answer": answer, "answers": [gold], "sub_em": None, "both_gold": True, "answer_in_evidence": None,
            "fact_recall": 1.0, "blocks_read": 1, "tokens_read": 10, "seconds": 1.0, **extra,
        }  # fmt: skip

    answers = {  # question: (gold, ours, RAG's)
        "q1": ("no", "Both airports are not in Michigan.", "No, they are not."),
        "q2": ("yes", "The answer is yes.", "No, the answer is not yes."),
        "q3": ("Paris", "It is Paris.", "London"),
    }
    records = []
    for sample, (gold, ours, theirs) in answers.items():
        records.append(record("mine", sample, ours, gold, kind="lychee"))
        records.append(record("rag@mine", sample, theirs, gold, kind="rag", matched_to="mine"))
    for row in records:
        row["sub_em"] = sub_em(row["answer"], row["answers"])
    shares = share_table(records)
    # plain sub_em: ours 3 of 3 ("no" is inside "not"), RAG's 2 of 3; stated: ours 2 (q2, q3), RAG's 1 (q1)
    assert "| confirming | 600 | 48 | mine | 3 | 3/3 = 100% [29%, 100%] | 3/3 = 100% [29%, 100%] | 2/3 = 67%" in shares
    assert "| confirming | 600 | 48 | rag@mine | 3 |" in shares and "| 2/3 = 67% [9%, 99%] | 1/3 = 33%" in shares
    paired = paired_table(records)
    row = next(line for line in paired.splitlines() if line.startswith("| confirming | 600 | 48 | mine | rag@mine"))
    assert row.split(" | ")[-2].startswith("+1/-0 (=2)")  # sub_em: q3 won
    assert row.split(" | ")[-1].startswith("+2/-1 (=0)")  # as stated: q2, q3 won, q1 lost


# Exact intervals -------------------------------------------------------------------------------------------


def test_clopper_pearson_matches_closed_forms_and_tables():
    assert clopper_pearson(0, 5) == pytest.approx((0.0, 1 - 0.025 ** (1 / 5)), abs=1e-9)
    assert clopper_pearson(5, 5) == pytest.approx((0.025 ** (1 / 5), 1.0), abs=1e-9)
    assert clopper_pearson(5, 10) == pytest.approx((0.187086, 0.812914), abs=1e-6)  # published table value
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    with pytest.raises(ConfigurationError):
        clopper_pearson(3, 2)


def test_paired_comparison_against_a_hand_computed_case():
    a = [True, True, True, False, True, False, False, True, False, False]
    b = [False, False, False, False, True, False, False, True, False, False]
    result = paired_comparison(a, b)
    assert (result.n, result.wins, result.losses, result.ties) == (10, 3, 0, 7)
    assert result.difference == pytest.approx(0.3)
    lower = 0.025 ** (1 / 3)  # Clopper-Pearson lower bound of 3/3 wins
    assert result.win_share_interval == pytest.approx((lower, 1.0), abs=1e-9)
    assert result.difference_interval == pytest.approx((0.3 * (2 * lower - 1), 0.3), abs=1e-9)
    assert result.p_value == pytest.approx(2 * 0.5**3)
    assert sign_test_p(2, 2) == 1.0 and sign_test_p(0, 0) == 1.0
    assert sign_test_p(1, 4) == pytest.approx(2 * (1 + 5) / 32)
    assert paired_comparison(b, a).difference_interval == pytest.approx((-0.3, -0.3 * (2 * lower - 1)), abs=1e-9)
    with pytest.raises(ConfigurationError, match="same questions"):
        paired_comparison(a, b[:3])
    assert not math.isnan(paired_comparison([], []).difference)


# Methods ---------------------------------------------------------------------------------------------------


def test_methods_are_names_with_dotted_overrides(engine_factory):
    method = parse_method('few:gate.max_relevant_blocks=2;reasoner.stop_strings=["\\n"], read_mode=text')
    assert method.options == {
        "gate": {"max_relevant_blocks": 2},
        "reasoner": {"stop_strings": ["\n"]},
        "read_mode": "text",
    }
    engine = method_engine(engine_factory(), method, 32)
    assert engine.config.gate.max_relevant_blocks == 2 and engine.chunk_tokens == 32
    assert engine.config.reasoner.read_mode == "text"
    with pytest.raises(ConfigurationError, match="KEY=VALUE"):
        parse_method("bad:gate.rule")
    with pytest.raises(ConfigurationError, match="section.field"):
        parse_method("bad:a.b.c=1")
    with pytest.raises(ConfigurationError, match="twice"):
        parse_methods(["x", "x:gate=prompt"])
    with pytest.raises(ConfigurationError, match="RAG"):
        parse_methods(["rag"])
    with pytest.raises(ConfigurationError, match="unknown RAG"):
        rag_variants(["bm25-only"])
    assert rag_variants(["rag", "rag-hybrid"]) == ["rag", "rag-hybrid"]
    assert {name: RAG_VARIANTS[name](engine).retrieval for name in ("rag", "rag-hybrid")} == {
        "rag": "dense",
        "rag-hybrid": "hybrid",  # the hybrid RAG (BM25 + MiniLM by reciprocal rank) a hybrid first stage must beat
    }
    with pytest.raises(ConfigurationError, match="unknown option"):
        method_engine(engine_factory(), parse_method("x:no_such_setting=1"), None)


def test_a_lexical_and_a_hybrid_method_never_share_a_bank(rows, engine_factory):
    """A lexical method's bank carries no key index; a hybrid method asked over it would rank by text alone."""
    base = engine_factory()
    haystack = build_shared_haystack(rows, _tiny_counter(), 600, 0)
    methods = parse_methods(["lex:gate.prefilter=lexical", "lex2:gate.prefilter=lexical;gate.max_relevant_blocks=1"])
    methods += parse_methods(["hyb:gate.prefilter=hybrid"])
    engines = {method.name: method_engine(base, method, 48) for method in methods}
    assert bank_recipe(engines["lex"]) == bank_recipe(engines["lex2"])  # same blocks: one ingest
    assert bank_recipe(engines["lex"]) != bank_recipe(engines["hyb"])
    banks: list[dict] = []
    records = list(run_shared(base, haystack, methods, [48], [], show_progress=False, banks=banks))
    assert sorted(tuple(bank["methods"]) for bank in banks) == [("hyb",), ("lex", "lex2")]
    assert len(records) == len(haystack.questions) * 3


# The script ------------------------------------------------------------------------------------------------


def test_the_script_explains_itself():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--block-tokens" in result.stdout and "--method" in result.stdout and "confirm" in result.stdout


def script():
    """The benchmark script as a module."""
    return benchmark_script("hotpot_shared")


def test_the_script_asks_one_split_or_both_alternating():
    from types import SimpleNamespace

    names = {"t": "tuning", "c": "confirming"}
    questions = [SimpleNamespace(id=i, split=names[letter]) for i, letter in enumerate("ttcttcc")]
    ask = script().asked_questions

    def ids(*args):
        return [q.id for q in ask(questions, *args)]

    assert ids() == [0, 2, 1, 5, 3, 6, 4]  # tuning and confirming alternate, the longer split's rest last
    assert ids("tuning") == [0, 1, 3, 4] and ids("confirming") == [2, 5, 6]
    assert ids("confirming", 1) == [5, 6] and ids("tuning", 1, 2) == [1, 3] and ids("all", 2, 3) == [1, 5, 3]
    with pytest.raises(SystemExit, match="--split: 'held-out'"):
        ask(questions, "held-out")


def run_script(rows: list[dict], tmp_path: Path, rag: str, *extra: str) -> tuple[list[dict], Path]:
    """The script in this process on the tiny model: two questions, two block sizes, two methods."""
    data = tmp_path / "hotpot.json"
    data.write_text(json.dumps(rows))
    out = tmp_path / "out"
    argv = ["--hotpot-file", str(data), "--model", "tiny-random-llama", "--lengths", "600", "--block-tokens"]
    argv += ["48,96", "--method", "every:gate.rule=all", "--method", "one:gate.rule=all;gate.max_relevant_blocks=1"]
    argv += ["--out", str(out)]
    argv += ["--engine-option", "max_memory_tokens=8", "--engine-option", "max_answer_tokens=4", "--quiet"]
    script().main([*argv, "--rag", rag, *extra])
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()], out


def check_evidence_measures(rows: list[dict], records: list[dict]) -> None:
    """Each record's fact recall and both-gold flag against an independent reference: a supporting sentence is
    held when its text lies inside one merged piece of the record's evidence."""
    haystack = build_shared_haystack(rows, _tiny_counter(), 600, 0)
    context, by_id = haystack.context, {q.sample_id: q for q in haystack.questions}
    for record in records:
        pieces = [context[s:e] for s, e in merge_spans(tuple(span) for span in record["spans"])]
        found = [any(context[s:e] in piece for piece in pieces) for s, e in by_id[record["sample_id"]].facts]
        assert record["fact_recall"] == pytest.approx(sum(found) / len(found))
        assert record["both_gold"] == all(found)  # one fact per gold paragraph in these records
        answer = by_id[record["sample_id"]].answers[0]  # a name, written as-is in the paragraphs
        assert record["answer_in_evidence"] == any(answer in piece for piece in pieces)


def test_the_script_runs_end_to_end_on_a_tiny_model(rows, tmp_path):
    records, out = run_script(rows, tmp_path, "none")
    assert len(records) == 2 * 2 * 2  # questions x block sizes x methods
    assert {(r["block_tokens"], r["method"]) for r in records} == {
        (size, name) for size in (48, 96) for name in ("every", "one")
    }
    assert all(r["blocks_read"] <= 1 for r in records if r["method"] == "one")
    assert all(r["blocks_read"] > 1 for r in records if r["method"] == "every")  # each override reached its engine
    check_evidence_measures(rows, records)
    for record in records:  # these engines answer from the blocks they read: what was read is what reached
        assert record["evidence"] == "blocks" and record["gold_read"] == record["gold_covered"]
        assert len(record["read"]) == record["blocks_read"]
    summary = (out / "summary.md").read_text()
    splits = {r["split"] for r in records}
    assert all(
        f"| {split} | 600 | 48 | one |" in summary and f"| {split} | 600 | 96 | every |" in summary for split in splits
    )
    assert "| all | 600 | 48 | one | 2 |" in summary
    # the second method against the first, paired by question: wins and losses counted here by hand
    for size in (48, 96):
        outcome = {(r["method"], r["sample_id"]): r["both_gold"] for r in records if r["block_tokens"] == size}
        ids = {r["sample_id"] for r in records}
        wins = sum(outcome[("one", i)] and not outcome[("every", i)] for i in ids)
        losses = sum(outcome[("every", i)] and not outcome[("one", i)] for i in ids)
        assert f"| all | 600 | {size} | one | every | +{wins}/-{losses} (={len(ids) - wins - losses})" in summary
    assert (out / "shares.png").stat().st_size > 1000
    # a run's records are enough to write its summary again (runs stopped early, runs merged)
    script().main(["--from-records", str(out / "records.jsonl"), "--out", str(tmp_path / "again")])
    again = (tmp_path / "again" / "summary.md").read_text()
    assert again.split("\n", 1)[1] == summary.split("\n", 1)[1]  # all but the command line


@pytest.mark.slow  # loading LlamaIndex and MiniLM takes 10-60 s on the shared 2-core machine
def test_the_script_matches_rag_tokens_to_each_method(rows, tmp_path):
    """RAG rows get as many 256-token chunks as the method read, and (``/evidence`` rows) as the tokens of the
    evidence that reached its answer, counted here with the tokenizer over the record's evidence spans."""
    pytest.importorskip("llama_index.core")
    records, out = run_script(rows, tmp_path, "rag", "--rag-match", "read", "--rag-match", "evidence")
    assert len(records) == 2 * 2 * 6  # questions x block sizes x (2 methods + RAG matched to each, two ways)
    check_evidence_measures(rows, records)
    context = build_shared_haystack(rows, _tiny_counter(), 600, 0).context
    tokenizer = _tiny_counter().tokenizer
    for record in records:
        if record["kind"] == "lychee":
            counted = sum(len(tokenizer(context[s:e], add_special_tokens=False).input_ids) for s, e in record["spans"])
            assert record["evidence_tokens"] == counted
            continue
        matched = next(
            r
            for r in records
            if r["method"] == record["matched_to"]
            and r["sample_id"] == record["sample_id"]
            and r["block_tokens"] == record["block_tokens"]
        )
        on_evidence = record["method"].endswith("/evidence")
        assert record["matched_on"] == ("evidence_tokens" if on_evidence else "tokens_read")
        budget = matched["evidence_tokens"] if on_evidence else matched["tokens_read"]
        assert record["top_k"] == max(1, round(budget / 256))
        assert record["evidence"] == "chunks" and record["blocks_read"] == record["top_k"]
    summary = (out / "summary.md").read_text()
    assert (
        "| all | 600 | 96 | one | rag@one |" in summary and "| all | 600 | 96 | every | rag@every/evidence |" in summary
    )
    with pytest.raises(ConfigurationError, match="unknown RAG match"):
        rag_matches(["chunks"])
    # records written before evidence matching (no evidence_tokens) still set the budget, counted from their spans
    old = [
        {key: value for key, value in r.items() if key != "evidence_tokens"}
        for r in records
        if r["kind"] == "lychee" and r["block_tokens"] == 96
    ]
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    data = tmp_path / "hotpot.json"
    argv = ["--hotpot-file", str(data), "--model", "tiny-random-llama", "--lengths", "600", "--block-tokens", "96"]
    argv += ["--engine-option", "max_memory_tokens=8", "--engine-option", "max_answer_tokens=4", "--quiet"]
    argv += ["--method", "every:gate.rule=all", "--method", "one:gate.rule=all;gate.max_relevant_blocks=1"]
    argv += ["--rag", "rag", "--rag-match", "evidence", "--resume", str(tmp_path / "old.jsonl")]
    script().main([*argv, "--out", str(tmp_path / "later")])
    later = [json.loads(line) for line in (tmp_path / "later" / "records.jsonl").read_text().splitlines()]
    first = {(r["method"], r["sample_id"]): r["top_k"] for r in records if r["block_tokens"] == 96 and "top_k" in r}
    added = [r for r in later if r["kind"] == "rag"]
    assert len(added) == 2 * 2 and all(r["method"].endswith("/evidence") for r in added)
    assert all(r["top_k"] == first[(r["method"], r["sample_id"])] for r in added)


def _tiny_counter():
    from lychee_memory.config import ModelSettings
    from lychee_memory.eval.tasks import TokenCounter
    from lychee_memory.model_loading import load_model

    return TokenCounter(load_model(ModelSettings(spec="tiny-random-llama")).tokenizer)


def test_a_stopped_run_goes_on_without_asking_anything_twice(rows, tmp_path, monkeypatch):
    """--resume keeps the earlier run's records verbatim, asks only the (question, method) pairs they lack, and
    ingests nothing for a method every question of which is answered already."""
    from lychee_memory.engine import LycheeMemory

    data = tmp_path / "hotpot.json"
    data.write_text(json.dumps(rows))
    common = ["--hotpot-file", str(data), "--model", "tiny-random-llama", "--lengths", "600", "--block-tokens", "48"]
    common += ["--engine-option", "max_memory_tokens=8", "--engine-option", "max_answer_tokens=4", "--quiet"]
    common += ["--rag", "none"]
    first = tmp_path / "first"
    script().main([*common, "--method", "every:gate.rule=all", "--n", "1", "--out", str(first)])
    earlier = [json.loads(line) for line in (first / "records.jsonl").read_text().splitlines()]
    assert len(earlier) == 1
    # a record from before answer_in_evidence was measured gains it from its spans when resumed
    (first / "records.jsonl").write_text(
        json.dumps({key: value for key, value in earlier[0].items() if key != "answer_in_evidence"}) + "\n"
    )
    asked, ingested = [], []
    real_ask, real_ingest = LycheeMemory.ask, LycheeMemory.ingest
    monkeypatch.setattr(LycheeMemory, "ask", lambda self, q, *a, **k: asked.append(q) or real_ask(self, q, *a, **k))
    monkeypatch.setattr(
        LycheeMemory,
        "ingest",
        lambda self, *a, **k: ingested.append(self.config.gate.rule) or real_ingest(self, *a, **k),
    )
    second = tmp_path / "second"
    methods = ["--method", "every:gate.rule=all", "--method", "one:gate.rule=all;gate.max_relevant_blocks=1"]
    script().main([*common, *methods, "--resume", str(first / "records.jsonl"), "--out", str(second)])
    records = [json.loads(line) for line in (second / "records.jsonl").read_text().splitlines()]
    assert records[0] == earlier[0]  # kept as it was, timings included
    keys = [(r["sample_id"], r["method"]) for r in records]
    assert len(keys) == len(set(keys)) == 2 * 2  # every question x method once
    assert len(asked) == 3 and ingested == ["all"]  # one bank, shared by both methods (same recipe)
    # nothing left to ask: no bank built, no question asked, the records the same
    asked.clear(), ingested.clear()
    script().main([*common, *methods, "--resume", str(second / "records.jsonl"), "--out", str(tmp_path / "third")])
    assert asked == [] and ingested == []
    assert (tmp_path / "third" / "records.jsonl").read_text() == (second / "records.jsonl").read_text()


@pytest.mark.slow  # LlamaIndex and MiniLM, as above
def test_resumed_rag_answers_serve_a_method_reading_as_many_tokens(rows, tmp_path):
    """An earlier RAG answer at the same question and chunk count is reused for a new method (no retrieval, same
    answer); --rag-for leaves other methods without RAG rows."""
    pytest.importorskip("llama_index.core")
    records, out = run_script(rows, tmp_path, "rag")
    data = tmp_path / "hotpot.json"
    argv = ["--hotpot-file", str(data), "--model", "tiny-random-llama", "--lengths", "600", "--block-tokens", "96"]
    argv += ["--engine-option", "max_memory_tokens=8", "--engine-option", "max_answer_tokens=4", "--quiet"]
    argv += ["--method", "one:gate.rule=all;gate.max_relevant_blocks=1", "--method"]
    argv += ["same:gate.rule=all;gate.max_relevant_blocks=1", "--method", "every:gate.rule=all", "--rag", "rag"]
    argv += [
        "--rag-for",
        "same",
        "--rag-for",
        "one",
        "--resume",
        str(out / "records.jsonl"),
        "--out",
        str(tmp_path / "r"),
    ]
    script().main(argv)
    resumed = [json.loads(line) for line in (tmp_path / "r" / "records.jsonl").read_text().splitlines()]
    new = resumed[len(records) :]
    assert {r["method"] for r in new} == {"same", "rag@same"}  # "every" at 96 is in the earlier run, RAG too
    for row in (r for r in new if r["kind"] == "rag"):
        before = next(
            r
            for r in records
            if r["method"] == "rag@one" and r["sample_id"] == row["sample_id"] and r["block_tokens"] == 96
        )
        assert row["answer"] == before["answer"] and row["seconds"] == before["seconds"]  # reused, not re-asked
        assert row["matched_to"] == "same"


def test_recorded_answers_replay_from_their_excerpts_in_either_order(rows, tmp_path):
    """answer_order_replay.py rebuilds each recorded excerpt memory from its spans: replayed in reading order it
    reproduces every recorded answer word for word (so the order is the only change it measures), and best first it
    hands the answer the excerpts sorted by the memory's own scores."""
    data = tmp_path / "hotpot.json"
    data.write_text(json.dumps(rows))
    common = ["--hotpot-file", str(data), "--model", "tiny-random-llama", "--lengths", "600"]
    options = ["--engine-option", "max_memory_tokens=64", "--engine-option", "max_answer_tokens=4"]
    method = (
        "ex:gate.rule=all;gate.max_relevant_blocks=3;reasoner.memory=excerpts;reasoner.excerpt_answer_order=reading"
    )
    out = tmp_path / "out"
    script().main(
        [*common, *options, "--block-tokens", "48", "--method", method, "--rag", "none", "--quiet", "--out", str(out)]
    )
    replayer = benchmark_script("answer_order_replay")
    replay_out = tmp_path / "replay.jsonl"
    replayer.main(
        [*common, *options, "--records", str(out / "records.jsonl"), "--method", "ex", "--out", str(replay_out)]
    )
    replayed = [json.loads(line) for line in replay_out.read_text().splitlines()]
    assert len(replayed) == len(rows) and all(row["reading"] == row["recorded"] for row in replayed)
    # best first: the recorded excerpts sorted by their score against the question and the others (ties as read)
    from lychee_memory.excerpts import LexicalScorer

    haystack = build_shared_haystack(rows, _tiny_counter(), 600, 0)
    questions = {q.sample_id: q.question for q in haystack.questions}
    records = {r["sample_id"]: r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())}
    reordered = 0
    for row in replayed:
        texts = [haystack.context[s:e] for s, e in records[row["sample_id"]]["spans"]]
        others = ["\n".join(texts[:i] + texts[i + 1 :]) for i in range(len(texts))]
        scores = LexicalScorer().scores(texts, questions[row["sample_id"]], others)
        ranked = [texts[i] for i in sorted(range(len(texts)), key=lambda i: (-scores[i], i))]
        assert row["memory_relevance"] == "\n".join(ranked) and row["memory_reading"] == "\n".join(texts)
        reordered += ranked != texts
    assert reordered  # some memory was not read best first: the two orders differ
    # the engine asked again best first (same reads) answers as the replay's best-first memory does
    best_first = tmp_path / "best_first"
    argv = [*common, *options, "--block-tokens", "48", "--rag", "none", "--quiet", "--out", str(best_first)]
    script().main([*argv, "--method", method.replace("order=reading", "order=relevance")])
    engine_answers = {
        record["sample_id"]: record["answer"]
        for record in map(json.loads, (best_first / "records.jsonl").read_text().splitlines())
    }
    assert {row["sample_id"]: row["relevance"] for row in replayed} == engine_answers
    with pytest.raises(SystemExit, match="no answer of method"):
        replayer.main([*common, "--records", str(out / "records.jsonl"), "--method", "other", "--out", str(replay_out)])


def test_a_replay_takes_the_chosen_methods_records_at_one_length(tmp_path):
    from lychee_memory.eval.replay import recorded_answers

    path = tmp_path / "records.jsonl"
    made = [
        {"method": m, "length": n, "sample_id": f"{m}-{n}-{i}"} for m in "abc" for n in (600, 900) for i in range(3)
    ]
    path.write_text("".join(json.dumps(record) + "\n" for record in made) + "\n")
    chosen = recorded_answers(path, ["c", "a"], 900)
    assert [r["sample_id"] for r in chosen] == [f"{m}-900-{i}" for m in "ac" for i in range(3)]  # file order
    assert [r["sample_id"] for r in recorded_answers(path, ["c", "a"], 900, first=2)] == [
        "c-900-0", "c-900-1", "a-900-0", "a-900-1"
    ]  # fmt: skip
    with pytest.raises(ConfigurationError, match=r"no answer of method\(s\) \['d'\] at 900 tokens"):
        recorded_answers(path, ["a", "d"], 900)
    with pytest.raises(ConfigurationError, match="no answer"):
        recorded_answers(path, ["a"], 1200)


def test_recorded_answers_replay_with_the_reader_changed(rows, tmp_path):
    """answer_reader_replay.py answers each recorded question again from its recorded evidence: as read it
    reproduces every recorded answer, and the copy reader's answers are spans of that evidence (checked here on the
    text the spans point at, whitespace and case aside)."""
    data = tmp_path / "hotpot.json"
    data.write_text(json.dumps(rows))
    common = ["--hotpot-file", str(data), "--model", "tiny-random-llama", "--lengths", "600"]
    options = ["--engine-option", "max_memory_tokens=64", "--engine-option", "max_answer_tokens=6"]
    options += ["--engine-option", "memory=excerpts"]
    method = "ex:gate.rule=all;gate.max_relevant_blocks=3;reasoner.memory=excerpts"
    out = tmp_path / "out"
    script().main(
        [*common, *options, "--block-tokens", "48", "--method", method, "--rag", "none", "--quiet", "--out", str(out)]
    )
    replayer = benchmark_script("answer_reader_replay")
    replay_out = tmp_path / "replay.jsonl"
    replayer.main(
        [*common, *options, "--records", str(out / "records.jsonl"), "--method", "ex", "--out", str(replay_out)]
    )
    replayed = [json.loads(line) for line in replay_out.read_text().splitlines()]
    assert len(replayed) == len(rows) and all(row["as-read"] == row["answer"] for row in replayed)
    haystack = build_shared_haystack(rows, _tiny_counter(), 600, 0)
    records = {r["sample_id"]: r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())}
    for row in replayed:
        evidence = " ".join(haystack.context[s:e] for s, e in records[row["sample_id"]]["spans"])
        copied = " ".join(row["copy"].split()).lower()
        assert copied in " ".join(evidence.split()).lower()
        assert {"paragraphs", "rag-prompt", "sub_em_copy"} <= set(row)
    assert any(row["copy"] for row in replayed)  # something was copied: the check above is not vacuous
    with pytest.raises(SystemExit, match="no answer of method"):
        replayer.main([*common, "--records", str(out / "records.jsonl"), "--method", "other", "--out", str(replay_out)])
