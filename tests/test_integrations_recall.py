"""Agent recall settings (integrations/recall.py): the lexical ranker against an independent BM25, a newer statement
superseding an older one, the floor returning nothing, the gate's rule over stage 1's best minus each block's prior
against the rule scored directly, and validation (tiny random models)."""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter

import pytest
from llama_index.core.base.llms.types import ChatMessage
from lychee_memory.integrations.llama_index import LycheeMemoryBlock
from lychee_memory.integrations.recall import (
    CONVERSATION_RECALL,
    GATE_RECALL,
    RecallSettings,
    recall,
    superseded,
)

from lychee_memory import ConfigurationError, MemoryStore, SelectedBlock
from lychee_memory.gate import ScoreRequest
from lychee_memory.lexical import STOPWORDS

from .conftest import make_engine

FILLER = [
    "user: How long should I boil lentils?",
    "user: What is a good way to learn about owls?",
    "user: Can you suggest a recipe with fennel and sourdough?",
    "assistant: Sure, happy to help with that.",
]


@pytest.fixture(scope="module")
def engine():
    return make_engine("llama")


def chat(role: str, text: str) -> ChatMessage:
    return ChatMessage(role=role, content=text)


def put(block: LycheeMemoryBlock, *texts: str) -> None:
    for text in texts:
        role, _, content = text.partition(": ")
        asyncio.run(block.aput([chat(role, content)], session_id="s"))


def reference_bm25(query: str, texts: list[str]) -> list[float]:
    """BM25 written out here (Lucene IDF, k1 = 1.2, b = 0.75) over lowercase words minus the library's stopwords."""
    words = [[word for word in re.findall(r"\w+", text.lower()) if word not in STOPWORDS] for text in texts]
    mean = sum(len(found) for found in words) / len(words)
    asked = {word for word in re.findall(r"\w+", query.lower()) if word not in STOPWORDS}
    scores = []
    for found in words:
        counts = Counter(found)
        total = 0.0
        for term in asked:
            df = sum(term in other for other in words)
            if counts[term]:
                idf = math.log(1 + (len(words) - df + 0.5) / (df + 0.5))
                total += idf * counts[term] * 2.2 / (counts[term] + 1.2 * (0.25 + 0.75 * len(found) / mean))
        scores.append(total)
    return scores


def test_lexical_recall_ranks_the_statement_above_question_shaped_messages(engine, tmp_path):
    """The gate ranks the user's own questions first on a conversation; the lexical ranker scores by BM25, and its
    scores equal BM25 computed independently here."""
    statement = "user: I have a cat called Miso."
    texts = [*FILLER, statement, "user: Which podcast do you like?"]
    block = LycheeMemoryBlock(name="m", model=engine, store=tmp_path / "s", k=2)
    put(block, *texts)
    bank = engine.open_bank("agent_memory", store=MemoryStore(tmp_path / "s"))
    settings = RecallSettings(ranker="lexical")
    blocks = recall(engine, "What is my cat called?", bank, len(texts), settings=settings)
    assert blocks[0].text == statement
    reference = reference_bm25("What is my cat called?", [span.text for span in bank.spans])
    by_text = {block.text: block.score for block in blocks}
    for span, expected in zip(bank.spans, reference):
        assert by_text[span.text] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    text = asyncio.run(block.aget([chat("user", "What is my cat called?")]))
    assert text.startswith(statement) and "boil" not in text  # the default: no question-shaped message rides along


def test_a_newer_statement_of_the_same_slot_supersedes_the_older(engine, tmp_path):
    block = LycheeMemoryBlock(name="m", model=engine, store=tmp_path / "s", k=2)
    put(
        block,
        "user: My favourite drink is green tea.",
        *FILLER,
        "user: I have switched: my favourite drink is now espresso.",
    )
    text = asyncio.run(block.aget([chat("user", "What is my favourite drink?")]))
    assert "espresso" in text and "green tea" not in text
    # without superseding both come back (the check above can fail), and the ranking alone does not drop the old one
    both = LycheeMemoryBlock(
        name="m", model=engine, store=tmp_path / "s", k=2, recall_settings=RecallSettings(ranker="lexical")
    )
    assert "green tea" in asyncio.run(both.aget([chat("user", "What is my favourite drink?")]))
    # two different slots asked together are both kept: neither matches every query term the other matches
    put(block, "user: I live in Oslo.")
    text = asyncio.run(block.aget([chat("user", "What is my favourite drink and where do I live?")]))
    assert "espresso" in text and "Oslo" in text and "green tea" not in text


def selected(index: int, text: str, document: str | None = None, bank: str = "b") -> SelectedBlock:
    return SelectedBlock(index, 1.0, document or f"d{index}", 0, len(text), text, bank=bank)


