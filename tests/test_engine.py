"""The engine's public API end to end on tiny models: answers, modes, streaming, and bad input."""

from __future__ import annotations

import json

import pytest

from lychee_memory import (
    BankMismatchError,
    ConfigurationError,
    ContextTooLongError,
    DocumentError,
    EmptyQuestionError,
    FullContext,
    LycheeMemory,
    MemAgent,
    ModelNotFoundError,
)

from .conftest import FACTS_DOCUMENT, SECOND_DOCUMENT, make_engine

QUESTION = "What is the access code for the east pier storage shed?"


def test_answer_carries_blocks_memory_timings_and_counts(family):
    engine = make_engine(family)
    bank = engine.ingest([FACTS_DOCUMENT, SECOND_DOCUMENT])
    answer = engine.ask(QUESTION, bank)
    assert answer.mode == "lychee" and isinstance(answer.text, str)
    assert answer.blocks, "at least the fallback block is read"
    for block in answer.blocks:
        span = bank.spans[block.index]
        assert (block.document_id, block.char_start, block.char_end) == (
            span.document_id,
            span.char_start,
            span.char_end,
        )
        assert bank.document(block.document_id).text[block.char_start : block.char_end] == block.text
    assert answer.memory_steps[0] == "No previous memory"
    assert len(answer.memory_steps) == len(answer.blocks) + 1
    assert {"load_model", "ingest", "prefilter", "gate", "reason", "answer", "query"} <= set(answer.timings)
    assert answer.timings["query"] == pytest.approx(
        answer.timings["prefilter"] + answer.timings["gate"] + answer.timings["reason"] + answer.timings["answer"]
    )
    assert answer.token_counts["document_tokens"] == bank.num_tokens
    data = json.loads(json.dumps(answer.to_dict(include_scores=True)))
    assert {"answer", "blocks", "timings", "memory", "gate_scores"} <= set(data)
    assert {"index", "score", "doc", "start", "end"} <= set(data["blocks"][0])


def test_asking_over_documents_ingests_first():
    engine = make_engine()
    answer = engine.ask(QUESTION, [FACTS_DOCUMENT])
    assert answer.timings["ingest"] > 0


def test_ask_many_matches_ask():
    engine = make_engine()
    bank = engine.ingest([FACTS_DOCUMENT])
    questions = [QUESTION, "Which ship anchored in the bay?"]
    assert [a.text for a in engine.ask_many(questions, bank)] == [engine.ask(q, bank).text for q in questions]
    with pytest.raises(TypeError):
        engine.ask_many(QUESTION, bank)


def test_stream_yields_the_answer_text():
    engine = make_engine()
    bank = engine.ingest([FACTS_DOCUMENT])
    stream = engine.stream(QUESTION, bank)
    pieces = list(stream)
    assert "".join(pieces).strip() == stream.answer.text
    assert stream.answer.text == engine.ask(QUESTION, bank).text


def test_text_and_kv_read_modes_differ_in_what_the_reasoner_reads():
    text_mode = make_engine(read_mode="text", threshold=-1e9, max_relevant_blocks=1)
    kv_mode = make_engine(read_mode="kv", threshold=-1e9, max_relevant_blocks=1)
    bank = text_mode.ingest([FACTS_DOCUMENT])
    read_text = text_mode.ask(QUESTION, bank).token_counts["reasoner_prompt_tokens"]
    read_kv = kv_mode.ask(QUESTION, bank).token_counts["reasoner_prompt_tokens"]
    assert read_text - read_kv >= bank.spans[0].token_end - bank.spans[0].token_start - 4


def test_memagent_mode_reads_every_raw_chunk():
    engine = make_engine(memagent_chunk_tokens=50)
    answer = MemAgent(engine).ask(QUESTION, [FACTS_DOCUMENT])
    assert answer.mode == "memagent"
    assert len(answer.blocks) == answer.token_counts["blocks"] and len(answer.memory_steps) == len(answer.blocks) + 1
    assert all(len(block.text) > 0 for block in answer.blocks)


