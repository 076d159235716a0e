"""Reading a block as KV feeds the model exactly what reading its text does: the chunk is encoded inside the
framing a text read puts around it (the opening), so the reasoner prefills only its prompt."""

from __future__ import annotations

import pytest
import torch

from lychee_memory.kv_prefix import PromptRow, logits_of, prefill
from lychee_memory.reasoner import UpdateRequest

from .conftest import FACTS_DOCUMENT, make_engine, requires_embedded_model

QUESTION = "What is the access code for the east pier storage shed?"
MEMORY = "The harbour has an east pier."


def _kv_and_text_logits(engine, bank, index: int) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """Logits over the update prompt's tokens when the block is read as KV and when its text is re-read."""
    block = bank.block(index)
    kv_row = engine.reasoner.update_row(UpdateRequest(QUESTION, MEMORY, block=block))
    text_ids = engine.prompts.update_prompt(QUESTION, MEMORY, block.token_ids.tolist())
    _, kv_hidden = prefill(engine.loaded, [kv_row])
    _, text_hidden = prefill(engine.loaded, [PromptRow(text_ids)])
    length = len(kv_row.prompt_ids)
    return (
        logits_of(engine.loaded, kv_hidden[0]),
        logits_of(engine.loaded, text_hidden[0, -length:]),
        list(engine.opening.token_ids) + block.token_ids.tolist() + kv_row.prompt_ids,
        text_ids,
    )


def test_kv_read_sees_the_tokens_and_logits_of_a_text_read(family):
    engine = make_engine(family, compressor="none", read_mode="kv", chunk_tokens=40)
    bank = engine.ingest([FACTS_DOCUMENT])
    assert len(bank) >= 3
    for index in (0, len(bank) // 2, len(bank) - 1):
        kv_logits, text_logits, kv_tokens, text_tokens = _kv_and_text_logits(engine, bank, index)
        assert kv_tokens == text_tokens, "opening + chunk + continuation is the text-read prompt, token for token"
        torch.testing.assert_close(kv_logits, text_logits, rtol=1e-4, atol=1e-4)


def test_the_opening_is_shared_not_stored_in_each_block(family):
    engine = make_engine(family, compressor="none", chunk_tokens=40)
    bank = engine.ingest([FACTS_DOCUMENT])
    opening = engine.prompts.block_opening_ids()
    assert engine.opening is not None and list(engine.opening.token_ids) == opening
    assert "<|im_start|>" in engine.loaded.tokenizer.decode(opening), "the tiny models' chat turn opens the block"
    for index in range(len(bank)):
        block = bank.block(index)
        assert block.num_slots == block.num_tokens, "a raw block holds its chunk's slots only"
        assert block.next_position == len(opening) + block.num_tokens
    assert bank.identity.opening == tuple(opening)


def test_kv_and_text_reads_write_the_same_memory(family):
    kv = make_engine(family, compressor="none", read_mode="kv", chunk_tokens=40, max_memory_tokens=12)
    text = make_engine(family, compressor="none", read_mode="text", chunk_tokens=40, max_memory_tokens=12)
    bank = kv.ingest([FACTS_DOCUMENT])
    blocks = [bank.block(index) for index in range(len(bank))]
    by_kv = kv.reasoner.update([UpdateRequest(QUESTION, MEMORY, block=block) for block in blocks])
    by_text = text.reasoner.update(
        [UpdateRequest(QUESTION, MEMORY, chunk_ids=block.token_ids.tolist()) for block in blocks]
    )
    assert [g.token_ids for g in by_kv] == [g.token_ids for g in by_text]
    assert all(
        a.prompt_tokens + b.num_tokens + kv.opening.num_slots == c.prompt_tokens
        for a, b, c in zip(by_kv, blocks, by_text)
    )


@pytest.mark.slow
@requires_embedded_model
def test_embedded_default_kv_read_equals_text_read():
    from lychee_memory import LycheeMemory

    engine = LycheeMemory.from_pretrained("smollm2-135m", show_progress=False, read_mode="kv")
    bank = engine.ingest([FACTS_DOCUMENT * 3])
    kv_logits, text_logits, kv_tokens, text_tokens = _kv_and_text_logits(engine, bank, 0)
    assert kv_tokens == text_tokens
    torch.testing.assert_close(kv_logits, text_logits, rtol=1e-3, atol=2e-3)
    assert torch.equal(kv_logits.argmax(dim=-1), text_logits.argmax(dim=-1))
