"""Batched decoding after (optional) memory-block prefixes: greedy by default, sampling on request.

Each row stops at its own stop token or at ``max_new_tokens`` and leaves the batch when it does (its KV rows are
sliced away), so a finished row costs no more forward passes. Text can be streamed per row as it is decoded,
holding back only what a later stop may still cut: incomplete UTF-8 sequences, a possible start of a stop string,
and the tokens a repetition cut could still remove. Model calls run under ``torch.inference_mode`` one step at a
time, never across a ``yield``: the consumer's own code between pieces runs outside it.
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
    notices stop strings and degenerate repetition loops.

    The loop rule: when the last ``repeat_ngram`` tokens repeat an n-gram that ended earlier, the text ends before
    that repeat began. A cut at a later length M removes ``ids[M - n:]``, and needs ``ids[M - n:]`` to equal an
    n-gram starting before ``M - n``; so of the tokens decoded so far it can only remove a suffix that already
    occurred earlier (at most n - 1 tokens long). Everything before the longest such suffix is final and streams
    now; the cut itself, and so every text, is the same as when the whole last n tokens were held back.
    """

    def __init__(self, tokenizer, stop_strings: tuple[str, ...], repeat_ngram: int):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.repeat_ngram = repeat_ngram
        self.ids: list[int] = []
        self.emitted = 0
        self.final_text: str | None = None
        # Every run of 1..repeat_ngram tokens that ended before the newest token (the n-grams the rule checks, and
        # the shorter runs that tell which suffix a later cut could still remove).
        self._seen_runs: set[tuple[int, ...]] = set()
        self._open = 0  # length of the longest suffix of ids that occurred earlier: a later loop cut may remove it

    @property
    def done(self) -> bool:
        return self.final_text is not None

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).lstrip()

    def _track_runs(self) -> None:
        """Update the longest suffix seen earlier (it grows by at most one token a step), then record this step's runs."""
        ids, n = self.ids, self.repeat_ngram
        longest = min(self._open + 1, n - 1, len(ids) - 1)
        while longest > 0 and tuple(ids[-longest:]) not in self._seen_runs:
            longest -= 1
        self._open = longest
        self._seen_runs.update(tuple(ids[-size:]) for size in range(1, min(n, len(ids)) + 1))

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self.repeat_ngram:
            if len(self.ids) >= self.repeat_ngram and tuple(self.ids[-self.repeat_ngram :]) in self._seen_runs:
                # The model is looping: keep the text before the repeated span began.
                self.final_text = self._text(self.ids[: -self.repeat_ngram])
                return self._emit_final()
            self._track_runs()
        text = self._text(self.ids)
        for stop in self.stop_strings:
            found = text.find(stop)
            if found >= 0:
                self.final_text = text[:found]
                return self._emit_final()
        safe = len(text)
        if text.endswith("\ufffd"):
            return ""  # a multi-byte character is still incomplete
        if self._open:  # a later loop cut may still remove the last _open tokens: release only the text before them
            kept = self._text(self.ids[: -self._open])
            safe, end = 0, min(len(kept), len(text))
            while safe < end and kept[safe] == text[safe]:  # never a half character that the fuller text completes
                safe += 1
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
        stopped = [False] * size
        outputs: list[list[int]] = [[] for _ in range(size)]
        decoders = [_RowDecoder(loaded.tokenizer, settings.stop_strings, settings.repeat_ngram) for _ in range(size)]
        kv_valid, positions = batch.kv_valid, batch.next_positions.clone()
        active = list(range(size))  # the row each line of the batch tensors (and of the cache) belongs to
        for step in range(settings.max_new_tokens):
            pieces: list[tuple[int, str]] = []
            tokens = _choose_tokens(logits, settings, generator)
            keep: list[int] = []  # lines whose row goes on
            for line, (row, token, is_stop) in enumerate(
                zip(active, tokens.tolist(), torch.isin(tokens, stop_ids).tolist(), strict=True)
            ):
                if is_stop:
                    stopped[row] = True
                    continue
                outputs[row].append(token)
                piece = decoders[row].push(token)
                if piece:
                    pieces.append((row, piece))
                if decoders[row].done:
                    stopped[row] = True
                    continue
                keep.append(line)
            yield pieces
            if not keep or step == settings.max_new_tokens - 1:
                break
            if len(keep) < len(active):  # finished rows leave the batch: their lines of every tensor and KV layer
                lines = torch.tensor(keep, device=loaded.device)
                tokens, kv_valid, positions = tokens[lines], kv_valid[lines], positions[lines]
                batch.cache.batch_select_indices(lines)
                active = [active[line] for line in keep]
            kv_valid = torch.cat([kv_valid, kv_valid.new_ones(len(active), 1)], dim=1)
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
