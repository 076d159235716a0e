"""Compressor training data: hash splits, disjoint pools, planted facts unlike the evaluation needles, and
deterministic chunks of exact length whose facts, questions and continuation probe line up with their tokens."""

from __future__ import annotations

import json
import random
import re

import pytest

from lychee_memory.errors import ConfigurationError, DocumentError
from lychee_memory.eval import needles, tasks
from lychee_memory.eval.haystack import generated_paragraphs
from lychee_memory.testing import build_tiny_tokenizer
from lychee_memory.training import compressor_data as cd
from lychee_memory.training.compressor_data import (
    HELDOUT_FRACTION,
    PlantedFact,
    SourceParagraph,
    iter_samples,
    make_samples,
    paragraph_pool,
    planted_facts,
    split_of,
)

EVAL_WORDS = {
    word.lower()
    for words in (
        needles.PLACE_ADJECTIVES,
        needles.PLACE_NOUNS,
        needles.FIRST_NAMES,
        needles.LAST_NAMES,
        needles.COMPANIES,
        needles.CITIES,
    )
    for word in words
}
# Record labels and phrases of the evaluation needles' templates, which training facts must not rehearse.
EVAL_PHRASES = [
    "security note",
    "access code",
    "harbourmaster's note",
    "ship registry entry",
    "archive memo",
    "staff bulletin",
    "personnel record",
    "company register",
    "works as an engineer",
    "has its headquarters",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def train_pool() -> list[SourceParagraph]:
    return paragraph_pool(None, "train", generated=200)


@pytest.fixture(scope="module")
def heldout_pool() -> list[SourceParagraph]:
    return paragraph_pool(None, "heldout", generated=200)


def _data_dir():
    try:
        directory = tasks.data_dir()
    except DocumentError:
        return None
    return directory if (directory / tasks.SQUAD_FILE).is_file() else None


DATA = _data_dir()


# Splits and pools ------------------------------------------------------------------------------------------


def test_split_is_deterministic_and_holds_out_about_a_fifth():
    texts = [text for _, text in generated_paragraphs(2000, seed=cd.GENERATED_SEEDS["train"])]
    splits = [split_of(text) for text in texts]
    assert splits == [split_of(text) for text in texts]
    assert set(splits) == {"train", "heldout"}
    assert abs(splits.count("heldout") / len(splits) - HELDOUT_FRACTION) < 0.04


def test_pools_are_disjoint_and_in_their_split(train_pool, heldout_pool):
    assert len(train_pool) == len(heldout_pool) == 200
    train_texts, heldout_texts = {p.text for p in train_pool}, {p.text for p in heldout_pool}
    assert len(train_texts) == len(heldout_texts) == 200  # no paragraph twice
    assert not train_texts & heldout_texts
    assert {split_of(text) for text in train_texts} == {"train"}
    assert {split_of(text) for text in heldout_texts} == {"heldout"}
    assert {p.source for p in train_pool + heldout_pool} == {"generated"}
    assert all(p.questions == () for p in train_pool)
    assert paragraph_pool(None, "train", generated=200) == train_pool  # deterministic


def test_generated_text_is_not_the_evaluation_haystack(train_pool, heldout_pool):
    assert len(set(cd.GENERATED_SEEDS.values())) == 2 and not {0, 1} & set(cd.GENERATED_SEEDS.values())
    evaluation = {text for seed in (0, 1) for _, text in generated_paragraphs(2000, seed=seed)}
    assert not evaluation & {p.text for p in train_pool + heldout_pool}


def test_pool_arguments(tmp_path):
    assert [p.source for p in paragraph_pool(tmp_path, "heldout", generated=5)] == ["generated"] * 5
    assert paragraph_pool(None, "train", generated=0) == []
    with pytest.raises(DocumentError, match="does not exist"):
        paragraph_pool(tmp_path / "missing", "train")
    with pytest.raises(ConfigurationError, match="unknown split"):
        paragraph_pool(None, "test")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=">= 0"):
        paragraph_pool(None, "train", generated=-1)


# Planted facts ---------------------------------------------------------------------------------------------


def _many_facts() -> list[list[PlantedFact]]:
    return [planted_facts(random.Random(seed), 6) for seed in range(150)]


