"""Recency for agent memory: among documents the gate scores about equally, the newer one is recalled first.

An agent's memory is appended in time order, so when a later turn contradicts an earlier one ("I moved to Lyon"
after "I live in Oslo") both score alike against the question and the gate alone cannot tell them apart. Each
recalled document's gate score gets a bonus of up to ``margin`` times the spread of the scores recalled with it,
in proportion to how recent it is among them (0 for the oldest, 1 for the newest): a newer document overtakes
an older one exactly when their scores differ by less than its share of that bonus, and a clearly better older
match still wins. ``margin=0`` (the default) ranks by the gate alone, exact ties newest first.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

DEFAULT_RECENCY_MARGIN = 0.0
"""Off by default: ties go newest first, nothing more. On the scripted conversation of benchmarks/agent_memory.py
(320 turns, seed 0) a margin of 0.25 changed no probe's outcome, as the gate recalled neither version of the updated
facts (BENCHMARKS.md, "Unreleased: agent memory"); a margin stays an option until it is shown to help."""


TIE_TOLERANCE = 1e-4
"""Scores closer than this fraction of the largest one count as equal (then the newer document leads)."""


@dataclass(frozen=True)
class Recalled:
    """One recalled document: its id, its best block score and when it was written (larger is newer)."""

    document_id: str
    score: float
    time: float


def best_per_document(scored: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Each document's best block score (a long document spans several blocks)."""
    best: dict[str, float] = {}
    for document_id, score in scored:
        if document_id not in best or score > best[document_id]:
            best[document_id] = score
    return best


def newest_first_among_ties(recalled: Sequence[Recalled], margin: float = DEFAULT_RECENCY_MARGIN) -> list[Recalled]:
    """``recalled`` best first: gate score plus the recency bonus; equal adjusted scores (to TIE_TOLERANCE) go newest
    first."""
    if margin < 0:
        raise ValueError(f"recency margin must be 0 or more, got {margin!r}")
    if not recalled:
        return []
    scores = [item.score for item in recalled]
    spread = max(scores) - min(scores)
    ranks = _time_ranks([item.time for item in recalled])
    # Scores equal to about 4 significant digits are ties: one text scored in two batch rows differs in the last bits.
    quantum = max(1e-12, TIE_TOLERANCE * max(abs(score) for score in scores))
    adjusted = [round((item.score + margin * spread * rank) / quantum) for item, rank in zip(recalled, ranks)]
    order = sorted(range(len(recalled)), key=lambda i: (-adjusted[i], -recalled[i].time))
    return [recalled[i] for i in order]


def _time_ranks(times: Sequence[float]) -> list[float]:
    """Each time's place among the distinct times, scaled to 0 (oldest) .. 1 (newest); all equal gives 0."""
    distinct = sorted(set(times))
    if len(distinct) < 2:
        return [0.0] * len(times)
    place: dict[Hashable, int] = {time: position for position, time in enumerate(distinct)}
    return [place[time] / (len(distinct) - 1) for time in times]
