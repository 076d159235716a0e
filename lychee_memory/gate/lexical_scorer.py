"""The lexical scorer (``gate.prefilter = "lexical"``): stage 1 from BM25 over the blocks' own text.

Every block keeps its text (``SourceSpan.text``, a stored bank's too), so nothing is written at ingest: a block's
term counts are computed from its text the first time it is ranked and kept in a content-addressed cache
(``lexical.TermCountCache``), and the bank's document frequencies are computed at query time over the bank being
ranked. A union, a shard set, an appended or a filtered bank is therefore scored with its own statistics, and a bank
written before this scorer existed works as it is.

Score of a block: the z-score across the ranked blocks of its BM25 for the question's terms, plus, once the memory
holds notes, ``memory_weight`` times the z-score of its BM25 for the memory's terms (those not in the question, at
most ``MEMORY_TERMS`` of them, the rarest in the bank first), so the block of hop 2 rises once hop 1's entity is
noted. Z-scores put it on the key scorer's scale, so ``gate.candidate_margin`` means the same for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..blocks import MemoryBank
from ..lexical import Bm25Statistics, TermCountCache, TermCounts, terms
from .key_scorer import zscore
from .stage1 import StageOneContext, StageOneScorer

MEMORY_TERMS = 32  # memory terms used as queries: the memory grows with every read, its query cost must not
STATISTICS_KEPT = 8  # banks whose document frequencies are kept between questions


@dataclass
class LexicalScorer(StageOneScorer):
    """Ranks blocks by BM25 of the question (and the memory's notes) against each block's text."""

    name: ClassVar[str] = "lexical"

    context: StageOneContext
    cache: TermCountCache = field(default_factory=TermCountCache, repr=False, compare=False)
    _statistics: dict[tuple[str, ...], Bm25Statistics] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def for_bank(cls, context: StageOneContext, bank: MemoryBank) -> LexicalScorer:
        """One scorer for every bank: its cache is keyed by text, so it serves any bank."""
        return cls(context)

    def counts(self, bank: MemoryBank, index: int) -> TermCounts:
        """Term counts of block ``index`` of ``bank`` (from its text, computed once per process)."""
        return self.cache.get(bank.spans[index].text)

    def statistics(self, bank: MemoryBank) -> Bm25Statistics:
        """The bank's BM25 statistics over all its blocks, computed now (kept for the last few banks seen)."""
        key = tuple(span.text for span in bank.spans)
        found = self._statistics.get(key)
        if found is None:
            found = Bm25Statistics.of(self.counts(bank, index) for index in range(len(bank)))
            if len(self._statistics) >= STATISTICS_KEPT:
                self._statistics.pop(next(iter(self._statistics)))
            self._statistics[key] = found
        return found

    def memory_terms(self, question: str, memory: str, statistics: Bm25Statistics) -> list[str]:
        """The memory's query terms: those in the bank and not in the question, rarest first, at most MEMORY_TERMS."""
        if not self.context.questions.has_notes(memory):
            return []
        asked = set(terms(question))
        noted = [
            term
            for term in dict.fromkeys(terms(memory))
            if term not in asked and statistics.document_frequency.get(term, 0) > 0
        ]
        noted.sort(key=lambda term: -statistics.idf(term))  # stable: ties keep the memory's order
        return noted[:MEMORY_TERMS]

    def bm25(self, bank: MemoryBank, query: Sequence[str], indices: Sequence[int]) -> list[float]:
        """Raw BM25 of each block of ``indices`` for ``query`` under the bank's statistics."""
        statistics = self.statistics(bank)
        return [statistics.score(query, self.counts(bank, index)) for index in indices]

    def rank(
        self, bank: MemoryBank, question: str, memory: str, indices: Sequence[int]
    ) -> tuple[dict[int, float], list[int]]:
        if not indices:
            return {}, []
        statistics = self.statistics(bank)
        combined = zscore(torch.tensor(self.bm25(bank, terms(question), indices), dtype=torch.float64)[:, None])[:, 0]
        noted = self.memory_terms(question, memory, statistics)
        if noted:
            memory_scores = torch.tensor(self.bm25(bank, noted, indices), dtype=torch.float64)[:, None]
            combined = combined + self.context.memory_weight * zscore(memory_scores)[:, 0]
        return dict(zip(indices, combined.tolist())), []
