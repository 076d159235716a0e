"""Every stage-1 scorer (``gate.SCORERS``) on the tiny models: each serves the scan as the interface promises; the
lexical scorer equals a hand-computed BM25 and reads the memory's notes after a read; the fused scorers equal an
independently computed reciprocal-rank fusion and z-score mean; and lexical ranking works on stored, appended,
sharded (unions of stored banks), filtered and pre-existing (compat fixture) banks with their own statistics."""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path

import pytest

from lychee_memory.errors import ConfigurationError
from lychee_memory.gate import SCORERS, HybridScorer, LexicalScorer, choose_candidates
from lychee_memory.gate.lexical_scorer import MEMORY_TERMS
from lychee_memory.generation import Generation
from lychee_memory.lexical import terms

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine
from .test_gate import QUESTION, _scripted_memory
from .test_prefilter import HEADS

THREE = [
    "The lighthouse keeper painted the tower white.",
    "The access code for the shed is X7-42B. The shed is by the pier.",
    "Fishing boats leave the pier before dawn.",
]
CODE_QUESTION = "What is the access code for the pier shed?"
GARDEN = [
    "Kestrel Hall has a walled garden; its head gardener came last spring.",
    "Odile Fenwick studied botany in Leiden before she moved north.",
    "The market sells bread and fish; the head baker is famous.",
]
GARDEN_QUESTION = "Where did the head gardener of Kestrel Hall study?"
GARDEN_NOTE = "The head gardener of Kestrel Hall is Odile Fenwick."


def _engine(prefilter: str, family: str = "llama", **options):
    options.setdefault("chunk_tokens", 32)
    gate = {"prefilter_heads": HEADS, **options.pop("gate", {})}
    return make_engine(family, compressor="none", prefilter=prefilter, gate=gate, **options)


def _initial(engine) -> str:
    return engine.config.prompts.initial_memory


def _zscores(values: list[float]) -> list[float]:
    mean, spread = statistics.mean(values), statistics.stdev(values)
    return [(value - mean) / spread if spread > 0 else 0.0 for value in values]


def _order(scores: dict[int, float]) -> list[int]:
    return sorted(scores, key=lambda index: (-scores[index], index))


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_every_scorer_ranks_every_block_and_serves_the_scan(name):
    engine = _engine(name, gate={"candidates": 2, "candidate_margin": 0.0}, threshold=-1e9, max_relevant_blocks=2)
    _scripted_memory(engine)
    scorer_class = SCORERS[name]
    assert (engine.index_spec is not None) == scorer_class.needs_key_index
    bank = engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    assert len(bank) > 4
    scorer = engine.prefilter_for(bank)
    assert type(scorer) is scorer_class and engine.prefilter_for(bank) is scorer
    scores, missing = scorer.rank(bank, QUESTION, _initial(engine), range(len(bank)))
    assert sorted([*scores, *missing]) == list(range(len(bank))) and not missing
    assert all(math.isfinite(value) for value in scores.values())
    answer = engine.ask(QUESTION, bank)
    assert answer.candidates[0] == choose_candidates(scores, 2, 0.0)
    assert [s.index for s in answer.gate_scores if s.memory_step == 0] == answer.candidates[0][:1]
    read = answer.blocks[0].index
    remaining = [index for index in range(len(bank)) if index != read]
    again, _ = scorer.rank(bank, QUESTION, answer.memory_steps[1], remaining)
    assert answer.candidates[1] == choose_candidates(again, 2, 0.0), "ranked again under the new notes"


def test_lexical_scores_equal_a_hand_computed_bm25_on_a_three_block_bank(family):
    engine = _engine("lexical", family, chunk_tokens=64)
    bank = engine.ingest(THREE)
    assert [span.text for span in bank.spans] == THREE
    scorer = engine.prefilter_for(bank)
    assert isinstance(scorer, LexicalScorer) and engine.index_spec is None and bank.gate_index is None
    rare, common = math.log(1 + 2.5 / 1.5), math.log(1 + 1.5 / 2.5)  # idf of df 1 and df 2 among 3 blocks
    # Terms: 5, 8 and 5 per block (mean 6); k1 1.2, b 0.75; query terms access, code, pier, shed.
    expected = [0.0, 2 * rare * 2.2 / 2.5 + rare * 2 * 2.2 / 3.5 + common * 2.2 / 2.5, common * 2.2 / 2.05]
    assert scorer.bm25(bank, terms(CODE_QUESTION), [0, 1, 2]) == pytest.approx(expected, rel=1e-9)
    scores, missing = scorer.rank(bank, CODE_QUESTION, _initial(engine), [0, 1, 2])
    assert not missing and [scores[i] for i in range(3)] == pytest.approx(_zscores(expected), abs=1e-9)
    # Only some blocks ranked: the statistics stay the bank's, the z-scores are over the ranked blocks.
    partial, _ = scorer.rank(bank, CODE_QUESTION, _initial(engine), [0, 2])
    assert [partial[0], partial[2]] == pytest.approx(_zscores([expected[0], expected[2]]), abs=1e-9)


