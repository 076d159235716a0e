"""Metadata filters, bank views and unions, and ``select(k=...)``, checked against independent references:
a filtered scan against a bank built from only the matching documents, the k-fill against the scan's own gate
scores, tenant isolation against a record of every block the scan touched."""

from __future__ import annotations

import functools

import pytest

from lychee_memory import (
    BankMismatchError,
    ConfigurationError,
    Document,
    DocumentFilter,
    DocumentNotFoundError,
    FilterError,
    MemoryBank,
)

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine

QUESTION = "What is the access code for the east pier storage shed?"
OTHER_QUESTION = "Who is the new head gardener at Kestrel Hall?"
LIGHTHOUSE = "The lighthouse keeper of Arvel is called Bram Otter. He rows to the tower every evening.\n\n" * 3

# Engines on the tiny model, by name: the default gate (stage 1 on: 4 candidates), a gate that reads several
# blocks, and one without stage 1.
ENGINES = {
    "default": {},
    "reads several": {"threshold": 0.0, "max_relevant_blocks": 4},
    "prefilter off": {"prefilter": "off", "threshold": 0.1},
}


def corpus() -> list[Document]:
    return [
        Document.from_text(
            FACTS_DOCUMENT,
            id="arvel",
            metadata={"tenant": "a", "lang": "en", "tags": ["harbour", "codes"], "year": 2023},
        ),
        Document.from_text(
            SECOND_DOCUMENT, id="kestrel", metadata={"tenant": "b", "lang": "en", "tags": ["garden"], "year": 2024}
        ),
        Document.from_text(LIGHTHOUSE, id="lighthouse", metadata={"tenant": "a", "lang": "fr", "year": 2024}),
    ]


@functools.cache
def engine_named(name: str):
    return make_engine("llama", **ENGINES[name])


@functools.cache
def corpus_bank():
    # Gate settings are not part of a bank's identity: every engine of ENGINES reads this bank.
    return engine_named("default").ingest(corpus(), name="corpus")


def where(bank: MemoryBank, index: int) -> tuple[str, int, int]:
    span = bank.spans[index]
    return span.document_id, span.char_start, span.char_end


def block_places(blocks) -> list[tuple[str, int, int, float, bool, bool]]:
    return [(b.document_id, b.char_start, b.char_end, b.score, b.selected, b.fallback) for b in blocks]


# Parsing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filters,message",
    [
        ({"lang": {"$gt": 1}}, r"filter on 'lang': unknown operator '\$gt'; use one of \$eq, \$ne, \$in, \$nin"),
        ({"lang": {"$in": "en"}}, r"filter on 'lang': \$in takes a list of values, got str"),
        ({"lang": {"$nin": 3}}, r"filter on 'lang': \$nin takes a list of values, got int"),
        ({"meta": {"inner": "x"}}, r"filter on 'meta': unknown operator 'inner'"),
        ({"lang": {"$eq": {"inner": "x"}}}, r"filter on 'lang': values must be strings, numbers, booleans or null"),
        ({"lang": {"$in": ["en", {"x": 1}]}}, r"values must be strings, numbers, booleans or null, got dict"),
        ({"tags": ["a", "b"]}, r"filter on 'tags': values must be .* got list"),
        ({"lang": {"$eq": "en", "$ne": "fr"}}, r"filter on 'lang': give exactly one operator"),
        ({"lang": {}}, r"filter on 'lang': give exactly one operator"),
        ({"$and": [{"lang": "en"}]}, r"'\$and' is not supported at the top level: list several keys"),
        ({1: "x"}, r"filter keys must be non-empty metadata names, got 1"),
        ({"": "x"}, r"filter keys must be non-empty metadata names"),
        (["lang", "en"], r"filters must be an object such as \{\"lang\": \"en\"\}.*got list"),
        ("lang=en", r"filters must be an object .* got str"),
    ],
)
def test_malformed_filters_raise_filter_error_saying_what_is_wrong(filters, message):
    with pytest.raises(FilterError, match=message):
        DocumentFilter.parse(filters)


