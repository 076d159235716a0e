"""The evaluation helpers: sub_em's normalisation and empty guard, RULER-HQA and needle construction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lychee_memory.errors import DocumentError
from lychee_memory.eval import (
    NEEDLES,
    data_dir,
    evaluate,
    needle_document,
    normalize_answer,
    reference_samples,
    ruler_hqa_sample,
    sub_em,
)
from lychee_memory.testing import build_tiny_tokenizer

from .conftest import make_engine


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
            }
        )
    return rows


def test_ruler_hqa_sample_holds_its_own_paragraphs_plus_distractors():
    rows = _hotpot_rows(8)
    sample = ruler_hqa_sample(rows[0], rows, n_documents=30, seed=1)
    documents = sample.context.split("\n\n")
    assert len(documents) == 30
    assert all(doc.startswith(f"Document {i + 1}:\n") for i, doc in enumerate(documents))
    for k in range(10):
        assert f"\nTitle 0-{k}\nSentence about Title 0-{k}. More." in sample.context
    assert sample.answers == ["answer 0"]
    assert ruler_hqa_sample(rows[0], rows, 30, seed=1).context == sample.context, "seeded: reproducible"


def test_needle_document_places_the_fact_and_reaches_the_size():
    tokenizer = build_tiny_tokenizer()
    paragraphs = [(f"Title {i}", f"Paragraph number {i} talks about the weather in town {i}. " * 3) for i in range(200)]
    needle = NEEDLES[0]
    text = needle_document(paragraphs, tokenizer, 3000, needle, depth=0.5, seed=3)
    assert text.count(needle.fact) == 1
    assert len(tokenizer(text).input_ids) >= 3000
    position = text.index(needle.fact) / len(text)
    assert 0.3 < position < 0.7
    with pytest.raises(DocumentError, match="holds only"):
        needle_document(paragraphs[:3], tokenizer, 3000, needle, 0.5, 3)


def test_evaluate_scores_every_sample():
    engine = make_engine()
    rows = _hotpot_rows(4)
    samples = [ruler_hqa_sample(row, rows, 12, seed=i) for i, row in enumerate(rows[:2])]
    report = evaluate(engine, samples)
    assert len(report.results) == 2 and 0.0 <= report.accuracy <= 1.0
    assert report.to_dict()["samples"] == 2


def test_data_dir_errors_are_specific(tmp_path, monkeypatch):
    monkeypatch.delenv("LYCHEE_DATA_DIR", raising=False)
    with pytest.raises(DocumentError, match="LYCHEE_DATA_DIR"):
        data_dir(None)
    with pytest.raises(DocumentError, match="does not exist"):
        data_dir(tmp_path / "nope")


SHARED = Path(os.environ.get("LYCHEE_DATA_DIR", Path(__file__).parent.parent.parent / "shared" / "data"))


@pytest.mark.skipif(not (SHARED / "hotpotqa").is_dir(), reason="the shared dataset directory is not present")
def test_our_ruler_hqa_format_matches_the_reference_samples():
    reference = reference_samples(SHARED)
    assert reference and all(sample.context.count("Document ") >= 50 for sample in reference)
    first = reference[0].context.split("\n\n")[0]
    assert first.startswith("Document 1:\n") and first.count("\n") == 2
