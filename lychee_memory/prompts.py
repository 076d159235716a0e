"""Turn prompt templates into token ids: chat wrapping, segments with known spans, safe user text.

Text that comes from users or documents is tokenized with special-token strings split, so a document
that contains ``<|im_end|>`` cannot end a turn early. Templates come from ``PromptSettings``.

A prompt that reads a chunk is ``opening | chunk tokens | continuation``: the opening is the sequence start and
the chat user-turn opening, the continuation ``"\n\n"``, the task text and the user-turn close. Framed blocks
are encoded after the opening, so reading one as KV feeds only the continuation: the same tokens as a text read.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from .config import PromptSettings

_SENTINEL = "\u2063LYCHEE_CONTENT\u2063"


@dataclass(frozen=True)
class SegmentedPrompt:
    """Prompt token ids plus the [start, end) token span of each named placeholder."""

    token_ids: list[int]
    spans: dict[str, tuple[int, int]]


def sequence_start_ids(tokenizer) -> list[int]:
    """The tokens a tokenizer puts before every sequence (a BOS), or none: what a block or prompt starts with."""
    probe = tokenizer("a").input_ids
    plain = tokenizer("a", add_special_tokens=False).input_ids
    return list(probe[: len(probe) - len(plain)]) if probe[-len(plain) :] == plain else []


class PromptBuilder:
    """Renders the configured templates for one tokenizer."""

    def __init__(self, tokenizer, settings: PromptSettings, framed_blocks: bool = True):
        self.tokenizer = tokenizer
        self.settings = settings
        self.framed_blocks = framed_blocks  # blocks were encoded after block_opening_ids() (training-free compressors)
        self._chat_parts: tuple[list[int], list[int]] | None = None
        # Tokens the tokenizer puts before every sequence (a BOS), kept in front of prefix-free prompts.
        self.sequence_start_ids: list[int] = sequence_start_ids(tokenizer)

    @property
    def uses_chat(self) -> bool:
        return self.settings.use_chat_template and bool(getattr(self.tokenizer, "chat_template", None))

    def encode_text(self, text: str) -> list[int]:
        """Token ids of untrusted text: special-token strings inside it stay ordinary text."""
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True, verbose=False).input_ids)

    def _encode_markup(self, text: str) -> list[int]:
        """Token ids of template markup, where special-token strings are real special tokens."""
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids)

    def _chat_wrappers(self) -> tuple[list[int], list[int]]:
        if self._chat_parts is None:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": _SENTINEL}], add_generation_prompt=True, tokenize=False
            )
            before, after = rendered.split(_SENTINEL)
            self._chat_parts = (self._encode_markup(before), self._encode_markup(after))
        return self._chat_parts

    def user_turn(self, content_ids: list[int], with_start: bool) -> list[int]:
        """Wrap content as a user turn ready for the assistant's reply (or plain text without a chat template)."""
        if self.uses_chat:
            before, after = self._chat_wrappers()
            ids = before + content_ids + after
            if (
                with_start
                and self.sequence_start_ids
                and ids[: len(self.sequence_start_ids)] != self.sequence_start_ids
            ):
                ids = self.sequence_start_ids + ids
            return ids
        return (self.sequence_start_ids if with_start else []) + content_ids

    def block_opening_ids(self) -> list[int]:
        """What comes before a chunk in every prompt that reads one: sequence start and the user-turn opening."""
        if self.uses_chat:
            return self.user_turn([], with_start=True)[: -len(self._chat_wrappers()[1]) or None]
        return list(self.sequence_start_ids)

    def continuation(self, content_ids: list[int]) -> list[int]:
        """The tokens after a chunk: a paragraph break, the task, and the user-turn close (framed layout)."""
        after = self._chat_wrappers()[1] if self.uses_chat else []
        return self._encode_markup("\n\n") + content_ids + after

    def after_block(self, content_ids: list[int]) -> list[int]:
        """A task prompt read after a block's KV: the continuation for framed blocks, else a whole user turn."""
        return self.continuation(content_ids) if self.framed_blocks else self.user_turn(content_ids, with_start=False)

    def segments(self, template: str, **values: str) -> SegmentedPrompt:
        """Tokenize a template piece by piece so each placeholder's token span is known exactly."""
        ids: list[int] = []
        spans: dict[str, tuple[int, int]] = {}
        for literal, name, _, _ in string.Formatter().parse(template):
            ids += self._encode_markup(literal)
            if name is not None:
                start = len(ids)
                ids += self.encode_text(values[name])
                spans[name] = (start, len(ids))
        return SegmentedPrompt(ids, spans)

    # The engine's prompts -------------------------------------------------------------------------

    def update_prompt(self, question: str, memory: str, chunk_ids: list[int] | None) -> list[int]:
        """Memory-update prompt; ``chunk_ids`` are the chunk's tokens in text-read mode, None after a KV prefix.

        The text-read prompt is ``opening | chunk | continuation``; after a framed block only the continuation.
        """
        task = self._render_safe(self.settings.update, question=question, memory=memory)
        if chunk_ids is None:
            return self.after_block(task)
        return self.block_opening_ids() + list(chunk_ids) + self.continuation(task)

    def final_prompt(self, question: str, memory: str) -> list[int]:
        return self.user_turn(self._render_safe(self.settings.final, question=question, memory=memory), with_start=True)

    def relevance_prompt(self, question: str, memory: str) -> list[int]:
        return self.after_block(self._render_safe(self.settings.relevance, question=question, memory=memory))

    def full_context_prompt(self, question: str, document: str) -> list[int]:
        return self.user_turn(
            self._render_safe(self.settings.full_context, question=question, document=document), with_start=True
        )

    def _render_safe(self, template: str, **values: str) -> list[int]:
        return self.segments(template, **values).token_ids
