"""Batched decoding after (optional) memory-block prefixes: greedy by default, sampling on request.

Each row stops at its own stop token or at ``max_new_tokens``; text can be streamed per row as it is
decoded, holding back incomplete UTF-8 sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .kv_prefix import PromptRow, decoder_forward, logits_of, prefill
from .model_loading import LoadedModel

TokenCallback = Callable[[int, str], None]


@dataclass(frozen=True)
class DecodingSettings:
    """How to pick tokens and when to stop."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Generation:
    """One row's output."""

    token_ids: list[int]
    text: str
    stopped: bool  # True when a stop token ended it, False when it hit max_new_tokens
    prompt_tokens: int


class _Detokenizer:
    """Incremental decoding of one row, emitting only complete characters."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd"):
            return ""  # a multi-byte character is still incomplete
        delta, self.emitted = text[self.emitted :], len(text)
        return delta

    def flush(self) -> str:
        """Whatever is still held back once the row is finished."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        delta, self.emitted = text[self.emitted :], len(text)
        return delta


def _choose_tokens(logits: torch.Tensor, settings: DecodingSettings, generator: torch.Generator | None) -> torch.Tensor:
    if settings.temperature <= 0.0:
        return logits.argmax(dim=-1)
    probabilities = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_probs, order = probabilities.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(dim=-1) - sorted_probs < settings.top_p
        sorted_probs = sorted_probs * keep
        probabilities = torch.zeros_like(probabilities).scatter(-1, order, sorted_probs)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


class DecodeStream:
    """Iterate to get ``(row, text piece)`` as tokens are decoded; ``results`` holds every row's output after."""

    def __init__(self, loaded: LoadedModel, rows: list[PromptRow], settings: DecodingSettings):
        self.loaded, self.rows, self.settings = loaded, rows, settings
        self.results: list[Generation] | None = None

    def __iter__(self) -> Iterator[tuple[int, str]]:
        with torch.inference_mode():
            yield from self._decode()

    def _decode(self) -> Iterator[tuple[int, str]]:
        loaded, settings = self.loaded, self.settings
        stop_ids = torch.tensor(loaded.stop_token_ids, device=loaded.device)
        batch, hidden = prefill(loaded, self.rows, extra_capacity=settings.max_new_tokens)
        logits = logits_of(loaded, hidden[:, -1])
        generator = None
        if settings.temperature > 0.0 and settings.seed is not None:
            generator = torch.Generator(device=loaded.device).manual_seed(settings.seed)
        size = len(self.rows)
        finished = torch.zeros(size, dtype=torch.bool, device=loaded.device)
        stopped = [False] * size
        outputs: list[list[int]] = [[] for _ in range(size)]
        detokenizers = [_Detokenizer(loaded.tokenizer) for _ in range(size)]
        kv_valid, positions = batch.kv_valid, batch.next_positions.clone()
        pad = torch.full((size,), loaded.tokenizer.pad_token_id, device=loaded.device)
        for step in range(settings.max_new_tokens):
            tokens = _choose_tokens(logits, settings, generator)
            is_stop = torch.isin(tokens, stop_ids)
            for row in (~finished).nonzero().flatten().tolist():
                if bool(is_stop[row]):
                    stopped[row] = True
                    continue
                token = int(tokens[row])
                outputs[row].append(token)
                piece = detokenizers[row].push(token)
                if piece:
                    yield row, piece
            finished |= is_stop
            if bool(finished.all()) or step == settings.max_new_tokens - 1:
                break
            tokens = torch.where(finished, pad, tokens)
            kv_valid = torch.cat([kv_valid, torch.ones(size, 1, dtype=torch.bool, device=loaded.device)], dim=1)
            hidden = decoder_forward(loaded, tokens[:, None], positions[:, None], kv_valid, batch.cache)
            positions = positions + 1
            logits = logits_of(loaded, hidden[:, -1])
        for row, detokenizer in enumerate(detokenizers):
            if piece := detokenizer.flush():
                yield row, piece
        self.results = [
            Generation(
                token_ids=outputs[row],
                text=loaded.tokenizer.decode(outputs[row], skip_special_tokens=True).strip(),
                stopped=stopped[row],
                prompt_tokens=batch.prompt_lengths[row],
            )
            for row in range(size)
        ]


def generate(
    loaded: LoadedModel,
    rows: list[PromptRow],
    settings: DecodingSettings,
    on_text: TokenCallback | None = None,
) -> list[Generation]:
    """Decode a continuation for every row; ``on_text(row, text)`` receives streamed text pieces."""
    stream = DecodeStream(loaded, rows, settings)
    for row, piece in stream:
        if on_text is not None:
            on_text(row, piece)
    assert stream.results is not None
    return stream.results
