"""The reasoner's memory strategy: how a question's working memory changes when the scan reads a block.

Strategies are small dataclasses chosen by name from ``MEMORY_STRATEGIES`` (the kvpress shape) through the
``reasoner.memory`` setting: ``notes`` (the default) has the reasoner rewrite its notes from the block; ``excerpts``
keeps the block's most relevant sentences verbatim, with their spans, at no decoding cost (``excerpts.py``), and the
final answer is written from them. The engine's scan hands each batch of reads to its strategy and takes back the
new memories; the strategy keeps each question's token counts and tells an observer (the RL trainer) each update.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

from .blocks import MemoryBank
from .config import DEFAULT_EXCERPT_READ_TOKENS, DEFAULT_EXCERPT_TOTAL_TOKENS, ExcerptOrder, ReasonerSettings
from .errors import ConfigurationError
from .excerpts import Excerpt, LexicalScorer, block_sentences, fit_pieces, keep_within
from .gate import ScanState
from .reasoner import Reasoner, UpdateObserver, UpdateRequest


@dataclass(frozen=True)
class MemoryStrategy(ABC):
    """Turns (question state, block read) pairs into each question's next working memory."""

    name: ClassVar[str]

    @classmethod
    def from_settings(cls, settings: ReasonerSettings) -> MemoryStrategy:
        """The strategy with the reasoner settings that concern it."""
        return cls()

    def answer_memory(self, state: ScanState) -> str:
        """The memory text the final answer reads: the memory as the scan left it."""
        return state.memory

    def answer_excerpts(self, state: ScanState) -> list[Excerpt]:
        """The excerpts the final answer reads, as its ``Answer.evidence`` reports them (none with notes)."""
        return list(state.excerpts)

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
    """The reasoner reads the block (its KV, or its tokens in text mode) and rewrites the notes (the paper).

    With ``answer_with_note`` each note's batch also decodes the answer after that block over the notes before it,
    kept as the question's answer while no later read changes the memory (the common case: one block read, then
    one decode in all instead of the note and then the answer).
    """

    name: ClassVar[str] = "notes"

    answer_with_note: bool = False

    @classmethod
    def from_settings(cls, settings: ReasonerSettings) -> GeneratedNotes:
        return cls(answer_with_note=settings.answer_with_note)

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
        if self.answer_with_note:
            pairs = reasoner.update_with_answers(requests)
            generations = [note for note, _ in pairs]
            for request, (note, answer) in zip(requests, pairs):
                reasoner.prepare_answer(request.question, note.text, answer)
        else:
            for request in requests:
                reasoner.forget_answer(request.question)
            generations = reasoner.update(requests)
        for (state, index), request, generation in zip(reads, requests, generations):
            state.reasoner_prompt_tokens += generation.prompt_tokens
            state.memory_tokens += len(generation.token_ids)
            if observe is not None:
                observe(state, index, request, generation)
        return [generation.text for generation in generations]


