"""The coarse stage-1 pass (``gate/coarse.py``; ``gate.coarse_keep`` and ``gate.coarse_heads``): it keeps the blocks
best by the score over the coarse heads alone (recomputed here block by block), scores only those (and its sample)
exactly, its kept scores equal the exact z-scores when the sample covers every pruned block, small banks are scored
as before, the fused scorer and agent recall still rank every block, and bad settings are refused."""

from __future__ import annotations

import pytest
import torch
from lychee_memory.integrations.recall import RecallSettings, recall

from lychee_memory.errors import ConfigurationError
from lychee_memory.gate.coarse import kept_and_sample, weighted_zscore
from lychee_memory.store import MemoryStore

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine
from .test_gate import QUESTION
from .test_stage1_cache import HEADS, NOTE, _assert_close, _reference_scores

BATCH = 3
COARSE = [HEADS[1], HEADS[2]]  # two of the three index heads


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    monkeypatch.setattr("lychee_memory.gate.key_scorer.BLOCKS_PER_BATCH", BATCH)
    monkeypatch.setattr("lychee_memory.gate.key_scorer.SAMPLE_BLOCKS", 2)


def _engine(**gate):
    return make_engine("llama", chunk_tokens=32, compressor="none", gate={"prefilter_heads": HEADS, **gate})


def _stored(engine, tmp_path):
    return engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT], store=MemoryStore(tmp_path / "store"), bank="bank")


def _coarse_order(engine, bank, question, memory, heads):
    """Blocks best first by the key score over ``heads`` alone, recomputed one block and one head at a time."""
    scorer = engine.prefilter_for(bank)
    query = scorer.query(question, memory)
    used = query.weights.sum(dim=0) > 0
    gains = []
    for index in range(len(bank)):
        keys = bank.gate_keys(index).float()
        per_head = []
        for head in heads:
            position = scorer.spec.heads.index(tuple(head))
            pair = scorer.spec.head_pairs[position]
            lse = torch.logsumexp(scorer.scale * query.vectors[position, used].float() @ keys[pair].T, dim=-1)
            per_head.append(query.weights[:, used] @ lse)  # [3]: question, memory, null
        gains.append(torch.stack(per_head))
    gains = torch.stack(gains)  # [blocks, heads, 3]

    def z(values):
        return (values - values.mean(0)) / values.std(0)

    combined = z(gains[:, :, 0] - gains[:, :, 2]).mean(1)
    if query.has_memory:
        combined = combined + engine.config.gate.memory_weight * z(gains[:, :, 1] - gains[:, :, 2]).mean(1)
    return sorted(range(len(bank)), key=lambda at: (-float(combined[at]), at))


def test_kept_and_sample_and_the_weighted_zscore():
    coarse = {at: float(-abs(at - 10)) for at in range(40)}  # best at 10, then 9 and 11, ...
    kept, sample = kept_and_sample(coarse, 3, 4)
    assert kept == [10, 9, 11] and len(sample) == 4 and not set(sample) & set(kept)
    rest = sorted(set(range(40)) - {9, 10, 11})
    assert sample == [rest[int(len(rest) / 4 * (k + 0.5))] for k in range(4)]
    assert kept_and_sample(coarse, 3, 37) == ([10, 9, 11], rest)
    values = torch.randn(6, 2, dtype=torch.float64)
    plain = (values - values.mean(0)) / values.std(0)
    assert torch.allclose(weighted_zscore(values, torch.ones(6, dtype=torch.float64)), plain)
    repeated = torch.cat([values, values[4:].repeat(2, 1)])  # rows 4 and 5 three times each
    weighted = weighted_zscore(values, torch.tensor([1, 1, 1, 1, 3, 3], dtype=torch.float64))
    assert torch.allclose(weighted, ((repeated - repeated.mean(0)) / repeated.std(0))[:6])


