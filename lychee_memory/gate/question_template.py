"""The question prompt that query likelihood (stage 2) and the key scorer (stage 1) both read: one place chooses it.

While the memory is still the initial placeholder only the question is asked (``template``); once it holds notes,
the question and the notes are (``memory_template``), so both stages weigh the notes the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import PromptSettings
from ..prompts import PromptBuilder, SegmentedPrompt


@dataclass(frozen=True)
class QuestionTemplate:
    """The two question templates and the placeholder memory that tells them apart."""

    template: str  # {question}
    memory_template: str  # {question} and {memory}
    initial_memory: str

    @classmethod
    def from_settings(cls, prompts: PromptSettings) -> QuestionTemplate:
        return cls(prompts.query_likelihood, prompts.query_likelihood_memory, prompts.initial_memory)

    def has_notes(self, memory: str) -> bool:
        """Whether the memory holds notes (anything but the initial placeholder)."""
        return memory != self.initial_memory

    def segments(self, prompts: PromptBuilder, question: str, memory: str) -> SegmentedPrompt:
        """The prompt for ``question`` under ``memory``, with the token spans of the question (and notes)."""
        if self.has_notes(memory):
            return prompts.segments(self.memory_template, question=question, memory=memory)
        return prompts.segments(self.template, question=question)
