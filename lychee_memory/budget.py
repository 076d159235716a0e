"""The prompt budget: every prompt of a question (gate, memory update, answer) plus what it generates must fit
the model's context window, checked once for the settings (at load) and again for each question."""

from __future__ import annotations

from dataclasses import dataclass

from .config import ReasonerSettings
from .errors import ContextTooLongError
from .gate import GateRule
from .prompts import PromptBuilder


@dataclass(frozen=True)
class PromptBudget:
    """What an engine's prompts need beside the question: a block, the memory in and out, the answer."""

    prompts: PromptBuilder
    window: int  # the model's context window, in tokens
    reasoner: ReasonerSettings  # resolved: read_mode is "kv" or "text"
    chunk_tokens: int
    after_block: int  # the position a prompt starts at after a block's KV (opening + compressed chunk)
    rule: GateRule

    def check(self, question: str) -> None:
        """Raise ContextTooLongError when the largest prompt of ``question`` cannot fit, saying what adds up.

        With an empty question (at construction) this checks the settings alone.
        """
        memory, answer = self.reasoner.max_memory_tokens, self.reasoner.max_answer_tokens
        text_mode = self.reasoner.read_mode == "text"
        update_prompt = len(self.prompts.update_prompt(question, "", [] if text_mode else None))
        read = self.chunk_tokens if text_mode else self.after_block
        final_prompt = len(self.prompts.final_prompt(question, ""))
        needs = {  # prompt -> (tokens needed, how they add up)
            "memory update": (
                read + update_prompt + 2 * memory,
                f"{read} for the chunk, {update_prompt} of prompt, {memory} of previous and {memory} of new memory",
            ),
            "answer": (
                final_prompt + memory + answer,
                f"{final_prompt} of prompt, {memory} of memory, {answer} to answer",
            ),
        }
        if self.rule.needs_model:
            gate_prompt = self.rule.prompt_tokens(self.prompts, question)
            needs["gate"] = (
                self.after_block + gate_prompt + memory,
                f"{self.after_block} for the block, {gate_prompt} of prompt and {memory} of memory",
            )
        what, (needed, parts) = max(needs.items(), key=lambda item: item[1][0])
        if needed <= self.window:
            return
        if question:
            raise ContextTooLongError(
                f"the question is {len(self.prompts.encode_text(question))} tokens; its {what} prompt needs {needed} "
                f"tokens ({parts}), more than the model's context window of {self.window}; ask a shorter question or "
                "lower max_memory_tokens"
            )
        raise ContextTooLongError(
            f"a {self.reasoner.read_mode}-mode {what} needs about {needed} tokens ({parts}), more than the "
            f"model's context window of {self.window}; lower chunk_tokens or max_memory_tokens"
        )
