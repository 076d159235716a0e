"""Issue 28 item 2 (opt-in): the answer row decoded in the same batch as the note, kept when the scan reads
nothing more. Checked against the answer row built by hand and decoded on its own, with the decode passes counted."""

from __future__ import annotations

import pytest

from lychee_memory.generation import DecodingSettings, generate
from lychee_memory.kv_prefix import PromptRow
from lychee_memory.working_memory import GeneratedNotes

from .conftest import make_engine

TEXT = " ".join(f"Paragraph {i} tells of the weather in town {i} and its harvest." for i in range(40))
TEXT += " The code of the cellar is KX-4471. " + TEXT
QUESTION = "What is the code of the cellar?"


@pytest.fixture
def passes(decode_passes):
    """Rows of each decode pass run in this process."""
    return decode_passes


def _engine(**options):
    options = {"read_mode": "kv", **options}  # the embedded default reads blocks as KV
    return make_engine("llama", chunk_tokens=128, max_memory_tokens=12, max_answer_tokens=5, **options)


def _answer_row(engine, bank, index: int, memory: str) -> PromptRow:
    """The final prompt read after block ``index`` over ``memory``, built by hand for the engine's read mode."""
    prompts = engine.prompts
    task = prompts.segments(prompts.settings.final, question=QUESTION, memory=memory).token_ids
    if engine.reasoner.read_mode == "kv":
        return PromptRow(prompts.after_block(task), bank.block(index), engine.reasoner.opening)
    chunk = bank.block(index).token_ids.tolist()
    return PromptRow(prompts.block_opening_ids() + chunk + prompts.continuation(task))


@pytest.mark.parametrize("read_mode", ["kv", "text"])
def test_one_read_costs_one_decode_pass_and_answers_from_the_block(passes, read_mode):
    engine = _engine(max_relevant_blocks=1, read_mode=read_mode)
    bank = engine.ingest([TEXT])
    today = engine.ask(QUESTION, bank)
    assert len(today.blocks) == 1 and passes == [1, 1], "today: the note, then the answer"
    engine.memory_strategy = GeneratedNotes(answer_with_note=True)
    passes.clear()
    batched = engine.ask(QUESTION, bank)
    assert passes == [2], "one pass: the note's row and the answer's row side by side"
    assert batched.memory_steps == today.memory_steps, "the note is the same"
    (index,) = [block.index for block in batched.blocks]
    # The reference: the final prompt after the block over the notes before it, decoded alone at the answer budget.
    row = _answer_row(engine, bank, index, today.memory_steps[0])
    settings = DecodingSettings.for_reasoner(engine.config.reasoner, engine.config.reasoner.max_answer_tokens)
    (reference,) = generate(engine.loaded, [row], settings)
    assert batched.text == reference.text and batched.token_counts["answer_tokens"] == len(reference.token_ids) == 5
    assert engine.reasoner.prepared == {}, "the prepared answer was consumed"
    streamed = engine.stream(QUESTION, bank)
    passes.clear()
    assert "".join(streamed) == reference.text and passes == [2], "the stream hands out the prepared answer too"
    assert streamed.answer.text == reference.text


def test_a_prepared_answer_serves_only_the_memory_it_was_written_for(passes):
    engine = _engine()
    reasoner = engine.reasoner
    (plain,) = reasoner.answer([QUESTION], ["notes B"])
    (kept,) = reasoner.answer([QUESTION], ["notes A"])
    reasoner.prepare_answer(QUESTION, "notes A", plain)  # a stand-in answer, told apart from a fresh decode
    passes.clear()
    assert reasoner.answer([QUESTION], ["notes B"])[0].text == plain.text and passes == [1]
    assert reasoner.prepared == {}, "a mismatched memory drops it: the scan read on after that note"
    reasoner.prepare_answer(QUESTION, "notes A", plain)
    passes.clear()
    other, mine = reasoner.answer(["Another question?", QUESTION], ["notes A", "notes A"])
    assert mine is plain and passes == [1], "only the other question is decoded"
    assert other.text == reasoner.answer(["Another question?"], ["notes A"])[0].text
    reasoner.prepare_answer(QUESTION, "notes A", plain)
    reasoner.forget_answer(QUESTION)
    assert reasoner.answer([QUESTION], ["notes A"])[0].text == kept.text
    for number in range(300):
        reasoner.prepare_answer(f"question {number}?", "m", plain)
    assert (
        len(reasoner.prepared) == 256
        and "question 299?" in reasoner.prepared
        and "question 0?" not in reasoner.prepared
    )


def test_reads_after_a_note_replace_its_answer(passes):
    engine = _engine(max_relevant_blocks=3, threshold=-1e9)  # every candidate passes: several reads
    bank = engine.ingest([TEXT])
    today = engine.ask(QUESTION, bank)
    engine.memory_strategy = GeneratedNotes(answer_with_note=True)
    passes.clear()
    batched = engine.ask(QUESTION, bank)
    assert len(batched.blocks) == len(today.blocks) > 1
    assert batched.memory_steps == today.memory_steps
    assert len(passes) == len(batched.blocks) and all(rows == 2 for rows in passes), "no separate answer pass"
    row = _answer_row(engine, bank, batched.blocks[-1].index, today.memory_steps[-2])
    settings = DecodingSettings.for_reasoner(engine.config.reasoner, engine.config.reasoner.max_answer_tokens)
    assert batched.text == generate(engine.loaded, [row], settings)[0].text, "the last read's answer row"


def test_an_answer_prepared_over_one_bank_never_answers_a_scan_of_another(passes):
    """select() leaves the answer its scan prepared (it read that bank's block); the next scan, of another bank that
    reads nothing, starts without it, so a later answer is decoded from that scan's own memory."""
    engine = _engine(max_relevant_blocks=1)
    engine.memory_strategy = GeneratedNotes(answer_with_note=True)
    first = engine.ingest([TEXT])
    engine.select(QUESTION, first)
    assert QUESTION in engine.reasoner.prepared, "select's scan prepared an answer it never used"
    other = engine.ingest(["Nothing here but the sound of the sea. " * 20])
    engine.config.gate.fallback_blocks = 0
    engine.threshold = float("inf")  # nothing passes: this scan reads no block
    (state,), _ = engine.scan([QUESTION], other)
    assert state.selected == [] and engine.reasoner.prepared == {}


def test_the_setting_turns_it_on_from_a_config(passes):
    """reasoner.answer_with_note (flat: answer_with_note) gives the engine that strategy: one decode pass per read."""
    engine = _engine(max_relevant_blocks=1, answer_with_note=True)
    assert engine.memory_strategy == GeneratedNotes(answer_with_note=True)
    assert _engine().memory_strategy == GeneratedNotes()
    bank = engine.ingest([TEXT])
    passes.clear()
    engine.ask(QUESTION, bank)
    assert passes == [2]