@dataclass(frozen=True)
class ExcerptMemory(MemoryStrategy):
    """Keeps each read block's sentences most relevant to the question and the memory, verbatim, with spans.

    Per read, the sentences the block overlaps are taken whole (``excerpts.block_sentences`` completes one the
    block's edge cuts from the document; one longer than ``read_tokens`` is cut at spaces into whole-word pieces),
    scored lexically against the question and the current excerpts, and the best are kept within ``read_tokens`` (at least the best one: the gate judged the block relevant). Past ``total_tokens``
    every kept excerpt is scored again against the question and the others, and the least relevant is dropped
    whole until the memory fits. The memory is the excerpts' text, one per line in reading order; stage 1 takes
    the best ones up to ``query_tokens`` as queries. The final answer reads those scoring at least
    ``answer_share`` of the best one's score, most relevant first when ``answer_order`` is ``relevance``. Nothing is
    decoded, so no observer hears an update.
    """

    name: ClassVar[str] = "excerpts"

    read_tokens: int = DEFAULT_EXCERPT_READ_TOKENS
    total_tokens: int = DEFAULT_EXCERPT_TOTAL_TOKENS
    query_tokens: int = 128
    answer_order: ExcerptOrder = "reading"
    answer_share: float = 0.0
    scorer: LexicalScorer = field(default_factory=LexicalScorer)
    separator: str = "\n"

    @classmethod
    def from_settings(cls, settings: ReasonerSettings) -> ExcerptMemory:
        read, total = settings.excerpt_budgets
        return cls(
            read_tokens=read,
            total_tokens=total,
            query_tokens=settings.excerpt_query_tokens,
            answer_order=settings.excerpt_answer_order,
            answer_share=settings.excerpt_answer_share or 0.0,
        )

    def render(self, excerpts: Sequence[Excerpt]) -> str:
        """The memory text of these excerpts: their sentences, one per line, in the given order."""
        return self.separator.join(excerpt.text for excerpt in excerpts)

    def answer_excerpts(self, state: ScanState) -> list[Excerpt]:
        """The excerpts the final answer reads, in reading order: those scoring at least ``answer_share`` of the
        best score (all of them when no score is positive)."""
        best = max((excerpt.score for excerpt in state.excerpts), default=0.0)
        floor = self.answer_share * best if self.answer_share > 0 and best > 0 else float("-inf")
        return [excerpt for excerpt in state.excerpts if excerpt.score >= floor]

    def answer_memory(self, state: ScanState) -> str:
        """The text of ``answer_excerpts`` as the final answer reads it: most relevant first (ties in reading order)
        with ``answer_order = "relevance"``; the memory as the scan left it when that is every excerpt as read."""
        excerpts = self.answer_excerpts(state)
        if self.answer_order == "relevance":
            excerpts = [excerpts[p] for p in sorted(range(len(excerpts)), key=lambda p: (-excerpts[p].score, p))]
        if not state.excerpts or excerpts == state.excerpts:
            return state.memory
        return self.render(excerpts)

    def read(
        self, bank: MemoryBank, index: int, question: str, kept: Sequence[Excerpt], count: Callable[[str], int]
    ) -> list[Excerpt]:
        """The sentences of block ``index`` kept after reading it, under the excerpts ``kept`` so far."""
        span = bank.spans[index]
        origin, at = bank.origin(index)
        text = bank.documents[span.document_index].text
        pieces = [
            piece
            for sentence in block_sentences(text, span.char_start, span.char_end)
            for piece in fit_pieces(text, sentence, self.read_tokens, count)
        ]
        texts = [text[start:end] for start, end in pieces]
        known = {excerpt.text for excerpt in kept}
        memory = self.render(kept)
        scores = self.scorer.scores(texts, question, [memory] * len(texts))
        for position, (start, end) in enumerate(pieces):
            if text[start:end] in known:
                scores[position] = float("-inf")  # already kept (a sentence repeated, or a block read twice)
        chosen = keep_within(scores, [count(text) for text in texts], self.read_tokens)
        return [
            Excerpt(
                texts[position],
                span.document_id,
                pieces[position][0],
                pieces[position][1],
                at,
                scores[position],
                origin.name,
            )
            for position in chosen
            if scores[position] != float("-inf")
        ]

    def fit(self, question: str, excerpts: list[Excerpt], count: Callable[[str], int]) -> list[Excerpt]:
        """``excerpts`` within ``total_tokens``: the least relevant (re-scored against the question and the other
        excerpts) dropped whole, one at a time; the survivors carry their new scores."""
        while excerpts:
            texts = [excerpt.text for excerpt in excerpts]
            others = [self.separator.join(texts[:position] + texts[position + 1 :]) for position in range(len(texts))]
            scores = self.scorer.scores(texts, question, others)
            excerpts = [replace(excerpt, score=score) for excerpt, score in zip(excerpts, scores)]
            if count(self.render(excerpts)) <= self.total_tokens:
                break
            worst = min(range(len(excerpts)), key=lambda position: (scores[position], -position))
            excerpts = excerpts[:worst] + excerpts[worst + 1 :]
        return excerpts

    def query_memory(self, excerpts: Sequence[Excerpt], count: Callable[[str], int]) -> str:
        """The best excerpts (by score) whose text, rendered in memory order, fits ``query_tokens``: stage 1's
        queries (at least the best one, cut to the cap at a word boundary when it alone is longer)."""
        chosen: list[int] = []
        for position in sorted(range(len(excerpts)), key=lambda position: -excerpts[position].score):
            trial = sorted([*chosen, position])
            if count(self.render([excerpts[place] for place in trial])) <= self.query_tokens:
                chosen = trial
        if not chosen and excerpts:
            best = max(excerpts, key=lambda excerpt: excerpt.score).text
            start, end = fit_pieces(best, (0, len(best)), self.query_tokens, count)[0]
            return best[start:end]
        return self.render([excerpts[place] for place in chosen])

    def update(
        self,
        reasoner: Reasoner,
        bank: MemoryBank,
        reads: Sequence[tuple[ScanState, int]],
        observe: UpdateObserver | None = None,
    ) -> list[str]:
        def count(text: str) -> int:
            return len(reasoner.prompts.encode_text(text))

        memories = []
        for state, index in reads:
            added = self.read(bank, index, state.question, state.excerpts, count)
            if added:
                state.excerpts = self.fit(state.question, [*state.excerpts, *added], count)
                state.query_memory = self.query_memory(state.excerpts, count)
            memories.append(self.render(state.excerpts) if state.excerpts else state.memory)
        return memories


MEMORY_STRATEGIES: dict[str, type[MemoryStrategy]] = {
    GeneratedNotes.name: GeneratedNotes,
    ExcerptMemory.name: ExcerptMemory,
}
DEFAULT_MEMORY_STRATEGY = GeneratedNotes.name


def memory_strategy(name: str = DEFAULT_MEMORY_STRATEGY, settings: ReasonerSettings | None = None) -> MemoryStrategy:
    """The strategy registered under ``name`` (set up from ``settings``); ConfigurationError naming the known ones
    otherwise. ``auto`` is the default strategy (a resolved engine config has already replaced it by its preset's)."""
    name = DEFAULT_MEMORY_STRATEGY if name == "auto" else name
    if name not in MEMORY_STRATEGIES:
        raise ConfigurationError(f"unknown memory strategy {name!r}; known: {', '.join(MEMORY_STRATEGIES)}")
    return MEMORY_STRATEGIES[name].from_settings(settings or ReasonerSettings())
