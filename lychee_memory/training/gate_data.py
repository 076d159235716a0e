"""Offline training data for a trained gate: short documents with the evidence of a question in hop order.

The gate decides, for each block of a document, whether it is relevant to a question *given the working memory*
(the notes written so far). Each :class:`GateExample` is one question over one document of about ``tokens``
tokens (a few 1024-token blocks), with the character spans of its evidence pieces in the order a reasoner needs
them, and the note a reasoner would write after reading each piece. With ``chain=True`` piece ``k > 0`` only
becomes relevant once ``notes[:k]`` are in memory (two-hop needles; HotpotQA bridge questions whose hop order is
clear), so a trainer can build (question, memory, block) -> relevant targets for every step of the chain.

Families:

- ``hotpot-bridge`` / ``hotpot-comparison``: the shared HotpotQA dev questions. The two gold paragraphs are the
  evidence; the question's own 8 distractors (topically close hard negatives) come first, then paragraphs of other
  questions of the same split and SQuAD. Bridge hop order: the gold paragraph whose supporting sentences name the
  other's title is hop 1; ``chain`` only when exactly one direction holds.
- ``squad``: answerable SQuAD v2 questions; the paragraph holding the answer is the evidence, other paragraphs of
  the same article (without the answer) the hard negatives.
- ``needle`` / ``needle-multikey`` / ``needle-twohop``: the evaluation's needle families (one code, look-alike
  codes, a two-hop chain in either document order) said in other words with other invented names (``TRAIN_NEEDLES``),
  so held-out needle results measure relevance rather than a memorised phrase; the haystack is the paragraph pool
  of the split (:func:`lychee_memory.training.compressor_data.paragraph_pool`: SQuAD with a data directory, else
  generated text).

The split is decided by the question (a hash of its text, or of a HotpotQA ``_id``), never by row or seed: the
same question is held out for every seed. The shared HotpotQA questions are also the RULER-HQA evaluation
samples, so a gate trained here must be evaluated on the held-out questions only.

Pure Python (no tokenizer or model): sizes use :func:`estimate_tokens` unless ``count_tokens`` is given.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError, DocumentError
from ..eval.tasks import (
    HOTPOT_FILE,
    SQUAD_FILE,
    TokenCounter,
    draw_paragraphs,
    format_paragraph,
    haystack_with_facts,
    hotpot_paragraphs,
    join_paragraphs,
    load_hotpot,
)
from .compressor_data import SPLITS, Split, paragraph_pool, sentence_ends

FAMILIES = ("hotpot-bridge", "hotpot-comparison", "squad", "needle", "needle-multikey", "needle-twohop")
NEEDLE_KINDS = ("needle", "needle-multikey", "needle-twohop")
# Examples per family, train and held-out together (about 60% train at the default share); None: every row.
DEFAULT_PER_FAMILY: dict[str, int | None] = {
    "hotpot-bridge": None,
    "hotpot-comparison": None,
    "squad": 100,
    "needle": 60,
    "needle-multikey": 60,
    "needle-twohop": 60,
}
CHARS_PER_TOKEN = 4.0  # English prose under a BPE tokenizer of the SmolLM2 / Llama kind, roughly
GENERATED_PER_SPLIT = 400  # generated paragraphs in each split's distractor pool
MIN_TOKENS = 128
_YES_NO = {"yes", "no"}


@dataclass(frozen=True)
class GateExample:
    """One question over one short document, with the evidence it needs in hop order."""

    key: str  # stable unique id: "hotpot-<id or question hash>", "squad-<SQuAD id>", "needle-twohop-s0-3"
    family: str  # one of FAMILIES
    split: str  # "train" | "heldout", decided by the question (question_split), never by row or seed
    question: str
    answer: str
    text: str  # numbered paragraphs "Document {i}:\n{title}\n{text}" joined by blank lines
    evidence: tuple[tuple[int, int], ...]  # character spans in ``text`` of each evidence piece, in hop order
    notes: tuple[str, ...]  # per evidence piece, the note a reasoner writes after reading it
    chain: bool  # True: evidence k > 0 is relevant only once notes[:k] are in memory


# Helpers ----------------------------------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token estimate: one token per ``CHARS_PER_TOKEN`` characters."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def question_split(identity: str, heldout_share: float = 0.4) -> Split:
    """The split of a question, fixed by a hash of its text (or HotpotQA id): the same on every machine, run and
    seed; about ``heldout_share`` of questions are held out, and a larger share only moves questions into it."""
    value = int.from_bytes(hashlib.sha256(f"gate-split:{identity}".encode()).digest()[:8], "big") / 2**64
    return "heldout" if value < heldout_share else "train"


def names_title(text: str, title: str) -> bool:
    """Whether ``text`` names a Wikipedia ``title`` (case-insensitive, HTML entities decoded, a trailing
    disambiguation like "(film)" dropped): how a bridge paragraph points to the next hop."""
    name = re.sub(r"\s*\([^()]*\)\s*$", "", html.unescape(title)).strip().lower()
    return bool(name) and name in html.unescape(text).lower()


class _TextCounter(TokenCounter):
    """A :class:`TokenCounter` over a ``count_tokens(text)`` callable instead of a tokenizer."""

    def __init__(self, count_tokens: Callable[[str], int]):
        super().__init__(None)
        self.count_tokens = count_tokens

    def __call__(self, title: str, text: str) -> int:
        key = (title, text)
        if key not in self._counts:
            self._counts[key] = self.count_tokens(format_paragraph(999, title, text)) + 2
        return self._counts[key]


def _contains_answer(text: str, answer: str) -> bool:
    """Whether a would-be distractor holds the answer string (then it may answer the question: not a negative)."""
    answer = answer.strip().lower()
    return bool(answer) and answer not in _YES_NO and answer in text.lower()


def _document(
    paragraphs: list[tuple[str, str]], evidence: Sequence[int], rng: random.Random
) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The shuffled numbered document and the spans of the paragraphs at ``evidence`` indices, in that order."""
    order = list(range(len(paragraphs)))
    rng.shuffle(order)
    shuffled = [paragraphs[index] for index in order]
    positions = [order.index(index) for index in evidence]
    text, spans = join_paragraphs(shuffled, set(positions))
    by_position = dict(zip(sorted(positions), spans))
    return text, tuple(by_position[position] for position in positions)