def test_memory_terms_change_the_lexical_ranking_after_a_read():
    engine = _engine("lexical", chunk_tokens=64)
    bank = engine.ingest(GARDEN)
    scorer = engine.prefilter_for(bank)
    before, _ = scorer.rank(bank, GARDEN_QUESTION, _initial(engine), [0, 1, 2])
    assert _order(before) == [0, 2, 1], "Fenwick's block shares no term with the question"
    stats = scorer.statistics(bank)
    noted = scorer.memory_terms(GARDEN_QUESTION, GARDEN_NOTE, stats)
    assert noted == ["odile", "fenwick"], "memory terms not in the question and present in the bank"
    question_z = _zscores(scorer.bm25(bank, terms(GARDEN_QUESTION), [0, 1, 2]))
    memory_z = _zscores(scorer.bm25(bank, noted, [0, 1, 2]))
    after, _ = scorer.rank(bank, GARDEN_QUESTION, GARDEN_NOTE, [0, 1, 2])
    weight = engine.config.gate.memory_weight
    assert [after[i] for i in range(3)] == pytest.approx([q + weight * m for q, m in zip(question_z, memory_z)])
    assert _order(after) == [0, 1, 2], "hop 2's block overtakes once the bridge entity is noted"

    def update(requests):
        return [Generation(token_ids=[0], text=GARDEN_NOTE, stopped=True, prompt_tokens=1) for _ in requests]

    # In the scan: after block 0 is read, two blocks remain (z-scores +-0.71 each), so the notes decide when they
    # weigh more than the question (memory_weight 2) and not at all at memory_weight 0.
    for weight, second in ((2.0, 1), (0.0, 2)):
        gate = {"candidates": 1, "candidate_margin": 0.0, "memory_weight": weight}
        scanning = _engine("lexical", chunk_tokens=64, gate=gate, threshold=-1e9, max_relevant_blocks=2)
        scanning.reasoner.update = update
        answer = scanning.ask(GARDEN_QUESTION, scanning.ingest(GARDEN))
        assert answer.candidates == [[0], [second]] and [block.index for block in answer.blocks] == [0, second]


def test_memory_query_terms_are_capped_rarest_first():
    engine = _engine("lexical", chunk_tokens=64)
    words = [f"w{i}" for i in range(MEMORY_TERMS + 20)]
    documents = [" ".join(words), " ".join(words[:10]), "filler text"]
    bank = engine.ingest(documents)
    scorer = engine.prefilter_for(bank)
    noted = scorer.memory_terms("anything", " ".join(words) + " unseen", scorer.statistics(bank))
    assert len(noted) == MEMORY_TERMS and "unseen" not in noted
    assert noted[:10] == words[10:20], "terms in one block are rarer than those in two, which come last"


def _reference_rrf(*score_maps: dict[int, float]) -> dict[int, float]:
    fused: dict[int, float] = {}
    for scores in score_maps:
        for index, value in scores.items():
            rank = 1 + sum(1 for other in scores.values() if other > value)
            fused[index] = fused.get(index, 0.0) + 1 / (60 + rank)
    return fused


@pytest.mark.parametrize("memory", ["initial", "notes"])
def test_fused_scorers_equal_an_independent_fusion_of_keys_and_lexical(memory):
    engine = _engine("hybrid")
    bank = engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    notes = _initial(engine) if memory == "initial" else "Odile Fenwick keeps the Silver Heron in the bay."
    indices = list(range(len(bank)))
    keys, _ = _engine("keys").prefilter_for(bank).rank(bank, QUESTION, notes, indices)
    lexical, _ = _engine("lexical").prefilter_for(bank).rank(bank, QUESTION, notes, indices)
    assert _order(keys) != _order(lexical), "the two rankings differ, so the fusion is tested"
    hybrid, missing = engine.prefilter_for(bank).rank(bank, QUESTION, notes, indices)
    reference = _reference_rrf(keys, lexical)
    assert not missing and _order(hybrid) == _order(reference)
    places = sorted(set(reference.values()), reverse=True)
    assert hybrid == {index: -float(places.index(reference[index])) for index in indices}
    mean, _ = _engine("hybrid_sum").prefilter_for(bank).rank(bank, QUESTION, notes, indices)
    assert mean == pytest.approx({index: (keys[index] + lexical[index]) / 2 for index in indices})


def test_a_fused_scorer_ranks_a_bank_without_a_gate_index_lexically(caplog):
    bank = _engine("lexical").ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    assert bank.gate_index is None
    engine = _engine("hybrid")
    with caplog.at_level("WARNING", logger="lychee_memory.gate.scorers"):
        scorer = engine.prefilter_for(bank)
        engine.prefilter_for(bank)
        assert _engine("keys").prefilter_for(bank) is None
    warned = [r.getMessage() for r in caplog.records if "no gate index" in r.getMessage()]
    assert len(warned) == 2 and "stage 1 ranks it by its text" in warned[0]
    assert "the gate judges every block" in warned[1], "the key scorer cannot rank it at all"
    assert isinstance(scorer, HybridScorer) and scorer.keys is None
    lexical, _ = _engine("lexical").prefilter_for(bank).rank(bank, QUESTION, _initial(engine), range(len(bank)))
    assert scorer.rank(bank, QUESTION, _initial(engine), range(len(bank))) == (lexical, [])