def test_the_engine_refuses_a_bad_filter_before_scanning():
    engine, bank = engine_named("default"), corpus_bank()
    for call in (
        lambda: engine.select(QUESTION, bank, filters={"lang": {"$regex": "e.*"}}),
        lambda: engine.ask(QUESTION, bank, filters={"$or": []}),
        lambda: engine.ask_many([QUESTION], bank, filters=["lang"]),
        lambda: engine.stream(QUESTION, bank, filters={"lang": {"$in": "en"}}),  # refused when created
    ):
        with pytest.raises(FilterError):
            call()


def test_parse_accepts_none_an_empty_filter_and_a_parsed_one():
    assert not DocumentFilter.parse(None) and not DocumentFilter.parse({})
    parsed = DocumentFilter.parse({"lang": "en", "year": {"$in": [2023, 2024]}})
    assert DocumentFilter.parse(parsed) is parsed
    assert parsed.to_json() == {"lang": {"$eq": "en"}, "year": {"$in": [2023, 2024]}}
    same = DocumentFilter.parse({"year": {"$in": [2023, 2024]}, "lang": {"$eq": "en"}})
    assert same.key == parsed.key, "equal filters have equal keys whatever their key order"
    bank = corpus_bank()
    assert DocumentFilter.parse({}).apply(bank) is bank, "an empty filter keeps the bank itself"


# Semantics ---------------------------------------------------------------------------------------------

PLAIN = {"lang": "en", "year": 2024}
LISTED = {"lang": "en", "tags": ["garden", "codes"]}
BARE = {"year": 2023}  # no "lang", no "tags"


@pytest.mark.parametrize(
    "filters,plain,listed,bare",
    [
        ({"lang": "en"}, True, True, False),
        ({"lang": {"$eq": "en"}}, True, True, False),
        ({"lang": "fr"}, False, False, False),
        ({"lang": {"$ne": "en"}}, False, False, True),  # $ne keeps documents without the key
        ({"lang": {"$ne": "fr"}}, True, True, True),
        ({"lang": {"$in": ["fr", "en"]}}, True, True, False),
        ({"lang": {"$in": []}}, False, False, False),
        ({"lang": {"$nin": ["en"]}}, False, False, True),  # $nin keeps documents without the key
        ({"lang": {"$nin": []}}, True, True, True),
        # A list-valued field matches when one of its items does, and $ne/$nin exclude it when one does.
        ({"tags": "codes"}, False, True, False),
        ({"tags": {"$in": ["codes", "x"]}}, False, True, False),
        ({"tags": {"$ne": "garden"}}, True, False, True),
        ({"tags": {"$nin": ["x", "garden"]}}, True, False, True),
        ({"tags": {"$nin": ["x"]}}, True, True, True),
        # Several keys must all hold.
        ({"lang": "en", "year": 2024}, True, False, False),
        ({"lang": {"$ne": "fr"}, "year": {"$in": [2023]}}, False, False, True),
        ({"year": 2024.0}, True, False, False),  # numbers compare as numbers
    ],
)
def test_operator_semantics(filters, plain, listed, bare):
    parsed = DocumentFilter.parse(filters)
    assert (parsed.matches(PLAIN), parsed.matches(LISTED), parsed.matches(BARE)) == (plain, listed, bare)