def _take_until(
    candidates: Sequence[tuple[str, str]], count: TokenCounter, total: int, target: int
) -> tuple[list[tuple[str, str]], int]:
    """``candidates`` in order while the running total stays under ``target``."""
    taken = []
    for paragraph in candidates:
        if total >= target:
            break
        taken.append(paragraph)
        total += count(*paragraph)
    return taken, total


def _fill(
    pool: Sequence[tuple[str, str]],
    count: TokenCounter,
    total: int,
    target: int,
    rng: random.Random,
    keep: Callable[[tuple[str, str]], bool],
) -> list[tuple[str, str]]:
    if total >= target:
        return []
    return draw_paragraphs(pool, count, target, rng, start_tokens=total, keep=keep)


# HotpotQA ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _HotpotQuestion:
    row: dict
    identity: str
    gold: tuple[str, str]  # the two gold titles, in hop order
    notes: tuple[str, str]
    chain: bool


def _supporting(row: dict) -> dict[str, list[str]]:
    """Each supporting title's supporting sentences (stripped, in sentence order; invalid ids dropped)."""
    sentences = dict(zip(row["context"]["title"], row["context"]["sentences"]))
    chosen: dict[str, set[int]] = {}
    for title, sent_id in zip(row["supporting_facts"]["title"], row["supporting_facts"]["sent_id"]):
        chosen.setdefault(title, set())
        if title in sentences and 0 <= sent_id < len(sentences[title]):
            chosen[title].add(sent_id)
    return {title: [sentences[title][i].strip() for i in sorted(ids)] for title, ids in chosen.items() if ids}


def _hotpot_question(row: dict) -> _HotpotQuestion | None:
    """The gold titles in hop order, their notes and whether they chain; None for a row without two usable gold
    paragraphs."""
    support = _supporting(row)
    titles = list(dict.fromkeys(row["supporting_facts"]["title"]))
    if len(titles) != 2 or any(title not in support for title in titles):
        return None
    first, second = titles
    forward = names_title(" ".join(support[first]), second)
    backward = names_title(" ".join(support[second]), first)
    chain = row.get("type") == "bridge" and forward != backward
    if chain and backward:
        first, second = second, first
    identity = str(row.get("_id") or row["question"])
    notes = (" ".join(support[first]), " ".join(support[second]))
    return _HotpotQuestion(row, identity, (first, second), notes, chain)


def _hotpot_examples(
    rows: list[dict],
    squad: dict[str, list[tuple[str, str]]],
    count: TokenCounter,
    tokens: int,
    seed: int,
    share: float,
    per_family: dict[str, int | None],
) -> list[GateExample]:
    questions: list[_HotpotQuestion] = []
    for question in map(_hotpot_question, rows):
        if question is not None and all(question.row["question"] != q.row["question"] for q in questions):
            questions.append(question)
    splits = {id(q.row): question_split(q.identity, share) for q in questions}
    examples: list[GateExample] = []
    for family in ("hotpot-bridge", "hotpot-comparison"):
        kind = family.removeprefix("hotpot-")
        chosen = [q for q in questions if q.row.get("type") == kind]
        limit = per_family[family]
        for question in chosen if limit is None else chosen[:limit]:
            examples.append(_hotpot_example(question, questions, splits, squad, count, tokens, seed, family))
    return examples


