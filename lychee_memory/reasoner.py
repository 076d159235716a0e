"""The reasoner: rewrites the working memory from one relevant block, and answers from memory alone.

How the scan uses it to change the memory is the memory strategy's business (``working_memory.py``).

Two read modes: ``kv`` puts the block's KV (after the shared opening, for framed blocks) before the update
prompt, so only the prompt is prefilled (the paper; exact for raw KV, and what a trained compressor is for);
``text`` re-encodes the chunk's tokens in the prompt at full fidelity (for training-free compression, which
loses exact names and numbers on small models). On a raw-KV block both feed the model the same tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .blocks import BlockOpening, MemoryBlock
from .config import ReasonerSettings
from .generation import DecodeStream, DecodingSettings, Generation, TokenCallback, generate
from .kv_prefix import PromptRow
from .model_loading import LoadedModel
from .prompts import PromptBuilder
from .reasoner_weights import attach_reasoner


@dataclass(frozen=True)
class UpdateRequest:
    """Rewrite ``memory`` for ``question`` after reading ``block`` (KV mode) or ``chunk_ids`` (text mode)."""

    question: str
    memory: str
    block: MemoryBlock | None = None
    chunk_ids: list[int] | None = None


# observe(scan state, block index, request, generation): hears each memory update of a scan (the RL trainer).
UpdateObserver = Callable[[Any, int, UpdateRequest, Generation], None]


class Reasoner:
    """Writes working memory and answers with the engine's model and prompt templates."""

    def __init__(
        self,
        loaded: LoadedModel,
        prompts: PromptBuilder,
        settings: ReasonerSettings,
        read_mode: str,
        batch_size: int,
        opening: BlockOpening | None = None,
    ):
        if read_mode not in ("kv", "text"):
            raise ValueError(f"read mode must be resolved to 'kv' or 'text', got {read_mode!r}")
        self.loaded = loaded
        self.prompts = prompts
        self.settings = settings
        self.read_mode = read_mode
        self.batch_size = batch_size
        self.opening = opening  # what framed blocks were encoded after, put before them in KV reads
        # The RL-trained LoRA (reasoner_weights.py), on for this reasoner's forwards only; None = the plain backbone.
        self.adapter: Any = (
            attach_reasoner(loaded, settings.weights) if settings.weights not in (None, "none") else None
        )

    def _policy(self) -> contextlib.AbstractContextManager[Any]:
        """The trained adapter switched on for a reasoner forward (a no-op without one)."""
        return self.adapter.active() if self.adapter is not None else contextlib.nullcontext()

    def _decoding(self, max_new_tokens: int) -> DecodingSettings:
        return DecodingSettings.for_reasoner(self.settings, max_new_tokens)

    def update_row(self, request: UpdateRequest) -> PromptRow:
        if self.read_mode == "kv":
            if request.block is None:
                raise ValueError("kv read mode needs the block")
            return PromptRow(
                self.prompts.update_prompt(request.question, request.memory, None), request.block, self.opening
            )
        if request.chunk_ids is None:
            raise ValueError("text read mode needs the chunk's token ids")
        return PromptRow(self.prompts.update_prompt(request.question, request.memory, request.chunk_ids))

    def update(self, requests: list[UpdateRequest]) -> list[Generation]:
        """New memories, one per request; an empty generation keeps the previous memory."""
        results: list[Generation] = []
        for start in range(0, len(requests), self.batch_size):
            part = requests[start : start + self.batch_size]
            rows = [self.update_row(request) for request in part]
            with self._policy():
                generations = generate(self.loaded, rows, self._decoding(self.settings.max_memory_tokens))
            for request, generation in zip(part, generations):
                if not generation.text:
                    generation.text = request.memory
                results.append(generation)
        return results

    def answer(
        self, questions: list[str], memories: list[str], on_text: TokenCallback | None = None
    ) -> list[Generation]:
        """Final answers from memory alone (no block); ``on_text(row, piece)`` streams them."""
        rows = [PromptRow(self.prompts.final_prompt(question, memory)) for question, memory in zip(questions, memories)]
        results: list[Generation] = []
        for start in range(0, len(rows), self.batch_size):
            callback = None
            if on_text is not None:
                offset = start

                def callback(row: int, piece: str, offset: int = offset) -> None:
                    on_text(row + offset, piece)

            with self._policy():
                results.extend(
                    generate(
                        self.loaded,
                        rows[start : start + self.batch_size],
                        self._decoding(self.settings.max_answer_tokens),
                        callback,
                    )
                )
        return results

    def answer_stream(self, question: str, memory: str) -> DecodeStream:
        """The final answer of one question as a stream of text pieces."""
        row = PromptRow(self.prompts.final_prompt(question, memory))
        return DecodeStream(self.loaded, [row], self._decoding(self.settings.max_answer_tokens), self._policy)
