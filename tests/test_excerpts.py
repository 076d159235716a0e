"""The excerpt memory: sentences kept verbatim at their spans, within budgets, the relevant ones first; answers carry
them as evidence; the mode is a setting, a preset field and a flag. Memory strategies are checked together."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from lychee_memory.answer import Answer
from lychee_memory.config import EngineConfig, GateSettings, ReasonerSettings
from lychee_memory.errors import ConfigurationError
from lychee_memory.excerpts import Excerpt, LexicalScorer, block_sentences, fit_pieces, keep_within, split_sentences
from lychee_memory.gate import GateRule, GateScan, ScanState
from lychee_memory.presets import ModelPreset, read_preset_file, write_preset_file
from lychee_memory.working_memory import MEMORY_STRATEGIES, ExcerptMemory, GeneratedNotes, memory_strategy

from .conftest import FACTS_DOCUMENT, make_engine

CODE_QUESTION = "What is the access code for the east pier storage shed?"
CODE_SENTENCE = "The access code for the east pier storage shed is 58213."


def pieces(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [text[start:end] for start, end in spans]


# Splitting ---------------------------------------------------------------------------------------------------


def test_sentences_end_at_stops_not_at_abbreviations_initials_decimals_or_codes():
    text = (
        "Dr. J. K. Rowling paid $3.14 to Mr. Smith of the U.S. Army. The code is X-7.2B! Is it? "
        'Yes (see Fig. 2).\nA title line\nIt weighs approx. five kg, e.g. a cat. She said "go." Then left.'
    )
    assert pieces(text, split_sentences(text)) == [
        "Dr. J. K. Rowling paid $3.14 to Mr. Smith of the U.S. Army.",
        "The code is X-7.2B!",
        "Is it?",
        "Yes (see Fig. 2).",
        "A title line",
        "It weighs approx. five kg, e.g. a cat.",
        'She said "go."',
        "Then left.",
    ]


def test_a_sentence_cut_by_the_block_edge_is_completed_from_the_document():
    document = "First one here. The code is 58213 and it opens the shed. Last one.\nNext line."
    start = document.index("is 58213")  # the block begins mid-sentence
    end = document.index("Last") + 2  # and ends mid-sentence
    assert pieces(document, block_sentences(document, start, end)) == [
        "The code is 58213 and it opens the shed.",
        "Last one.",
    ]


def test_a_sentence_over_the_budget_is_cut_into_whole_words_that_each_fit():
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    words = len  # one "token" per character: a cost anyone can recount

    spans = fit_pieces(text, (0, len(text)), 17, words)
    assert all(len(piece) <= 17 for piece in pieces(text, spans))
    assert " ".join(pieces(text, spans)).split() == text.split()  # nothing lost, no word cut
    assert fit_pieces(text, (6, 16), 17, words) == [(6, 16)]


# Scoring and budgets ---------------------------------------------------------------------------------------------


def test_the_answer_sentence_scores_best_and_the_memory_finds_the_second_hop():
    sentences = [
        "The harbour of Arvel lies at the mouth of a cold river.",
        CODE_SENTENCE,
        "Odile Fenwick keeps the key of the shed.",
        "The market opens on Saturdays.",
    ]
    scorer = LexicalScorer()
    alone = scorer.scores(sentences, CODE_QUESTION, [""] * 4)
    assert max(range(4), key=alone.__getitem__) == 1
    question = "Who keeps the key of the place whose code is 58213?"
    noted = scorer.scores(sentences, question, ["The east pier storage shed has code 58213."] * 4)
    assert noted[2] > noted[0] and noted[2] > noted[3]


def test_a_heading_scores_by_the_question_only_so_a_kept_heading_does_not_pull_in_the_others():
    """Haystacks and real documents carry headings ("Document 23:", "Chapter 4"): once one is in the memory, its word
    must not make every other heading an excerpt (the two-hop answers had become lists of "Document N:")."""
    sentences = ["Document 23:", "Document 24:", "Solace Shipping has its headquarters in Harrowmere.", "Chapter 4"]
    memory = "Document 16: Lucan Quell works for Solace Shipping."
    scores = LexicalScorer().scores(
        sentences, "In which city does Lucan Quell's employer have its office?", [memory] * 4
    )
    assert scores[0] == scores[1] == scores[3] == 0.0
    assert scores[2] > 0
    # Through the question a heading still counts: asked about chapter 4, the heading is what matches.
    assert LexicalScorer().scores(sentences, "What does chapter 4 say?", [memory] * 4)[3] > 0


def test_keep_within_takes_the_best_that_fit_and_at_least_one():
    assert keep_within([0.1, 3.0, 2.0, 0.0], [5, 5, 5, 5], 10) == [1, 2]
    assert keep_within([0.0, 0.0], [3, 3], 10) == [0]  # the gate judged the block relevant: keep its best
    assert keep_within([1.0, 2.0], [30, 30], 10) == []  # nothing fits: nothing is cut to fit


# Strategies over an engine ------------------------------------------------------------------------------------


def excerpt_engine(**options):
    settings = dict(memory="excerpts", chunk_tokens=64, max_memory_tokens=64, gate="all", max_relevant_blocks=8)
    settings.update(options)
    return make_engine("llama", **settings)


@pytest.mark.parametrize("name", sorted(MEMORY_STRATEGIES))
def test_every_strategy_answers_and_reports_its_memory(name):
    engine = make_engine("llama", memory=name, max_memory_tokens=24, gate="all", max_relevant_blocks=2)
    assert engine.memory_strategy.name == name
    answer = engine.ask(CODE_QUESTION, FACTS_DOCUMENT)
    assert answer.token_counts["blocks_read"] == 2 and len(answer.memory_steps) == 3
    data = answer.to_dict()
    assert data["evidence"] == [excerpt.to_dict() for excerpt in answer.evidence]
    if name == "notes":
        assert answer.evidence == [] and answer.token_counts["memory_tokens"] > 0
    else:
        assert answer.evidence and answer.token_counts["memory_tokens"] == 0  # no decoding for the memory
        assert answer.memory == "\n".join(excerpt.text for excerpt in answer.evidence)


def test_excerpts_are_verbatim_at_their_spans_and_whole_sentences():
    engine = excerpt_engine()
    answer = engine.ask(CODE_QUESTION, FACTS_DOCUMENT)
    document = FACTS_DOCUMENT
    sentences = {(m.start(), m.end()) for m in re.finditer(r"[^\n.]+\.", document)}  # these sentences are simple
    sentences = {
        (start + len(document[start:end]) - len(document[start:end].lstrip()), end) for start, end in sentences
    }
    assert answer.evidence
    for excerpt in answer.evidence:
        assert document[excerpt.char_start : excerpt.char_end] == excerpt.text
        assert (excerpt.char_start, excerpt.char_end) in sentences
        assert excerpt.document_id == answer.blocks[0].document_id
        assert excerpt.block_index in [block.index for block in answer.blocks]
        read = next(block for block in answer.blocks if block.index == excerpt.block_index)
        assert excerpt.char_start < read.char_end and excerpt.char_end > read.char_start  # from the block it names


def test_the_answer_sentence_is_kept_and_budgets_hold_by_the_tokenizer():
    tokens = make_engine("llama").loaded.tokenizer

    def count(text: str) -> int:
        return len(tokens(text, add_special_tokens=False).input_ids)

    read, total = count(CODE_SENTENCE) + 2, 2 * count(CODE_SENTENCE) + 6
    engine = excerpt_engine(excerpt_read_tokens=read, excerpt_total_tokens=total)
    answer = engine.ask(CODE_QUESTION, FACTS_DOCUMENT)
    assert CODE_SENTENCE in [excerpt.text for excerpt in answer.evidence]
    assert count(answer.memory) <= total
    previous: set[str] = set()
    for memory in answer.memory_steps[1:]:
        lines = memory.split("\n")
        added = [line for line in lines if line not in previous]
        assert sum(count(line) for line in added) <= read
        assert count(memory) <= total
        previous = set(lines)
    assert len(answer.memory_steps) > 3  # enough reads to need the total budget


def test_past_the_total_budget_the_least_relevant_sentence_goes_whole():
    strategy = ExcerptMemory(read_tokens=200, total_tokens=20)

    def count(text: str) -> int:
        return len(text.split())

    def excerpt(text: str, block: int) -> Excerpt:
        return Excerpt(text, "doc", 0, len(text), block, 0.0)

    kept = strategy.fit(
        CODE_QUESTION,
        [
            excerpt("The market opens on Saturdays and sells bread.", 0),
            excerpt(CODE_SENTENCE, 1),
            excerpt("Only the harbourmaster knows the shed code.", 2),
        ],
        count,
    )
    assert [e.block_index for e in kept] == [1, 2]  # the market sentence went, whole; the order kept
    assert count(strategy.render(kept)) <= 20


def test_stage_one_gets_the_capped_memory_the_strategy_sets():
    """The scan ranks with ``query_memory`` (the best excerpts within excerpt_query_tokens), not the whole memory."""

    class Reads(GateRule):
        name = "reads"
        default_threshold = 0.5

        def score(self, loaded, prompts, requests):
            return [0.9 if request.block == 5 else 0.0 for request in requests]

    class Recorder:
        def __init__(self):
            self.memories: list[str] = []

        def rank(self, bank, question, memory, indices):
            self.memories.append(memory)
            return {index: float(-index) for index in indices}, []

    class Bank:
        def __len__(self):
            return 12

        def block(self, index):
            return index

    def update(reads):
        for state, _ in reads:
            state.query_memory = "short"
        return ["a long memory"] * len(reads)

    recorder = Recorder()
    settings = GateSettings(batch_size=1, max_relevant_blocks=2, fallback_blocks=0, candidates=6, prefilter="keys")
    scan = GateScan(None, None, Reads(), settings, 0.5, 0.0, prefilter=recorder)
    (state,) = scan.run(Bank(), [ScanState("q", "No previous memory")], update)
    assert state.selected == [5]
    assert recorder.memories == ["No previous memory", "short"]
    assert state.stage_one_memory == "short" and state.memory == "a long memory"


def test_the_query_memory_fits_its_cap():
    strategy = ExcerptMemory(query_tokens=6)
    excerpts = [Excerpt(text, "doc", 0, 1, 0, score) for text, score in (("a b c", 1.0), ("d e f g", 3.0), ("h", 2.0))]
    assert strategy.query_memory(excerpts, lambda text: len(text.split())) == "d e f g\nh"  # best first, memory order


# Settings, presets, flags -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"excerpt_read_tokens": 0},
        {"excerpt_total_tokens": -3},
        {"excerpt_query_tokens": 0},
        {"excerpt_read_tokens": 200, "excerpt_total_tokens": 100},
        {"excerpt_total_tokens": 600, "max_memory_tokens": 512},
        {"excerpt_answer_share": -0.1},
        {"excerpt_answer_share": 1.5},
        {"memory": "summaries"},
    ],
)
def test_bad_excerpt_settings_are_refused(values):
    with pytest.raises(ValidationError):
        ReasonerSettings(**values)
    with pytest.raises(ConfigurationError, match="invalid configuration: reasoner"):
        EngineConfig.from_kwargs(**values)


def test_budgets_default_within_the_memory_cap():
    assert ReasonerSettings().excerpt_budgets == (96, 384)
    assert ReasonerSettings(max_memory_tokens=40).excerpt_budgets == (40, 40)
    assert ReasonerSettings(excerpt_total_tokens=50).excerpt_budgets == (50, 50)
    strategy = memory_strategy("excerpts", ReasonerSettings(excerpt_read_tokens=10, excerpt_query_tokens=7))
    assert (strategy.read_tokens, strategy.total_tokens, strategy.query_tokens) == (10, 384, 7)


def test_the_memory_names_are_the_registered_strategies():
    from typing import get_args

    from lychee_memory.config import MemoryMode

    assert set(get_args(MemoryMode)) - {"auto"} == {"notes", "excerpts"} <= set(MEMORY_STRATEGIES)
    assert isinstance(memory_strategy("auto"), GeneratedNotes)
    with pytest.raises(ConfigurationError, match="unknown memory strategy 'x'"):
        memory_strategy("x")


def test_presets_round_trip_and_apply_the_memory_mode(tmp_path, monkeypatch):
    engine = make_engine("llama")
    config = engine.loaded.config
    architecture = {key: getattr(config, key) for key in ("model_type", "hidden_size", "num_hidden_layers")}
    architecture |= {key: getattr(config, key) for key in ("num_attention_heads", "num_key_value_heads", "vocab_size")}
    preset = ModelPreset(name="tiny", architecture=architecture, memory="excerpts")
    path = write_preset_file(preset, tmp_path / "tiny.json")
    assert read_preset_file(path).memory == "excerpts"
    monkeypatch.setenv("LYCHEE_PRESETS", str(path))
    assert make_engine("llama").memory_strategy.name == "excerpts"  # "auto" takes the preset's
    assert make_engine("llama", memory="notes").memory_strategy.name == "notes"  # a set value wins
    with pytest.raises(ValidationError):
        ModelPreset(name="tiny", architecture=architecture, memory="summaries")


def test_a_preset_sets_stage_one_the_reading_budget_and_the_excerpt_budgets_left_open(tmp_path, monkeypatch):
    def build(**options):  # a memory cap the budgets fit (conftest's default is 12 tokens)
        return make_engine("llama", **{"max_memory_tokens": 1024, **options})

    engine = build()
    config = engine.loaded.config
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    architecture = {key: getattr(config, key) for key in (*keys, "vocab_size")}
    # Without a preset: the generic defaults, written in config.py.
    assert (engine.config.gate.prefilter, engine.config.gate.max_relevant_blocks) == ("keys", 8)
    assert engine.config.gate.fallback_blocks == 1 and engine.config.reasoner.excerpt_budgets == (96, 384)
    assert engine.config.gate.min_blocks == 0
    reading = {"prefilter": "lexical", "max_relevant_blocks": 3, "fallback_blocks": 2, "min_blocks": 2}
    budgets = {"excerpt_read_tokens": 150, "excerpt_total_tokens": 600, "excerpt_answer_share": 0.5}
    preset = ModelPreset(name="tiny", architecture=architecture, memory="excerpts", **reading, **budgets)
    path = write_preset_file(preset, tmp_path / "tiny.json")
    assert {key: getattr(read_preset_file(path), key) for key in {**reading, **budgets}} == {**reading, **budgets}
    monkeypatch.setenv("LYCHEE_PRESETS", str(path))
    gate, reasoner = (lambda c: (c.gate, c.reasoner))(build().config)
    assert (gate.prefilter, gate.max_relevant_blocks, gate.fallback_blocks, gate.min_blocks) == ("lexical", 3, 2, 2)
    assert reasoner.excerpt_budgets == (150, 600) and reasoner.excerpt_answer_share == 0.5
    assert build(excerpt_answer_share=0.0).config.reasoner.excerpt_answer_share == 0.0  # the user's 0 wins
    # A value the user sets wins, even when it is the generic default the preset replaces.
    chosen = build(prefilter="keys", max_relevant_blocks=8, fallback_blocks=1, min_blocks=0, excerpt_read_tokens=40)
    assert (chosen.config.gate.prefilter, chosen.config.gate.max_relevant_blocks) == ("keys", 8)
    assert chosen.config.gate.min_blocks == 0
    assert chosen.config.gate.fallback_blocks == 1 and chosen.config.reasoner.excerpt_budgets == (40, 600)
    # The preset's budgets shrink to a smaller memory cap instead of making the user's setting invalid.
    assert build(max_memory_tokens=200).config.reasoner.excerpt_budgets == (150, 200)
    assert build(max_memory_tokens=100).config.reasoner.excerpt_budgets == (100, 100)
    assert build(excerpt_total_tokens=64).config.reasoner.excerpt_budgets == (64, 64)
    # A preset without these fields leaves the generic defaults.
    write_preset_file(ModelPreset(name="tiny", architecture=architecture), path)
    plain = build().config
    assert (plain.gate.prefilter, plain.gate.max_relevant_blocks, plain.gate.fallback_blocks) == ("keys", 8, 1)
    assert plain.gate.min_blocks == 0 and plain.reasoner.excerpt_answer_share == 0.0
    bad_values = (("prefilter", "bm25"), ("max_relevant_blocks", 0), ("fallback_blocks", -1), ("min_blocks", -1))
    for field, bad in (*bad_values, ("excerpt_answer_share", 1.5), ("excerpt_answer_share", -1)):
        with pytest.raises(ValidationError, match=field):
            ModelPreset(name="tiny", architecture=architecture, **{field: bad})


def test_the_memory_mode_is_a_flag():
    from lychee_memory.cli.options import ENGINE_FLAGS, flag_of

    assert {"memory", "excerpt_read_tokens", "excerpt_total_tokens"} <= set(ENGINE_FLAGS)
    assert flag_of("memory") == "--memory"


def test_answers_expose_evidence_to_the_server_and_llama_index():
    from integrations.llama_index.query_engine import answer_metadata
    from integrations.server.service import answer_json

    evidence = [Excerpt(CODE_SENTENCE, "doc-1", 10, 66, 3, 1.5, "bank")]
    answer = Answer("q", "58213", "lychee", evidence=evidence)
    expected = [
        {"text": CODE_SENTENCE, "doc": "doc-1", "start": 10, "end": 66, "block": 3, "score": 1.5, "bank": "bank"}
    ]
    assert answer.to_dict()["evidence"] == expected
    assert answer_json(answer)["evidence"] == expected
    assert answer_metadata(answer)["evidence"] == expected


# Calibration ------------------------------------------------------------------------------------------------------


def test_calibration_answers_with_each_memory_and_picks_by_answers_then_decodes():
    from lychee_memory.calibration import measure_memory
    from lychee_memory.eval.tasks import QASample

    engine = make_engine("llama", max_memory_tokens=16, max_relevant_blocks=2)
    document = FACTS_DOCUMENT[: len(FACTS_DOCUMENT) // 3]
    samples = [
        QASample(CODE_QUESTION, ["58213"], document, "code"),
        QASample("Who sells wool?", ["market"], document, "w"),
    ]
    result = measure_memory(engine, samples, {}, False)
    assert set(result.correct) == {"notes", "excerpts"} and result.questions == len(samples)
    # Excerpts decode only the answers; notes decode their notes too.
    assert result.decoded["excerpts"] <= len(samples) * engine.config.reasoner.max_answer_tokens
    assert result.decoded["notes"] > result.decoded["excerpts"]
    best = max(result.correct.values())
    tied = [name for name, correct in result.correct.items() if correct == best]
    assert result.chosen == min(tied, key=result.decoded.__getitem__)


def test_the_calibration_table_and_evidence_name_the_memory():
    from lychee_memory.calibration import Calibration, MemoryResult, format_table

    engine = make_engine("llama")
    config = engine.loaded.config
    architecture = {key: getattr(config, key) for key in ("model_type", "hidden_size", "num_hidden_layers")}
    preset = ModelPreset(name="tiny", architecture=architecture, memory="excerpts")
    memory = MemoryResult({"notes": 1, "excerpts": 3}, {"notes": 400, "excerpts": 20}, 4, "excerpts")
    table = format_table(Calibration(preset, None, [], None, None, 4, 0, memory))
    assert "| memory | excerpts | - | notes 1/4 (400 tokens decoded), excerpts 3/4 (20 tokens decoded) |" in table


def test_the_answer_reads_the_excerpts_most_relevant_first_when_asked():
    """``excerpt_answer_order = relevance``: the final answer's memory is the excerpts by score, best first (ties
    in reading order); ``reading`` (or notes) hands it the memory as read. The order is written out by hand here."""
    relevance = memory_strategy("excerpts", ReasonerSettings(excerpt_answer_order="relevance"))
    reading = memory_strategy("excerpts", ReasonerSettings())  # the default
    state = ScanState(CODE_QUESTION, "as read")
    state.excerpts = [
        Excerpt("first read", "d", 0, 10, 0, 0.5),
        Excerpt("the fact", "d", 20, 28, 1, 2.0),
        Excerpt("a tie", "d", 30, 35, 2, 0.5),
        Excerpt("weak", "d", 40, 44, 3, 0.1),
    ]
    assert relevance.answer_memory(state) == "the fact\nfirst read\na tie\nweak"
    assert reading.answer_memory(state) == "as read"
    assert GeneratedNotes().answer_memory(state) == "as read"
    assert relevance.answer_memory(ScanState(CODE_QUESTION, "no excerpts yet")) == "no excerpts yet"


@pytest.mark.parametrize("order", ["relevance", "reading"])
def test_the_engine_answers_from_the_memory_in_the_order_set(order, monkeypatch):
    """ask, ask_many and stream all pass the answer the excerpts in the configured order; the gate's memory (and
    ``Answer.memory``) stays in reading order."""
    engine = excerpt_engine(excerpt_answer_order=order, max_relevant_blocks=3)
    seen: list[str] = []
    real_answer, real_stream = engine.reasoner.answer, engine.reasoner.answer_stream
    monkeypatch.setattr(engine.reasoner, "answer", lambda qs, ms, *a, **k: seen.extend(ms) or real_answer(qs, ms))
    monkeypatch.setattr(engine.reasoner, "answer_stream", lambda q, m: seen.append(m) or real_stream(q, m))
    answer = engine.ask(CODE_QUESTION, FACTS_DOCUMENT)
    streamed = engine.stream(CODE_QUESTION, FACTS_DOCUMENT)
    "".join(streamed)
    assert len(answer.evidence) > 1 and streamed.answer.evidence == answer.evidence
    ranked = sorted(answer.evidence, key=lambda excerpt: -excerpt.score)  # stable: ties stay in reading order
    expected = "\n".join(e.text for e in (ranked if order == "relevance" else answer.evidence))
    assert seen == [expected, expected]
    assert answer.memory == "\n".join(e.text for e in answer.evidence)  # what was read, in reading order
    if order == "relevance":
        assert expected != answer.memory  # this document's excerpts are not read best first: the test can tell


def test_the_answer_reads_only_the_excerpts_within_its_share_of_the_best():
    """``excerpt_answer_share``: the final answer reads the excerpts scoring at least that share of the best one,
    in the order set; the sets below are worked out by hand from the scores."""
    state = ScanState(CODE_QUESTION, "as read")
    state.excerpts = [
        Excerpt("first read", "d", 0, 10, 0, 0.5),
        Excerpt("the fact", "d", 20, 28, 1, 2.0),
        Excerpt("a tie", "d", 30, 35, 2, 0.5),
        Excerpt("weak", "d", 40, 44, 3, 0.1),
    ]

    def strategy(share: float, order: str = "reading") -> ExcerptMemory:
        settings = ReasonerSettings(excerpt_answer_share=share, excerpt_answer_order=order)
        return memory_strategy("excerpts", settings)

    assert strategy(0.25).answer_memory(state) == "first read\nthe fact\na tie"  # 0.5 >= 0.25 * 2.0 > 0.1
    assert strategy(0.25, "relevance").answer_memory(state) == "the fact\nfirst read\na tie"
    assert [e.text for e in strategy(0.26).answer_excerpts(state)] == ["the fact"]
    assert strategy(1.0).answer_memory(state) == "the fact"
    assert strategy(0.0).answer_memory(state) == "as read"  # every excerpt as read: the memory itself
    assert strategy(0.0).answer_excerpts(state) == state.excerpts
    unscored = ScanState(CODE_QUESTION, "as read")  # no positive score: nothing to measure a share of, all kept
    unscored.excerpts = [Excerpt("a", "d", 0, 1, 0, 0.0), Excerpt("b", "d", 2, 3, 1, -1.0)]
    assert strategy(0.9).answer_memory(unscored) == "as read"
    assert GeneratedNotes().answer_excerpts(state) == state.excerpts  # notes keep no excerpts of their own


def test_the_engine_answers_from_the_share_and_reports_it_as_evidence(monkeypatch):
    """ask and stream hand the answer the excerpts within the share (computed here from the same scan with every
    excerpt kept) and report exactly those as ``Answer.evidence``; the scan and its memory do not change."""
    from lychee_memory.engine import LycheeMemory

    full = excerpt_engine(max_relevant_blocks=3)
    focused = LycheeMemory(full.loaded, EngineConfig.from_kwargs(full.config, excerpt_answer_share=0.6))
    everything = full.ask(CODE_QUESTION, FACTS_DOCUMENT)
    best = max(excerpt.score for excerpt in everything.evidence)
    expected = [excerpt for excerpt in everything.evidence if excerpt.score >= 0.6 * best]
    assert 0 < len(expected) < len(everything.evidence)  # the share drops some here: the test can tell
    seen: list[str] = []
    real_answer, real_stream = focused.reasoner.answer, focused.reasoner.answer_stream
    monkeypatch.setattr(focused.reasoner, "answer", lambda qs, ms, *a, **k: seen.extend(ms) or real_answer(qs, ms))
    monkeypatch.setattr(focused.reasoner, "answer_stream", lambda q, m: seen.append(m) or real_stream(q, m))
    answer = focused.ask(CODE_QUESTION, FACTS_DOCUMENT)
    streamed = focused.stream(CODE_QUESTION, FACTS_DOCUMENT)
    "".join(streamed)
    assert answer.evidence == expected and streamed.answer.evidence == expected
    assert seen == ["\n".join(excerpt.text for excerpt in expected)] * 2
    assert answer.memory == everything.memory and answer.blocks == everything.blocks