def test_true_and_one_are_kept_apart_and_null_is_a_value():
    flag, one, none, missing = {"flag": True}, {"flag": 1}, {"flag": None}, {}
    listed = {"flag": [1, "x"]}
    matches = lambda filters, metadata: DocumentFilter.parse(filters).matches(metadata)  # noqa: E731
    assert matches({"flag": True}, flag) and not matches({"flag": True}, one) and not matches({"flag": True}, listed)
    assert matches({"flag": 1}, one) and not matches({"flag": 1}, flag) and matches({"flag": 1}, listed)
    assert not matches({"flag": 1.0}, flag) and matches({"flag": 1.0}, one)
    assert matches({"flag": False}, {"flag": False}) and not matches({"flag": False}, {"flag": 0})
    assert matches({"flag": {"$ne": True}}, one) and not matches({"flag": {"$ne": 1}}, one)
    assert matches({"flag": {"$in": [True]}}, flag) and not matches({"flag": {"$in": [True]}}, one)
    assert matches({"flag": {"$nin": [1]}}, flag) and not matches({"flag": {"$nin": [True]}}, flag)
    assert matches({"flag": None}, none) and not matches({"flag": None}, missing), "null is a stored value"
    assert matches({"flag": {"$ne": None}}, missing) and not matches({"flag": {"$ne": None}}, none)


def test_apply_gives_a_view_of_the_matching_documents_in_bank_order():
    bank = corpus_bank()
    view = DocumentFilter.parse({"tenant": "a"}).apply(bank)
    assert [document.id for document in view.documents] == ["arvel", "lighthouse"]
    kept = [index for index, span in enumerate(bank.spans) if span.document_id in ("arvel", "lighthouse")]
    assert [view.origin(i) for i in range(len(view))] == [(bank, index) for index in kept]
    assert [where(view, i) for i in range(len(view))] == [where(bank, index) for index in kept]
    assert all(view.documents[span.document_index].id == span.document_id for span in view.spans)
    assert view.identity == bank.identity and view.gate_index == bank.gate_index and view.name == bank.name
    for i, index in enumerate(kept):
        assert view.block(i).token_ids.equal(bank.block(index).token_ids)
        assert view.block(i).span == view.spans[i]
    assert len(DocumentFilter.parse({"tenant": "nobody"}).apply(bank)) == 0


# A filtered scan against an independent reference ------------------------------------------------------


@pytest.mark.parametrize("engine_name", list(ENGINES))
@pytest.mark.parametrize(
    "filters,kept",
    [
        ({"tenant": "a"}, ["arvel", "lighthouse"]),
        ({"lang": {"$ne": "fr"}, "tags": {"$in": ["garden", "codes"]}}, ["arvel", "kestrel"]),
    ],
    ids=["tenant", "ne+in"],
)
def test_a_filtered_scan_reads_what_a_bank_of_only_the_matching_documents_reads(engine_name, filters, kept):
    engine, bank = engine_named(engine_name), corpus_bank()
    reference = engine.ingest([document for document in corpus() if document.id in kept])
    got, want = engine.ask(QUESTION, bank, filters=filters), engine.ask(QUESTION, reference)
    assert got.text == want.text and got.memory_steps == want.memory_steps
    assert block_places(got.blocks) == block_places(want.blocks)
    for block in got.blocks:  # indices are the full bank's
        assert where(bank, block.index) == (block.document_id, block.char_start, block.char_end)
    assert [(where(bank, s.index), s.score, s.relevant, s.memory_step, s.rejudged) for s in got.gate_scores] == [
        (where(reference, s.index), s.score, s.relevant, s.memory_step, s.rejudged) for s in want.gate_scores
    ]
    assert [[where(bank, i) for i in picks] for picks in got.candidates] == [
        [where(reference, i) for i in picks] for picks in want.candidates
    ]
    assert got.token_counts["blocks"] == len(reference)
    assert block_places(engine.select(QUESTION, bank, filters=filters)) == block_places(got.blocks)
    k = min(len(reference), len(want.blocks) + 3)
    filled = engine.select(QUESTION, bank, k=k, filters=filters)
    assert len(filled) == k and block_places(filled) == block_places(engine.select(QUESTION, reference, k=k))
    many = engine.ask_many([QUESTION, OTHER_QUESTION], bank, filters=filters)
    assert [answer.text for answer in many] == [a.text for a in engine.ask_many([QUESTION, OTHER_QUESTION], reference)]


