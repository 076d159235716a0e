"""The gate index cache (``gate/index_cache.py``) and the near-tie cap: cached stage-1 scores equal the uncached
pass, the second pass of a query reads no index item again, a bank changed between calls (documents added or
removed) is scored from its own indexes, the cache stays under its byte bound, and the cap bounds the candidates."""

from __future__ import annotations

import pytest
import torch
from lychee_memory.kernels import key_logsumexp

from lychee_memory.block_cache import BoundedCache
from lychee_memory.errors import ConfigurationError
from lychee_memory.gate import choose_candidates
from lychee_memory.gate.index_cache import IndexCache
from lychee_memory.store import MemoryStore

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine
from .test_gate import QUESTION

HEADS = [(0, 1), (1, 0), (1, 3)]
NOTE = "The access code for the east pier storage shed is 58213."
BATCH = 3  # blocks per index batch in these tests, so a small bank spans several batches


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    monkeypatch.setattr("lychee_memory.gate.key_scorer.BLOCKS_PER_BATCH", BATCH)


def _engine(**gate):
    return make_engine("llama", chunk_tokens=32, compressor="none", gate={"prefilter_heads": HEADS, **gate})


def _stored(engine, tmp_path, documents, name="bank"):
    return engine.ingest(documents, store=MemoryStore(tmp_path / "store"), bank=name)


def _reference_scores(engine, bank, question, memory, indices):
    """Stage-1 scores recomputed block by block from each block's own index (no batching, no cache)."""
    scorer = engine.prefilter_for(bank)
    query = scorer.query(question, memory)
    used = query.weights.sum(dim=0) > 0
    head_pairs = torch.tensor(scorer.spec.head_pairs)
    means = []
    for index in indices:
        keys = bank.gate_keys(index)[None].float()
        valid = torch.ones(1, keys.shape[2], dtype=torch.bool)
        lse = key_logsumexp(query.vectors[:, used], keys, valid, head_pairs, scorer.scale)
        means.append(torch.einsum("nhq,gq->nhg", lse, query.weights[:, used])[0])
    means = torch.stack(means)

    def zscore(values):
        return (values - values.mean(0)) / values.std(0)

    combined = zscore(means[:, :, 0] - means[:, :, 2]).mean(1)
    if query.has_memory:
        combined = combined + engine.config.gate.memory_weight * zscore(means[:, :, 1] - means[:, :, 2]).mean(1)
    return dict(zip(indices, combined.tolist()))


