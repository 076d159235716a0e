"""Lexical matching (``lychee_memory/lexical.py``): terms, BM25 against hand-computed values, reciprocal-rank
fusion against a rank-by-rank reference, and the content-addressed term-count cache."""

from __future__ import annotations

import math

import pytest

from lychee_memory.lexical import (
    STOPWORDS,
    Bm25Statistics,
    TermCountCache,
    TermCounts,
    reciprocal_rank_fusion,
    terms,
)


def test_terms_are_lowercase_words_and_numbers_without_stopwords_and_codes_whole_and_split():
    assert terms("The access code is X7-42B; the pier's shed, 3.5 km.") == [
        "access",
        "code",
        "x7-42b",
        "x7",
        "42b",
        "pier",
        "shed",
        "3.5",
        "3",
        "5",
        "km",
    ]
    assert terms("What is the code for the door?") == ["code", "door"]
    assert terms("Café Müller 2024") == ["café", "müller", "2024"]
    assert terms("") == [] and terms("the of and") == []
    assert {"the", "is", "what", "of", "s"} <= STOPWORDS


def reference_terms(text: str) -> list[str]:
    """The definition, spelled out character by character: a span is a run of letters and digits (``str.isalnum``)
    joined by single ``-_./:+``; a joined span is kept whole, then each part; stopwords go."""
    found: list[str] = []
    lowered, at = text.lower(), 0
    while at < len(lowered):
        if not lowered[at].isalnum():
            at += 1
            continue
        parts, end = [], at
        while True:
            start = end
            while end < len(lowered) and lowered[end].isalnum():
                end += 1
            parts.append(lowered[start:end])
            if end + 1 < len(lowered) and lowered[end] in "-_./:+" and lowered[end + 1].isalnum():
                end += 1
                continue
            break
        if len(parts) > 1:
            found.append(lowered[at:end])
        found.extend(part for part in parts if part not in STOPWORDS)
        at = end
    return found


def test_terms_match_the_definition_on_random_text_with_codes_and_unicode():
    import random

    rng = random.Random(3)
    alphabet = list("abcXYZ0189 ") + list("-_./:+,;'") + ["é", "Ü", "²", "½", "東", "\u0663", " the ", " of ", "\n"]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert terms(text) == reference_terms(text), text


def test_bm25_equals_a_hand_computed_score():
    texts = [
        "The lighthouse keeper painted the tower white.",
        "The access code for the shed is X7-42B. The shed is by the pier.",
        "Fishing boats leave the pier before dawn.",
    ]
    counts = [TermCounts.of(text) for text in texts]
    assert [c.length for c in counts] == [5, 8, 5]
    statistics = Bm25Statistics.of(counts)
    assert statistics.documents == 3 and statistics.mean_length == pytest.approx(6.0)
    assert statistics.document_frequency["pier"] == 2 and statistics.document_frequency["shed"] == 1
    query = terms("What is the access code for the pier shed?")
    assert sorted(query) == ["access", "code", "pier", "shed"]
    rare, common = math.log(1 + 2.5 / 1.5), math.log(1 + 1.5 / 2.5)  # df 1 and df 2 of 3 texts
    # k1 = 1.2, b = 0.75: text 1 has 8 terms (norm 1.2 * (0.25 + 0.75 * 8 / 6) = 1.5), text 2 five (norm 1.05).
    expected = [
        0.0,
        2 * rare * 2.2 / 2.5 + rare * 2 * 2.2 / 3.5 + common * 2.2 / 2.5,
        common * 2.2 / 2.05,
    ]
    assert [statistics.score(query, c) for c in counts] == pytest.approx(expected, rel=1e-12)
    assert statistics.score(query + query, counts[1]) == pytest.approx(expected[1]), "query terms count once"
    assert Bm25Statistics.of([]).score(query, counts[1]) == 0.0


def test_statistics_of_merged_collections_are_those_of_the_whole():
    first = [TermCounts.of("alpha beta"), TermCounts.of("beta gamma gamma")]
    second = [TermCounts.of("gamma delta")]
    merged = Bm25Statistics.of(first + second)
    assert dict(merged.document_frequency) == {"alpha": 1, "beta": 2, "gamma": 2, "delta": 1}
    assert merged.documents == 3 and merged.mean_length == pytest.approx(7 / 3)


def _reference_rrf(score_maps, k=60):
    """Rank by rank: rank = 1 + how many items score strictly higher in that map."""
    fused = {}
    for scores in score_maps:
        for item, score in scores.items():
            rank = 1 + sum(1 for other in scores.values() if other > score)
            fused[item] = fused.get(item, 0.0) + 1 / (k + rank)
    return fused


def test_reciprocal_rank_fusion_matches_the_reference_and_shares_ranks_on_ties():
    dense = {"a": 0.9, "b": 0.8, "c": 0.1, "d": 0.5}
    lexical = {"a": 0.0, "b": 0.0, "c": 7.0, "d": 0.0}
    fused = reciprocal_rank_fusion([dense, lexical])
    assert fused == pytest.approx(_reference_rrf([dense, lexical]))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62) and fused["c"] == pytest.approx(1 / 64 + 1 / 61)
    assert reciprocal_rank_fusion([{"x": 1.0}, {}]) == {"x": pytest.approx(1 / 61)}


def test_the_cache_counts_each_text_once_and_stays_bounded():
    cache = TermCountCache(capacity=2)
    first = cache.get("alpha beta")
    assert cache.get("alpha beta") is first and first == TermCounts.of("alpha beta")
    cache.get("gamma")
    cache.get("alpha beta")  # used again: "gamma" is now the least recently used
    cache.get("delta")
    assert len(cache) == 2 and cache.get("alpha beta") is first
    with pytest.raises(ValueError, match="capacity"):
        TermCountCache(capacity=0)