def test_fact_vocabulary_is_not_the_evaluation_needles():
    ours = [
        *cd.ITEM_ADJECTIVES,
        *cd.ITEM_NOUNS,
        *cd.PLACES,
        *cd.GIVEN_NAMES,
        *cd.FAMILY_NAMES,
        *(noun + suffix for noun in cd.ITEM_NOUNS for suffix in cd.LOOKALIKE_SUFFIXES),
    ]
    assert not {word.lower() for word in ours} & EVAL_WORDS
    for facts in _many_facts():
        for fact in facts:
            words = {word.lower() for word in re.findall(r"[A-Za-z]+", fact.sentence + " " + fact.question)}
            assert not words & EVAL_WORDS, fact
            assert not [phrase for phrase in EVAL_PHRASES if phrase in fact.sentence.lower()], fact


def test_planted_facts_count_kinds_and_values():
    kinds = set()
    for count in range(0, 9):
        assert len(planted_facts(random.Random(count), count)) == count
    for facts in _many_facts():
        assert len({fact.question for fact in facts}) == len(facts)  # every key asked once
        assert len({fact.answer for fact in facts}) == len(facts)
        for fact in facts:
            kinds.add(fact.kind)
            assert fact.answer in fact.sentence and fact.answer not in fact.question
            assert fact.sentence.endswith(".") and fact.question.endswith("?")
            if fact.kind == "code":
                assert re.fullmatch(r"\d{4,6}|[A-Z]{2}-\d{4}", fact.answer)
            if fact.kind == "date":
                assert re.fullmatch(r"\d{1,2} [A-Z][a-z]+ \d{4}", fact.answer)
            if fact.kind == "name":
                assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", fact.answer)
    assert kinds == set(cd.FACT_KINDS)
    assert planted_facts(random.Random(3), 6) == planted_facts(random.Random(3), 6)
    with pytest.raises(ConfigurationError):
        planted_facts(random.Random(0), -1)


def _one_word_apart(a: str, b: str) -> bool:
    left, right = a.split(), b.split()
    return len(left) == len(right) and sum(x != y for x, y in zip(left, right)) == 1


def test_lookalike_facts_differ_in_one_word_of_the_key():
    groups = 0
    for facts in _many_facts():
        lookalikes = [fact for fact in facts if fact.kind == "lookalike"]
        for fact in lookalikes:
            partners = [
                other for other in lookalikes if other is not fact and _one_word_apart(fact.question, other.question)
            ]
            assert partners, fact
            assert all(other.answer != fact.answer for other in partners)
            groups += 1
    assert groups > 50


def test_sentence_ends_skip_abbreviations():
    text = "Mr. Holt met J. Smith in the U.S. last year. He stayed (briefly). Then he left"
    assert cd.sentence_ends(text) == [text.index("year.") + 5, text.index("(briefly).") + 10, len(text)]


# Samples ---------------------------------------------------------------------------------------------------


def test_samples_are_deterministic_for_a_seed(train_pool, tokenizer):
    first = make_samples(train_pool, tokenizer, 512, 6, seed=11)
    assert first == make_samples(train_pool, tokenizer, 512, 6, seed=11)
    other = make_samples(train_pool, tokenizer, 512, 6, seed=12)
    assert [s.chunk_ids for s in first] != [s.chunk_ids for s in other]
    assert len({s.chunk_ids for s in first}) == 6  # samples of one seed differ from each other too
    streamed = iter_samples(train_pool, tokenizer, 512, seed=11, start=4)
    assert next(streamed) == first[4]  # sample i depends only on (seed, i)


@pytest.mark.parametrize("chunk_tokens", [128, 700, 2048])
def test_chunks_hold_their_facts_and_the_probe_follows(train_pool, tokenizer, chunk_tokens):
    samples = make_samples(train_pool, tokenizer, chunk_tokens, 8, seed=5, probe_tokens=24)
    for index, sample in enumerate(samples):
        assert sample.source == f"train:{index}"
        assert len(sample.chunk_ids) == chunk_tokens and len(sample.probe_ids) == 24
        chunk = tokenizer.decode(list(sample.chunk_ids))
        assert 1 <= len(sample.facts) <= 3
        for fact in sample.facts:
            assert fact.answer in chunk and fact.sentence in chunk
        whole = tokenizer.decode(list(sample.chunk_ids + sample.probe_ids))
        probe = tokenizer.decode(list(sample.probe_ids))
        assert whole.startswith(chunk) and sample.text.startswith(whole)
        assert not [fact for fact in sample.facts if fact.sentence in probe]
        ids = tokenizer(sample.text, add_special_tokens=False).input_ids
        assert tuple(ids[: chunk_tokens + 24]) == sample.chunk_ids + sample.probe_ids
        assert sample.questions == ()  # generated paragraphs carry no questions


