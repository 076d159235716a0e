"""Every compressor against independent references: plain forwards, explicit scores, slot counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lychee_memory.chunking import Chunk
from lychee_memory.compressors import AttentionCompressor, KeyNormCompressor, NoCompression, slots_for
from lychee_memory.compressors.beacon import BeaconCompressor
from lychee_memory.compressors.selection import SelectionCompressor
from lychee_memory.prompts import sequence_start_ids

from .conftest import _loaded

SELECTION = {
    "none": lambda: NoCompression(),
    "key_norm": lambda: KeyNormCompressor(ratio=4),
    "attention": lambda: AttentionCompressor(ratio=4, observation_window=8),
}


def make_chunk(token_ids: list[int], document_id: str = "doc") -> Chunk:
    return Chunk(0, document_id, tuple(token_ids), 0, len(token_ids), 0, len(token_ids), "x" * len(token_ids))


def random_tokens(count: int, seed: int, vocab: int = 300) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (count,), generator=generator).tolist()


def sequence(loaded, token_ids: list[int]) -> list[int]:
    """The chunk as the tokenizer would start a sequence with it (a BOS first, where the tokenizer has one)."""
    return sequence_start_ids(loaded.tokenizer) + list(token_ids)


def plain_forward_kv(loaded, token_ids: list[int]):
    """Keys and values of an ordinary forward over the chunk's sequence: [layers, kv_heads, positions, head_dim]."""
    with torch.no_grad():
        output = loaded.model(torch.tensor([sequence(loaded, token_ids)]), use_cache=True)
    cache = output.past_key_values
    return torch.stack([layer.keys[0] for layer in cache.layers]), torch.stack(
        [layer.values[0] for layer in cache.layers]
    )


def source_positions(kept_keys: torch.Tensor, raw_keys: torch.Tensor) -> torch.Tensor:
    """The raw position each kept key [S, D] came from, found by matching it against the raw keys [T, D]."""
    distances = (kept_keys.float()[:, None] - raw_keys.float()[None]).abs().amax(dim=-1)  # [S, T]
    positions = distances.argmin(dim=-1)
    assert torch.all(distances.gather(1, positions[:, None]) < 1e-5), "every kept key is a raw key"
    return positions


@pytest.mark.parametrize("kind", sorted(SELECTION))
@pytest.mark.parametrize("length", [1, 5, 63, 64])
def test_slot_count_is_ceil_of_length_over_ratio(family, kind, length):
    loaded = _loaded(family)
    compressor = SELECTION[kind]()
    block = compressor.compress(loaded, [make_chunk(random_tokens(length, seed=length))])[0]
    opening = len(sequence_start_ids(loaded.tokenizer))  # a standalone compressor opens with the sequence start
    assert block.num_slots == math.ceil(length / compressor.ratio), "the opening's slots are not in the block"
    assert block.valid.all() and block.valid.shape == (block.num_slots,)
    assert block.next_position == length + opening