def test_superseded_matches_a_pairwise_reference():
    blocks = [
        selected(0, "My favourite book is Dune."),
        selected(1, "My favourite drink is tea."),
        selected(2, "My favourite drink is now coffee."),
        selected(3, "The weather is nice."),
        selected(4, "My favourite drink is cocoa.", bank="other"),  # another bank: no time order with the rest
        selected(5, "Drink more water.", document="d1"),  # a later block of the same document never supersedes it
    ]
    query = "What is my favourite drink?"
    # reference, by hand: d1 is superseded by d2 (d2 matches {favourite, drink} too); d0 matches {favourite} only
    # and d2 matches it, so d0 goes too; d3 matches nothing and stays; d4 is alone in its bank; d5 matches {drink}
    # and no later block of bank b matches it
    kept = [block.document_id for block in superseded(query, blocks)]
    assert kept == ["d2", "d3", "d4", "d1"]
    # asked about the book: d0 alone matches "book" and stays; d1 still goes (d2 matches its {favourite})
    assert [block.document_id for block in superseded("What is my favourite book?", blocks)] == [
        "d0", "d2", "d3", "d4", "d1"
    ]  # fmt: skip


def test_the_floor_returns_nothing_below_it(engine, tmp_path):
    block = LycheeMemoryBlock(name="m", model=engine, store=tmp_path / "s", k=2)
    put(block, *FILLER, "user: I have a cat called Miso.")
    assert asyncio.run(block.aget([chat("user", "What is my blood type?")])) == ""  # no message shares a term
    assert block.last_sources == []
    no_floor = LycheeMemoryBlock(
        name="m", model=engine, store=tmp_path / "s", k=2, recall_settings=RecallSettings(ranker="lexical")
    )
    assert len(asyncio.run(no_floor.aget([chat("user", "What is my blood type?")])).split("~~~")) == 2
    bank = engine.open_bank("agent_memory", store=MemoryStore(tmp_path / "s"))
    everything = recall(engine, "What is my cat called?", bank, 5, settings=GATE_RECALL)
    cut = sorted(block.score for block in everything)[2]
    above = recall(engine, "What is my cat called?", bank, 5, settings=RecallSettings(floor=cut))
    assert sorted(block.score for block in above) == sorted(block.score for block in everything if block.score > cut)


def test_judged_blocks_score_the_rule_gain_minus_their_prior(engine, tmp_path):
    """Stage 2 over stage 1's best: each score is the rule's gain for the query minus its gain for the null
    question, checked against the rule scored block by block here."""
    block = LycheeMemoryBlock(name="m", model=engine, store=tmp_path / "s", k=2)
    put(block, *FILLER, "user: I have a cat called Miso.", "user: My cat sleeps all day.")
    bank = engine.open_bank("agent_memory", store=MemoryStore(tmp_path / "s"))
    question = "What is my cat called?"
    settings = RecallSettings(ranker="lexical", judged=3, prior=True)
    blocks = recall(engine, question, bank, 3, settings=settings)
    lexical = recall(engine, question, bank, 3, settings=RecallSettings(ranker="lexical"))
    assert {block.index for block in blocks} == {block.index for block in lexical}  # stage 1's best three, judged
    initial = engine.config.prompts.initial_memory

    def gain(text: str, index: int) -> float:
        with_block, without = engine.rule.score(
            engine.loaded,
            engine.prompts,
            [ScoreRequest(text, initial, bank.block(index)), ScoreRequest(text, initial, None)],
        )
        return with_block - without

    expected = {index: gain(question, index) - gain("N/A", index) for index in (b.index for b in blocks)}
    for found in blocks:
        assert found.score == pytest.approx(expected[found.index], abs=2e-3)  # batched forwards round differently
    assert [found.score for found in blocks] == sorted((found.score for found in blocks), reverse=True)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ranker": "bm42"}, "recall ranker must be one of gate, lexical"),
        ({"judged": -1}, "whole number of blocks"),
        ({"judged": True}, "whole number of blocks"),
        ({"floor": float("nan")}, "finite number or None"),
        ({"null_question": " "}, "non-empty question"),
        ({"ranker": "lexical", "prior": True}, "prior needs judged blocks"),
    ],
)
def test_bad_recall_settings_are_refused_by_name(fields, message):
    with pytest.raises(ConfigurationError, match=message):
        RecallSettings(**fields)


def test_the_memory_block_defaults_to_conversation_recall(engine, tmp_path):
    block = LycheeMemoryBlock(name="m", model=engine, store=tmp_path / "s")
    assert block.recall_settings == CONVERSATION_RECALL
    assert CONVERSATION_RECALL == RecallSettings(ranker="lexical", supersede=True, floor=0.0)
    given = LycheeMemoryBlock(name="m", model=engine, recall_settings={"ranker": "lexical", "floor": 1.5})
    assert given.recall_settings == RecallSettings(ranker="lexical", floor=1.5)
    with pytest.raises(ValueError, match="recall_settings.ranker"):
        LycheeMemoryBlock(name="m", model=engine, recall_settings={"ranker": "bm42"})
