"""The gate: rule scores against independent computations, and the batched state-aware scan against a
block-by-block scan (same decisions, same scores), across questions, budgets and fallbacks."""

from __future__ import annotations

import math

import pytest
import torch

from lychee_memory.gate import QueryLikelihoodRule, ScoreRequest
from lychee_memory.generation import Generation

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine
from .test_compressors import make_chunk, random_tokens

QUESTION = "What is the access code for the east pier storage shed?"


def full_logprobs(model, token_ids: list[int]) -> torch.Tensor:
    """log p(token t | tokens < t) for t >= 1, from an ordinary forward with full logits."""
    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0].float()
    return torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(token_ids[1:])[:, None]).squeeze(1)


@pytest.mark.parametrize("memory", ["No previous memory", "The code is in the harbour notes."])
def test_query_likelihood_equals_mean_logprob_from_full_logits(family, memory):
    engine = make_engine(family, compressor="none")
    loaded = engine.loaded
    templates = engine.config.prompts
    rule = QueryLikelihoodRule(0.5, "No previous memory", templates.query_likelihood, templates.query_likelihood_memory)
    rule.opening = engine.opening  # framed blocks: the shared opening goes before the block and the baseline
    chunk = random_tokens(30, seed=21)
    block = engine.compressor.compress(loaded, [make_chunk(chunk)])[0]
    scores = rule.score(
        loaded, engine.prompts, [ScoreRequest(QUESTION, memory, block), ScoreRequest(QUESTION, memory, None)]
    )
    if memory == "No previous memory":
        segmented = engine.prompts.segments(templates.query_likelihood, question=QUESTION)
    else:
        segmented = engine.prompts.segments(templates.query_likelihood_memory, question=QUESTION, memory=memory)

    def reference(prefix: list[int]) -> float:
        logprobs = full_logprobs(loaded.model, prefix + segmented.token_ids)
        offset = len(prefix) - 1  # logprobs[i] scores token i + 1 of the whole sequence
        (q_start, q_end), (m_start, m_end) = segmented.spans["question"], segmented.spans.get("memory", (0, 0))
        question = logprobs[offset + q_start : offset + q_end].mean().item()
        notes = logprobs[offset + m_start : offset + m_end].mean().item() if memory != "No previous memory" else 0.0
        return question + 0.5 * notes

    opening = list(engine.opening.token_ids)
    assert opening == engine.prompts.block_opening_ids()
    assert scores[0] == pytest.approx(reference(opening + chunk), abs=1e-4)
    assert scores[1] == pytest.approx(reference(opening), abs=1e-4)


def _scripted_memory(*engines):
    """Replace the (random-model) reasoner with a deterministic note writer: the scan is what is tested."""

    def update(requests):
        return [
            Generation(
                token_ids=[0],
                text=f"{request.memory.split(';')[-1]}; notes on the harbour and the pier",
                stopped=True,
                prompt_tokens=1,
            )
            for request in requests
        ]

    for engine in engines:
        engine.reasoner.update = update


def _low_score_of_full_scan(engine, bank) -> float:
    """The 30th percentile of the scores of a scan that reads every block: most blocks pass it, some fail."""
    threshold, engine.threshold = engine.threshold, -math.inf
    try:
        judged = engine.ask(QUESTION, bank).gate_scores
        # Scores after the first update (judged with notes in memory) set the bar for most of the scan.
        scores = sorted(score.score for score in judged if score.memory_step > 0)
        first = max(score.score for score in judged if score.memory_step == 0)
    finally:
        engine.threshold = threshold
    return min(scores[int(len(scores) * 0.3)], first)  # some block passes under the initial memory too


