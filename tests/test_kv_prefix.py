"""Reading a block as a KV prefix: equal to the plain forward it replaces, padding-invariant, read-only.

The growable cache layer is checked against transformers' own ``DynamicLayer`` driven through the same
operations: the independent reference for what every method of the layer contract must do.
"""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import CacheLayerMixin, DynamicLayer

from lychee_memory.compressors import KeyNormCompressor, NoCompression
from lychee_memory.generation import DecodingSettings, generate
from lychee_memory.kv_prefix import GrowableLayer, PrefixCache, PromptRow, decoder_forward, prefill

from .conftest import _loaded
from .test_compressors import make_chunk, random_tokens, sequence


def test_prompt_after_raw_block_equals_one_long_forward(family):
    loaded = _loaded(family)
    chunk, prompt = random_tokens(30, seed=1), random_tokens(7, seed=2)
    compressor = NoCompression()
    block = compressor.compress(loaded, [make_chunk(chunk)])[0]
    _, hidden = prefill(loaded, [PromptRow(prompt, block, compressor.opening)])
    whole = sequence(loaded, chunk) + prompt  # the block was encoded after its opening: a BOS, if any
    with torch.no_grad():
        expected = loaded.model.get_decoder()(torch.tensor([whole])).last_hidden_state[:, -len(prompt) :]
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
    compressor = NoCompression()
    block = compressor.compress(loaded, [make_chunk(chunk)])[0]
    ours = generate(loaded, [PromptRow(prompt, block, compressor.opening)], DecodingSettings(max_new_tokens=10))[0]
    whole = sequence(loaded, chunk) + prompt
    with torch.no_grad():
        reference = loaded.model.generate(
            torch.tensor([whole]),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=loaded.stop_token_ids,
            pad_token_id=0,
        )[0, len(whole) :].tolist()
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


# ---------------------------------------------------------------------------------------------------
# GrowableLayer against transformers' DynamicLayer

KV_HEADS, HEAD_DIM = 2, 4