# Tenants -----------------------------------------------------------------------------------------------

CODE_A, CODE_B = "58213", "40917"


@functools.cache
def tenant_bank():
    tenant_b = Document.from_text(FACTS_DOCUMENT.replace(CODE_A, CODE_B), id="tenant-b", metadata={"tenant": "b"})
    tenant_a = Document.from_text(FACTS_DOCUMENT, id="tenant-a", metadata={"tenant": "a"})
    return engine_named("default").ingest([tenant_b, tenant_a], name="tenants")  # b first: a leak would read it first


@pytest.fixture
def touched(monkeypatch):
    """Every block index of the tenant bank whose KV, text or gate index anything fetched."""
    bank, indices = tenant_bank(), []
    block, gate_keys = bank.block, bank.gate_keys
    monkeypatch.setattr(bank, "block", lambda index: indices.append(index) or block(index))
    monkeypatch.setattr(bank, "gate_keys", lambda index: indices.append(index) or gate_keys(index))
    return indices


def test_a_tenant_filter_keeps_the_other_tenants_conflicting_fact_out(touched):
    bank = tenant_bank()
    of_a = {index for index, span in enumerate(bank.spans) if span.document_id == "tenant-a"}
    of_b = set(range(len(bank))) - of_a
    assert of_a and of_b and any(CODE_B in bank.spans[index].text for index in of_b)
    # This gate reads every block it may see (all pass its threshold), so it would read b's if it could.
    greedy = make_engine("llama", threshold=-1e9, max_relevant_blocks=len(bank))
    answer = greedy.ask(QUESTION, bank, filters={"tenant": "a"})
    assert touched and set(touched) <= of_a
    assert {block.index for block in answer.blocks} == of_a
    assert all(block.document_id == "tenant-a" and CODE_B not in block.text for block in answer.blocks)
    assert {score.index for score in answer.gate_scores} <= of_a
    assert all(set(picks) <= of_a for picks in answer.candidates)
    assert CODE_B not in answer.text and not any(CODE_B in memory for memory in answer.memory_steps)

    for engine in (greedy, engine_named("default")):  # the default gate reads few: k fills from a's blocks only
        touched.clear()
        selected = engine.select(QUESTION, bank, k=len(bank), filters={"tenant": "a"})
        assert {block.index for block in selected} == of_a and len(selected) == len(of_a)
        assert all(block.document_id == "tenant-a" for block in selected)
        assert touched and set(touched) <= of_a
        touched.clear()
        stream = engine.stream(QUESTION, bank, filters={"tenant": "a"})
        assert {block.index for block in stream.blocks} <= of_a
        assert "".join(stream) == engine.ask(QUESTION, bank, filters={"tenant": "a"}).text
        assert {block.index for block in stream.answer.blocks} <= of_a and set(touched) <= of_a

    touched.clear()
    unfiltered = greedy.ask(QUESTION, bank)
    assert set(touched) & of_b and {block.index for block in unfiltered.blocks} & of_b, "without the filter b is read"


def test_a_filter_matching_nothing_reads_nothing(touched):
    engine, bank = engine_named("default"), tenant_bank()
    assert engine.select(QUESTION, bank, filters={"tenant": "c"}) == []
    assert engine.select(QUESTION, bank, k=3, filters={"tenant": {"$in": []}}) == []
    answer = engine.ask(QUESTION, bank, filters={"tenant": "c"})
    assert answer.blocks == [] and answer.gate_scores == [] and answer.token_counts["blocks"] == 0
    assert touched == []


# Views and unions --------------------------------------------------------------------------------------


