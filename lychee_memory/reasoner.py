"""The reasoner: rewrites the working memory from one relevant block, and answers from memory alone.

How the scan uses it to change the memory is the memory strategy's business (``working_memory.py``).

Two read modes: ``kv`` puts the block's KV (after the shared opening, for framed blocks) before the update
prompt, so only the prompt is prefilled (the paper; exact for raw KV, and what a trained compressor is for);
``text`` re-encodes the chunk's tokens in the prompt at full fidelity (for training-free compression, which
loses exact names and numbers on small models). On a raw-KV block both feed the model the same tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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


PREPARED_ANSWERS = 256  # answers decoded beside a note and not asked for yet (select() scans): the oldest go


class PreparedStream:
    """A finished answer as ``DecodeStream`` hands one out: iterate for ``(row, piece)``; ``results`` after."""

    def __init__(self, generations: list[Generation]):
        self.results = generations

    def __iter__(self) -> Iterator[tuple[int, str]]:
        for row, generation in enumerate(self.results):
            if generation.text:
                yield row, generation.text


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
        # question -> (memory, answer) decoded beside the last note (prepare_answer); bounded, consumed by answer()
        self.prepared: dict[str, tuple[str, Generation]] = {}

    def _policy(self) -> contextlib.AbstractContextManager[Any]:
        """The trained adapter switched on for a reasoner forward (a no-op without one)."""
        return self.adapter.active() if self.adapter is not None else contextlib.nullcontext()

    def _decoding(self, max_new_tokens: int) -> DecodingSettings:
        return DecodingSettings.for_reasoner(self.settings, max_new_tokens)

    def answer_row(self, request: UpdateRequest) -> PromptRow:
        """The final-answer prompt read after the request's block, over the memory before it: what the answer would
        be if this block is the last one read (decoded in the same batch as the note; see ``prepare_answers``)."""
        task = self.prompts.segments(self.prompts.settings.final, question=request.question, memory=request.memory)
        if self.read_mode == "kv":
            if request.block is None:
                raise ValueError("kv read mode needs the block")
            return PromptRow(self.prompts.after_block(task.token_ids), request.block, self.opening)
        if request.chunk_ids is None:
            raise ValueError("text read mode needs the chunk's token ids")
        return PromptRow(
            self.prompts.block_opening_ids() + list(request.chunk_ids) + self.prompts.continuation(task.token_ids)
        )

    def update_with_answers(self, requests: list[UpdateRequest]) -> list[tuple[Generation, Generation]]:
        """Each request's new memory and its answer row, decoded side by side in one batch (two rows cost about
        one on a memory-bound CPU); the answer row stops at the answer budget, the note at the memory budget."""
        results: list[tuple[Generation, Generation]] = []
        size = max(1, self.batch_size // 2)
        for start in range(0, len(requests), size):
            part = requests[start : start + size]
            rows = [row for request in part for row in (self.update_row(request), self.answer_row(request))]
            limit = max(self.settings.max_memory_tokens, self.settings.max_answer_tokens)
            with self._policy():
                generations = generate(self.loaded, rows, self._decoding(limit))
            for position, request in enumerate(part):
                note, answer = generations[2 * position], generations[2 * position + 1]
                note = self._within(note, self.settings.max_memory_tokens)
                if not note.text:
                    note.text = request.memory
                results.append((note, self._within(answer, self.settings.max_answer_tokens)))
        return results

    def _within(self, generation: Generation, budget: int) -> Generation:
        """``generation`` as a run capped at ``budget`` tokens would have ended: greedy rows share their first tokens,
        and a longer row met no stop before the cap, so the capped text is those tokens decoded."""
        if len(generation.token_ids) <= budget:
            return generation
        ids = generation.token_ids[:budget]
        text = self.loaded.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return Generation(ids, text, False, generation.prompt_tokens)

    def prepare_answer(self, question: str, memory: str, generation: Generation) -> None:
        """Keep ``generation`` as the answer to ``question`` while its memory stays ``memory``: ``answer`` and
        ``answer_stream`` return it instead of decoding again (the note read last also decoded the answer)."""
        self.prepared[question] = (memory, generation)
        while len(self.prepared) > PREPARED_ANSWERS:
            self.prepared.pop(next(iter(self.prepared)))

    def forget_answer(self, question: str) -> None:
        """Drop a prepared answer (a later read is about to change the memory it was written for)."""
        self.prepared.pop(question, None)

    def forget_answers(self) -> None:
        """Drop every prepared answer: one prepared while scanning a bank read that bank's block, so a new scan
        (perhaps of another bank, reaching the same notes) must not be answered with it."""
        self.prepared.clear()

    def _prepared(self, question: str, memory: str) -> Generation | None:
        kept = self.prepared.pop(question, None)
        return kept[1] if kept is not None and kept[0] == memory else None

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
        """Final answers from memory alone (no block); ``on_text(row, piece)`` streams them. An answer prepared
        beside the last note for the same memory (``prepare_answer``) is returned without decoding."""
        ready = [self._prepared(question, memory) for question, memory in zip(questions, memories)]
        if any(generation is not None for generation in ready):
            missing = [i for i, generation in enumerate(ready) if generation is None]
            decoded = iter(self.answer([questions[i] for i in missing], [memories[i] for i in missing]))
            results = [generation if generation is not None else next(decoded) for generation in ready]
            if on_text is not None:
                for row, generation in enumerate(results):
                    on_text(row, generation.text)
            return results
        rows = [PromptRow(self.prompts.final_prompt(question, memory)) for question, memory in zip(questions, memories)]
        results = []
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

    def answer_stream(self, question: str, memory: str) -> DecodeStream | PreparedStream:
        """The final answer of one question as a stream of text pieces (one piece when it was prepared)."""
        prepared = self._prepared(question, memory)
        if prepared is not None:
            return PreparedStream([prepared])
        row = PromptRow(self.prompts.final_prompt(question, memory))
        return DecodeStream(self.loaded, [row], self._decoding(self.settings.max_answer_tokens), self._policy)
