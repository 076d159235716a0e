"""Training and held-out questions for ``lychee train rl``: the gate trainer's examples, reused as answer tasks.

The same families (generated needles; HotpotQA and SQuAD when the shared data is there), the same documents of
about ``tokens`` tokens, and the same question-hash split (``gate_data.question_split``): a question is held out
on every machine, run and seed, and never trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..documents import Document
from ..errors import ConfigurationError
from .gate_data import FAMILIES, gate_examples

# Families a 135M reasoner answers often enough for a group to disagree (two-hop chains and HotpotQA it
# almost never answers: an all-zero group has no advantage and only costs its rollouts).
DEFAULT_RL_FAMILIES: dict[str, int] = {
    "needle": 80,
    "needle-multikey": 80,
    "squad": 80,
    "needle-twohop": 0,
    "hotpot-bridge": 0,
    "hotpot-comparison": 0,
}


@dataclass
class RLExample:
    """One question: its documents (compressed once into a bank), the question, its gold answers, its origin."""

    question: str
    gold: list[str]
    documents: list[Any]
    family: str = ""
    key: str = ""


def rl_examples(
    data: Path | None,
    *,
    tokens: int,
    per_family: dict[str, int] | None = None,
    seed: int = 0,
    heldout_share: float = 0.4,
    count_tokens: Callable[[str], int] | None = None,
) -> dict[str, list[RLExample]]:
    """``{"train": [...], "heldout": [...]}``: each example one document (its text), one question, its gold."""
    amounts = dict(DEFAULT_RL_FAMILIES)
    for family, amount in (per_family or {}).items():
        if family not in FAMILIES:
            raise ConfigurationError(f"unknown RL family {family!r}; choose from {', '.join(FAMILIES)}")
        amounts[family] = amount
    examples = gate_examples(
        data, tokens=tokens, per_family=amounts, seed=seed, heldout_share=heldout_share, count_tokens=count_tokens
    )
    split: dict[str, list[RLExample]] = {"train": [], "heldout": []}
    for example in examples:
        document = Document(example.text, example.key, {"family": example.family})
        split[example.split].append(
            RLExample(example.question, [example.answer], [document], family=example.family, key=example.key)
        )
    if not split["train"] or not split["heldout"]:
        raise ConfigurationError(
            f"RL needs training and held-out questions; got {len(split['train'])} and {len(split['heldout'])} "
            f"(families {amounts})"
        )
    return split
