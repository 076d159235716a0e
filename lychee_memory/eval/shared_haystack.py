"""All of a length's HotpotQA questions in one shared haystack: one ingest serves every question.

RULER-HQA (``tasks.ruler_hqa_samples``) builds one context per question, so a length costs one ingest per
question. Here the gold paragraphs of every question that fits and distractors drawn from all the questions'
paragraphs share one document, deterministic for a seed: a length costs one ingest per block size. Each question
keeps the character spans of its gold paragraphs and of its supporting-fact sentences, so coverage and
supporting-fact recall (``eval.evidence``) are measured against exact offsets, never by searching the text.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ConfigurationError, DocumentError
from ..training.gate_data import question_split
from .tasks import draw_paragraphs, format_paragraph, hotpot_paragraphs, join_paragraphs

Span = tuple[int, int]
Paragraph = tuple[str, str]
# The gate trainer's held-out questions confirm what the others tuned (training/gate_data.question_split).
SPLIT_NAMES = {"train": "tuning", "heldout": "confirming"}
DEFAULT_GOLD_SHARE = 0.6  # at most this share of the target tokens is gold paragraphs: all 60 questions at 28K


@dataclass(frozen=True)
class HaystackQuestion:
    """One question of a shared haystack: its answers, split, and where its evidence sits in the context."""

    sample_id: str
    question: str
    answers: tuple[str, ...]
    kind: str  # HotpotQA type: bridge or comparison
    split: str  # "tuning" or "confirming"
    gold: tuple[Span, ...]  # character spans of the gold paragraphs (numbered header included)
    gold_facts: tuple[tuple[Span, ...], ...]  # per gold paragraph, the spans of its supporting-fact sentences

    @property
    def facts(self) -> tuple[Span, ...]:
        """Every supporting-fact sentence span, paragraph by paragraph."""
        return tuple(span for spans in self.gold_facts for span in spans)


@dataclass(frozen=True)
class SharedHaystack:
    """One document holding the gold paragraphs of ``questions`` among distractors, about ``target_tokens`` long."""

    context: str
    target_tokens: int
    tokens: int  # the paragraphs' token counts summed (the counter's estimate of the context's length)
    seed: int
    paragraphs: int
    questions: tuple[HaystackQuestion, ...]
    left_out: tuple[str, ...]  # sample ids of questions whose gold paragraphs did not fit the gold share


def question_split_name(question: str) -> str:
    """The split a question belongs to, "tuning" or "confirming": the gate trainer's (held out = confirming)."""
    return SPLIT_NAMES[question_split(question)]


def _sentences(row: dict) -> dict[str, list[str]]:
    return dict(zip(row["context"]["title"], row["context"]["sentences"]))


def _gold_titles(row: dict) -> list[str]:
    own = set(row["context"]["title"])
    return list(dict.fromkeys(title for title in row.get("supporting_facts", {}).get("title", []) if title in own))


def _fact_spans(start: int, header: int, sentences: Sequence[str], sent_ids: Sequence[int]) -> tuple[Span, ...]:
    """Spans of the chosen sentences of a paragraph that starts at ``start`` with a ``header``-character heading,
    whitespace at either end left out; ids past the paragraph (a known HotpotQA quirk) and blank ones skipped."""
    spans = []
    for sent_id in sorted(set(sent_ids)):
        if not 0 <= sent_id < len(sentences) or not sentences[sent_id].strip():
            continue
        sentence = sentences[sent_id]
        offset = start + header + sum(len(s) for s in sentences[:sent_id])
        lead = len(sentence) - len(sentence.lstrip())
        spans.append((offset + lead, offset + len(sentence.rstrip())))
    return tuple(spans)


def build_shared_haystack(
    rows: Sequence[dict],
    count: Callable[[str, str], int],
    target_tokens: int,
    seed: int = 0,
    gold_share: float = DEFAULT_GOLD_SHARE,
) -> SharedHaystack:
    """One haystack of about ``target_tokens`` for HotpotQA ``rows`` (HF distractor format).

    Questions are taken in file order while their gold paragraphs fit in ``gold_share`` of the target; every
    included gold paragraph appears exactly once. Distractors are the rows' other paragraphs (every question's,
    included or not) drawn in random order until the target is reached, then all paragraphs are shuffled;
    ``count(title, text)`` gives a paragraph's tokens (``tasks.TokenCounter``). Deterministic for ``seed``.
    """
    if not 0 < gold_share <= 1:
        raise ConfigurationError(f"gold_share must be in (0, 1], got {gold_share}")
    if target_tokens < 1:
        raise ConfigurationError(f"target_tokens must be at least 1, got {target_tokens}")
    placed: dict[Paragraph, None] = {}
    included: list[tuple[int, dict]] = []
    left_out: list[str] = []
    gold_tokens = 0
    for number, row in enumerate(rows):
        paragraphs = dict(hotpot_paragraphs(row))
        titles = _gold_titles(row)
        if not titles:
            raise DocumentError(f"HotpotQA row {number} ({row.get('question', '')[:60]!r}) names no gold paragraph")
        new = [(title, paragraphs[title]) for title in titles if (title, paragraphs[title]) not in placed]
        cost = sum(count(title, text) for title, text in new)
        if left_out or gold_tokens + cost > gold_share * target_tokens:
            left_out.append(f"hotpot-{number}")
            continue
        gold_tokens += cost
        placed.update(dict.fromkeys(new))
        included.append((number, row))
    if not included:
        raise DocumentError(
            f"no question's gold paragraphs fit in {gold_share:.0%} of {target_tokens} tokens: choose a longer length"
        )
    pool = list(dict.fromkeys(p for row in rows for p in hotpot_paragraphs(row) if p not in placed))
    rng = random.Random(f"shared-haystack-{seed}-{target_tokens}")
    chosen = list(placed)
    if pool:
        chosen += draw_paragraphs(pool, count, target_tokens, rng, start_tokens=gold_tokens)
    rng.shuffle(chosen)
    context, spans = join_paragraphs(chosen, set(range(len(chosen))))
    where = {paragraph: position for position, paragraph in reversed(list(enumerate(chosen)))}
    questions = []
    for number, row in included:
        paragraphs, sentences = dict(hotpot_paragraphs(row)), _sentences(row)
        facts = row["supporting_facts"]
        gold, gold_facts = [], []
        for title in _gold_titles(row):
            position = where[(title, paragraphs[title])]
            start = spans[position][0]
            header = len(format_paragraph(position + 1, title, ""))
            ids = [sent_id for fact_title, sent_id in zip(facts["title"], facts["sent_id"]) if fact_title == title]
            gold.append(spans[position])
            gold_facts.append(_fact_spans(start, header, sentences[title], ids))
        questions.append(
            HaystackQuestion(
                sample_id=f"hotpot-{number}",
                question=row["question"],
                answers=(row["answer"],),
                kind=row.get("type", ""),
                split=question_split_name(row["question"]),
                gold=tuple(gold),
                gold_facts=tuple(gold_facts),
            )
        )
    return SharedHaystack(
        context=context,
        target_tokens=target_tokens,
        tokens=sum(count(title, text) for title, text in chosen),
        seed=seed,
        paragraphs=len(chosen),
        questions=tuple(questions),
        left_out=tuple(left_out),
    )
