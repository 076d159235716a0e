"""The hybrid RAG baseline (BM25 + MiniLM by reciprocal rank): its order against an independently computed
reference on a tiny corpus where a planted exact code is missed by MiniLM's top-k and found by BM25."""

from __future__ import annotations

import math

import pytest

from lychee_memory import ConfigurationError
from lychee_memory.eval.rag import RagBaseline, load_sentence_encoder
from lychee_memory.eval.runner import parse_methods

from .conftest import make_engine

PARAGRAPHS = [
    "Badge holders may enter the main door of the office between eight and six on weekdays.",
    "Security badges for visitors are printed at the front desk and expire at midnight.",
    "Each employee badge opens the rooms of its own floor; lost badges must be reported.",
    "The orchestra rehearsed the second symphony twice before the winter concert.",
    "Ledger line 118: KX-4471, cellar stores, checked by Ines in March.",
    "Tomatoes need full sun, regular watering and a stake to climb.",
    "The door access system logs every badge swipe for thirty days.",
    "Comets are loose balls of ice and dust with bright tails.",
]
PLANTED = 4
QUESTION = "Which room does badge KX-4471 open?"


@pytest.fixture(scope="module")
def engine():
    return make_engine("llama")


def _reference_bm25(question_terms: set[str], documents: list[list[str]]) -> list[float]:
    """BM25 (k1 1.2, b 0.75, Lucene IDF) written out term by term."""
    lengths = [len(doc) for doc in documents]
    mean = sum(lengths) / len(lengths)
    scores = []
    for doc in documents:
        total = 0.0
        for term in question_terms:
            df = sum(term in other for other in documents)
            tf = doc.count(term)
            if tf:
                idf = math.log(1 + (len(documents) - df + 0.5) / (df + 0.5))
                total += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(doc) / mean))
        scores.append(total)
    return scores


def _ranks(scores: list[float]) -> list[int]:
    return [1 + sum(other > score for other in scores) for score in scores]


def test_hybrid_retrieval_fuses_bm25_and_minilm_as_an_independent_reference(engine):
    from lychee_memory.lexical import terms

    hybrid = RagBaseline(engine, top_k=2, chunk_tokens=128, show_progress=False, retrieval="hybrid")
    dense = RagBaseline(engine, top_k=2, chunk_tokens=128, show_progress=False)
    index = hybrid.build(PARAGRAPHS)
    assert [chunk.text for chunk in index.chunks] == PARAGRAPHS, "one chunk per paragraph"
    assert index.term_counts is not None, "a hybrid index counts its chunks' terms when it is built"

    encoder = load_sentence_encoder()
    cosine = (encoder.encode(PARAGRAPHS) @ encoder.encode([QUESTION])[0]).tolist()
    dense_order = sorted(range(len(PARAGRAPHS)), key=lambda i: -cosine[i])
    assert PLANTED not in dense_order[:2], "MiniLM's top 2 miss the planted code"
    assert [block.index for block in dense.retrieve(QUESTION, index)] == dense_order[:2]

    bm25 = _reference_bm25(set(terms(QUESTION)), [terms(text) for text in PARAGRAPHS])
    assert max(range(len(bm25)), key=bm25.__getitem__) == PLANTED, "BM25 puts the exact code first"
    fused = [1 / (60 + a) + 1 / (60 + b) for a, b in zip(_ranks(bm25), _ranks(cosine))]
    expected = sorted(range(len(PARAGRAPHS)), key=lambda i: (-fused[i], i))[:2]
    retrieved = hybrid.retrieve(QUESTION, index)
    assert [block.index for block in retrieved] == expected and PLANTED in expected
    assert [block.score for block in retrieved] == pytest.approx([fused[i] for i in expected])

    answer = hybrid.ask(QUESTION, index)
    assert answer.mode == "rag" and [block.index for block in answer.blocks] == sorted(expected)
    assert answer.token_counts["blocks_read"] == 2


def test_a_dense_index_serves_hybrid_retrieval_and_bad_retrieval_is_refused(engine):
    dense = RagBaseline(engine, top_k=2, chunk_tokens=128, show_progress=False)
    index = dense.build(PARAGRAPHS)
    assert index.term_counts is None
    hybrid = RagBaseline(engine, top_k=2, chunk_tokens=128, show_progress=False, retrieval="hybrid")
    built = hybrid.build(PARAGRAPHS)
    assert [b.index for b in hybrid.retrieve(QUESTION, index)] == [b.index for b in hybrid.retrieve(QUESTION, built)]
    with pytest.raises(ConfigurationError, match="unknown RAG retrieval 'sparse'; choose from dense, hybrid"):
        RagBaseline(engine, retrieval="sparse")


def test_hybrid_rag_is_a_method_of_eval_and_bench():
    hybrid, explicit, plain = parse_methods("hybrid-rag:top_k=3,rag:retrieval=hybrid,rag")
    assert (hybrid.kind, hybrid.options) == ("rag", {"top_k": 3, "retrieval": "hybrid"})
    assert (explicit.kind, explicit.options) == ("rag", {"retrieval": "hybrid"})
    assert plain.options == {}
    with pytest.raises(ConfigurationError, match="hybrid-rag"):
        parse_methods("bm25")
