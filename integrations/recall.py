"""Recall for agents: the gate's selection over a bank with no decoding at all.

``engine.select`` runs the state-aware scan, and each block it reads has the reasoner rewrite its notes: a
generation per read, seconds on a CPU. An agent turn cannot wait for that, so recall scans with a working memory
that a read leaves as it was (``KeptMemory``): every block is judged against the question alone, and the scan's
selections, scores and top-k fallbacks are otherwise the engine's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from lychee_memory import LycheeMemory, MemoryBank, SelectedBlock
from lychee_memory.gate import ScanState
from lychee_memory.reasoner import Reasoner, UpdateObserver
from lychee_memory.working_memory import MemoryStrategy

from .engines import call_engine


@dataclass(frozen=True)
class KeptMemory(MemoryStrategy):
    """A read changes nothing: no notes are written, so nothing is decoded."""

    name: ClassVar[str] = "kept"

    def update(
        self,
        reasoner: Reasoner,
        bank: MemoryBank,
        reads: Sequence[tuple[ScanState, int]],
        observe: UpdateObserver | None = None,
    ) -> list[str]:
        return [state.memory for state, _ in reads]


def recall(
    engine: LycheeMemory, query: str, bank: MemoryBank, k: int, filters: dict[str, object] | None = None
) -> list[SelectedBlock]:
    """The ``k`` blocks the gate selects for ``query`` (``engine.select`` semantics), decoding nothing: the scan's
    memory strategy for this call is ``KeptMemory``; the engine's own is never touched."""
    return call_engine(engine, lambda: engine.select(query, bank, k=k, filters=filters, memory=KeptMemory()))
