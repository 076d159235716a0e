"""Answer metrics: SQuAD normalisation, MemAgent's sub_em (and a variant judging yes/no answers by the word the
answer states), exact match, token F1, and the gate's evidence recall and precision (which blocks read overlap the
planted facts or gold paragraphs)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def sub_em(prediction: str, gold: str | Sequence[str]) -> bool:
    """A hit when a normalised gold answer is contained in the prediction or vice versa.

    An empty prediction (or one that normalises to nothing) never counts, though "" is inside every string.
    """
    golds = [gold] if isinstance(gold, str) else list(gold)
    predicted = normalize_answer(prediction)
    if not predicted:
        return False
    for answer in golds:
        expected = normalize_answer(answer)
        if expected and (expected in predicted or predicted in expected):
            return True
    return False


POLAR_ANSWERS = ("yes", "no")


def stated_polarity(prediction: str) -> str | None:
    """The first word "yes" or "no" the answer states (normalised words), None when it states neither."""
    return next((word for word in normalize_answer(prediction).split() if word in POLAR_ANSWERS), None)


def sub_em_stated(prediction: str, gold: str | Sequence[str]) -> bool:
    """sub_em, except that a yes or no gold answer needs the answer to state that word first.

    Plain sub_em is substring containment, so the gold "no" is inside "not", "know" and "Norway": an answer that
    hedges with "not" scores on every "no" question, and "No, the answer is not yes" scores on "yes" ones."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    polar = [normalised for normalised in map(normalize_answer, golds) if normalised in POLAR_ANSWERS]
    if polar:
        return stated_polarity(prediction) in polar
    return sub_em(prediction, golds)


def exact_match(prediction: str, gold: str | Sequence[str]) -> bool:
    """Normalised prediction equals a normalised gold answer (empty never matches)."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    predicted = normalize_answer(prediction)
    return bool(predicted) and any(predicted == normalize_answer(answer) for answer in golds)


def f1_score(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD token F1 against the best-matching gold answer."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for answer in golds:
        expected = normalize_answer(answer).split()
        common = sum((Counter(predicted) & Counter(expected)).values())
        if common:
            precision, recall = common / len(predicted), common / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def evidence_recall_precision(
    read: Sequence[tuple[int, int]], evidence: Sequence[tuple[int, int]]
) -> tuple[float | None, float | None]:
    """Recall: share of evidence spans overlapped by a block read; precision: share of blocks read that
    overlap any evidence. None where undefined (no evidence recorded, or nothing read)."""

    def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    recall = sum(any(overlaps(e, r) for r in read) for e in evidence) / len(evidence) if evidence else None
    precision = sum(any(overlaps(r, e) for e in evidence) for r in read) / len(read) if read and evidence else None
    return recall, precision


def copying_failure(prediction: str, context: str) -> bool:
    """The answer names a code (a number of 4 to 6 digits: the needle codes have 5, so a dropped or doubled digit
    counts) that the document does not hold as a whole number: copied wrongly or invented."""
    numbers = set(re.findall(r"\d+", context))  # whole numbers: 1221 inside 41221 is not the document's
    return any(code not in numbers for code in re.findall(r"(?<!\d)\d{4,6}(?!\d)", prediction))
