"""Stage 1 of the gate: the key index against a plain forward, stage-1 scores against an explicit formula over
independently recomputed query vectors, and the candidate scan (only candidates judged, in document order,
re-ranked with the memory after each update, blocks without an index never dropped)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from lychee_memory.errors import ConfigurationError
from lychee_memory.gate import GenericHeadsWarning, IndexSpec, StageOneScorer, choose_candidates, generic_heads
from lychee_memory.kv_prefix import apply_rope

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine
from .test_gate import QUESTION, _scripted_memory

HEADS = [(0, 1), (1, 0), (1, 3)]  # two layers, query heads reading KV heads 0 and 1


def _engine(family, **options):
    options.setdefault("chunk_tokens", 32)
    return make_engine(family, compressor="none", gate={"prefilter_heads": HEADS, **options.pop("gate", {})}, **options)


def _plain_keys(engine, token_ids):
    """Keys [layers, kv_heads, positions, head_dim] of an ordinary forward over opening + chunk."""
    with torch.no_grad():
        output = engine.loaded.model(torch.tensor([list(engine.opening.token_ids) + token_ids]), use_cache=True)
    return torch.stack([layer.keys[0] for layer in output.past_key_values.layers])


def test_index_holds_the_chunk_keys_of_the_chosen_kv_heads(family):
    engine = _engine(family, gate={"index_dtype": "float16"})  # the float16 index: the keys within float16 rounding
    bank = engine.ingest([FACTS_DOCUMENT])
    spec = engine.index_spec
    assert spec.pairs == ((0, 0), (1, 0), (1, 1)) and spec.head_pairs == [0, 1, 2]
    assert bank.gate_index == spec.describe()
    opening = engine.opening.num_slots
    for index in range(len(bank)):
        block = bank.block(index)
        keys = _plain_keys(engine, block.token_ids.tolist())[:, :, opening:]
        expected = torch.stack([keys[layer, kv_head] for layer, kv_head in spec.pairs])
        assert block.gate_keys.dtype == torch.float16
        torch.testing.assert_close(block.gate_keys.float(), expected, rtol=1e-3, atol=2e-3)


def _independent_queries(engine, prompt_ids, start):
    """Query vectors of the chosen heads recomputed from the layers' inputs (output_hidden_states), not hooks."""
    loaded = engine.loaded
    decoder = loaded.model.get_decoder()
    from lychee_memory.kv_prefix import opening_cache

    positions = torch.arange(start, start + len(prompt_ids))[None]
    with torch.no_grad():
        output = decoder(
            input_ids=torch.tensor([prompt_ids]),
            position_ids=positions,
            past_key_values=opening_cache(loaded, engine.opening, 1),
            output_hidden_states=True,
        )
        cos, sin = decoder.rotary_emb(output.hidden_states[0], positions)
        vectors = []
        for layer, head in HEADS:
            attention = decoder.layers[layer].self_attn
            normed = decoder.layers[layer].input_layernorm(output.hidden_states[layer])
            query = attention.q_proj(normed).view(1, len(prompt_ids), -1, attention.head_dim).transpose(1, 2)
            vectors.append(apply_rope(query, cos[:, None], sin[:, None])[0, head])
    return torch.stack(vectors)


