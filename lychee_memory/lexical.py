"""Lexical matching, written once for the gate's lexical stage 1 and the hybrid RAG baseline: terms, BM25 and
reciprocal-rank fusion.

Terms: lowercase word and number tokens, minus a small stopword list; a code such as ``X7-42B`` is kept whole
(``x7-42b``) as well as split (``x7``, ``42b``), so an exact code matches exactly and its parts still count.

BM25 is scored at query time from per-text term counts (:class:`TermCounts`) and the document frequencies of the
collection being ranked (:class:`Bm25Statistics`): nothing with IDF baked in is ever stored, so collections can be
merged (unions, shards, appends, filters) and scored as they are. :class:`TermCountCache` keeps the counts of texts
already seen, keyed by the text itself, so a bank's blocks are tokenised once per process, whichever bank or view
they are read through.
"""

from __future__ import annotations

import bisect
import math
import re
import sys
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "BM25_B",
    "BM25_K1",
    "RRF_K",
    "STOPWORDS",
    "Bm25Statistics",
    "TermCountCache",
    "TermCounts",
    "reciprocal_rank_fusion",
    "terms",
]

BM25_K1 = 1.2  # term-frequency saturation (Lucene's default)
BM25_B = 0.75  # length normalisation (Lucene's default)
RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al. 2009; LlamaIndex and LangChain use 60)

STOPWORDS: frozenset[str] = frozenset(
    """a about above after again all also am an and any are as at be been before being below between both but by
    can could did do does doing down during each few for from further had has have having he her here hers him his
    how i if in into is it its itself just me more most my no nor not of off on once only or other our ours out over
    own s same she should so some such t than that the their theirs them then there these they this those through to
    too under until up very was we were what when where which while who whom why will with would you your yours""".split()
)

_SPAN = re.compile(r"[^\W_]+(?:[-_./:+][^\W_]+)*")  # a word, number or joined code ("x7-42b", "3.5", "u.s")
_PART = re.compile(r"[^\W_]+")


def terms(text: str) -> list[str]:
    """The lexical terms of ``text`` in order: each lowercase word or number, and each joined code whole then its
    parts; stopwords are dropped (a code is never a stopword)."""
    found: list[str] = []
    append = found.append
    for span in _SPAN.findall(text.lower()):
        if span.isalnum():  # no joiner: the span is its only part (most spans; 3x faster than splitting each)
            if span not in STOPWORDS:
                append(span)
            continue
        parts = _PART.findall(span)
        if len(parts) > 1:
            append(span)
        found.extend(part for part in parts if part not in STOPWORDS)
    return found


@dataclass(frozen=True)
class TermCounts:
    """How often each term occurs in one text, and how many terms it has (its BM25 length)."""

    counts: Mapping[str, int]
    length: int

    @classmethod
    def of(cls, text: str) -> TermCounts:
        found = terms(text)
        return cls(Counter(map(sys.intern, found)), len(found))  # interned: blocks share term strings


@dataclass(frozen=True)
class Bm25Statistics:
    """A collection's document frequencies, size and mean length: what BM25 needs beside a text's own counts."""

    document_frequency: Mapping[str, int]
    documents: int
    mean_length: float
    k1: float = BM25_K1
    b: float = BM25_B

    @classmethod
    def of(cls, collection: Iterable[TermCounts], k1: float = BM25_K1, b: float = BM25_B) -> Bm25Statistics:
        """Statistics of ``collection`` (computed now: merged collections need no index rebuilt)."""
        frequency: Counter[str] = Counter()
        documents = total = 0
        for counts in collection:
            frequency.update(counts.counts.keys())
            documents += 1
            total += counts.length
        return cls(frequency, documents, total / documents if documents else 0.0, k1, b)

    def idf(self, term: str) -> float:
        """Lucene's BM25 IDF, ln(1 + (N - df + 0.5) / (df + 0.5)): positive even for a term in every text."""
        frequency = self.document_frequency.get(term, 0)
        return math.log(1.0 + (self.documents - frequency + 0.5) / (frequency + 0.5))

    def score(self, query: Iterable[str], counts: TermCounts) -> float:
        """BM25 of a text for the query's distinct terms (a term repeated in the query counts once)."""
        if not self.mean_length:
            return 0.0
        norm = self.k1 * (1.0 - self.b + self.b * counts.length / self.mean_length)
        total = 0.0
        for term in set(query):
            frequency = counts.counts.get(term, 0)
            if frequency:
                total += self.idf(term) * frequency * (self.k1 + 1.0) / (frequency + norm)
        return total


class TermCountCache:
    """Term counts of texts seen before, keyed by the text (content-addressed): at most ``capacity`` kept, the
    least recently used dropped first, so a long-running engine holds a bounded amount (a 1024-token block's
    counts take about 15 KB: the default holds 20M tokens of blocks in about 300 MB)."""

    def __init__(self, capacity: int = 20_000):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._counts: OrderedDict[str, TermCounts] = OrderedDict()

    def __len__(self) -> int:
        return len(self._counts)

    def get(self, text: str) -> TermCounts:
        """The counts of ``text``, computed on first sight."""
        found = self._counts.get(text)
        if found is None:
            found = self._counts[text] = TermCounts.of(text)
            if len(self._counts) > self.capacity:
                self._counts.popitem(last=False)
        else:
            self._counts.move_to_end(text)
        return found


Item = TypeVar("Item", bound=Hashable)


def reciprocal_rank_fusion(rankings: Sequence[Mapping[Item, float]], k: int = RRF_K) -> dict[Item, float]:
    """Sum over rankings of 1 / (k + rank) per item, where an item's rank in a ranking is 1 + the number of items
    scored strictly higher there (equal scores share a rank, so ties, such as texts sharing no term with the
    query, favour none of them); an item a ranking does not score gets nothing from it."""
    fused: dict[Item, float] = {}
    for scores in rankings:
        descending = sorted(-score for score in scores.values())  # ascending negatives: bisect counts those above
        for item, score in scores.items():
            rank = 1 + bisect.bisect_left(descending, -score)
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return fused