def _hotpot_example(
    question: _HotpotQuestion,
    questions: list[_HotpotQuestion],
    splits: dict[int, Split],
    squad: dict[str, list[tuple[str, str]]],
    count: TokenCounter,
    tokens: int,
    seed: int,
    family: str,
) -> GateExample:
    row = question.row
    split = splits[id(row)]
    rng = random.Random(f"gate-hotpot-{seed}-{question.identity}")
    own = dict(hotpot_paragraphs(row))
    gold = [(title, own[title]) for title in question.gold]
    distractors = [(title, text) for title, text in own.items() if title not in question.gold]
    rng.shuffle(distractors)
    chosen, total = _take_until(distractors, count, sum(count(*p) for p in gold), tokens)
    # Then paragraphs of other questions of the same split (never a held-out question's in a train document), and
    # SQuAD paragraphs of the split; none with one of this question's titles or its answer.
    pool = [other for other in questions if other.row is not row and splits[id(other.row)] == split]
    others = [paragraph for other in pool for paragraph in hotpot_paragraphs(other.row)]
    others = list(dict.fromkeys(others + squad[split]))
    answer = str(row["answer"])
    chosen += _fill(others, count, total, tokens, rng, lambda p: p[0] not in own and not _contains_answer(p[1], answer))
    text, spans = _document(gold + chosen, [0, 1], rng)
    key = f"hotpot-{row['_id']}" if row.get("_id") else f"hotpot-{_digest(row['question'])}"
    return GateExample(key, family, split, row["question"], answer, text, spans, question.notes, question.chain)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


# SQuAD ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SquadQuestion:
    key: str
    article: str
    context: str
    question: str
    answer: str
    note: str


def _answer_sentence(context: str, answer: str, start: int) -> str:
    """The sentence(s) of ``context`` holding the answer at ``start`` (its first occurrence if ``start`` is off)."""
    if context[start : start + len(answer)] != answer:
        start = context.find(answer)
    end = start + len(answer)
    ends = sentence_ends(context)
    starts = [0, *ends[:-1]]
    first = next((i for i, stop in enumerate(ends) if start < stop), len(ends) - 1)
    last = next((i for i, stop in enumerate(ends) if end <= stop), len(ends) - 1)
    return context[starts[first] : ends[max(first, last)]].strip() or context.strip()


def _squad_questions(directory: Path) -> list[_SquadQuestion]:
    """Answerable SQuAD questions (first gold answer, unanswerable v2 questions skipped), in file order."""
    path = directory / SQUAD_FILE
    if not path.is_file():
        return []
    questions = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        title = article["title"].replace("_", " ")
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph.get("qas", []):
                answers = [a for a in qa.get("answers", []) if a["text"].strip() and a["text"] in context]
                if qa.get("is_impossible") or not answers or not qa["question"].strip():
                    continue
                answer = answers[0]
                note = _answer_sentence(context, answer["text"], answer.get("answer_start", -1))
                questions.append(
                    _SquadQuestion(f"squad-{qa['id']}", title, context, qa["question"].strip(), answer["text"], note)
                )
    return questions


