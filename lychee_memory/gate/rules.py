"""The gate's stage 2: rules that score a block against the question and the working memory, and their registry.

Rules (one interface, chosen by ``GateSettings.rule`` from :data:`RULES`):

- ``query_likelihood``: mean log-probability of the question tokens (plus, once the memory holds notes,
  of the memory tokens, weighted) placed after the block's KV, minus the same without any block. A block
  that makes the question and notes likely is about them.
- ``prompt``: probability of "yes" when the model is asked, after the block's KV, whether the block
  helps with the question given the memory (for instruct 7B models and a trained gate).
- ``trained``: probability of "relevant" from a LoRA adapter trained as a classifier over (question, memory,
  block) states (``lychee train gate``; ``gate/adapter.py``): the prompt rule's setup, fine-tuned.
- ``all``: every block is relevant (MemAgent behaviour).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from lychee_memory.kernels import token_logprobs

from ..blocks import BlockOpening, MemoryBlock
from ..config import GateSettings, PromptSettings
from ..kv_prefix import PromptRow, logits_of, prefill, prefill_with_gradients
from ..model_loading import LoadedModel
from ..prompts import PromptBuilder
from .adapter import GateAdapter
from .question_template import QuestionTemplate


@dataclass(frozen=True)
class ScoreRequest:
    """Score one block (or no block, for the baseline) for one question under one memory."""

    question: str
    memory: str
    block: MemoryBlock | None


class GateRule(ABC):
    """A scoring rule: higher means more relevant; a block passes when score - baseline >= threshold."""

    name: ClassVar[str]
    default_threshold: ClassVar[float]
    needs_model: ClassVar[bool] = True
    opening: BlockOpening | None = None  # what framed blocks were encoded after; put before them in every row

    uses_block_free_baseline: ClassVar[bool] = False  # scores are gains over the score without any block

    @classmethod
    def build(
        cls, settings: GateSettings, prompt_settings: PromptSettings, tokenizer, adapter: GateAdapter | None
    ) -> GateRule:
        """The rule for these settings (what :func:`build_rule` calls through :data:`RULES`)."""
        return cls()

    @abstractmethod
    def score(self, loaded: LoadedModel, prompts: PromptBuilder, requests: list[ScoreRequest]) -> list[float]:
        """Scores of all requests, computed in one batched forward."""

    def prompt_tokens(self, prompts: PromptBuilder, question: str) -> int:
        """Tokens of the rule's prompt after a block for ``question``, memory left empty (for context budgets)."""
        return 0


class QueryLikelihoodRule(GateRule):
    """How much the block raises the likelihood of the question (and of the notes in memory).

    While the memory is still the initial placeholder only the question is scored (``template``); once it
    holds notes, the memory tokens are scored too, weighted by ``memory_weight`` (``memory_template``), so
    a block that continues a chain already in memory (hop 2 after hop 1) gains.
    """

    name = "query_likelihood"
    default_threshold = 1.0  # nats of mean log-probability gained over the block-free prompt
    uses_block_free_baseline = True

    def __init__(self, memory_weight: float, initial_memory: str, template: str, memory_template: str):
        self.memory_weight = memory_weight
        self.questions = QuestionTemplate(template, memory_template, initial_memory)

    @classmethod
    def build(cls, settings, prompt_settings, tokenizer, adapter):
        return cls(
            settings.memory_weight,
            prompt_settings.initial_memory,
            prompt_settings.query_likelihood,
            prompt_settings.query_likelihood_memory,
        )

    @property
    def initial_memory(self) -> str:
        return self.questions.initial_memory

    @property
    def template(self) -> str:
        return self.questions.template

    @property
    def memory_template(self) -> str:
        return self.questions.memory_template

    def prompt_tokens(self, prompts, question):
        return len(prompts.segments(self.memory_template, question=question, memory="").token_ids)

    def score(self, loaded, prompts, requests):
        rows, spans = [], []
        for request in requests:
            with_memory = self.questions.has_notes(request.memory)
            segmented = self.questions.segments(prompts, request.question, request.memory)
            ids = segmented.token_ids
            offset = 0
            if request.block is None and self.opening is None:  # the baseline starts as the block would have
                lead = list(prompts.sequence_start_ids)
                ids = lead + ids
                offset = len(lead)
            rows.append(PromptRow(ids, request.block, self.opening))
            question_span = tuple(i + offset for i in segmented.spans["question"])
            memory_span = tuple(i + offset for i in segmented.spans.get("memory", (0, 0)))
            weight = self.memory_weight if with_memory else 0.0
            spans.append((question_span, memory_span, weight))
        batch, hidden = prefill(loaded, rows)
        width = hidden.shape[1]
        # Predict token t of row r from the hidden state just before it (prompts are left-padded).
        predictor_rows, predictor_cols, targets, owners = [], [], [], []
        for row, ((q_start, q_end), (m_start, m_end), weight) in enumerate(spans):
            pad = width - batch.prompt_lengths[row]
            for part, (start, end) in enumerate(((q_start, q_end), (m_start, m_end))):
                if part == 1 and weight == 0.0:
                    continue
                for position in range(max(start, 1), end):
                    predictor_rows.append(row)
                    predictor_cols.append(pad + position - 1)
                    targets.append(rows[row].prompt_ids[position])
                    owners.append((row, part))
        device = hidden.device
        selected = hidden[torch.tensor(predictor_rows, device=device), torch.tensor(predictor_cols, device=device)]
        head = loaded.model.get_output_embeddings()
        logprobs = token_logprobs(selected, head.weight, torch.tensor(targets, device=device), head.bias).tolist()
        sums = [[0.0, 0.0] for _ in requests]
        counts = [[0, 0] for _ in requests]
        for (row, part), value in zip(owners, logprobs):
            sums[row][part] += value
            counts[row][part] += 1
        scores = []
        for row, (_, _, weight) in enumerate(spans):
            question_mean = sums[row][0] / max(1, counts[row][0])
            memory_mean = sums[row][1] / counts[row][1] if counts[row][1] else 0.0
            scores.append(question_mean + weight * memory_mean)
        return scores