@pytest.mark.parametrize("memory", ["initial", NOTE])
def test_the_coarse_pass_keeps_the_best_by_its_heads_and_scores_only_them_exactly(tmp_path, monkeypatch, memory):
    engine = _engine(coarse_keep=4, coarse_heads=COARSE)
    bank = _stored(engine, tmp_path)
    memory = engine.config.prompts.initial_memory if memory == "initial" else memory
    everything = list(range(len(bank)))
    assert len(bank) > 4 + 2 + 2
    import lychee_memory.gate.key_scorer as key_scorer

    calls = []
    kernel = key_scorer.key_logsumexp
    monkeypatch.setattr(
        key_scorer, "key_logsumexp", lambda q, k, *rest: calls.append((q.shape[0], k.shape[0])) or kernel(q, k, *rest)
    )
    scores, missing = engine.prefilter_for(bank).rank(bank, QUESTION, memory, everything)
    assert not missing
    assert sorted(scores) == sorted(_coarse_order(engine, bank, QUESTION, memory, COARSE)[:4])
    coarse_rows = sum(rows for heads, rows in calls if heads == len(COARSE))
    exact_rows = sum(rows for heads, rows in calls if heads == len(HEADS))
    assert coarse_rows >= len(bank), "the coarse pass reads every block's coarse heads"
    assert exact_rows <= 4 + 2 + BATCH, "only the kept blocks and the sample (a few rows of a batch) are exact"

    # With a sample holding every pruned block the statistics are the bank's: the kept blocks' exact z-scores.
    monkeypatch.setattr("lychee_memory.gate.key_scorer.SAMPLE_BLOCKS", 10_000)
    scorer = engine.prefilter_for(bank)
    pruned, _ = scorer.pruned_scores(scorer.query(QUESTION, memory), bank.gate_keys, everything, bank, 4)
    reference = _reference_scores(engine, bank, QUESTION, memory, everything)
    assert len(pruned) == 4
    _assert_close(pruned, {at: reference[at] for at in pruned})


def test_banks_within_keep_and_the_sample_are_scored_as_before(tmp_path):
    engine = _engine(coarse_keep=60, coarse_heads=COARSE)
    bank = _stored(engine, tmp_path)
    initial = engine.config.prompts.initial_memory
    everything = list(range(len(bank)))
    scores, _ = engine.prefilter_for(bank).rank(bank, QUESTION, initial, everything)
    _assert_close(scores, _reference_scores(engine, bank, QUESTION, initial, everything))


def test_the_fused_scorer_and_agent_recall_still_rank_every_block(tmp_path):
    engine = _engine(coarse_keep=4, coarse_heads=COARSE, prefilter="hybrid")
    bank = _stored(engine, tmp_path)
    everything = list(range(len(bank)))
    scores, _ = engine.prefilter_for(bank).rank(bank, QUESTION, engine.config.prompts.initial_memory, everything)
    assert sorted(scores) == everything

    keys_engine = _engine(coarse_keep=4, coarse_heads=COARSE)
    blocks = recall(keys_engine, QUESTION, bank, len(bank), settings=RecallSettings(ranker="keys"))
    assert len(blocks) == len(bank), "pruned blocks rank last, not never"


def test_a_query_with_the_coarse_pass_answers_from_its_candidates(tmp_path):
    engine = _engine(coarse_keep=4, coarse_heads=COARSE)
    bank = _stored(engine, tmp_path)
    answer = engine.ask(QUESTION, bank)
    assert answer.text and answer.candidates
    assert all(len(picked) <= 4 for picked in answer.candidates)


def test_bad_coarse_settings_are_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="coarse_keep"):
        make_engine("llama", gate={"coarse_keep": 2, "candidates": 4, "coarse_heads": [[0, 0]]})
    with pytest.raises(ConfigurationError, match="coarse_heads"):
        make_engine("llama", gate={"coarse_keep": 8})
    engine = _engine(coarse_keep=4, coarse_heads=[[1, 2]])  # not a head of the index
    bank = _stored(engine, tmp_path)
    with pytest.raises(ConfigurationError, match=r"\[\[1, 2\]\] are not heads of the bank's gate index"):
        engine.ask(QUESTION, bank)