def _assert_close(got: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(got) == sorted(expected)
    for index in expected:
        assert got[index] == pytest.approx(expected[index], abs=1e-4)


def test_cached_passes_equal_block_by_block_scores_and_the_second_pass_reads_no_index(tmp_path, monkeypatch):
    engine = _engine()
    bank = _stored(engine, tmp_path, [FACTS_DOCUMENT, SECOND_DOCUMENT])
    assert len(bank) > 2 * BATCH
    scorer, cache = engine.prefilter_for(bank), engine.stage_one.index_cache
    initial = engine.config.prompts.initial_memory
    everything = list(range(len(bank)))
    first, missing = scorer.rank(bank, QUESTION, initial, everything)
    assert not missing
    _assert_close(first, _reference_scores(engine, bank, QUESTION, initial, everything))
    batches = -(-len(bank) // BATCH)
    assert (cache.stats().misses, cache.stats().hits, cache.stats().entries) == (batches, 0, batches)

    reads = []
    items = bank.index_loader.items
    get = items.get
    monkeypatch.setattr(items, "get", lambda key: reads.append(key) or get(key))
    unread = everything[1:]
    second, _ = scorer.rank(bank, QUESTION, NOTE, unread)
    assert reads == [], "the second pass (after a memory update) reads nothing from the store"
    assert cache.stats().hits == batches and cache.stats().misses == batches
    _assert_close(second, _reference_scores(engine, bank, QUESTION, NOTE, unread))


def test_a_query_ranks_the_same_candidates_with_and_without_the_cache(tmp_path):
    cached, plain = _engine(candidates=2, candidate_margin=0.0), _engine(candidates=2, candidate_margin=0.0)
    plain.stage_one.index_cache.capacity_bytes = 0
    bank = _stored(cached, tmp_path, [FACTS_DOCUMENT, SECOND_DOCUMENT])
    one = cached.ask(QUESTION, bank)
    other = plain.ask(QUESTION, plain.open_bank("bank", MemoryStore(tmp_path / "store")))
    assert one.candidates == other.candidates and one.text == other.text
    assert cached.stage_one.index_cache.stats().entries > 0 and plain.stage_one.index_cache.stats().entries == 0


def test_banks_changed_between_calls_are_scored_from_their_own_indexes(tmp_path):
    engine = _engine()
    store = MemoryStore(tmp_path / "store")
    initial = engine.config.prompts.initial_memory
    bank = engine.ingest([FACTS_DOCUMENT], store=store, bank="bank")
    engine.prefilter_for(bank).rank(bank, QUESTION, initial, list(range(len(bank))))  # fills the cache

    grown = engine.ingest([SECOND_DOCUMENT], store=store, bank="bank")  # appended: the last batch changes
    assert len(grown) > len(bank)
    everything = list(range(len(grown)))
    scores, _ = engine.prefilter_for(grown).rank(grown, QUESTION, initial, everything)
    _assert_close(scores, _reference_scores(engine, grown, QUESTION, initial, everything))

    first_id = grown.documents[0].id
    shrunk = engine.remove_documents(grown, [first_id])  # every block moves: no batch of the old bank fits
    assert len(shrunk) == len(grown) - len(bank)
    everything = list(range(len(shrunk)))
    scores, _ = engine.prefilter_for(shrunk).rank(shrunk, QUESTION, initial, everything)
    _assert_close(scores, _reference_scores(engine, shrunk, QUESTION, initial, everything))


def test_the_cache_stays_under_its_byte_bound_and_keeps_no_batch_with_a_missing_index(tmp_path):
    engine = _engine()
    bank = _stored(engine, tmp_path, [FACTS_DOCUMENT, SECOND_DOCUMENT])
    scorer = engine.prefilter_for(bank)
    everything = list(range(len(bank)))
    initial = engine.config.prompts.initial_memory
    scorer.rank(bank, QUESTION, initial, everything)
    one_batch = max(batch.nbytes for batch, _ in engine.stage_one.index_cache.entries.values())
    small = IndexCache(int(one_batch * 1.5))
    engine.stage_one.context.__dict__["index_cache"] = small  # the context is frozen: swap the cache for this test
    scores, _ = scorer.rank(bank, QUESTION, initial, everything)
    stats = small.stats()
    assert stats.bytes <= small.capacity_bytes and stats.evictions > 0 and stats.entries < -(-len(bank) // BATCH)
    _assert_close(scores, _reference_scores(engine, bank, QUESTION, initial, everything))

    entry = bank.index_loader.entries[0]
    bank.index_loader.items.delete("index:" + entry.index_key)
    empty = IndexCache(2**30)
    engine.stage_one.context.__dict__["index_cache"] = empty
    scores, missing = scorer.rank(bank, QUESTION, initial, everything)
    assert missing == [0] and 0 not in scores
    assert empty.stats().entries == -(-len(bank) // BATCH) - 1, "the batch holding block 0 is not kept"


def test_an_in_memory_bank_is_scored_without_the_cache():
    engine = _engine()
    bank = engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    initial = engine.config.prompts.initial_memory
    everything = list(range(len(bank)))
    scores, _ = engine.prefilter_for(bank).rank(bank, QUESTION, initial, everything)
    _assert_close(scores, _reference_scores(engine, bank, QUESTION, initial, everything))
    assert engine.stage_one.index_cache.stats().misses == 0


def test_bounded_cache_evicts_least_recently_used_and_hands_back_values_too_large():
    cache = BoundedCache(10, len)
    cache.put("a", "aaaa")
    cache.put("b", "bbbb")
    assert cache.get("a") == "aaaa"  # a is now the most recently used
    cache.put("c", "cccc")
    assert cache.get("b") is None and cache.get("a") == "aaaa" and cache.get("c") == "cccc"
    assert cache.get_or_make("big", lambda: "x" * 11) == "x" * 11 and cache.get("big") is None
    counts = cache.counts()
    assert (counts.hits, counts.misses, counts.evictions, counts.entries, counts.bytes) == (3, 4, 1, 2, 8)
    with pytest.raises(ConfigurationError, match="gate index cache needs a size of 0 or more bytes"):
        IndexCache(-1)


def test_near_tie_cap_keeps_the_best_near_ties():
    scores = {0: 1.0, 1: 3.0, 2: 2.9, 3: 2.8, 4: 2.7, 5: 2.95, 6: 0.0}
    assert choose_candidates(scores, 1, 0.5) == [1, 2, 3, 4, 5]
    assert choose_candidates(scores, 1, 0.5, near_ties=2) == [1, 2, 5]
    assert choose_candidates(scores, 1, 0.5, near_ties=0) == [1]
    assert choose_candidates(scores, 3, 0.5, near_ties=1) == [1, 2, 3, 5]
    # Independent reference: the count best, then near-ties best first up to the cap, in document order.
    order = sorted(scores, key=lambda i: -scores[i])
    for count in range(1, 5):
        for cap in range(0, 4):
            extra = [i for i in order[count:] if scores[i] >= 3.0 - 0.5][:cap]
            assert choose_candidates(scores, count, 0.5, cap) == sorted(order[:count] + extra)


def test_settings_of_the_cache_and_the_cap_are_validated():
    with pytest.raises(ConfigurationError, match="index_cache_mb"):
        make_engine("llama", gate={"index_cache_mb": -1})
    with pytest.raises(ConfigurationError, match="max_near_ties"):
        make_engine("llama", gate={"max_near_ties": -1})


def test_the_scan_caps_near_ties(tmp_path):
    engine = _engine(candidates=1, candidate_margin=100.0, max_near_ties=2, threshold=1e9)
    bank = _stored(engine, tmp_path, [FACTS_DOCUMENT, SECOND_DOCUMENT])
    answer = engine.ask(QUESTION, bank)
    assert answer.candidates and all(len(picked) == 3 for picked in answer.candidates)


def test_banks_holding_the_same_blocks_share_the_cached_batches(tmp_path):
    engine = _engine()
    store = MemoryStore(tmp_path / "store")
    first = engine.ingest([FACTS_DOCUMENT], store=store, bank="first")
    second = engine.ingest([FACTS_DOCUMENT], store=store, bank="second")
    initial = engine.config.prompts.initial_memory
    everything = list(range(len(first)))
    engine.prefilter_for(first).rank(first, QUESTION, initial, everything)
    made = engine.stage_one.index_cache.stats().misses
    scores, _ = engine.prefilter_for(second).rank(second, QUESTION, initial, everything)
    assert engine.stage_one.index_cache.stats().misses == made, "the second bank read no index item"
    _assert_close(scores, _reference_scores(engine, second, QUESTION, initial, everything))


def test_by_default_a_ranking_where_every_unread_block_ties_passes_on_at_most_candidates_plus_four():
    """Lexical stage 1 on a bank where no block but the fact's shares a term with the question: once it is read, the
    unread blocks tie, so the margin holds every one of them. The default cap keeps each ranking at candidates + 4 (uncapped,
    a 1M-token bank judged all 1,035 blocks), the fact's block still first."""
    filler = " ".join(f"Paragraph {i}: rivers bend past orchards and mills in the valley." for i in range(60))
    document = f"{filler} Security note: the access code for the quiet pavilion is 58213. {filler}"
    question = "What is the access code for the quiet pavilion?"
    capped = make_engine("llama", chunk_tokens=32, compressor="none", gate={"prefilter": "lexical"})
    assert capped.config.gate.max_near_ties == 4
    bank = capped.ingest([document])
    assert len(bank) > 20
    fact = next(i for i, span in enumerate(bank.spans) if "58213" in span.text)
    initial = capped.config.prompts.initial_memory
    scorer = capped.prefilter_for(bank)
    first, _ = scorer.rank(bank, question, initial, list(range(len(bank))))
    best = max(first, key=first.get)
    assert best in (fact, fact - 1)  # the fact's sentence may straddle two blocks
    unmatched = [i for i in first if first[i] == min(first.values())]  # blocks sharing no term with the question
    assert len(unmatched) > 20
    scores, _ = scorer.rank(bank, question, initial, unmatched)  # a later ranking once the matching ones are read
    assert len(set(scores.values())) == 1  # every one ties with the best: all within the margin
    g = capped.config.gate
    assert len(choose_candidates(scores, g.candidates, g.candidate_margin, g.max_near_ties)) == g.candidates + 4
    assert len(choose_candidates(scores, g.candidates, g.candidate_margin, None)) == len(unmatched)
    answer = capped.ask(question, bank)
    assert all(len(picked) <= g.candidates + 4 for picked in answer.candidates)
    assert best in answer.candidates[0]