@functools.cache
def two_banks():
    engine = engine_named("default")
    alpha = engine.ingest([Document.from_text(FACTS_DOCUMENT, id="arvel", metadata={"tenant": "a"})], name="alpha")
    beta = engine.ingest([Document.from_text(SECOND_DOCUMENT, id="kestrel", metadata={"tenant": "b"})], name="beta")
    return alpha, beta


def test_a_union_reads_both_banks_and_names_where_each_block_comes_from():
    engine = make_engine("llama", threshold=-1e9, max_relevant_blocks=64)
    alpha, beta = two_banks()
    union = MemoryBank.union([alpha, beta])
    assert union.name == "alpha+beta" and len(union) == len(alpha) + len(beta)
    assert [document.id for document in union.documents] == ["arvel", "kestrel"]
    assert [union.origin(i) for i in range(len(union))] == [(alpha, i) for i in range(len(alpha))] + [
        (beta, i) for i in range(len(beta))
    ]
    assert union.gate_index == alpha.gate_index is not None
    owners = {"alpha": alpha, "beta": beta}
    for blocks in (engine.select(QUESTION, union), engine.select(QUESTION, union, k=len(union))):
        assert len(blocks) == len(union)
        assert {block.bank for block in blocks} == {"alpha", "beta"}
        assert len({(block.bank, block.index) for block in blocks}) == len(blocks)
        for block in blocks:
            owner = owners[block.bank]
            assert where(owner, block.index) == (block.document_id, block.char_start, block.char_end)
            assert owner.spans[block.index].text == block.text
    answer = engine.ask(QUESTION, union, filters={"tenant": "b"})
    assert {block.bank for block in answer.blocks} == {"beta"} and len(answer.blocks) == len(beta)
    assert sorted(score.index for score in answer.gate_scores) == list(range(len(beta))), "indices in beta"
    named = MemoryBank.union([alpha, beta], keep=lambda bank, document: bank is beta, name="only beta")
    assert named.name == "only beta" and [document.id for document in named.documents] == ["kestrel"]
    assert [named.origin(i) for i in range(len(named))] == [(beta, i) for i in range(len(beta))]


def test_a_union_may_hold_one_document_id_twice_and_a_view_of_a_view_points_at_the_first_bank():
    alpha, _ = two_banks()
    again = engine_named("default").ingest([Document.from_text(FACTS_DOCUMENT, id="arvel")], name="again")
    union = MemoryBank.union([alpha, again])
    assert [document.id for document in union.documents] == ["arvel", "arvel"]
    blocks = engine_named("reads several").select(QUESTION, union, k=len(union))
    assert len({(block.bank, block.index) for block in blocks}) == len(union)
    nested = MemoryBank.union([union]).view(["arvel"])
    assert [nested.origin(i) for i in range(len(nested))] == [union.origin(i) for i in range(len(union))]


def test_banks_of_different_engines_do_not_unite_and_a_view_needs_known_ids():
    alpha, beta = two_banks()
    shorter = make_engine("llama", chunk_tokens=32).ingest([Document.from_text(LIGHTHOUSE, id="lighthouse")])
    with pytest.raises(BankMismatchError, match="were built by different engines"):
        MemoryBank.union([alpha, shorter])
    with pytest.raises(BankMismatchError):
        MemoryBank.union([shorter, beta])
    with pytest.raises(ValueError, match="needs at least one bank"):
        MemoryBank.union([])
    with pytest.raises(DocumentNotFoundError, match="bank alpha holds no document with id 'nope'"):
        alpha.view(["arvel", "nope"])
    with pytest.raises(DocumentNotFoundError):
        MemoryBank.union([alpha, beta]).view("lighthouse")
    assert [document.id for document in alpha.view("arvel").documents] == ["arvel"]


# select(k=...) -----------------------------------------------------------------------------------------


def test_k_must_be_a_positive_number_of_blocks():
    engine, bank = engine_named("default"), corpus_bank()
    for k in (0, -1, True, 1.5, "2"):
        with pytest.raises(ConfigurationError, match="k must be a positive number of blocks"):
            engine.select(QUESTION, bank, k=k)