class PromptRule(GateRule):
    """Probability that the model answers "yes" to: does this section help with the problem?"""

    name = "prompt"
    default_threshold = 0.5

    def __init__(self, tokenizer):
        self.yes_ids = _first_token_ids(tokenizer, [" yes", "yes", " Yes", "Yes", " YES"])
        self.no_ids = _first_token_ids(tokenizer, [" no", "no", " No", "No", " NO"])

    @classmethod
    def build(cls, settings, prompt_settings, tokenizer, adapter):
        return cls(tokenizer)

    def prompt_tokens(self, prompts, question):
        return len(prompts.relevance_prompt(question, ""))

    def score(self, loaded, prompts, requests):
        rows = [PromptRow(prompts.relevance_prompt(r.question, r.memory), r.block, self.opening) for r in requests]
        _, hidden = prefill(loaded, rows)
        probabilities = logits_of(loaded, hidden[:, -1]).softmax(dim=-1)
        yes = probabilities[:, self.yes_ids].sum(dim=-1)
        no = probabilities[:, self.no_ids].sum(dim=-1)
        return (yes / (yes + no).clamp_min(1e-12)).tolist()


class TrainedGateRule(GateRule):
    """Probability of "relevant" from the trained gate adapter: sigmoid(logit(yes) - logit(no)) after the block."""

    name = "trained"
    default_threshold = 0.5

    def __init__(self, adapter: GateAdapter, tokenizer):
        self.adapter = adapter
        settings = adapter.settings
        self.template = settings.template
        self.yes_id = tokenizer(settings.yes_token, add_special_tokens=False).input_ids[0]
        self.no_id = tokenizer(settings.no_token, add_special_tokens=False).input_ids[0]

    @classmethod
    def build(cls, settings, prompt_settings, tokenizer, adapter):
        if adapter is None:
            raise ValueError("the trained gate rule needs its adapter (gate.adapter.attach_gate)")
        return cls(adapter, tokenizer)

    def prompt_ids(self, prompts: PromptBuilder, question: str, memory: str) -> list[int]:
        return prompts.after_block(prompts.segments(self.template, question=question, memory=memory).token_ids)

    def prompt_tokens(self, prompts, question):
        return len(self.prompt_ids(prompts, question, ""))

    def logits(self, loaded: LoadedModel, prompts: PromptBuilder, requests: list[ScoreRequest]) -> torch.Tensor:
        """The classifier's logits [R] (differentiable: the trainer calls this with gradients on)."""
        rows = [PromptRow(self.prompt_ids(prompts, r.question, r.memory), r.block, self.opening) for r in requests]
        forward = prefill_with_gradients if torch.is_grad_enabled() else prefill
        with self.adapter.active():
            _, hidden = forward(loaded, rows)
            last = logits_of(loaded, hidden[:, -1])
        return last[:, self.yes_id] - last[:, self.no_id]

    def score(self, loaded, prompts, requests):
        with torch.inference_mode():
            return torch.sigmoid(self.logits(loaded, prompts, requests)).tolist()


class AllRule(GateRule):
    """Every block is relevant: the reasoner reads all of them (MemAgent behaviour)."""

    name = "all"
    default_threshold = 0.0
    needs_model = False

    def score(self, loaded, prompts, requests):
        return [1.0] * len(requests)


def _first_token_ids(tokenizer, words: list[str]) -> list[int]:
    ids = {tokenizer(word, add_special_tokens=False).input_ids[0] for word in words}
    return sorted(ids)


RULES: dict[str, type[GateRule]] = {
    "query_likelihood": QueryLikelihoodRule,
    "prompt": PromptRule,
    "trained": TrainedGateRule,
    "all": AllRule,
}


def build_rule(
    settings: GateSettings,
    prompt_settings: PromptSettings,
    tokenizer,
    opening: BlockOpening | None = None,
    adapter: GateAdapter | None = None,
) -> GateRule:
    """The rule named by ``settings.rule``; ``opening`` goes before every block (framed blocks) and baseline;
    ``adapter`` is the loaded trained gate (``gate.adapter.attach_gate``) for the trained rule."""
    if settings.rule not in RULES:
        raise ValueError(f"gate rule {settings.rule!r} must be resolved before building")
    rule = RULES[settings.rule].build(settings, prompt_settings, tokenizer, adapter)
    rule.opening = opening
    return rule