def test_an_unknown_prefilter_is_refused_naming_the_known_ones():
    with pytest.raises(ConfigurationError) as raised:
        make_engine("llama", prefilter="bm99")
    message = str(raised.value)
    assert "gate.prefilter" in message
    for name in [*SCORERS, "off"]:
        assert f"'{name}'" in message


# Banks of every kind -------------------------------------------------------------------------------------------


def _same_ranking(engine, bank, reference, question=QUESTION) -> None:
    """The bank ranks like an in-memory bank of the same documents (same texts, same statistics)."""
    assert [span.text for span in bank.spans] == [span.text for span in reference.spans]
    indices = list(range(len(bank)))
    got, _ = engine.prefilter_for(bank).rank(bank, question, _initial(engine), indices)
    want, _ = engine.prefilter_for(reference).rank(reference, question, _initial(engine), indices)
    assert got == pytest.approx(want, abs=1e-9)
    answer = engine.ask(question, bank)
    picked = choose_candidates(got, engine.config.gate.candidates, 0.0)
    assert answer.candidates[0] == [bank.origin(index)[1] for index in picked]  # reported as in their own bank


@pytest.mark.parametrize("name", ["lexical", "hybrid"])
def test_stored_and_appended_banks_rank_with_the_whole_banks_statistics(name, tmp_path):
    engine = _engine(name, gate={"candidates": 2, "candidate_margin": 0.0}, threshold=1e9)
    engine.ingest([FACTS_DOCUMENT], store=tmp_path / "store", bank="appended")
    appended = engine.ingest([SECOND_DOCUMENT], store=tmp_path / "store", bank="appended")
    stored = engine.open_bank("appended", tmp_path / "store")
    reference = engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    _same_ranking(engine, appended, reference)
    _same_ranking(engine, stored, reference)
    # The appended block's terms count in the statistics: a term only in the second document has df > 0.
    scorer = engine.prefilter_for(stored)
    lexical = scorer if isinstance(scorer, LexicalScorer) else scorer.lexical
    assert lexical.statistics(stored).document_frequency["fenwick"] > 0


@pytest.mark.parametrize("name", ["lexical", "hybrid"])
def test_sharded_and_filtered_banks_rank_with_their_own_statistics(name, tmp_path):
    from lychee_memory import Document, MemoryBank

    engine = _engine(name, gate={"candidates": 2, "candidate_margin": 0.0}, threshold=1e9)
    harbour = Document(text=FACTS_DOCUMENT, id="harbour", metadata={"kind": "harbour"})
    garden = Document(text=SECOND_DOCUMENT, id="garden", metadata={"kind": "garden"})
    engine.ingest([harbour], store=tmp_path / "a", bank="shard")
    engine.ingest([garden], store=tmp_path / "b", bank="shard")
    shards = [engine.open_bank("shard", tmp_path / "a"), engine.open_bank("shard", tmp_path / "b")]
    union = MemoryBank.union(shards)
    _same_ranking(engine, union, engine.ingest([harbour, garden]))
    whole = engine.ingest([harbour, garden])
    view = whole.view(["garden"])
    _same_ranking(engine, view, engine.ingest([garden]), question="Who is the head gardener?")
    filtered = engine.ask("Who is the head gardener?", whole, filters={"kind": "garden"})
    scores, _ = engine.prefilter_for(view).rank(view, "Who is the head gardener?", _initial(engine), range(len(view)))
    assert filtered.candidates[0] == [view.origin(index)[1] for index in choose_candidates(scores, 2, 0.0)]
    assert all(whole.spans[index].document_id == "garden" for index in filtered.candidates[0])


def test_a_bank_written_before_the_lexical_scorer_is_ranked_from_its_stored_text(tmp_path):
    from lychee_memory import LycheeMemory
    from lychee_memory.store import MemoryStore

    from .test_compat import FIXTURE_STORE, generator

    shutil.copytree(FIXTURE_STORE, Path(tmp_path) / "store")  # opening writes leases: never the fixture itself
    for name in ("lexical", "hybrid"):
        engine = LycheeMemory.from_pretrained(generator.SPEC, **generator.ENGINE_OPTIONS, prefilter=name, candidates=1)
        with MemoryStore(tmp_path / "store", create=False) as store:
            bank = engine.open_bank("harbour", store)
            reference = engine.ingest(generator.documents(generator.BANKS["harbour"][1]))
            _same_ranking(engine, bank, reference, question=generator.QUESTIONS[0][1])