def test_stage_one_scores_equal_the_formula_over_independent_queries(family):
    engine = _engine(family)
    bank = engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    prefilter = engine.prefilter_for(bank)
    query = prefilter.query(QUESTION, engine.config.prompts.initial_memory)
    scored, means, missing = prefilter.raw_scores(query, bank.gate_keys, range(len(bank)))
    assert scored == list(range(len(bank))) and not missing
    segmented = engine.prompts.segments(engine.config.prompts.query_likelihood, question=QUESTION)
    null = engine.prompts.segments(engine.config.prompts.query_likelihood, question="N/A")
    start = engine.opening.num_slots + engine.chunk_tokens
    own = _independent_queries(engine, segmented.token_ids, start)
    null_vectors = _independent_queries(engine, null.token_ids, start)
    scale = 1 / math.sqrt(own.shape[-1])
    for index in range(len(bank)):
        block = bank.block(index)
        for position in range(len(HEADS)):
            keys = block.gate_keys[engine.index_spec.head_pairs[position]].float()

            def mean_logsumexp(vectors, span, position=position, keys=keys):
                lse = torch.logsumexp(vectors[position] @ keys.T * scale, dim=-1)
                return lse[span[0] : span[1]].mean().item()

            expected_question = mean_logsumexp(own, segmented.spans["question"])
            expected_null = mean_logsumexp(null_vectors, null.spans["question"])
            assert means[index, position, 0].item() == pytest.approx(expected_question, abs=2e-3)
            assert means[index, position, 2].item() == pytest.approx(expected_null, abs=2e-3)
    # Calibrated: question minus null, z-scored per head across blocks, averaged over heads.
    scores, _ = prefilter.scores(query, bank.gate_keys, range(len(bank)))
    calibrated = means[:, :, 0] - means[:, :, 2]
    expected = ((calibrated - calibrated.mean(0)) / calibrated.std(0)).mean(1)
    assert [scores[i] for i in range(len(bank))] == pytest.approx(expected.tolist(), abs=1e-5)


def test_the_rule_judges_only_candidates_in_document_order(family):
    engine = _engine(family, gate={"candidates": 2, "candidate_margin": 0.0}, threshold=1e9)
    bank = engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    assert len(bank) > 4
    answer = engine.ask(QUESTION, bank)
    assert len(answer.candidates[0]) == 2
    first = [score for score in answer.gate_scores if score.memory_step == 0]
    assert [score.index for score in first] == answer.candidates[0], "only the candidates, in document order"
    assert [block.index for block in answer.blocks] == [max(first, key=lambda s: s.score).index]
    # The fallback read changed the memory: stage 1 ranks the unread blocks again, the rule judges those.
    assert len(answer.candidates) == 2 and answer.blocks[0].index not in answer.candidates[1]
    assert answer.token_counts["prefiltered_blocks"] == 2 * len(bank) - 1
    later = [score.index for score in answer.gate_scores if score.memory_step == 1]
    assert sorted(later) == answer.candidates[1]


def test_candidates_are_ranked_again_with_the_memory_after_each_update(family):
    engine = _engine(family, gate={"candidates": 2, "candidate_margin": 0.0}, threshold=-1e9, max_relevant_blocks=3)
    _scripted_memory(engine)
    bank = engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    answer = engine.ask(QUESTION, bank)
    assert len(answer.blocks) == 3, "every judged block passes: the budget ends the scan"
    assert len(answer.candidates) == 3, "ranked at the start and after the first two updates"
    for step, later in enumerate(answer.candidates[1:], start=1):
        read = {block.index for block in answer.blocks[:step]}
        assert not read & set(later), "re-ranking covers every block not read yet, before or after"
    prefilter = engine.prefilter_for(bank)
    first = answer.blocks[0].index
    remaining = [index for index in range(len(bank)) if index != first]
    query = prefilter.query(QUESTION, answer.memory_steps[1])
    assert query.has_memory
    scores, _ = prefilter.scores(query, bank.gate_keys, remaining)
    assert answer.candidates[1] == choose_candidates(scores, 2, 0.0), "the second ranking used the new notes"


def test_a_block_without_an_index_is_judged_by_the_rule(family):
    engine = _engine(family, gate={"candidates": 1, "candidate_margin": 0.0}, threshold=1e9)
    bank = engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    damaged = len(bank) - 1
    bank.block(damaged).gate_keys = None
    bank.block(1).gate_keys = bank.block(1).gate_keys[:1]  # the wrong layout counts as missing
    answer = engine.ask(QUESTION, bank)
    assert {damaged, 1} <= set(answer.candidates[0])
    assert {damaged, 1} <= {score.index for score in answer.gate_scores}


