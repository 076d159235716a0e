"""Stage 1 of the gate: a cheap scorer ranks the unread blocks, so stage 2 (a rule) judges only a few candidates.

One small interface, :class:`StageOneScorer`; its strategies are dataclasses registered by name in
``scorers.py`` (``gate.prefilter``). A scorer reads what it needs from the bank itself (the key scorer: each
block's gate index; a lexical one would read the blocks' text) and from the question and the memory's notes, so
a new scorer plugs in without the engine or the scan changing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..blocks import BlockOpening, MemoryBank
from ..model_loading import LoadedModel
from ..prompts import PromptBuilder
from .index_cache import IndexCache
from .question_template import QuestionTemplate


@dataclass(frozen=True)
class StageOneContext:
    """What an engine offers every stage-1 scorer besides the bank: the model, its prompts and the gate's settings."""

    loaded: LoadedModel
    prompts: PromptBuilder
    opening: BlockOpening | None  # before every framed block, so before every prompt that stands in for one
    start_position: int  # where the gate's prompt sits after a full block
    memory_weight: float  # how much the memory's notes count beside the question
    questions: QuestionTemplate
    index_cache: IndexCache | None = None  # decoded gate indexes, shared by the engine's banks (``index_cache.py``)
    coarse_keep: int | None = None  # blocks a coarse pass keeps for exact key scores (``coarse.py``); None: all
    coarse_heads: tuple[tuple[int, int], ...] = ()  # the index heads that pass reads


class StageOneScorer(ABC):
    """Scores blocks of one bank for a question under a memory: higher means more likely relevant."""

    name: ClassVar[str]
    needs_key_index: ClassVar[bool] = False  # whether ingest must write each block's gate index (``IndexSpec``)

    @classmethod
    def bank_key(cls, bank: MemoryBank) -> str | None:
        """Which banks share one scorer (the engine builds one per key); None when ``bank`` lacks what it reads."""
        return ""

    @classmethod
    @abstractmethod
    def for_bank(cls, context: StageOneContext, bank: MemoryBank) -> StageOneScorer:
        """The scorer for ``bank`` (and every bank with the same :meth:`bank_key`)."""

    @abstractmethod
    def rank(
        self, bank: MemoryBank, question: str, memory: str, indices: Sequence[int]
    ) -> tuple[dict[int, float], list[int]]:
        """Score per block of ``indices``, and the blocks it could not score (the rule judges those anyway).

        A scorer with a coarse pass may leave out blocks it pruned as far from the best; callers rank those last."""


def choose_candidates(scores: dict[int, float], count: int, margin: float, near_ties: int | None = None) -> list[int]:
    """The ``count`` best blocks plus any within ``margin`` of the best, in document order (ties by position).

    ``near_ties`` caps how many blocks the margin adds beyond the ``count`` best (the best-scoring of them): in a
    large bank many blocks fall within the margin, and each is a stage-2 row. None: no cap."""
    if not scores:
        return []
    ranked = sorted(scores, key=lambda index: (-scores[index], index))
    best = scores[ranked[0]]
    close = [index for index in ranked[count:] if scores[index] >= best - margin]  # best first
    return sorted(ranked[:count] + (close if near_ties is None else close[:near_ties]))