def _squad_examples(
    questions: list[_SquadQuestion],
    squad: dict[str, list[tuple[str, str]]],
    count: TokenCounter,
    tokens: int,
    seed: int,
    share: float,
    limit: int | None,
    seen: set[str],
) -> list[GateExample]:
    order = list(range(len(questions)))
    random.Random(f"gate-squad-{seed}").shuffle(order)
    articles: dict[str, list[tuple[str, str]]] = {}
    for question in questions:
        article = articles.setdefault(question.article, [])
        if (question.article, question.context) not in article:
            article.append((question.article, question.context))
    examples: list[GateExample] = []
    for index in order:
        if limit is not None and len(examples) >= limit:
            break
        question = questions[index]
        if question.question in seen:
            continue
        seen.add(question.question)
        split = question_split(question.question, share)
        rng = random.Random(f"gate-{question.key}-{seed}")
        evidence = (question.article, question.context)

        def keep(paragraph: tuple[str, str], evidence=evidence, answer=question.answer) -> bool:
            return paragraph[1] != evidence[1] and not _contains_answer(paragraph[1], answer)

        # Hard negatives: other paragraphs of the same article up to half the document, then the split's pool.
        siblings = [p for p in articles[question.article] if keep(p)]
        rng.shuffle(siblings)
        chosen, total = _take_until(siblings, count, count(*evidence), max(count(*evidence), tokens // 2))
        chosen += _fill(squad[split], count, total, tokens, rng, lambda p, chosen=chosen: keep(p) and p not in chosen)
        text, spans = _document([evidence, *chosen], [0], rng)
        examples.append(
            GateExample(
                question.key, "squad", split, question.question, question.answer, text, spans, (question.note,), False
            )
        )
    return examples


# Needles ----------------------------------------------------------------------------------------------------


# Training needles say the same kinds of thing as the evaluation needles (eval/needles.py) in other words and
# with other invented names, so held-out needle results measure relevance, not a memorised phrase or name.
TRAIN_ADJECTIVES = (
    "mossy scarlet lower inner frosted outer pale windward leeward sunken rusted hillside walled leaning narrow"
).split()
TRAIN_NOUNS = "granary kennel chapel mill loft forge stable dairy brewhouse lodge barn bakehouse orchard mews".split()
TRAIN_FIRST = "Aldric Bryony Caelan Dorienne Esmond Fenella Gideon Heloise Ivor Jessamy".split()
TRAIN_LAST = "Ashgrove Blackwood Cresswell Dunstan Everleigh Fairbairn Greythorn Hartigan".split()
TRAIN_COMPANIES = "Corvane Lumiq Pellaro Strathyn Vantorr Wexley Yarrowby Zephyra".split()
TRAIN_TRADES = ["Logistics", "Ceramics", "Optics", "Milling"]
TRAIN_TOWNS = "Brindleford Cobbersley Dunmarrow Eskerby Fallowmere Gorsehithe Hollinbrae Kettlewick".split()


def _combination(rng: random.Random) -> str:
    return str(rng.randint(100_000, 999_999))


def train_single(rng: random.Random) -> tuple[list[str], str, str]:
    place = f"{rng.choice(TRAIN_ADJECTIVES)} {rng.choice(TRAIN_NOUNS)}"
    code = _combination(rng)
    return (
        [f"Caretaker's log: the padlock on the {place} opens with the combination {code}."],
        (f"Which combination opens the padlock on the {place}?"),
        code,
    )


def train_multikey(rng: random.Random, keys: int = 4) -> tuple[list[str], str, str]:
    adjectives = rng.sample(TRAIN_ADJECTIVES, keys)
    noun = rng.choice(TRAIN_NOUNS)
    codes = [_combination(rng) for _ in range(keys)]
    facts = [
        f"Caretaker's log: the padlock on the {a} {noun} opens with the combination {c}."
        for a, c in zip(adjectives, codes)
    ]
    asked = rng.randrange(keys)
    return facts, f"Which combination opens the padlock on the {adjectives[asked]} {noun}?", codes[asked]


def train_twohop(rng: random.Random) -> tuple[list[str], str, str]:
    person = f"{rng.choice(TRAIN_FIRST)} {rng.choice(TRAIN_LAST)}"
    company = f"{rng.choice(TRAIN_COMPANIES)} {rng.choice(TRAIN_TRADES)}"
    town = rng.choice(TRAIN_TOWNS)
    facts = [
        f"Payroll ledger: {person} is employed as a surveyor by {company}.",
        f"Trade directory: the main office of {company} is in the town of {town}.",
    ]
    return facts, f"In which town is the main office of the firm that employs {person}?", town


TRAIN_NEEDLES = {"needle": train_single, "needle-multikey": train_multikey, "needle-twohop": train_twohop}


def _needle_examples(
    family: str,
    pools: dict[str, list[tuple[str, str]]],
    count: TokenCounter,
    tokens: int,
    seed: int,
    share: float,
    limit: int,
    seen: set[str],
) -> list[GateExample]:
    """``limit`` needle examples with distinct questions, from the ``gate-{family}-{seed}-{i}`` streams."""
    examples: list[GateExample] = []
    index = 0
    while len(examples) < limit:
        if index > 50 * limit + 100:
            raise ConfigurationError(f"could not draw {limit} distinct {family} questions")
        rng = random.Random(f"gate-{family}-{seed}-{index}")
        index += 1
        facts, question, answer = TRAIN_NEEDLES[family](rng)
        if question in seen:
            continue
        seen.add(question)
        split = question_split(question, share)
        text, spans = haystack_with_facts(pools[split], count, tokens, facts, rng)
        if family == "needle-multikey":  # the asked key's fact; the look-alike facts are hard negatives
            key = question.removeprefix("Which combination opens the padlock on the ").removesuffix("?")
            asked = [
                i
                for i, fact in enumerate(facts)
                if f"padlock on the {key} opens with the combination {answer}." in fact
            ]
            if len(asked) != 1:
                raise ConfigurationError(f"cannot tell which multikey fact answers {question!r}")
            facts, spans = [facts[asked[0]]], [spans[asked[0]]]
        examples.append(
            GateExample(
                f"{family}-s{seed}-{index - 1}",
                family,
                split,
                question,
                answer,
                text,
                tuple(spans),
                tuple(facts),
                family == "needle-twohop",
            )
        )
    return examples


# Entry points -----------------------------------------------------------------------------------------------


def _amounts(per_family: dict[str, int] | None) -> dict[str, int | None]:
    amounts = dict(DEFAULT_PER_FAMILY)
    for family, amount in (per_family or {}).items():
        if family not in FAMILIES:
            raise ConfigurationError(f"unknown gate-data family {family!r}; choose from {', '.join(FAMILIES)}")
        if amount is not None and (not isinstance(amount, int) or amount < 0):
            raise ConfigurationError(f"the example count of {family} must be an integer >= 0, got {amount!r}")
        amounts[family] = amount
    return amounts


def gate_examples(
    data: Path | None,
    *,
    tokens: int = 3000,
    per_family: dict[str, int] | None = None,
    seed: int = 0,
    heldout_share: float = 0.4,
    count_tokens: Callable[[str], int] | None = None,
) -> list[GateExample]:
    """Gate training examples of every family, train and held-out together (filter on ``split``), documents of
    about ``tokens`` tokens (by ``count_tokens``, default :func:`estimate_tokens`); deterministic for ``seed``.

    ``data`` is the dataset directory (``hotpotqa/`` and ``squad/`` as in ``shared/data``); families whose file
    is missing are skipped, so ``data=None`` gives the needle families over generated text. ``per_family`` sets
    the number of examples of a family (train and held-out together; 0 leaves it out; HotpotQA defaults to every
    row), over :data:`DEFAULT_PER_FAMILY`. Questions are distinct across the whole list.
    """
    if tokens < MIN_TOKENS:
        raise ConfigurationError(f"gate documents must be at least {MIN_TOKENS} tokens, got {tokens}")
    if not 0.0 <= heldout_share <= 1.0:
        raise ConfigurationError(f"heldout_share must be between 0 and 1, got {heldout_share}")
    amounts = _amounts(per_family)
    count = _TextCounter(count_tokens or estimate_tokens)
    directory = None if data is None else Path(data).expanduser()
    if directory is not None and not directory.is_dir():
        raise DocumentError(f"dataset directory {str(directory)!r} does not exist")

    pools = {split: paragraph_pool(directory, split, GENERATED_PER_SPLIT) for split in SPLITS}
    squad = {split: [(p.title, p.text) for p in pools[split] if p.source == "squad"] for split in SPLITS}
    haystacks = {split: [(p.title, p.text) for p in pools[split]] for split in SPLITS}
    examples: list[GateExample] = []
    seen: set[str] = set()
    if directory is not None and (directory / HOTPOT_FILE).is_file():
        hotpot = _hotpot_examples(load_hotpot(directory), squad, count, tokens, seed, heldout_share, amounts)
        seen.update(example.question for example in hotpot)
        examples += hotpot
    if directory is not None and amounts["squad"] != 0:
        questions = _squad_questions(directory)
        examples += _squad_examples(questions, squad, count, tokens, seed, heldout_share, amounts["squad"], seen)
    for family in NEEDLE_KINDS:
        limit = amounts[family]
        if limit:
            examples += _needle_examples(family, haystacks, count, tokens, seed, heldout_share, limit, seen)
    return examples


def split_counts(examples: Iterable[GateExample]) -> dict[str, dict[str, int]]:
    """Examples per family and split, plus chained ones, with a ``total`` row: ``{family: {"train": n,
    "heldout": m, "chain": c}}`` in :data:`FAMILIES` order (families without examples left out)."""
    counts: dict[str, dict[str, int]] = {}
    total = {"train": 0, "heldout": 0, "chain": 0}
    for example in examples:
        row = counts.setdefault(example.family, {"train": 0, "heldout": 0, "chain": 0})
        for target in (row, total):
            target[example.split] += 1
            target["chain"] += int(example.chain)
    ordered = {family: counts[family] for family in FAMILIES if family in counts}
    ordered.update({family: row for family, row in counts.items() if family not in ordered})
    ordered["total"] = total
    return ordered
