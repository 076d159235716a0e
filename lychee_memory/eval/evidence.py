"""What evidence reached an answer, and how much of the gold it holds: paragraph coverage and fact recall.

The evidence reaching an answer is what the final prompt is built from: the excerpts an excerpt memory kept when
the answer reports them, else the blocks read (for RAG, the chunks retrieved). A span of the gold (a supporting
sentence) counts as held when the union of the evidence spans contains all of it, so a sentence cut by a block
boundary counts when both neighbouring blocks were read, and a paragraph is covered when all of its supporting
sentences are held: the same test for blocks, chunks and excerpts. Whether the gold answer's words appear in that
evidence at all separates what retrieval handed the reader from what the reader made of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .metrics import normalize_answer

Span = tuple[int, int]


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Sorted, non-overlapping spans covering the same characters (touching spans are joined)."""
    merged: list[list[int]] = []
    for start, end in sorted((int(s), int(e)) for s, e in spans if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def held(target: Span, evidence: Sequence[Span]) -> bool:
    """Whether every character of ``target`` lies inside the union of ``evidence``."""
    start, end = target
    return any(s <= start and end <= e for s, e in merge_spans(evidence))


def fact_recall(evidence: Sequence[Span], facts: Sequence[Span]) -> float | None:
    """Share of supporting-fact spans held by the evidence; None when there are no facts."""
    if not facts:
        return None
    merged = merge_spans(evidence)
    return sum(held(fact, merged) for fact in facts) / len(facts)


def paragraphs_covered(evidence: Sequence[Span], gold_facts: Sequence[Sequence[Span]]) -> int:
    """Gold paragraphs whose supporting sentences the evidence holds, all of them (one list of spans per
    paragraph; a paragraph with no recorded sentence is never covered)."""
    merged = merge_spans(evidence)
    return sum(bool(facts) and all(held(fact, merged) for fact in facts) for facts in gold_facts)


def spans_of(items: Iterable[Any]) -> list[Span]:
    """``(char_start, char_end)`` of blocks, chunks or excerpts (anything with those two attributes)."""
    return [(int(item.char_start), int(item.char_end)) for item in items]


def answer_evidence(answer: Any) -> tuple[str, list[Span]]:
    """(what, spans) of the evidence that reached ``answer``: ``"excerpts"`` when the answer reports kept
    excerpts (an excerpt memory's ``Answer.evidence``, each with ``char_start``/``char_end``), else ``"blocks"``
    read (a notes memory's answer has no excerpts; engines from before the excerpt memory have no ``evidence``)."""
    excerpts = getattr(answer, "evidence", None)
    if excerpts:
        return "excerpts", spans_of(excerpts)
    return "blocks", spans_of(answer.blocks)


YES_NO = frozenset({"yes", "no"})


def answer_in_evidence(context: str, evidence: Sequence[Span], answers: Sequence[str]) -> bool | None:
    """Whether a gold answer appears, whole words after SQuAD normalisation, in the evidence's text (its spans of
    ``context``); None when every gold answer is yes or no, which no evidence spells out."""
    golds = [normalize_answer(answer) for answer in answers]
    golds = [gold for gold in golds if gold and gold not in YES_NO]
    if not golds:
        return None
    text = f" {normalize_answer(' '.join(context[start:end] for start, end in merge_spans(evidence)))} "
    return any(f" {gold} " in text for gold in golds)
