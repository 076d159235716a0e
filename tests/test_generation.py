"""Decoding: the stream releases text as soon as no stop can cut it (and joins to the unstreamed text), and finished
rows leave the batch without changing any row's tokens.

A scripted model (its next token read from a script chosen by the row's prompt, through the KV cache) makes loops of
every period and rows that end at chosen steps; the tiny random models check that dropping rows keeps each row's
greedy tokens equal to decoding it alone.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from lychee_memory import generation
from lychee_memory.compressors import KeyNormCompressor
from lychee_memory.generation import DecodeStream, DecodingSettings, _RowDecoder, generate
from lychee_memory.kv_prefix import PromptRow
from lychee_memory.model_loading import LoadedModel, ResolvedSpec
from lychee_memory.testing import build_tiny_tokenizer

from .conftest import _loaded
from .test_compressors import make_chunk, random_tokens

TOKENIZER = build_tiny_tokenizer()
EOS = TOKENIZER.eos_token_id
# Tokens that decode to printable ASCII without surrounding whitespace: texts of any order of them never end in a
# space, so the stripped answer and the streamed pieces are the same string.
WORDS = [
    token
    for token in range(len(TOKENIZER))
    if (text := TOKENIZER.decode([token])).isascii() and text.strip() == text and text.isprintable() and text
    if token not in TOKENIZER.all_special_ids
]


class ScriptedModel(torch.nn.Module):
    """A one-layer "model" whose i-th generated token is ``scripts[s][i]`` (then EOS), where ``s`` is the row's
    one-token prompt. It stores token ids as its KV and reads the script and the step back from the cache, so a row
    given another row's cache lines (or a stale length) decodes another script."""

    def __init__(self, scripts: dict[int, list[int]]):
        super().__init__()
        self.scripts = scripts
        self.config = SimpleNamespace(
            num_hidden_layers=1,
            num_key_value_heads=1,
            num_attention_heads=1,
            head_dim=1,
            hidden_size=1,
            model_type="scripted",
            max_position_embeddings=4096,
        )
        self.generation_config = SimpleNamespace(eos_token_id=EOS)
        self.batch_sizes: list[int] = []  # rows of every forward, prefill first

    def get_decoder(self) -> ScriptedModel:
        return self

    def get_output_embeddings(self) -> torch.nn.Module:
        return torch.nn.Identity()

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True):
        self.batch_sizes.append(input_ids.shape[0])
        states = input_ids.to(torch.float32)[:, None, :, None]
        keys, _ = past_key_values.layers[0].update(states, states)
        history = keys[:, 0, :, 0].long()  # [rows, 1 + tokens generated]: the script id, then the row's tokens
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], len(TOKENIZER))
        for line in range(input_ids.shape[0]):
            script = self.scripts[int(history[line, 0])]
            produced = history[line, 1:].tolist()  # past the script's end: whatever a finished row is fed
            assert produced[: len(script)] == script[: len(produced)], "a row's cache lines hold another row's tokens"
            logits[line, -1, script[len(produced)] if len(produced) < len(script) else EOS] = 1.0
        return SimpleNamespace(last_hidden_state=logits)


def scripted(scripts: list[list[int]]) -> tuple[LoadedModel, list[PromptRow]]:
    """A loaded scripted model and one row per script (prompt = the script's id)."""
    model = ScriptedModel({WORDS[index]: script for index, script in enumerate(scripts)})
    loaded = LoadedModel(
        model=model,
        tokenizer=TOKENIZER,
        resolved=ResolvedSpec(spec="scripted", kind="tiny", path=None),
        device=torch.device("cpu"),
        dtype=torch.float32,
        attention="sdpa",
        load_seconds=0.0,
    )
    return loaded, [PromptRow([WORDS[index]]) for index in range(len(scripts))]


def reference_cut(ids: list[int], n: int) -> list[int]:
    """The loop rule written out: at the first length M whose last n tokens equal an n-gram that ended before M,
    keep ids[:M - n]; no such M keeps everything."""
    for end in range(n, len(ids) + 1):
        gram = ids[end - n : end]
        if any(ids[start : start + n] == gram for start in range(end - n)):
            return ids[: end - n]
    return ids


def reference_text(ids: list[int]) -> str:
    return TOKENIZER.decode(ids, skip_special_tokens=True).strip()


NATURAL = TOKENIZER("The keeper wrote the code 58213 in the logbook.", add_special_tokens=False)
NATURAL = NATURAL.input_ids


def loop_script(period: int, seed: int) -> list[int]:
    """Six tokens, then a cycle of ``period`` tokens repeated well past any 16-gram."""
    rng = random.Random(seed)
    words = rng.sample(WORDS, 6 + period)
    return words[:6] + words[6:] * (40 // period + 2)


@pytest.mark.parametrize("period", range(1, 21))
def test_looping_stream_joins_to_the_cut_answer(period: int) -> None:
    script = loop_script(period, seed=period)
    loaded, rows = scripted([script, NATURAL])
    pieces: list[list[str]] = [[], []]
    settings = DecodingSettings(max_new_tokens=64, repeat_ngram=16)
    results = generate(loaded, rows, settings, lambda row, piece: pieces[row].append(piece))
    cut = reference_cut(script[:64], 16)
    assert len(cut) == 6 + period, "the cut keeps the lead-in and one cycle"
    assert results[0].stopped and results[0].token_ids == cut + script[len(cut) : len(cut) + 16]
    assert results[0].text == reference_text(cut) == "".join(pieces[0])
    assert results[1].text == reference_text(NATURAL) == "".join(pieces[1])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16])
