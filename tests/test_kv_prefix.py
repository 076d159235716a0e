"""Reading a block as a KV prefix: equal to the plain forward it replaces, padding-invariant, read-only."""

from __future__ import annotations

import torch

from lychee_memory.compressors import KeyNormCompressor, NoCompression
from lychee_memory.generation import DecodingSettings, generate
from lychee_memory.kv_prefix import PromptRow, prefill

from .conftest import _loaded
from .test_compressors import make_chunk, random_tokens


def test_prompt_after_raw_block_equals_one_long_forward(family):
    loaded = _loaded(family)
    chunk, prompt = random_tokens(30, seed=1), random_tokens(7, seed=2)
    block = NoCompression().compress(loaded, [make_chunk(chunk)])[0]
    _, hidden = prefill(loaded, [PromptRow(prompt, block)])
    with torch.no_grad():
        expected = loaded.model.get_decoder()(torch.tensor([chunk + prompt])).last_hidden_state[:, -len(prompt) :]
    torch.testing.assert_close(hidden, expected, rtol=1e-4, atol=1e-5)


def test_mixed_batch_equals_each_row_alone(family):
    """Different blocks, different prompt lengths and a block-free row in one padded batch."""
    loaded = _loaded(family)
    blocks = KeyNormCompressor(ratio=4).compress(loaded, [make_chunk(random_tokens(n, seed=n)) for n in (40, 13)])
    rows = [
        PromptRow(random_tokens(9, seed=3), blocks[0]),
        PromptRow(random_tokens(4, seed=4), blocks[1]),
        PromptRow(random_tokens(6, seed=5), None),
    ]
    _, together = prefill(loaded, rows)
    for index, row in enumerate(rows):
        _, alone = prefill(loaded, [row])
        length = len(row.prompt_ids)
        torch.testing.assert_close(together[index, -length:], alone[0], rtol=1e-4, atol=1e-5)
        assert torch.isfinite(together[index]).all(), "padding must not leak NaN into rows"


def test_blocks_are_not_modified_by_reading_them(family):
    loaded = _loaded(family)
    block = NoCompression().compress(loaded, [make_chunk(random_tokens(20, seed=6))])[0]
    keys, values = block.keys.clone(), block.values.clone()
    generate(loaded, [PromptRow(random_tokens(5, seed=7), block)] * 2, DecodingSettings(max_new_tokens=4))
    prefill(loaded, [PromptRow(random_tokens(5, seed=8), block)])
    assert torch.equal(block.keys, keys) and torch.equal(block.values, values)


def test_greedy_generation_after_block_matches_transformers_generate(family):
    loaded = _loaded(family)
    chunk, prompt = random_tokens(25, seed=10), random_tokens(6, seed=11)
    block = NoCompression().compress(loaded, [make_chunk(chunk)])[0]
    ours = generate(loaded, [PromptRow(prompt, block)], DecodingSettings(max_new_tokens=10))[0]
    with torch.no_grad():
        reference = loaded.model.generate(
            torch.tensor([chunk + prompt]),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=loaded.stop_token_ids,
            pad_token_id=0,
        )[0, len(chunk) + len(prompt) :].tolist()
    stop = set(loaded.stop_token_ids)
    expected = []
    for token in reference:
        if token in stop:
            break
        expected.append(token)
    assert ours.token_ids == expected


def test_batched_generation_equals_rows_alone(family):
    loaded = _loaded(family)
    block = KeyNormCompressor(ratio=4).compress(loaded, [make_chunk(random_tokens(33, seed=12))])[0]
    rows = [PromptRow(random_tokens(8, seed=13), block), PromptRow(random_tokens(3, seed=14), None)]
    settings = DecodingSettings(max_new_tokens=8)
    together = generate(loaded, rows, settings)
    for row, result in zip(rows, together, strict=True):
        assert generate(loaded, [row], settings)[0].token_ids == result.token_ids


def test_streamed_pieces_join_to_the_final_text(family):
    loaded = _loaded(family)
    pieces: list[str] = []
    result = generate(
        loaded,
        [PromptRow(random_tokens(5, seed=15))],
        DecodingSettings(max_new_tokens=12),
        lambda _, p: pieces.append(p),
    )[0]
    assert "".join(pieces).strip() == result.text


def test_seeded_sampling_is_reproducible(family):
    loaded = _loaded(family)
    rows = [PromptRow(random_tokens(5, seed=16))]
    settings = DecodingSettings(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=123)
    assert generate(loaded, rows, settings)[0].token_ids == generate(loaded, rows, settings)[0].token_ids


def test_stop_strings_end_the_text_and_never_stream(family):
    loaded = _loaded(family)
    rows = [PromptRow(random_tokens(5, seed=17))]
    free = generate(loaded, rows, DecodingSettings(max_new_tokens=24))[0].text
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    assert len(stop) == 3
    pieces: list[str] = []
    cut = generate(
        loaded, rows, DecodingSettings(max_new_tokens=24, stop_strings=(stop,)), lambda _, p: pieces.append(p)
    )[0]
    assert cut.stopped and cut.text == free[: free.find(stop)].strip()
    assert stop not in "".join(pieces) and "".join(pieces).strip() == cut.text


def test_repetition_loop_is_cut_before_the_repeat():
    from lychee_memory.generation import _RowDecoder
    from lychee_memory.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    loop = tokenizer("the keeper, the code, ", add_special_tokens=False).input_ids
    decoder = _RowDecoder(tokenizer, (), repeat_ngram=4)
    streamed = ""
    for token in loop * 3:
        streamed += decoder.push(token)
        if decoder.done:
            break
    assert decoder.done and len(decoder.ids) == len(loop) + 4
    assert decoder.final_text == tokenizer.decode(loop, skip_special_tokens=True).lstrip()
    assert streamed + decoder.flush() == decoder.final_text