def test_fact_counts_follow_facts_per_chunk(heldout_pool, tokenizer):
    samples = make_samples(heldout_pool, tokenizer, 2048, 6, seed=2, facts_per_chunk=(3, 3))
    assert [len(sample.facts) for sample in samples] == [3] * 6
    assert {sample.source.split(":")[0] for sample in samples} == {"heldout"}
    assert {fact.kind for sample in samples for fact in sample.facts} >= {"lookalike"}


def test_no_special_tokens_in_chunks(train_pool):
    tokenizer = build_tiny_tokenizer(with_bos=True)
    for sample in make_samples(train_pool, tokenizer, 256, 3, seed=1):
        assert tokenizer.bos_token_id not in sample.chunk_ids + sample.probe_ids


def test_bad_arguments_raise_configuration_errors(train_pool, tokenizer):
    with pytest.raises(ConfigurationError, match="at least 64 tokens"):
        make_samples(train_pool, tokenizer, 63, 1, seed=0)
    with pytest.raises(ConfigurationError, match="at least one training sample"):
        make_samples(train_pool, tokenizer, 256, 0, seed=0)
    with pytest.raises(ConfigurationError, match="pool is empty"):
        make_samples([], tokenizer, 256, 1, seed=0)
    with pytest.raises(ConfigurationError, match="facts_per_chunk"):
        make_samples(train_pool, tokenizer, 256, 1, seed=0, facts_per_chunk=(0, 2))
    with pytest.raises(ConfigurationError, match="facts_per_chunk"):
        make_samples(train_pool, tokenizer, 256, 1, seed=0, facts_per_chunk=(3, 1))
    with pytest.raises(ConfigurationError, match="probe_tokens"):
        make_samples(train_pool, tokenizer, 256, 1, seed=0, probe_tokens=-1)
    with pytest.raises(ConfigurationError, match="at least 64 tokens"):
        iter_samples(train_pool, tokenizer, 10, seed=0)  # raised at the call, not at the first sample
    long_title = [SourceParagraph("A title far too long for the chunk " * 8, "A short sentence. " * 40)]
    with pytest.raises(ConfigurationError, match="could not plant a fact"):
        make_samples(long_title, tokenizer, 64, 1, seed=0)  # no fact fits after the paragraph's heading


def test_short_chunks_plant_before_a_long_first_sentence(train_pool, tokenizer):
    (sample,) = make_samples(train_pool, tokenizer, 64, 1, seed=0)  # one fact is ~50 tiny-tokenizer tokens
    assert len(sample.chunk_ids) == 64 and len(sample.facts) == 1
    assert sample.facts[0].sentence in tokenizer.decode(list(sample.chunk_ids))


# With the shared datasets ----------------------------------------------------------------------------------


@pytest.mark.skipif(DATA is None, reason="no shared dataset directory (set LYCHEE_DATA_DIR)")
def test_squad_questions_come_through_with_answers_in_the_chunk(tokenizer):
    assert DATA is not None
    train, heldout = paragraph_pool(DATA, "train", generated=50), paragraph_pool(DATA, "heldout", generated=50)
    for pool, split in ((train, "train"), (heldout, "heldout")):
        texts = [p.text for p in pool]
        assert len(texts) == len(set(texts)) and {split_of(text) for text in texts} == {split}
        assert {p.source for p in pool} == {"squad", "generated"}  # HotpotQA paragraphs are evaluation documents
    assert not {p.text for p in train} & {p.text for p in heldout}

    squad = json.loads((DATA / tasks.SQUAD_FILE).read_text(encoding="utf-8"))["data"]
    answerable: dict[str, tuple[tuple[str, str], ...]] = {}
    for article in squad:
        for paragraph in article["paragraphs"]:
            kept = [qa for qa in paragraph["qas"] if not qa.get("is_impossible")]
            answerable.setdefault(
                paragraph["context"], tuple((qa["question"].strip(), qa["answers"][0]["text"]) for qa in kept)
            )
    from_squad = [p for p in train + heldout if p.source == "squad"]
    assert len(from_squad) == len(answerable)  # every SQuAD paragraph lands in exactly one split
    assert all(p.questions == answerable[p.text] for p in from_squad)  # impossible questions are left out
    assert sum(len(p.questions) for p in from_squad) > 100
    assert all(answer in p.text for p in train if p.source == "squad" for _, answer in p.questions)

    owners = {qa: p for p in train for qa in p.questions}
    samples = make_samples(train, tokenizer, 2048, 8, seed=3)
    assert sum(len(sample.questions) for sample in samples) > 0
    for sample in samples:
        chunk = tokenizer.decode(list(sample.chunk_ids))
        for qa in sample.questions:
            assert qa[1] in chunk and qa in owners
            assert owners[qa].title in chunk
