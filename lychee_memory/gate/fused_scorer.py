"""The fused scorers: stage 1 from the key scorer and the lexical scorer over the same blocks.

``hybrid`` fuses their rankings by reciprocal rank (``lexical.reciprocal_rank_fusion``, k = 60): a block's score
is minus its place in the fused order (equal scores share a rank in each ranking and equal fused values a place), so ``gate.candidate_margin`` admits exact
ties only (a margin on raw RRF sums, all within 2/61 of each other, would admit every block). ``hybrid_sum`` adds
the two calibrated scores instead (each already z-scored across the ranked blocks; their mean), so the margin
keeps its z-score meaning. A bank without a gate index (built with ``prefilter = "off"``, or a union of banks
with different ones) is ranked by the lexical scorer alone; blocks whose index is missing are left to the rule, as
the key scorer leaves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from ..blocks import MemoryBank
from ..lexical import reciprocal_rank_fusion
from .key_scorer import KeyScorer
from .lexical_scorer import LexicalScorer
from .stage1 import StageOneContext, StageOneScorer

Fusion = Literal["rrf", "sum"]


def _best_first(scores: dict[int, float]) -> list[int]:
    return sorted(scores, key=lambda index: (-scores[index], index))


def fused_places(rankings: Sequence[dict[int, float]]) -> dict[int, float]:
    """Minus each block's place (0 = best) in the reciprocal-rank fusion of the score maps ``rankings``; equal
    fused values share a place."""
    fused = reciprocal_rank_fusion(rankings)
    places: dict[int, float] = {}
    previous, place = None, -1
    for index in _best_first(fused):
        if fused[index] != previous:
            place, previous = place + 1, fused[index]
        places[index] = -float(place)
    return places


@dataclass
class HybridScorer(StageOneScorer):
    """Ranks blocks by the key scorer and the lexical scorer together (reciprocal-rank fusion)."""

    name: ClassVar[str] = "hybrid"
    needs_key_index: ClassVar[bool] = True
    fusion: ClassVar[Fusion] = "rrf"

    keys: KeyScorer | None  # None: the bank has no gate index, so only the lexical score ranks it
    lexical: LexicalScorer

    @classmethod
    def bank_key(cls, bank: MemoryBank) -> str | None:
        return KeyScorer.bank_key(bank) or ""

    @classmethod
    def for_bank(cls, context: StageOneContext, bank: MemoryBank) -> HybridScorer:
        # every block gets a key score (no coarse pruning): the lexical ranking may favour any of them
        keys = KeyScorer.for_bank(context, bank).unpruned() if bank.gate_index is not None else None
        return cls(keys, LexicalScorer.for_bank(context, bank))

    def rank(
        self, bank: MemoryBank, question: str, memory: str, indices: Sequence[int]
    ) -> tuple[dict[int, float], list[int]]:
        lexical, _ = self.lexical.rank(bank, question, memory, indices)
        if self.keys is None:
            return lexical, []
        keys, missing = self.keys.rank(bank, question, memory, indices)
        lexical = {index: lexical[index] for index in keys}
        return self.fuse(keys, lexical), missing

    def fuse(self, keys: dict[int, float], lexical: dict[int, float]) -> dict[int, float]:
        """The fused score per block from the two scorers' scores over the same blocks."""
        return fused_places([keys, lexical])


@dataclass
class HybridSumScorer(HybridScorer):
    """Ranks blocks by the mean of the key and lexical scores (both z-scored across the ranked blocks)."""

    name: ClassVar[str] = "hybrid_sum"
    fusion: ClassVar[Fusion] = "sum"

    def fuse(self, keys: dict[int, float], lexical: dict[int, float]) -> dict[int, float]:
        return {index: (keys[index] + lexical[index]) / 2.0 for index in keys}
