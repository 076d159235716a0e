"""The gate: which memory blocks the reasoner reads (scan, rules, stage 1, the stored index format, the adapter)."""

from .scan import (
    RULES,
    AllRule,
    GateDecision,
    GateRule,
    GateScan,
    MemoryUpdater,
    PromptRule,
    QueryLikelihoodRule,
    ScanState,
    ScanTimings,
    ScoreRequest,
    TrainedGateRule,
    build_rule,
)

__all__ = [
    "RULES",
    "AllRule",
    "GateDecision",
    "GateRule",
    "GateScan",
    "MemoryUpdater",
    "PromptRule",
    "QueryLikelihoodRule",
    "ScanState",
    "ScanTimings",
    "ScoreRequest",
    "TrainedGateRule",
    "build_rule",
]