def test_full_context_mode_and_its_limit():
    engine = make_engine()
    assert FullContext(engine).ask(QUESTION, [SECOND_DOCUMENT]).mode == "full_context"
    with pytest.raises(ContextTooLongError, match="full-context"):
        FullContext(engine).ask(QUESTION, [FACTS_DOCUMENT * 8])


def test_one_token_document_works():
    engine = make_engine()
    bank = engine.ingest(["A"])
    assert len(bank) == 1 and bank.num_tokens == 1
    assert isinstance(engine.ask(QUESTION, bank).text, str)


def test_triton_attention_option_gives_the_same_answer_on_cpu():
    reference = make_engine()
    bank = reference.ingest([FACTS_DOCUMENT])
    triton = LycheeMemory.from_pretrained(
        "tiny-random-llama",
        attention="triton",
        chunk_tokens=64,
        max_memory_tokens=12,
        max_answer_tokens=6,
        show_progress=False,
    )
    assert triton.loaded.attention == "lychee_triton"
    first, second = reference.ask(QUESTION, bank), triton.ask(QUESTION, bank)
    assert [b.index for b in first.blocks] == [b.index for b in second.blocks]
    assert first.text == second.text


# Bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("question", ["", "   \n", None, 42])
def test_empty_or_non_text_question(question):
    engine = make_engine()
    with pytest.raises(EmptyQuestionError):
        engine.ask(question, [FACTS_DOCUMENT])


def test_question_longer_than_the_window():
    engine = make_engine()
    with pytest.raises(ContextTooLongError, match="question"):
        engine.ask("why " * 5000, [FACTS_DOCUMENT])


def test_chunk_beyond_the_window():
    with pytest.raises(ContextTooLongError, match="context window"):
        make_engine(chunk_tokens=10_000)


def test_ratio_that_does_not_divide_the_window():
    with pytest.raises(ConfigurationError, match="does not divide"):
        make_engine(chunk_tokens=64, ratio=3)
    with pytest.raises(ConfigurationError, match="does not divide"):
        make_engine(compressor="beacon", ratio=3)


def test_update_that_cannot_fit_the_window():
    with pytest.raises(ContextTooLongError, match="lower chunk_tokens or max_memory_tokens"):
        make_engine(chunk_tokens=2048, max_memory_tokens=1500)


def test_unknown_model_spec_says_what_was_tried(tmp_path):
    with pytest.raises(ModelNotFoundError) as error:
        LycheeMemory.from_pretrained("no-such-org/no-such-model")
    message = str(error.value)
    assert "Tried" in message and "alias" in message and "local path" in message and "Hugging Face cache" in message
    with pytest.raises(ModelNotFoundError, match="gguf"):
        LycheeMemory.from_pretrained(str(tmp_path))


def test_empty_and_missing_documents():
    engine = make_engine()
    with pytest.raises(DocumentError, match="empty"):
        engine.ingest([""])
    with pytest.raises(DocumentError, match="no documents"):
        engine.ingest([])


def test_bank_from_another_compressor_or_model_is_refused():
    key_norm = make_engine(compressor="key_norm")
    bank = key_norm.ingest([FACTS_DOCUMENT])
    with pytest.raises(BankMismatchError, match="compressor"):
        make_engine(compressor="attention").ask(QUESTION, bank)
    with pytest.raises(BankMismatchError, match="another model"):
        make_engine("qwen2", compressor="key_norm").ask(QUESTION, bank)


def test_measured_presets_fill_open_settings_unless_turned_off(monkeypatch):
    import dataclasses

    from lychee_memory import presets

    # The tiny model stands in for SmolLM2; its heads, gate and reasoner are not SmolLM2's, so those are left out.
    tiny = {"model_type": "llama", "hidden_size": make_engine().loaded.config.hidden_size}
    smollm2 = dataclasses.replace(
        presets.PRESETS[0], architecture=tiny, prefilter_heads=(), gate_weights=None, reasoner_weights=None
    )
    monkeypatch.setattr(presets, "PRESETS", [smollm2])  # wherever the engine asks for its preset
    with_preset = make_engine(chunk_tokens=None)
    assert with_preset.config.compressor.kind == smollm2.compressor
    assert with_preset.config.reasoner.stop_strings == list(smollm2.stop_strings)
    generic = make_engine(chunk_tokens=None, use_presets=False)
    assert generic.config.compressor.kind == "attention" and generic.config.compressor.ratio == 4
    assert generic.config.reasoner.stop_strings == []
    assert generic.config.prompts.update != with_preset.config.prompts.update == smollm2.prompts["update"]