def test_random_sequences_stream_only_what_the_cut_keeps(n: int) -> None:
    """Small alphabets loop at every offset: what has streamed is always a prefix of the final text, it is exactly
    the text before the longest suffix that occurred earlier (the most a later cut can remove), and it joins to the
    reference cut."""
    rng = random.Random(n)
    for trial in range(60):
        alphabet = rng.sample(WORDS, rng.randint(2, 6))
        ids = [rng.choice(alphabet) for _ in range(40)]
        final = reference_cut(ids, n)
        decoder = _RowDecoder(TOKENIZER, (), repeat_ngram=n)
        streamed = ""
        for length, token in enumerate(ids, start=1):
            streamed += decoder.push(token)
            if decoder.done:
                break
            pushed = ids[:length]
            removable = max(
                (
                    k
                    for k in range(1, min(n, length))
                    if any(pushed[j : j + k] == pushed[-k:] for j in range(length - k))
                ),
                default=0,
            )
            assert streamed == reference_text(pushed[: length - removable]), (trial, length)
            assert reference_text(final).startswith(streamed)
        streamed += decoder.flush()
        assert decoder.ids[: len(final)] == final
        assert streamed == reference_text(final), trial


def test_first_piece_streams_before_the_last_token_when_nothing_loops() -> None:
    """A 16-token answer with repeat_ngram 16: the first piece comes after its first tokens, not with the last."""
    answer = NATURAL
    assert len(answer) <= 16 and reference_cut(answer, 16) == answer
    loaded, rows = scripted([answer])
    stream = DecodeStream(loaded, rows, DecodingSettings(max_new_tokens=32, repeat_ngram=16))
    forwards_at_first_piece = None
    pieces = []
    for _, piece in stream:
        if forwards_at_first_piece is None:
            forwards_at_first_piece = len(loaded.model.batch_sizes)
        pieces.append(piece)
    assert stream.results is not None
    assert "".join(pieces) == stream.results[0].text == reference_text(answer)
    assert forwards_at_first_piece is not None and forwards_at_first_piece <= 2, "streamed after the first token"
    assert len(pieces) >= len(answer) // 2, "text comes token by token, not at the end"


def test_finished_rows_leave_the_batch() -> None:
    lengths = [2, 9, 5, 12]
    scripts = [random.Random(length).sample(WORDS, length) for length in lengths]
    loaded, rows = scripted(scripts)
    together = generate(loaded, rows, DecodingSettings(max_new_tokens=20))
    expected = [len(rows)] + [sum(length > step for length in lengths) for step in range(max(lengths))]
    assert loaded.model.batch_sizes == expected, "one forward per step, over the rows still going"
    for row, script in zip(rows, scripts, strict=True):
        loaded.model.batch_sizes.clear()
        (alone,) = generate(loaded, [row], DecodingSettings(max_new_tokens=20))
        assert alone.token_ids == script
    assert [result.token_ids for result in together] == scripts and all(result.stopped for result in together)


def test_dropping_finished_rows_keeps_each_row_equal_to_decoding_it_alone(family, monkeypatch) -> None:
    """Rows of different prompt lengths, blocks and none, ending at different steps (a 3-token loop rule): greedy
    token ids equal to each row alone, while the batch shrinks as rows finish."""
    loaded = _loaded(family)
    blocks = KeyNormCompressor(ratio=4).compress(loaded, [make_chunk(random_tokens(n, seed=n)) for n in (40, 13)])
    rows = [
        PromptRow(random_tokens(9, seed=3), blocks[0]),
        PromptRow(random_tokens(4, seed=4), blocks[1]),
        PromptRow(random_tokens(6, seed=5), None),
        PromptRow(random_tokens(2, seed=6), None),
    ]
    settings = DecodingSettings(max_new_tokens=24, repeat_ngram=3)
    batch_sizes: list[int] = []
    forward = generation.decoder_forward

    def counting(loaded, input_ids, *args):
        batch_sizes.append(input_ids.shape[0])
        return forward(loaded, input_ids, *args)

    monkeypatch.setattr(generation, "decoder_forward", counting)
    together = generate(loaded, rows, settings)
    lengths = [len(result.token_ids) for result in together]
    assert len(set(lengths)) >= 2, "the rows end at different steps"
    assert batch_sizes[-1] < len(rows) and batch_sizes == sorted(batch_sizes, reverse=True)
    for row, result in zip(rows, together, strict=True):
        (alone,) = generate(loaded, [row], settings)
        assert alone.token_ids == result.token_ids and alone.text == result.text