def test_a_bank_no_larger_than_the_candidates_skips_stage_one(family):
    engine = _engine(family, gate={"candidates": 50})
    bank = engine.ingest([FACTS_DOCUMENT])
    answer = engine.ask(QUESTION, bank)
    assert answer.candidates == [] and answer.timings["prefilter"] == 0.0
    assert answer.token_counts["candidates"] == len(bank)
    assert {score.index for score in answer.gate_scores} >= set(range(answer.blocks[0].index + 1))


def test_prefilter_off_builds_no_index_and_judges_every_block(family):
    engine = make_engine(family, compressor="none", chunk_tokens=32, prefilter="off", threshold=1e9)
    bank = engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    assert bank.gate_index is None and all(block.gate_keys is None for block in bank)
    answer = engine.ask(QUESTION, bank)
    first = [score.index for score in answer.gate_scores if score.memory_step == 0]
    assert first == list(range(len(bank))) and answer.candidates == []


def test_choose_candidates_takes_the_best_and_near_ties_in_document_order():
    scores = {0: 0.1, 1: 2.0, 2: 1.8, 3: -1.0, 4: 1.9, 5: 2.0}
    assert choose_candidates(scores, 2, 0.0) == [1, 5]
    assert choose_candidates(scores, 2, 0.15) == [1, 4, 5]
    assert choose_candidates(scores, 1, 0.25) == [1, 2, 4, 5]
    assert choose_candidates({}, 3, 1.0) == []


def test_heads_that_do_not_exist_are_refused(family):
    with pytest.raises(ConfigurationError, match="does not exist"):
        make_engine(family, compressor="none", gate={"prefilter_heads": [(2, 0)]})
    with pytest.raises(ConfigurationError, match="does not exist"):
        make_engine(family, compressor="none", gate={"prefilter_heads": [(0, 4)]})


def test_generic_heads_without_a_preset_are_mid_depth_and_warned_once(family):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("once", category=GenericHeadsWarning)  # what the gate package installs
        engine = make_engine(family, compressor="none")
        make_engine(family, compressor="none")
    generic = [warning for warning in caught if issubclass(warning.category, GenericHeadsWarning)]
    assert len(generic) == 1 and "no measured prefilter heads" in str(generic[0].message)
    config = engine.loaded.config
    assert engine.index_spec.heads == generic_heads(config)
    from types import SimpleNamespace

    deep = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)
    heads = generic_heads(deep)
    assert len(heads) == 8 and {layer for layer, _ in heads} <= {16, 17, 18}


def test_index_spec_rejects_an_empty_head_list():
    with pytest.raises(ValueError, match="at least one head"):
        IndexSpec(heads=(), skip_tokens=0, group=1)


@dataclass
class _WordScorer(StageOneScorer):
    """A stage-1 scorer of the shape a lexical one takes: it reads the blocks' text, the question and the notes."""

    name: ClassVar[str] = "words"

    @classmethod
    def for_bank(cls, context, bank):
        return cls()

    def rank(self, bank, question, memory, indices):
        words = set(f"{question} {memory}".lower().split())
        return {index: float(len(words & set(bank.spans[index].text.lower().split()))) for index in indices}, []


def test_a_registered_scorer_serves_stage_one_without_the_engine_changing(family, monkeypatch):
    from lychee_memory.gate import scorers

    monkeypatch.setitem(scorers.SCORERS, "keys", _WordScorer)
    engine = _engine(family, gate={"candidates": 1, "candidate_margin": 0.0}, threshold=1e9)
    assert engine.index_spec is None, "a scorer that reads no keys makes ingest write no gate index"
    bank = engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    assert bank.gate_index is None and len(bank) > 2
    scorer = engine.prefilter_for(bank)
    assert isinstance(scorer, _WordScorer) and engine.prefilter_for(bank) is scorer
    answer = engine.ask(QUESTION, bank)
    scores, _ = scorer.rank(bank, QUESTION, engine.config.prompts.initial_memory, range(len(bank)))
    assert answer.candidates[0] == choose_candidates(scores, 1, 0.0)
    assert [score.index for score in answer.gate_scores if score.memory_step == 0] == answer.candidates[0]