def test_a_question_that_overflows_the_update_prompt_is_refused_before_any_work():
    """The budget counts the question in every prompt: here the answer prompt fits, the memory update not."""
    engine = make_engine(chunk_tokens=2048, max_memory_tokens=500, read_mode="text")
    question = "Which of the harbour notes names the code? "
    while len(engine.prompts.encode_text(question)) < 1300:
        question += "Which of the harbour notes names the code? "
    final_only = len(engine.prompts.final_prompt(question, "")) + 500 + engine.config.reasoner.max_answer_tokens
    assert final_only < engine.loaded.context_window, "the answer prompt alone would fit"
    bank = engine.ingest([FACTS_DOCUMENT])
    calls = []
    engine.reasoner.update = lambda requests: calls.append(requests)
    with pytest.raises(ContextTooLongError, match="question is .* memory update prompt needs"):
        engine.ask(question, bank)
    assert calls == [], "refused before the scan"


def test_a_bank_with_another_chunk_size_is_refused():
    bank = make_engine(chunk_tokens=64).ingest([FACTS_DOCUMENT])
    with pytest.raises(BankMismatchError, match="64-token chunks, this engine cuts 32-token chunks"):
        make_engine(chunk_tokens=32).ask(QUESTION, bank)


def test_stream_runs_the_callers_code_outside_inference_mode():
    import torch

    engine = make_engine(max_answer_tokens=12, threshold=-1e9)
    bank = engine.ingest([FACTS_DOCUMENT])
    seen = [torch.is_inference_mode_enabled() for _ in engine.stream(QUESTION, bank)]
    assert seen and not any(seen), "code between pieces must run with autograd as the caller set it"


def test_stream_answer_after_an_early_break_is_the_whole_answer():
    engine = make_engine(max_answer_tokens=24, threshold=-1e9)
    bank = engine.ingest([FACTS_DOCUMENT])
    expected = engine.ask(QUESTION, bank).text
    stream = engine.stream(QUESTION, bank)
    first = next(iter(stream))
    assert first
    assert stream.answer.text == expected, "the generation resumes and finishes"
    closed = engine.stream(QUESTION, bank)
    next(iter(closed))
    closed.close()
    with pytest.raises(RuntimeError, match="closed before the answer was complete"):
        _ = closed.answer


def test_the_memory_strategy_is_chosen_by_name_and_a_new_one_plugs_into_the_scan():
    from dataclasses import dataclass

    from lychee_memory.working_memory import MEMORY_STRATEGIES, GeneratedNotes, MemoryStrategy, memory_strategy

    assert isinstance(make_engine().memory_strategy, GeneratedNotes) and MEMORY_STRATEGIES["notes"] is GeneratedNotes
    with pytest.raises(ConfigurationError, match="unknown memory strategy 'quotes'; known: notes"):
        memory_strategy("quotes")

    @dataclass(frozen=True)
    class Verbatim(MemoryStrategy):  # the shape of the excerpts strategy that comes next: no generation
        name = "verbatim"

        def update(self, reasoner, bank, reads, observe=None):
            return [f"{state.memory} | {bank.spans[index].text}" for state, index in reads]

    engine = make_engine(threshold=-1e9, max_relevant_blocks=2)
    bank = engine.ingest([FACTS_DOCUMENT])
    engine.memory_strategy = Verbatim()
    answer = engine.ask(QUESTION, bank)
    read = [bank.spans[block.index].text for block in answer.blocks]
    assert answer.memory_steps[-1] == " | ".join(["No previous memory", *read])
