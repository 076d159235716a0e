"""The chain-following scan (gate.GateScan) on scripted rules: order never hides a hop, it terminates, and
batching never changes a decision. The rules here read the memory text, so the expected reads are known by hand."""

from __future__ import annotations

import random

import pytest

from lychee_memory.config import GateSettings
from lychee_memory.gate import GateRule, GateScan, ScanState

INITIAL = "No previous memory"


class ScriptedBank:
    """Blocks are their indices; enough of MemoryBank for the scan."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def block(self, index: int) -> int:
        return index


class ChainRule(GateRule):
    """Block ``hop1`` passes always; block ``hop2`` passes only once the memory holds ``hop1``'s note."""

    name = "scripted"
    default_threshold = 0.5

    def __init__(self, hop1: int, hop2: int, near: float = 0.4):
        self.hop1, self.hop2, self.near = hop1, hop2, near

    def score(self, loaded, prompts, requests):
        scores = []
        for request in requests:
            if request.block == self.hop1:
                scores.append(0.9)
            elif request.block == self.hop2:
                scores.append(0.9 if "note-1" in request.memory else 0.1)
            else:
                scores.append(0.0)
        return scores


class TableRule(GateRule):
    """Scores from a fixed table keyed by (block, memory text): any pattern a real gate could produce."""

    name = "table"
    default_threshold = 0.5

    def __init__(self, seed: int):
        self.seed = seed

    def score(self, loaded, prompts, requests):
        return [random.Random(f"{self.seed}-{r.block}-{r.memory}").random() for r in requests]


def note_writer(notes: dict[int, str] | None = None):
    """The reasoner: appends the block's note (default ``note-<index>``) to the memory."""

    def update(hits):
        memories = []
        for state, index in hits:
            note = (notes or {}).get(index, f"note-{index}")
            memories.append(note if state.memory == INITIAL else f"{state.memory}; {note}")
        return memories

    return update


def scan(rule, size, questions=1, update=None, **settings):
    options = {"batch_size": 1, "max_relevant_blocks": 8, "fallback_blocks": 1, "prefilter": "off", **settings}
    gate = GateScan(None, None, rule, GateSettings(**options), rule.default_threshold, 0.0)
    states = [ScanState(f"question {q}", INITIAL) for q in range(questions)]
    gate.run(ScriptedBank(size), states, update or note_writer({3: "note-1"}))
    return states, gate


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize(("hop1", "hop2"), [(3, 7), (7, 3)])
def test_hop_two_is_read_in_either_document_order(hop1, hop2, batch_size):
    rule = ChainRule(hop1, hop2)
    (state,), _ = scan(rule, 10, batch_size=batch_size, update=note_writer({hop1: "note-1"}))
    assert state.selected == [hop1, hop2]
    if hop2 < hop1:  # judged before hop 1 was known, then again once it was noted
        judgements = [d for d in state.decisions if d.index == hop2]
        assert [d.relevant for d in judgements] == [False, True] and judgements[1].rejudged
    assert state.done


def test_a_fallback_read_happens_inside_the_scan_and_conditions_what_follows():
    """Hop 1 scores under the threshold; the fallback reads it, and hop 2 (earlier in the document) passes after."""

    class WeakFirstHop(ChainRule):
        def score(self, loaded, prompts, requests):
            scores = super().score(loaded, prompts, requests)
            return [0.45 if r.block == self.hop1 else s for r, s in zip(requests, scores)]

    (state,), _ = scan(WeakFirstHop(6, 2), 9, update=note_writer({6: "note-1"}))
    assert state.selected == [6, 2]
    assert [d.fallback for d in state.decisions if d.index == 6] == [True]


def test_single_fact_reads_are_unchanged_by_rejudging():
    """One relevant block: it is read once and the rest are judged against the new memory but none passes."""
    (state,), _ = scan(ChainRule(4, hop2=-1), 10, update=note_writer({4: "note-1"}))
    assert state.selected == [4]
    first = [d.index for d in state.decisions if d.memory_step == 0]
    assert first == [0, 1, 2, 3, 4], "document order up to the hit, as before"
    assert [d.index for d in state.decisions if d.memory_step == 1] == [5, 6, 7, 8, 9, 0, 1, 2, 3]
    assert state.rejudged == 4