def test_none_block_equals_plain_forward(family):
    loaded = _loaded(family)
    tokens = random_tokens(40, seed=1)
    block = NoCompression().compress(loaded, [make_chunk(tokens)])[0]
    keys, values = plain_forward_kv(loaded, tokens)
    opening = len(sequence_start_ids(loaded.tokenizer))
    torch.testing.assert_close(block.keys, keys[:, :, opening:], rtol=0, atol=1e-5)
    torch.testing.assert_close(block.values, values[:, :, opening:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["key_norm", "attention"])
def test_kept_slots_are_the_raw_kv_at_their_positions(family, kind):
    loaded = _loaded(family)
    tokens = random_tokens(50, seed=2)
    block = SELECTION[kind]().compress(loaded, [make_chunk(tokens)])[0]
    keys, values = plain_forward_kv(loaded, tokens)
    opening = len(sequence_start_ids(loaded.tokenizer))
    keys, values = keys[:, :, opening:], values[:, :, opening:]  # the shared opening is not part of a block
    for layer in range(keys.shape[0]):
        for head in range(keys.shape[1]):
            positions = source_positions(block.keys[layer, head], keys[layer, head])
            assert torch.all(positions[1:] > positions[:-1]), "slots are kept in position order"
            torch.testing.assert_close(block.values[layer, head], values[layer, head, positions], rtol=0, atol=1e-5)


def test_key_norm_keeps_the_lowest_norm_keys(family):
    loaded = _loaded(family)
    tokens = random_tokens(48, seed=3)
    block = KeyNormCompressor(ratio=4).compress(loaded, [make_chunk(tokens)])[0]
    keys, _ = plain_forward_kv(loaded, tokens)
    keys = keys[:, :, len(sequence_start_ids(loaded.tokenizer)) :]  # the chunk's keys, after the opening
    scores = -keys.norm(dim=-1)
    expected = scores.topk(12, dim=-1).indices.sort(dim=-1).values
    torch.testing.assert_close(block.keys, keys.gather(2, expected[..., None].expand(-1, -1, -1, keys.shape[-1])))


def test_attention_compressor_matches_eager_attention_weights(family):
    """Scores from an eager forward's attention probabilities (window queries, head-group mean, pooling)."""
    from lychee_memory.testing import build_tiny_model

    loaded = _loaded(family)
    eager, _ = build_tiny_model(family, attention="eager")
    tokens = random_tokens(40, seed=4)
    window, kernel = 8, 5
    block = AttentionCompressor(ratio=4, observation_window=window, pooling_kernel=kernel).compress(
        loaded, [make_chunk(tokens)]
    )[0]
    with torch.no_grad():
        output = eager(torch.tensor([sequence(loaded, tokens)]), output_attentions=True)
    kv_heads = loaded.config.num_key_value_heads
    keys, _ = plain_forward_kv(loaded, tokens)
    opening = len(sequence_start_ids(loaded.tokenizer))
    for layer, probabilities in enumerate(output.attentions):
        tail = probabilities[0, :, -window:, :]  # [H_q, W, P + T]: the queries attend to the opening too
        per_kv_head = tail.view(kv_heads, -1, window, tail.shape[-1]).mean(dim=(1, 2))[:, opening:]
        pooled = F.avg_pool1d(per_kv_head[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]
        expected = pooled.topk(10, dim=-1).indices.sort(dim=-1).values
        kept = keys[layer, :, opening:].gather(1, expected[..., None].expand(-1, -1, keys.shape[-1]))
        torch.testing.assert_close(block.keys[layer], kept, rtol=0, atol=1e-5, msg=f"layer {layer}")


@pytest.mark.parametrize("kind", sorted(SELECTION))
def test_batched_compression_equals_one_chunk_at_a_time(family, kind):
    loaded = _loaded(family)
    chunks = [make_chunk(random_tokens(n, seed=n)) for n in (30, 17, 30, 3)]
    compressor = SELECTION[kind]()
    together = compressor.compress(loaded, chunks)
    for chunk, block in zip(chunks, together, strict=True):
        alone = compressor.compress(loaded, [chunk])[0]
        torch.testing.assert_close(block.keys, alone.keys, rtol=0, atol=1e-5)
        torch.testing.assert_close(block.values, alone.values, rtol=0, atol=1e-5)


def test_beacon_slot_count_spans_windows(family):
    loaded = _loaded(family)
    with pytest.warns(UserWarning, match="untrained"):
        compressor = BeaconCompressor.for_model(loaded, ratio=4, window=16)
    for length in (1, 5, 16, 17, 40):
        block = compressor.compress(loaded, [make_chunk(random_tokens(length, seed=length))])[0]
        assert block.num_slots == slots_for(length, 4) == math.ceil(length / 4)
        assert block.next_position == block.num_slots


def test_compressors_never_mutate_their_input_model(family):
    loaded = _loaded(family)
    before = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    for make in SELECTION.values():
        make().compress(loaded, [make_chunk(random_tokens(20, seed=9))])
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(before[name], tensor), name


def test_selection_compressors_share_one_interface():
    for make in SELECTION.values():
        compressor = make()
        assert isinstance(compressor, SelectionCompressor)
        assert compressor.describe()["kind"] == compressor.name
