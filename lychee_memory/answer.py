"""What a question returns: the answer, the blocks read (with gate scores and sources), the memory
after each step, the sentences kept as evidence (excerpt memory), timings by phase and token counts; ``to_dict``
gives the CLI's JSON. ``answer_from_scan`` assembles one from a finished scan."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .blocks import MemoryBank
from .excerpts import Excerpt
from .gate import GateScan, ScanState, ScanTimings


@dataclass(frozen=True)
class SelectedBlock:
    """A block the reasoner read, where it comes from, and the gate's score for it."""

    index: int  # the block's index in its own bank (``bank``), also when a filtered view or a union was scanned
    score: float
    document_id: str
    char_start: int
    char_end: int
    text: str
    fallback: bool = False  # read because nothing passed the threshold
    # False for a block added to reach the k a retriever asked for (the best-scoring block the gate did not read)
    selected: bool = True
    bank: str | None = None  # the bank the block belongs to (a query over several banks reads their union)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "score": round(self.score, 6),
            "doc": self.document_id,
            "start": self.char_start,
            "end": self.char_end,
            "fallback": self.fallback,
            "selected": self.selected,
            "bank": self.bank,
            "text": self.text,
        }


@dataclass(frozen=True)
class GateScore:
    """One gate verdict of the scan: block, score against the threshold, memory step it was judged at, and
    whether it was judged again (after a memory update it had been judged against an older memory)."""

    index: int
    score: float
    relevant: bool
    memory_step: int
    rejudged: bool = False


@dataclass
class Answer:
    """The result of one question."""

    question: str
    text: str
    mode: str  # "lychee", "memagent", "full_context" or "rag"
    blocks: list[SelectedBlock] = field(default_factory=list)
    memory_steps: list[str] = field(default_factory=list)  # initial memory, then after each update
    gate_scores: list[GateScore] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    token_counts: dict[str, int] = field(default_factory=dict)
    # The blocks stage 1 of the gate passed on to the rule, one list per ranking (at the start, then after each
    # memory update); empty when stage 1 did not run (prefilter off, or a bank no larger than gate.candidates).
    candidates: list[list[int]] = field(default_factory=list)
    # The sentences the answer was written from, verbatim with their spans, in reading order (excerpt memory: those
    # within reasoner.excerpt_answer_share of the best); empty with notes.
    evidence: list[Excerpt] = field(default_factory=list)

    @property
    def memory(self) -> str:
        """The working memory the answer was written from (an excerpt memory's lines as read; the answer reads them
        in the order ``reasoner.excerpt_answer_order`` sets)."""
        return self.memory_steps[-1] if self.memory_steps else ""

    def __str__(self) -> str:
        return self.text

    def to_dict(self, include_scores: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "question": self.question,
            "answer": self.text,
            "mode": self.mode,
            "blocks": [block.to_dict() for block in self.blocks],
            "memory": self.memory_steps,
            "timings": {name: round(value, 4) for name, value in self.timings.items()},
            "tokens": self.token_counts,
            "evidence": [excerpt.to_dict() for excerpt in self.evidence],
        }
        if include_scores:
            data["candidates"] = self.candidates
            data["gate_scores"] = [
                {
                    "index": s.index,
                    "score": round(s.score, 6),
                    "relevant": s.relevant,
                    "memory_step": s.memory_step,
                    "rejudged": s.rejudged,
                }
                for s in self.gate_scores
            ]
        return data


class AnswerStream:
    """Iterate to receive the answer text as it is generated; ``answer`` holds the full Answer afterwards.

    Leaving the loop early (``break``) pauses the generation: ``answer`` then finishes it and returns the
    whole Answer, and iterating again yields the rest of the text. ``close()`` abandons the generation.
    """

    def __init__(
        self,
        pieces: Iterator[str],
        finish: Callable[[], Answer],
        scan: Callable[[], list[SelectedBlock]] | None = None,
    ):
        self._pieces = pieces
        self._finish = finish
        self._scan = scan
        self._answer: Answer | None = None
        self._closed = False

    def __iter__(self) -> Iterator[str]:
        # Pull pieces one by one instead of ``yield from``: a consumer's ``break`` closes this generator
        # only, not the generation, so ``answer`` can still finish it.
        while self._answer is None:
            if self._closed:
                return
            try:
                piece = next(self._pieces)
            except StopIteration:
                self._answer = self._finish()
                return
            yield piece

    @property
    def answer(self) -> Answer:
        """The whole Answer; finishes the generation first if iteration stopped early."""
        if self._answer is None:
            if self._closed:
                raise RuntimeError("the answer stream was closed before the answer was complete")
            for _ in self:
                pass
        assert self._answer is not None
        return self._answer

    @property
    def blocks(self) -> list[SelectedBlock]:
        """The blocks the gate selected; runs only the scan if no answer text was generated yet."""
        if self._answer is not None or self._scan is None:
            return self.answer.blocks
        return self._scan()

    def close(self) -> None:
        """Abandon the generation (frees its KV cache); ``answer`` then raises unless it had finished."""
        if self._answer is None and not self._closed:
            self._closed = True
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()


