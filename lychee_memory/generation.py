"""Batched decoding after (optional) memory-block prefixes: greedy by default, sampling on request.

Each row stops at its own stop token or at ``max_new_tokens``; text can be streamed per row as it is
decoded, holding back incomplete UTF-8 sequences. Model calls run under ``torch.inference_mode`` one step
at a time, never across a ``yield``: the consumer's own code between pieces runs outside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .config import ReasonerSettings
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
    stop_strings: tuple[str, ...] = ()  # the text ends before the first of these
    repeat_ngram: int = 0  # stop when the last n tokens repeat an earlier n-gram (0 = off)

    @classmethod
    def for_reasoner(cls, settings: ReasonerSettings, max_new_tokens: int) -> DecodingSettings:
        """The reasoner's sampling and stop settings with a budget: memory updates, answers and baselines alike."""
        return cls(
            max_new_tokens=max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=settings.seed,
            stop_strings=tuple(settings.stop_strings),
            repeat_ngram=settings.repeat_ngram,
        )


@dataclass
class Generation:
    """One row's output."""

    token_ids: list[int]
    text: str
    stopped: bool  # True when a stop token, stop string or repetition ended it; False at max_new_tokens
    prompt_tokens: int


class _RowDecoder:
    """Incremental text of one row: emits complete characters, never any part of a stop string, and
    notices stop strings and degenerate repetition loops."""

    def __init__(self, tokenizer, stop_strings: tuple[str, ...], repeat_ngram: int):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.repeat_ngram = repeat_ngram
        self.ids: list[int] = []
        self.emitted = 0
        self.final_text: str | None = None
        self._seen_ngrams: set[tuple[int, ...]] = set()

    @property
    def done(self) -> bool:
        return self.final_text is not None

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).lstrip()

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self.repeat_ngram and len(self.ids) >= self.repeat_ngram:
            ngram = tuple(self.ids[-self.repeat_ngram :])
            if ngram in self._seen_ngrams:
                # The model is looping: keep the text before the repeated span began.
                self.final_text = self._text(self.ids[: -self.repeat_ngram])
                return self._emit_final()
            self._seen_ngrams.add(ngram)
        text = self._text(self.ids)
        for stop in self.stop_strings:
            found = text.find(stop)
            if found >= 0:
                self.final_text = text[:found]
                return self._emit_final()
        safe = len(text)
        if text.endswith("\ufffd"):
            return ""  # a multi-byte character is still incomplete
        if self.repeat_ngram:  # the last n tokens may yet turn out to start a loop: hold them back
            safe = len(self._text(self.ids[: -self.repeat_ngram])) if len(self.ids) > self.repeat_ngram else 0
        for stop in self.stop_strings:  # hold back a tail that may be the start of a stop string
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    safe = min(safe, len(text) - size)
                    break
        if safe <= self.emitted:
            return ""
        delta, self.emitted = text[self.emitted : safe], safe
        return delta

    def _emit_final(self) -> str:
        assert self.final_text is not None
        delta = self.final_text[self.emitted :]
        self.emitted = max(self.emitted, len(self.final_text))
        return delta

    def flush(self) -> str:
        """Whatever is still held back once the row is finished."""
        if self.final_text is None:
            self.final_text = self._text(self.ids)
        return self._emit_final()


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
    """Iterate to get ``(row, text piece)`` as tokens are decoded; ``results`` holds every row's output after.

    Each decoding step runs under ``torch.inference_mode`` and the pieces it produced are yielded after the
    step left it, so code between pieces runs with autograd as the caller set it.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        rows: list[PromptRow],
        settings: DecodingSettings,
        around_step: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ):
        self.loaded, self.rows, self.settings = loaded, rows, settings
        self.around_step = around_step  # entered around each decoding step (e.g. the reasoner's adapter on)
        self.results: list[Generation] | None = None

    def __iter__(self) -> Iterator[tuple[int, str]]:
        steps = self._steps()
        while True:
            with torch.inference_mode(), self.around_step():
                pieces = next(steps, None)
            if pieces is None:
                return
            yield from pieces

    def _steps(self) -> Iterator[list[tuple[int, str]]]:
        """One list of (row, piece) per decoding step; the caller advances it inside inference mode."""
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
        decoders = [_RowDecoder(loaded.tokenizer, settings.stop_strings, settings.repeat_ngram) for _ in range(size)]
        kv_valid, positions = batch.kv_valid, batch.next_positions.clone()
        pad = torch.full((size,), loaded.tokenizer.pad_token_id, device=loaded.device)
        for step in range(settings.max_new_tokens):
            pieces: list[tuple[int, str]] = []
            tokens = _choose_tokens(logits, settings, generator)
            is_stop = torch.isin(tokens, stop_ids)
            for row in (~finished).nonzero().flatten().tolist():
                if bool(is_stop[row]):
                    stopped[row] = True
                    continue
                token = int(tokens[row])
                outputs[row].append(token)
                piece = decoders[row].push(token)
                if piece:
                    pieces.append((row, piece))
                if decoders[row].done:
                    stopped[row] = True
                    is_stop[row] = True
            finished |= is_stop
            if bool(finished.all()) or step == settings.max_new_tokens - 1:
                yield pieces
                break
            yield pieces
            tokens = torch.where(finished, pad, tokens)
            kv_valid = torch.cat([kv_valid, torch.ones(size, 1, dtype=torch.bool, device=loaded.device)], dim=1)
            hidden = decoder_forward(loaded, tokens[:, None], positions[:, None], kv_valid, batch.cache)
            positions = positions + 1
            logits = logits_of(loaded, hidden[:, -1])
        yield [(row, piece) for row, decoder in enumerate(decoders) if (piece := decoder.flush())]
        self.results = [
            Generation(
                token_ids=outputs[row],
                text=(decoders[row].final_text or "").strip(),
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