def _states(batch: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(batch, KV_HEADS, tokens, HEAD_DIM, generator=generator)
    return keys, torch.randn(batch, KV_HEADS, tokens, HEAD_DIM, generator=generator)


def _layer_pair(batch: int, prefix: int, capacity: int) -> tuple[GrowableLayer, DynamicLayer]:
    """A GrowableLayer whose buffer holds ``prefix`` filled slots (the rest garbage), and the DynamicLayer it mimics."""
    keys, values = _states(batch, capacity, seed=0)
    growable = GrowableLayer(keys.clone(), values.clone(), prefix)
    dynamic = DynamicLayer()
    if prefix:
        dynamic.update(keys[:, :, :prefix].clone(), values[:, :, :prefix].clone())
    return growable, dynamic


def _assert_same_state(growable: GrowableLayer, dynamic: DynamicLayer, step: str) -> None:
    length = dynamic.get_seq_length()
    assert growable.get_seq_length() == length, step
    for query_length in (1, 3):
        assert growable.get_mask_sizes(query_length) == dynamic.get_mask_sizes(query_length), step
    assert growable.get_max_length() == dynamic.get_max_length() == -1, step
    if length:
        assert torch.equal(growable.keys, dynamic.keys), f"keys differ after {step}"
        assert torch.equal(growable.values, dynamic.values), f"values differ after {step}"
    else:
        assert growable.keys.shape[-2] == growable.values.shape[-2] == 0, step


# Each script: (method, args); ("update", batch, tokens) appends fresh states of that shape to both layers.
LAYER_SCRIPTS: dict[str, list[tuple]] = {
    "appends_past_capacity": [("update", 3, 2), ("update", 3, 4), ("update", 3, 1)],
    "crop_then_update": [("crop", -2), ("update", 3, 3), ("crop", 0), ("crop", -10), ("update", 3, 2)],
    "batch_select_indices_then_update": [("batch_select_indices", torch.tensor([2, 0])), ("update", 2, 3)],
    "batch_select_one_row_then_update": [("batch_select_indices", torch.tensor([1])), ("update", 1, 4)],
    "batch_select_bool_mask_then_update": [
        ("batch_select_indices", torch.tensor([True, False, True])),
        ("update", 2, 2),
    ],
    "batch_repeat_interleave_then_update": [("batch_repeat_interleave", 2), ("update", 6, 2), ("update", 6, 5)],
    "reorder_cache_then_update": [("reorder_cache", torch.tensor([1, 2, 0])), ("update", 3, 2)],
    "reset_then_update": [("update", 3, 1), ("reset",), ("update", 3, 3), ("update", 3, 9)],
    "reset_then_another_batch_size": [("reset",), ("update", 2, 3), ("update", 2, 1)],
    "offload_prefetch_then_update": [("offload",), ("prefetch",), ("update", 3, 2)],
    "crop_everything_then_update": [("crop", -5), ("batch_select_indices", torch.tensor([0])), ("update", 3, 2)],
}


@pytest.mark.parametrize("prefix", [5, 0], ids=["prefix_5", "empty_prefix"])
@pytest.mark.parametrize("script", list(LAYER_SCRIPTS))
def test_growable_layer_follows_dynamic_layer(script: str, prefix: int) -> None:
    growable, dynamic = _layer_pair(batch=3, prefix=prefix, capacity=8)
    _assert_same_state(growable, dynamic, "construction")
    for index, (method, *args) in enumerate(LAYER_SCRIPTS[script]):
        step = f"step {index}: {method}{tuple(args)}"
        if method == "update":
            batch, tokens = args
            keys, values = _states(batch, tokens, seed=100 + index)
            returned = growable.update(keys.clone(), values.clone())
            expected = dynamic.update(keys.clone(), values.clone())
            assert all(torch.equal(a, b) for a, b in zip(returned, expected, strict=True)), step
        else:
            getattr(growable, method)(*args)
            getattr(dynamic, method)(*args)
        _assert_same_state(growable, dynamic, step)


def test_growable_layer_rejects_what_dynamic_layer_rejects() -> None:
    growable, dynamic = _layer_pair(batch=2, prefix=4, capacity=6)
    for layer in (growable, dynamic):
        with pytest.raises(ValueError, match="negative"):
            layer.crop(2)
    keys, values = _states(1, 2, seed=1)  # one row after two: would broadcast silently into the buffer
    with pytest.raises(ValueError, match="batch"):
        growable.update(keys, values)
    assert growable.get_seq_length() == 4


def test_growable_layer_implements_the_whole_dynamic_layer_contract_itself() -> None:
    """Nothing of DynamicLayer/CacheLayerMixin is inherited unchanged: each method acts on the buffers."""
    assert issubclass(GrowableLayer, CacheLayerMixin), "transformers' Cache finds attention layers by this class"
    contract = {
        name
        for cls in (DynamicLayer, CacheLayerMixin)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }
    missing = sorted(name for name in contract if name not in vars(GrowableLayer))
    assert not missing, f"GrowableLayer inherits {missing} unchanged"
    assert GrowableLayer.is_croppable and not GrowableLayer.is_sliding


def test_prefix_cache_batch_select_then_decode_equals_the_row_alone(family):
    """Drop a row of a prefilled batch (as beam/contrastive search do) and decode on: same as that row alone."""
    loaded = _loaded(family)
    block = NoCompression().compress(loaded, [make_chunk(random_tokens(12, seed=20))])[0]
    rows = [PromptRow(random_tokens(5, seed=21), block), PromptRow(random_tokens(5, seed=22), block)]
    together, _ = prefill(loaded, rows, extra_capacity=2)
    alone, _ = prefill(loaded, rows[1:], extra_capacity=2)
    assert isinstance(together.cache, PrefixCache)
    together.cache.batch_select_indices(torch.tensor([1]))
    token = torch.tensor([[7]])
    position = together.next_positions[1:, None]
    valid = torch.ones(1, together.kv_valid.shape[1] + 1, dtype=torch.bool)
    with torch.no_grad():
        selected = decoder_forward(loaded, token, position, valid, together.cache)
        expected = decoder_forward(loaded, token, position, valid, alone.cache)
    torch.testing.assert_close(selected, expected, rtol=1e-5, atol=1e-6)
    assert together.cache.get_seq_length() == alone.cache.get_seq_length()