def fill_reference(engine, bank, question: str = QUESTION):
    """What a k-fill must return, from ``ask`` alone: the blocks read, then every unread block by its last
    gate score (against the final memory once the scan has nothing pending), best first."""
    answer = engine.ask(question, bank)
    read = [block.index for block in answer.blocks]
    assert 0 < len(read) < engine.config.gate.max_relevant_blocks, "the scan ended with nothing pending"
    last = {score.index: score.score for score in answer.gate_scores}
    unread = [index for index in range(len(bank)) if index not in read]
    assert set(unread) <= set(last), "without stage 1 every unread block was judged against the final memory"
    return answer, sorted(unread, key=lambda index: (-last[index], index)), last


@pytest.mark.parametrize("case", ["prefilter off", "bank within the candidates"])
def test_k_fills_with_the_best_scoring_unread_blocks_under_the_final_memory(case):
    if case == "prefilter off":
        engine, bank = engine_named("prefilter off"), corpus_bank()
    else:  # stage 1 does not run on a bank no larger than gate.candidates
        engine = engine_named("default")
        bank = engine.ingest([Document.from_text(FACTS_DOCUMENT[:400], id="short")])
        assert 2 < len(bank) <= engine.config.gate.candidates
    answer, best_unread, last = fill_reference(engine, bank)
    assert answer.candidates == [], "stage 1 did not run"
    gated = engine.select(QUESTION, bank)
    assert block_places(gated) == block_places(answer.blocks) and all(block.selected for block in gated)
    for k in sorted({len(gated) + 1, len(gated) + 2, len(bank) - 1, len(bank), len(bank) + 5}):
        blocks = engine.select(QUESTION, bank, k=k)
        assert len(blocks) == min(k, len(bank))
        assert len({block.index for block in blocks}) == len(blocks), "no block twice"
        assert blocks[: len(gated)] == gated, "the gate's selections first, as select without k returns them"
        fill = blocks[len(gated) :]
        assert [block.index for block in fill] == best_unread[: k - len(gated)]
        assert not any(block.selected for block in fill) and not any(block.fallback for block in fill)
        assert [block.score for block in fill] == [last[block.index] for block in fill]
        assert all(where(bank, b.index) == (b.document_id, b.char_start, b.char_end) for b in fill)
    assert engine.select(QUESTION, bank, k=len(gated)) == gated


def test_k_below_what_the_gate_read_keeps_the_best_in_reading_order():
    engine, bank = engine_named("reads several"), corpus_bank()
    gated = engine.select(QUESTION, bank)
    assert len(gated) == engine.config.gate.max_relevant_blocks == 4
    for k in (1, 2, 3, 4):
        best = sorted(range(len(gated)), key=lambda position: (-gated[position].score, position))[:k]
        assert engine.select(QUESTION, bank, k=k) == [gated[position] for position in sorted(best)]


