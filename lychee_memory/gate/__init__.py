"""The gate: which memory blocks the reasoner reads. One module per concept:

- ``scan.py``: ``GateScan``, the state-aware scan (chains in any order, fallback, re-judging after each update)
- ``rules.py``: stage 2, the rule interface, each rule and the ``RULES`` registry ``build_rule`` uses
- ``question_template.py``: the question prompt both stages read (one place chooses it)
- ``stage1.py``: stage 1, the scorer interface and the candidate choice; ``scorers.py``: the ``SCORERS`` registry
  and an engine's stage 1; ``key_scorer.py``: the key scorer (``gate.prefilter = "keys"``); ``lexical_scorer.py``:
  BM25 over the blocks' text (``"lexical"``); ``fused_scorer.py``: both fused (``"hybrid"``, ``"hybrid_sum"``)
- ``index_format.py``: ``IndexSpec``, the stored gate index; ``heads.py``: which heads it serves;
  ``hooks.py``: the forward hooks that read query vectors
- ``adapter.py``: the trained gate's file format and attachment (its LoRA is ``lychee_memory.lora``)

Names are imported from their module on first use, so a part (``IndexSpec`` for the store and the compressors)
loads without the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "GateDecision": "scan",
    "GateScan": "scan",
    "MemoryUpdater": "scan",
    "ScanState": "scan",
    "ScanTimings": "scan",
    "RULES": "rules",
    "AllRule": "rules",
    "GateRule": "rules",
    "PromptRule": "rules",
    "QueryLikelihoodRule": "rules",
    "ScoreRequest": "rules",
    "TrainedGateRule": "rules",
    "build_rule": "rules",
    "QuestionTemplate": "question_template",
    "StageOneContext": "stage1",
    "StageOneScorer": "stage1",
    "choose_candidates": "stage1",
    "SCORERS": "scorers",
    "StageOne": "scorers",
    "KeyScorer": "key_scorer",
    "LexicalScorer": "lexical_scorer",
    "HybridScorer": "fused_scorer",
    "HybridSumScorer": "fused_scorer",
    "IndexSpec": "index_format",
    "GenericHeadsWarning": "heads",
    "generic_heads": "heads",
    "resolve_heads": "heads",
    "GateAdapter": "adapter",
    "GateAdapterSettings": "adapter",
    "attach_gate": "adapter",
}

__all__ = [
    "AllRule",
    "GateAdapter",
    "GateAdapterSettings",
    "GateDecision",
    "GateRule",
    "GateScan",
    "GenericHeadsWarning",
    "HybridScorer",
    "HybridSumScorer",
    "IndexSpec",
    "KeyScorer",
    "LexicalScorer",
    "MemoryUpdater",
    "PromptRule",
    "QueryLikelihoodRule",
    "QuestionTemplate",
    "RULES",
    "SCORERS",
    "ScanState",
    "ScanTimings",
    "ScoreRequest",
    "StageOne",
    "StageOneContext",
    "StageOneScorer",
    "TrainedGateRule",
    "attach_gate",
    "build_rule",
    "choose_candidates",
    "generic_heads",
    "resolve_heads",
]

if TYPE_CHECKING:
    from .adapter import GateAdapter, GateAdapterSettings, attach_gate
    from .fused_scorer import HybridScorer, HybridSumScorer
    from .heads import GenericHeadsWarning, generic_heads, resolve_heads
    from .index_format import IndexSpec
    from .key_scorer import KeyScorer
    from .lexical_scorer import LexicalScorer
    from .question_template import QuestionTemplate
    from .rules import (
        RULES,
        AllRule,
        GateRule,
        PromptRule,
        QueryLikelihoodRule,
        ScoreRequest,
        TrainedGateRule,
        build_rule,
    )
    from .scan import GateDecision, GateScan, MemoryUpdater, ScanState, ScanTimings
    from .scorers import SCORERS, StageOne
    from .stage1 import StageOneContext, StageOneScorer, choose_candidates


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