def test_an_unchanged_memory_judges_nothing_again():
    (state,), _ = scan(ChainRule(2, 5), 6, update=lambda hits: [s.memory for s, _ in hits])
    assert state.selected == [2] and state.rejudged == 0


@pytest.mark.parametrize("seed", range(12))
def test_any_scores_terminate_within_bounds_and_batch_like_block_by_block(seed):
    rng = random.Random(seed)
    size, budget = rng.randint(1, 14), rng.randint(1, 5)
    rule = TableRule(seed)
    rule.default_threshold = rng.choice([0.3, 0.7, 0.95, 1.1])
    runs = [
        scan(rule, size, questions=3, update=note_writer(), batch_size=b, max_relevant_blocks=budget)[0]
        for b in (1, 4, 16)
    ]
    for states in runs[1:]:
        for state, reference in zip(states, runs[0]):
            assert state.selected == reference.selected
            assert [(d.index, d.relevant, d.memory_step) for d in state.decisions] == [
                (d.index, d.relevant, d.memory_step) for d in reference.decisions
            ]
    for state in runs[0]:
        assert state.done and len(state.selected) <= budget
        assert len(set(state.selected)) == len(state.selected), "no block is read twice"
        pairs = [(d.index, d.memory_step) for d in state.decisions]
        assert len(pairs) == len(set(pairs)), "a block is judged at most once per memory"
        assert len(state.decisions) <= size * (budget + 1)
        if not state.selected:
            assert size == 0


def test_progress_counts_each_block_once_per_question():
    ticks: list[int] = []
    rule = ChainRule(7, 3)
    gate = GateScan(None, None, rule, GateSettings(batch_size=2, prefilter="off"), 0.5, 0.0, ticks.append)
    states = [ScanState("q", INITIAL), ScanState("r", INITIAL)]
    gate.run(ScriptedBank(10), states, note_writer({7: "note-1"}))
    assert sum(ticks) == 20 and all(tick >= 0 for tick in ticks)


class RankedRule(GateRule):
    """Fixed gains per block, the same under every memory: block 4 alone passes; the rest rank by the table."""

    name = "ranked"
    default_threshold = 0.5
    gains = {0: 0.1, 1: 0.3, 2: 0.45, 3: 0.2, 4: 0.9, 5: 0.4}

    def score(self, loaded, prompts, requests):
        return [self.gains.get(r.block, 0.0) for r in requests]


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize(("min_blocks", "expected"), [(0, [4]), (1, [4]), (2, [4, 2]), (3, [4, 2, 5]), (9, [4, 2, 5])])
def test_min_blocks_tops_up_a_scan_that_passed_fewer_with_the_best_scoring_unread_blocks(
    min_blocks, expected, batch_size
):
    """One block passes; min_blocks reads the next best by gain (0.45, then 0.4), within max_relevant_blocks (3)."""
    (state,), _ = scan(
        RankedRule(), 6, update=note_writer(), min_blocks=min_blocks, max_relevant_blocks=3, batch_size=batch_size
    )
    assert state.selected == expected
    assert {d.index for d in state.decisions if d.fallback} == set(expected[1:])  # 4 passed; the rest topped up


def test_min_blocks_raises_the_fallback_when_nothing_passes_and_never_reads_twice():
    """Nothing passes: max(fallback_blocks, min_blocks) best blocks are read once each, in document order."""
    rule = RankedRule()
    rule.default_threshold = 2.0  # nothing passes
    (state,), _ = scan(rule, 6, update=note_writer(), min_blocks=3, fallback_blocks=1)
    assert state.selected == [2, 4, 5]  # the three best gains (0.9, 0.45, 0.4) read in document order
    (state,), _ = scan(rule, 6, update=note_writer(), min_blocks=0, fallback_blocks=2)
    assert state.selected == [2, 4]  # the floor off: the fallback as before