def test_k_with_stage_one_judges_blocks_the_scan_did_not():
    engine = make_engine("llama", candidates=2)
    bank = corpus_bank()
    answer = engine.ask(QUESTION, bank)
    assert answer.candidates and len(bank) > 2, "stage 1 ran"
    read = [block.index for block in answer.blocks]
    judged = {score.index for score in answer.gate_scores}
    gated = engine.select(QUESTION, bank)
    assert [block.index for block in gated] == read
    for k in (len(read) + 3, len(bank) // 2, len(bank), len(bank) + 2):
        blocks = engine.select(QUESTION, bank, k=k)
        assert len(blocks) == min(k, len(bank))
        assert len({block.index for block in blocks}) == len(blocks)
        assert blocks[: len(read)] == gated and not any(block.selected for block in blocks[len(read) :])
        scores = [block.score for block in blocks[len(read) :]]
        assert scores == sorted(scores, reverse=True), "best first"
    everything = engine.select(QUESTION, bank, k=len(bank))
    assert {block.index for block in everything} == set(range(len(bank)))
    assert set(range(len(bank))) - judged - set(read), "some blocks were judged for the fill only"
    if len(set(answer.memory_steps)) == len(answer.memory_steps):  # every read changed the memory
        final = {s.index: s.score for s in answer.gate_scores if s.memory_step == len(read)}
        for block in everything[len(read) :]:
            if block.index in final:
                assert block.score == final[block.index], "a block the scan judged keeps its final score"


def test_k_after_the_block_budget_is_spent_ranks_every_unread_block_under_the_final_memory():
    """The scan stops at max_relevant_blocks with blocks judged against older memories: the fill judges them
    again. Reference: each unread block's gain scored directly by the rule (block row minus block-free row)."""
    from lychee_memory.gate import ScoreRequest

    engine = make_engine("llama", prefilter="off", threshold=-0.05, max_relevant_blocks=2, gate_batch_size=1)
    bank = corpus_bank()
    answer = engine.ask(QUESTION, bank)
    read = [block.index for block in answer.blocks]
    assert len(read) == 2, "the budget ended the scan"
    memory = answer.memory

    def gain(index: int) -> float:
        with_block, without = engine.rule.score(
            engine.loaded,
            engine.prompts,
            [ScoreRequest(QUESTION, memory, bank.block(index)), ScoreRequest(QUESTION, memory, None)],
        )
        return with_block - without

    reference = {index: gain(index) for index in range(len(bank)) if index not in read}
    best = sorted(reference, key=lambda index: (-reference[index], index))[:5]
    fill = engine.select(QUESTION, bank, k=7)[2:]
    assert [block.index for block in fill] == best
    assert [block.score for block in fill] == pytest.approx([reference[index] for index in best], abs=1e-4)


def test_a_block_of_a_union_finds_its_own_banks_document_when_both_banks_hold_the_id():
    from lychee_memory.integrations.langchain import block_to_document

    engine = engine_named("reads several")
    first = engine.ingest([Document.from_text(FACTS_DOCUMENT, id="guide", metadata={"edition": 1})], name="first")
    second = engine.ingest([Document.from_text(SECOND_DOCUMENT, id="guide", metadata={"edition": 2})], name="second")
    union = MemoryBank.union([first, second])
    blocks = engine.select(QUESTION, union, k=len(union))
    assert {block.bank for block in blocks} == {"first", "second"}
    for block in blocks:
        expected = {"first": 1, "second": 2}[block.bank]
        assert union.document_of(block).metadata["edition"] == expected
        assert block_to_document(block, union).metadata["edition"] == expected


@pytest.mark.parametrize("options", [{}, {"candidates": 2}, {"prefilter": "off", "threshold": 0.1}])
def test_select_many_selects_what_select_does_one_question_at_a_time(options):
    """The server's batched retrieve: one scan for several questions gives each what its own select gives
    (float32: batched rows differ from single ones by ~1e-6 nats; decisions near the threshold are re-scored)."""
    engine = make_engine("llama", **options)
    bank = corpus_bank()
    questions = [QUESTION, OTHER_QUESTION, "Who keeps the lighthouse?"]
    for k in (None, 1, 5):
        for filters in (None, {"tenant": "a"}):
            together = engine.select_many(questions, bank, k=k, filters=filters)
            alone = [engine.select(question, bank, k=k, filters=filters) for question in questions]
            for batched, single in zip(together, alone):  # the same blocks; scores up to batching's rounding
                assert [place[:3] + place[4:] for place in block_places(batched)] == [
                    place[:3] + place[4:] for place in block_places(single)
                ]
                assert [b.score for b in batched] == pytest.approx([b.score for b in single], abs=1e-4)
    with pytest.raises(TypeError, match="list of questions"):
        engine.select_many(QUESTION, bank)