def phase_timings(load_model: float, ingest: float, **phases: float) -> dict[str, float]:
    """Seconds by phase for an Answer: model loading, ingest, the query's own phases, and ``query``, their sum.

    ``query`` is what a user waits for once the model is loaded and the bank built (the warm latency).
    """
    return {"load_model": load_model, "ingest": ingest, **phases, "query": sum(phases.values())}


# From a scan to an Answer ----------------------------------------------------------------------------------


def selected_block(bank: MemoryBank, index: int, score: float, fallback: bool, selected: bool = True) -> SelectedBlock:
    """Block ``index`` of the scanned bank as its own bank numbers it (a filtered view or a union reports each
    block under the bank it belongs to), with where its text comes from."""
    span = bank.spans[index]
    origin, at = bank.origin(index)
    return SelectedBlock(
        at, score, span.document_id, span.char_start, span.char_end, span.text, fallback, selected, origin.name
    )


def selected_blocks(state: ScanState, bank: MemoryBank) -> list[SelectedBlock]:
    """The blocks a scan read, in reading order, with the gate score that selected each."""
    blocks = []
    for index in state.selected:
        decision = next(d for d in reversed(state.decisions) if d.index == index)
        blocks.append(selected_block(bank, index, decision.score, decision.fallback))
    return blocks


def k_blocks(state: ScanState, bank: MemoryBank, scan: GateScan, k: int | None) -> list[SelectedBlock]:
    """The blocks a retriever asking for ``k`` gets (all the scan read when k is None): when the scan read more,
    the k best by gate score among them, in reading order; when fewer, its reads and then the best-scoring blocks
    it did not read under the final memory (``selected=False``), best first."""
    blocks = selected_blocks(state, bank)
    if k is not None and len(blocks) > k:
        best = set(sorted(range(len(blocks)), key=lambda position: -blocks[position].score)[:k])
        blocks = [block for position, block in enumerate(blocks) if position in best]
    elif k is not None and len(blocks) < k:
        blocks += [
            selected_block(bank, index, gain, fallback=False, selected=False)
            for index, gain in scan.best_unread(bank, state, k - len(blocks))
        ]
    return blocks


def answer_from_scan(
    state: ScanState,
    bank: MemoryBank,
    timings: ScanTimings,
    text: str,
    *,
    load_seconds: float,
    ingest_seconds: float,
    answer_seconds: float,
    answer_tokens: int,
    evidence: Sequence[Excerpt] | None = None,
) -> Answer:
    """The Answer of one question's finished scan: its blocks, memory steps, gate verdicts, timings and counts;
    ``evidence`` is the excerpts the final answer read (None: every excerpt the scan kept)."""
    counts = {
        "reasoner_prompt_tokens": state.reasoner_prompt_tokens,
        "memory_tokens": state.memory_tokens,
        "document_tokens": bank.num_tokens,
        "memory_slots": bank.num_slots,
        "blocks": len(bank),
        "blocks_read": len(state.selected),
        "gate_rows": timings.gate_rows,
        "rejudged_blocks": state.rejudged,
        "prefiltered_blocks": timings.prefiltered_blocks,
        "candidates": len(set().union(*state.candidate_history)) if state.candidate_history else len(bank),
        "answer_tokens": answer_tokens,
    }
    return Answer(
        question=state.question,
        text=text,
        mode="lychee",
        blocks=selected_blocks(state, bank),
        memory_steps=list(state.memories),
        gate_scores=[
            GateScore(bank.origin(d.index)[1], d.score, d.relevant, d.memory_step, d.rejudged) for d in state.decisions
        ],
        candidates=[[bank.origin(index)[1] for index in picks] for picks in state.candidate_history],
        timings=phase_timings(
            load_seconds,
            ingest_seconds,
            prefilter=timings.prefilter_seconds,
            gate=timings.gate_seconds,
            reason=timings.reason_seconds,
            answer=answer_seconds,
        ),
        token_counts=counts,
        evidence=list(state.excerpts if evidence is None else evidence),
    )
