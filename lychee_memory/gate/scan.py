"""The gate's scan: which memory blocks the reasoner reads, judged by a rule (``rules.py``) against the question
and the working memory as it changes.

The scan is state-aware and follows chains in any order: blocks are judged in document order against the
current memory; after the reasoner updates the memory on a relevant block, the blocks after it and then the ones
judged earlier (against the older memory) are judged against the new memory, so a second hop that comes first in
the document is found once the first hop is in memory. When no block passes, the best ones are read (fallback)
inside the scan, and the scan goes on against the memory they wrote. Blocks are scored in batches against the
current memory and the scan jumps to the first relevant one, so the batch only computes ahead.

With a stage-1 scorer (``stage1.py``) the scan judges only the candidates stage 1 picks from the blocks
not judged yet, still in document order; after every memory update stage 1 ranks the unread blocks again, with the
memory's tokens as queries too, so the block of a second hop can become a candidate wherever it is.

Batching changes a score by rounding alone (padding reorders sums: about 1e-7 nats in float32), so a score
within ``boundary_tolerance`` of the threshold is scored again on its own, exactly as a block-by-block scan
scores it: batched and block-by-block scans make the same decisions (with or without stage 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..blocks import MemoryBank
from ..config import GateSettings
from ..excerpts import Excerpt
from ..model_loading import LoadedModel
from ..prompts import PromptBuilder
from .rules import GateRule, ScoreRequest
from .stage1 import StageOneScorer, choose_candidates


@dataclass
class GateDecision:
    """The gate's verdict on one block during one question's scan."""

    index: int
    score: float  # gain over the baseline, compared with the threshold
    relevant: bool
    memory_step: int  # how many memory updates had happened when the block was judged
    fallback: bool = False
    rejudged: bool = False  # the block had been judged before, against an older memory


@dataclass
class ScanState:
    """One question's progress through the bank.

    ``version`` counts the memory's changes; ``judged`` maps a block to the version it was last judged against.
    A block is pending while it is unread and not judged against the current memory, so after every change
    the blocks judged earlier are pending again (hop 2 read before hop 1 is judged again once hop 1 is noted).
    """

    question: str
    memory: str
    cursor: int = 0
    selected: list[int] = field(default_factory=list)
    decisions: list[GateDecision] = field(default_factory=list)
    memories: list[str] = field(default_factory=list)
    baseline: float | None = None  # block-free score under the current memory, as computed in its batch
    baseline_alone: float | None = None  # the same scored on its own (for scores near the threshold)
    done: bool = False
    reasoner_prompt_tokens: int = 0
    memory_tokens: int = 0
    candidates: list[int] | None = None  # blocks stage 1 left for the rule to judge (None: every block)
    candidate_history: list[list[int]] = field(default_factory=list)  # stage 1's picks, one list per ranking
    version: int = 0
    judged: dict[int, int] = field(default_factory=dict)
    fallback_done: bool = False
    reached: int = 0  # how far the first sweep got (for progress)
    excerpts: list[Excerpt] = field(default_factory=list)  # the sentences an excerpt memory keeps (none with notes)
    query_memory: str | None = None  # what of the memory stage 1 uses as queries (None: all of it)

    @property
    def stage_one_memory(self) -> str:
        """The memory as stage-1 queries: capped by the memory strategy (excerpts), else the whole memory."""
        return self.memory if self.query_memory is None else self.query_memory

    def pending(self, index: int) -> bool:
        return self.judged.get(index) != self.version and index not in self.selected

    def upcoming(self, count: int, total: int) -> list[int]:
        """The next ``count`` pending blocks in document order from the cursor, then from the start."""
        pool = range(total) if self.candidates is None else self.candidates
        after = [index for index in pool if index >= self.cursor and self.pending(index)]
        if len(after) < count:
            after += [index for index in pool if index < self.cursor and self.pending(index)]
        return after[:count]

    @property
    def rejudged(self) -> int:
        """Blocks judged again against a newer memory (the cost of following chains in any order)."""
        return sum(decision.rejudged for decision in self.decisions)


@dataclass
class ScanTimings:
    prefilter_seconds: float = 0.0
    gate_seconds: float = 0.0
    reason_seconds: float = 0.0
    gate_rows: int = 0
    prefiltered_blocks: int = 0  # blocks stage 1 scored (over all rankings)


MemoryUpdater = Callable[[list[tuple[ScanState, int]]], list[str]]


class GateScan:
    """Runs the state-aware scan of several questions over one bank, batching across blocks and questions.

    Each question's scan judges its pending blocks (see ``ScanState``) in document order from its cursor,
    wrapping to the start, and reads the first relevant one; after the memory changes the blocks judged
    against the older memory are pending again. When every block was judged and none passed, the best
    ``fallback_blocks`` are read in document order and the scan goes on against the new memory (likewise up to
    ``min_blocks`` when some passed but fewer than that). It ends when
    nothing is pending or the block budget is read: every memory version judges a block at most once, and
    there are at most ``max_relevant_blocks`` versions, so it always terminates.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        prompts: PromptBuilder,
        rule: GateRule,
        settings: GateSettings,
        threshold: float,
        boundary_tolerance: float,
        progress: Callable[[int], None] | None = None,
        prefilter: StageOneScorer | None = None,
    ):
        self.prefilter = prefilter if rule.needs_model else None
        self.loaded = loaded
        self.prompts = prompts
        self.rule = rule
        self.settings = settings.with_generic_defaults()
        self.threshold = threshold
        self.boundary_tolerance = boundary_tolerance
        self.progress = progress
        self.timings = ScanTimings()

    @property
    def _batched(self) -> bool:
        """Whether rows share forwards (then near-threshold scores are checked alone)."""
        return self.rule.needs_model and self.settings.batch_size > 1

    def run(self, bank: MemoryBank, states: list[ScanState], update: MemoryUpdater) -> list[ScanState]:
        """Scan until no question has a pending block or budget left; ``update`` writes memory."""
        total = len(bank)
        self._bank = bank
        for state in states:
            state.memories.append(state.memory)
            if total == 0:
                state.done = True
            self._rank(state)
        while active := [i for i, state in enumerate(states) if not state.done]:
            plan: dict[int, list[int]] = {}
            falling_back: list[ScanState] = []
            for i in active:
                state = states[i]
                if indices := state.upcoming(self.settings.batch_size, total):
                    plan[i] = indices
                elif not state.fallback_done and self._short_by(state) > 0:
                    falling_back.append(state)
                else:
                    self._finish(state)
            if falling_back:
                self._fallback(bank, falling_back, update)
            if not plan:
                continue
            scores = self._score(bank, states, plan)
            hits: list[tuple[ScanState, int]] = []
            for i, indices in plan.items():
                state = states[i]
                hit = None
                for index, raw in zip(indices, scores[i]):
                    gain = raw - state.baseline if state.baseline is not None else raw
                    if self._batched and abs(gain - self.threshold) <= self.boundary_tolerance:
                        gain = self._gain_alone(bank, state, index)
                    relevant = gain >= self.threshold
                    again = index in state.judged
                    state.judged[index] = state.version
                    state.decisions.append(GateDecision(index, gain, relevant, len(state.selected), rejudged=again))
                    if index < state.cursor:
                        self._advance(state, total)  # wrapped: the first sweep is over
                    else:
                        self._advance(state, index + 1)
                    if relevant:
                        hit = index
                        break
                state.cursor = (indices[-1] if hit is None else hit) + 1
                if hit is not None:
                    hits.append((state, hit))
            if hits:
                self._apply(hits, update)
            for i in plan:
                if len(states[i].selected) >= self.settings.max_relevant_blocks:
                    self._finish(states[i])
        return states

    def gains(self, bank: MemoryBank, state: ScanState, indices: Sequence[int]) -> list[float]:
        """Gate gains of these blocks under the state's current memory, outside the scan: no decision is
        recorded (a retriever filling up to k with blocks the scan did not read)."""
        self._bank = bank
        if not indices:
            return []
        raw = self._score(bank, [state], {0: list(indices)})[0]
        return [value - state.baseline if state.baseline is not None else value for value in raw]

    def best_unread(self, bank: MemoryBank, state: ScanState, wanted: int) -> list[tuple[int, float]]:
        """Up to ``wanted`` (block, gain) the scan did not read, best gain under the final memory first.

        Blocks already judged against that memory keep their gain. The others (judged against an older memory,
        or never) are judged now: all of them when the scan judged every block anyway (no stage 1), else the
        next ones by stage-1 rank under the final memory, at most ``wanted`` more rows.
        """
        unread = [index for index in range(len(bank)) if index not in state.selected]
        last = {decision.index: decision for decision in state.decisions}
        gains = {index: last[index].score for index in unread if state.judged.get(index) == state.version}
        stale = [index for index in unread if index not in gains]
        if state.candidates is None:
            gains.update(zip(stale, self.gains(bank, state, stale)))
        elif len(gains) < wanted:
            extra = self.stage_one_order(bank, state, stale)[: wanted - len(gains)]
            gains.update(zip(extra, self.gains(bank, state, extra)))
        best = sorted(gains, key=lambda index: (-gains[index], index))[:wanted]
        return [(index, gains[index]) for index in best]

    def stage_one_order(self, bank: MemoryBank, state: ScanState, indices: Sequence[int]) -> list[int]:
        """``indices`` best first by stage 1 under the current memory (document order without a prefilter)."""
        if self.prefilter is None or not indices:
            return list(indices)
        scores, missing = self.prefilter.rank(bank, state.question, state.stage_one_memory, list(indices))
        ranked = sorted(scores, key=lambda index: (-scores[index], index))
        return sorted(missing) + ranked

    def _advance(self, state: ScanState, reached: int) -> None:
        if reached > state.reached:
            if self.progress:
                self.progress(reached - state.reached)
            state.reached = reached

    def _finish(self, state: ScanState) -> None:
        self._advance(state, len(self._bank))
        state.cursor, state.done = len(self._bank), True

    def _rank(self, state: ScanState) -> None:
        """Stage 1: the candidates among the unread blocks, under the state's current memory."""
        bank = self._bank
        remaining = [index for index in range(len(bank)) if index not in state.selected]
        if self.prefilter is None or len(remaining) <= self.settings.candidates:
            state.candidates = None if state.candidates is None else remaining
            return
        started = time.perf_counter()
        scores, missing = self.prefilter.rank(bank, state.question, state.stage_one_memory, remaining)
        settings = self.settings
        picked = choose_candidates(scores, settings.candidates, settings.candidate_margin, settings.max_near_ties)
        state.candidates = sorted(set(picked) | set(missing))  # a block without an index is judged by the rule
        state.candidate_history.append(list(state.candidates))
        self.timings.prefiltered_blocks += len(remaining)
        self.timings.prefilter_seconds += time.perf_counter() - started

    def _requests(self, bank: MemoryBank, states: list[ScanState], keys: list[tuple[int, int | None]]):
        return [
            ScoreRequest(
                states[i].question,
                states[i].memory,
                bank.block(index) if index is not None and self.rule.needs_model else None,
            )
            for i, index in keys
        ]

    def _score(self, bank: MemoryBank, states: list[ScanState], plan: dict[int, list[int]]) -> dict[int, list[float]]:
        """Raw scores per planned block, batched across questions; fills in missing block-free baselines."""
        keys: list[tuple[int, int | None]] = []
        for i, indices in plan.items():
            if self.rule.uses_block_free_baseline and states[i].baseline is None:
                keys.append((i, None))
            keys.extend((i, index) for index in indices)
        values: dict[tuple[int, int | None], float] = {}
        started = time.perf_counter()
        step = self.settings.batch_size if self.rule.needs_model else max(1, len(keys))
        for start in range(0, len(keys), step):
            part = keys[start : start + step]
            values.update(zip(part, self.rule.score(self.loaded, self.prompts, self._requests(bank, states, part))))
            self.timings.gate_rows += len(part) if self.rule.needs_model else 0
        self.timings.gate_seconds += time.perf_counter() - started
        for i in plan:
            if (i, None) in values:
                states[i].baseline = values[(i, None)]
        return {i: [values[(i, index)] for index in indices] for i, indices in plan.items()}

    def _gain_alone(self, bank: MemoryBank, state: ScanState, index: int) -> float:
        """The block's gain with the block and the baseline each scored in a forward of its own."""
        started = time.perf_counter()
        keys: list[tuple[int, int | None]] = [(0, index)]
        if self.rule.uses_block_free_baseline and state.baseline_alone is None:
            keys.append((0, None))
        scores = [self.rule.score(self.loaded, self.prompts, self._requests(bank, [state], [key]))[0] for key in keys]
        self.timings.gate_rows += len(keys)
        self.timings.gate_seconds += time.perf_counter() - started
        if len(keys) == 2:
            state.baseline_alone = scores[1]
        base = state.baseline_alone if self.rule.uses_block_free_baseline else None
        return scores[0] - base if base is not None else scores[0]

    def _apply(self, hits: list[tuple[ScanState, int]], update: MemoryUpdater, rerank: bool = True) -> None:
        """Read each hit: the reasoner rewrites the memory; a changed memory makes judged blocks pending again."""
        started = time.perf_counter()
        memories = update(hits)
        self.timings.reason_seconds += time.perf_counter() - started
        for (state, index), memory in zip(hits, memories):
            state.selected.append(index)
            changed = memory != state.memory
            state.memory = memory
            state.memories.append(memory)
            if changed:
                state.version += 1
                state.baseline = state.baseline_alone = None  # the memory changed: baselines must be recomputed
            more = len(state.selected) < self.settings.max_relevant_blocks
            if rerank and state.candidates is not None and changed and more:
                self._rank(state)  # stage 1 again, with the new notes as queries too

    def _short_by(self, state: ScanState) -> int:
        """Blocks a finished sweep still owes: ``fallback_blocks`` when none passed, else up to ``min_blocks``,
        within the budget."""
        floor = self.settings.min_blocks
        if not state.selected:
            floor = max(floor, self.settings.fallback_blocks)
        return min(floor, self.settings.max_relevant_blocks) - len(state.selected)

    def _fallback(self, bank: MemoryBank, states: list[ScanState], update: MemoryUpdater) -> None:
        """Questions that read fewer blocks than they owe (none passed, or fewer than ``min_blocks``) read their
        top-scoring unread block(s), in document order, then scan on.

        A block's gain is its latest verdict's. Gains within ``boundary_tolerance`` of the last one taken are
        scored alone first, so near-ties are broken as a block-by-block scan breaks them.
        """
        chosen: list[list[int]] = []
        for state in states:
            wanted = self._short_by(state)
            state.fallback_done = True
            gains = {d.index: d.score for d in state.decisions if d.index not in state.selected}
            ranked = sorted(gains, key=lambda index: (-gains[index], index))
            if self._batched and len(ranked) > wanted:
                cut = gains[ranked[wanted - 1]]
                for index in ranked:
                    if abs(gains[index] - cut) <= self.boundary_tolerance:
                        gains[index] = self._gain_alone(bank, state, index)
                ranked = sorted(gains, key=lambda index: (-gains[index], index))
            best = sorted(ranked[:wanted])
            for decision in state.decisions:
                if decision.index in best:
                    decision.fallback = True
                    decision.score = gains[decision.index]
            chosen.append(best)
        # One round per fallback rank, so a question's memory is updated in document order.
        for rank in range(max(map(len, chosen), default=0)):
            round_ = [(state, picks[rank]) for state, picks in zip(states, chosen) if len(picks) > rank]
            if round_:
                self._apply(round_, update, rerank=False)
        for state, picks in zip(states, chosen):
            if picks:
                state.cursor = picks[-1] + 1
            if len(state.selected) >= self.settings.max_relevant_blocks:
                self._finish(state)
            elif state.candidates is not None and state.version > 0:
                self._rank(state)
