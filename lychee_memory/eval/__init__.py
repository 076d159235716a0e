"""The research harness: evaluation tasks, metrics, methods side by side, cost benchmarks and merged reports.

``lychee eval``, ``lychee bench`` and ``lychee report`` run on it. It reads the engine, never the other way
round; plots need matplotlib (the ``[bench]`` extra) and the RAG baseline needs LlamaIndex and a local MiniLM.
"""

from .metrics import evidence_recall_precision, exact_match, f1_score, normalize_answer, sub_em
from .runner import DEFAULT_METHODS, EvalRun, Method, MethodRunner, SampleResult, parse_methods, run_eval, run_method
from .tasks import TASKS, QASample, build_samples, parse_lengths

__all__ = [
    "DEFAULT_METHODS",
    "TASKS",
    "EvalRun",
    "Method",
    "MethodRunner",
    "QASample",
    "SampleResult",
    "build_samples",
    "evidence_recall_precision",
    "exact_match",
    "f1_score",
    "normalize_answer",
    "parse_lengths",
    "parse_methods",
    "run_eval",
    "run_method",
    "sub_em",
]
