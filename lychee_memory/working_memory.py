"""The reasoner's memory strategy: how a question's working memory changes when the scan reads a block.

Strategies are small dataclasses chosen by name from ``MEMORY_STRATEGIES`` (the kvpress shape): ``notes``, the
default and today's only one, has the reasoner rewrite its notes from the block; a strategy that keeps verbatim
excerpts plugs in beside it. The engine's scan hands each batch of reads to its strategy and takes back the
new memories; the strategy keeps each question's token counts and tells an observer (the RL trainer) each update.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from .blocks import MemoryBank
from .errors import ConfigurationError
from .gate import ScanState
from .reasoner import Reasoner, UpdateObserver, UpdateRequest


@dataclass(frozen=True)
class MemoryStrategy(ABC):
    """Turns (question state, block read) pairs into each question's next working memory."""

    name: ClassVar[str]

    @abstractmethod
    def update(
        self,
        reasoner: Reasoner,
        bank: MemoryBank,
        reads: Sequence[tuple[ScanState, int]],
        observe: UpdateObserver | None = None,
    ) -> list[str]:
        """The new memory of each read's question, in order; adds to its state's token counts."""


@dataclass(frozen=True)
class GeneratedNotes(MemoryStrategy):
    """The reasoner reads the block (its KV, or its tokens in text mode) and rewrites the notes (the paper)."""

    name: ClassVar[str] = "notes"

    def update(
        self,
        reasoner: Reasoner,
        bank: MemoryBank,
        reads: Sequence[tuple[ScanState, int]],
        observe: UpdateObserver | None = None,
    ) -> list[str]:
        kv_mode = reasoner.read_mode == "kv"
        requests = [
            UpdateRequest(
                state.question,
                state.memory,
                block=bank.block(index) if kv_mode else None,
                chunk_ids=None if kv_mode else bank.block(index).token_ids.tolist(),
            )
            for state, index in reads
        ]
        generations = reasoner.update(requests)
        for (state, index), request, generation in zip(reads, requests, generations):
            state.reasoner_prompt_tokens += generation.prompt_tokens
            state.memory_tokens += len(generation.token_ids)
            if observe is not None:
                observe(state, index, request, generation)
        return [generation.text for generation in generations]


MEMORY_STRATEGIES: dict[str, type[MemoryStrategy]] = {GeneratedNotes.name: GeneratedNotes}
DEFAULT_MEMORY_STRATEGY = GeneratedNotes.name


def memory_strategy(name: str = DEFAULT_MEMORY_STRATEGY) -> MemoryStrategy:
    """The strategy registered under ``name``; ConfigurationError naming the known ones otherwise."""
    if name not in MEMORY_STRATEGIES:
        raise ConfigurationError(f"unknown memory strategy {name!r}; known: {', '.join(MEMORY_STRATEGIES)}")
    return MEMORY_STRATEGIES[name]()