@pytest.mark.parametrize("rule", ["query_likelihood", "prompt"])
@pytest.mark.parametrize("batch_size", [3, 16])
@pytest.mark.parametrize("prefilter", ["off", "keys"])
def test_batched_scan_equals_block_by_block_scan(family, rule, batch_size, prefilter):
    sequential = make_engine(
        family,
        gate={"rule": rule, "batch_size": 1, "prefilter": prefilter},
        compressor="key_norm",
        chunk_tokens=48,
        max_relevant_blocks=50,
    )
    bank = sequential.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    _scripted_memory(sequential)
    threshold = _low_score_of_full_scan(sequential, bank)
    sequential.threshold = threshold
    batched = make_engine(
        family,
        gate={"rule": rule, "batch_size": batch_size, "prefilter": prefilter},
        compressor="key_norm",
        chunk_tokens=48,
        max_relevant_blocks=50,
    )
    batched.threshold = threshold
    _scripted_memory(batched)
    one, many = sequential.ask(QUESTION, bank), batched.ask(QUESTION, bank)
    assert len(one.blocks) >= 2, "the scan must update memory at least twice for this test to mean anything"
    if prefilter == "keys":
        assert one.token_counts["candidates"] < len(bank), "stage 1 must leave blocks out for this to test it"
    assert [b.index for b in one.blocks] == [b.index for b in many.blocks]
    assert [(s.index, s.relevant, s.memory_step) for s in one.gate_scores] == [
        (s.index, s.relevant, s.memory_step) for s in many.gate_scores
    ]
    for a, b in zip(one.gate_scores, many.gate_scores, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-4)
    assert one.memory_steps == many.memory_steps


def test_later_blocks_are_judged_against_the_updated_memory(family):
    engine = make_engine(family, compressor="key_norm", chunk_tokens=32, max_relevant_blocks=50, prefilter="off")
    bank = engine.ingest([FACTS_DOCUMENT])
    _scripted_memory(engine)
    engine.threshold = _low_score_of_full_scan(engine, bank)
    answer = engine.ask(QUESTION, bank)
    assert len(answer.blocks) >= 2
    steps = [s.memory_step for s in answer.gate_scores]
    assert steps == sorted(steps) and steps[-1] <= len(answer.blocks)
    first_sweep = [s for s in answer.gate_scores if not s.rejudged]
    assert sorted(s.index for s in first_sweep) == list(range(len(bank))), "the first sweep judges every block once"
    sweep_reads = [s.index for s in first_sweep if s.relevant]
    for decision in first_sweep:  # each block was first judged with every earlier hit already in memory
        assert decision.memory_step == sum(index < decision.index for index in sweep_reads)
    # Then the blocks judged against an older memory are judged again, each against the memory of its turn.
    for decision in (s for s in answer.gate_scores if s.rejudged):
        earlier = [s for s in answer.gate_scores if s.index == decision.index and s is not decision]
        assert earlier and all(s.memory_step < decision.memory_step and not s.relevant for s in earlier)
    assert len(answer.memory_steps) == len(answer.blocks) + 1


def test_questions_scanned_together_decide_like_each_alone(family):
    engine = make_engine(family, compressor="key_norm", chunk_tokens=32, max_relevant_blocks=50)
    bank = engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    _scripted_memory(engine)
    engine.threshold = _low_score_of_full_scan(engine, bank)
    questions = [QUESTION, "Who is the head gardener at Kestrel Hall?", "Which ship anchored in the bay?"]
    together = engine.ask_many(questions, bank)
    for question, answer in zip(questions, together, strict=True):
        alone = engine.ask(question, bank)
        assert [b.index for b in alone.blocks] == [b.index for b in answer.blocks]
        assert [(s.index, s.relevant) for s in alone.gate_scores] == [(s.index, s.relevant) for s in answer.gate_scores]
        assert alone.text == answer.text


def test_budget_stops_the_scan(family):
    engine = make_engine(
        family, compressor="key_norm", chunk_tokens=32, max_relevant_blocks=2, threshold=-1e9, prefilter="off"
    )
    bank = engine.ingest([FACTS_DOCUMENT])
    answer = engine.ask(QUESTION, bank)
    assert [b.index for b in answer.blocks] == [0, 1]
    assert max(s.index for s in answer.gate_scores) < len(bank) - 1


@pytest.mark.parametrize("fallback", [1, 2])
def test_nothing_passing_reads_the_top_scoring_blocks(family, fallback):
    engine = make_engine(
        family,
        compressor="key_norm",
        chunk_tokens=32,
        threshold=1e9,
        gate={"rule": "query_likelihood", "fallback_blocks": fallback, "prefilter": "off"},
    )
    bank = engine.ingest([FACTS_DOCUMENT])
    answer = engine.ask(QUESTION, bank)
    first = [s for s in answer.gate_scores if s.memory_step == 0]
    assert sorted(s.index for s in first) == list(range(len(bank))), "every block judged once under the first memory"
    ranked = sorted(first, key=lambda s: (-s.score, s.index))
    assert [b.index for b in answer.blocks] == sorted(s.index for s in ranked[:fallback])
    assert all(b.fallback for b in answer.blocks)
    # The fallback reads happen inside the scan: the other blocks are judged again against the memory they wrote.
    later = [s for s in answer.gate_scores if s.memory_step > 0]
    assert answer.memory_steps[-1] != answer.memory_steps[0]
    assert sorted(s.index for s in later) == sorted(set(range(len(bank))) - {b.index for b in answer.blocks})
    assert {s.memory_step for s in later} == {fallback}


def test_all_gate_reads_every_block_in_order(family):
    engine = make_engine(family, compressor="key_norm", chunk_tokens=32, gate="all", max_relevant_blocks=1000)
    bank = engine.ingest([FACTS_DOCUMENT])
    answer = engine.ask(QUESTION, bank)
    assert [b.index for b in answer.blocks] == list(range(len(bank)))
    assert len(answer.memory_steps) == len(bank) + 1


@pytest.mark.parametrize("rule", ["query_likelihood", "prompt"])
def test_batched_scan_decides_like_block_by_block_at_the_threshold(family, rule):
    """Batching changes scores by rounding alone (padding reorders sums); at the threshold that can flip a
    decision, so scores near it are scored again on their own. Each threshold here sits exactly on a score
    that batching perturbed: the block passes one way and fails the other unless it is re-scored."""
    options = dict(compressor="key_norm", chunk_tokens=48, max_relevant_blocks=50)
    sequential = make_engine(family, gate={"rule": rule, "batch_size": 1, "prefilter": "off"}, **options)
    batched = make_engine(family, gate={"rule": rule, "batch_size": 8, "prefilter": "off"}, **options)
    bank = sequential.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    _scripted_memory(sequential, batched)
    # Nothing passes and nothing is read: every block is judged under the first memory, its batched score kept.
    sequential.threshold = batched.threshold = 1e9
    sequential.config.gate.fallback_blocks = batched.config.gate.fallback_blocks = 0
    alone, together = sequential.ask(QUESTION, bank).gate_scores, batched.ask(QUESTION, bank).gate_scores
    sequential.config.gate.fallback_blocks = batched.config.gate.fallback_blocks = 1
    assert max(abs(a.score - b.score) for a, b in zip(alone, together)) < 1e-5, "float32 batch noise is rounding"
    # Thresholds on a perturbed score higher than every earlier block's: the scan reaches that block under the
    # first memory with the same batches as above, and the two scores fall on either side of the threshold.
    boundaries, highest = [], -math.inf
    for a, b in zip(alone, together, strict=True):
        if a.score != b.score and max(a.score, b.score) > highest:
            boundaries.append(max(a.score, b.score))
        highest = max(highest, a.score, b.score)
    assert boundaries, "batching perturbs no score here: the boundary would not be tested"
    for threshold in boundaries[:3]:
        sequential.threshold = batched.threshold = threshold
        one, many = sequential.ask(QUESTION, bank), batched.ask(QUESTION, bank)
        assert [(s.index, s.relevant, s.memory_step) for s in one.gate_scores] == [
            (s.index, s.relevant, s.memory_step) for s in many.gate_scores
        ]
        assert [b.index for b in one.blocks] == [b.index for b in many.blocks]
        for a, b in zip(one.gate_scores, many.gate_scores, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-5)
