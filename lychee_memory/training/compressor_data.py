"""Offline training data for the learned KV compressor: text chunks with planted facts and questions about them.

Each :class:`TrainingSample` is one chunk of about ``chunk_tokens`` tokens built from source paragraphs, with a
few planted facts (codes, names, dates and groups of look-alike keys) and the SQuAD questions of the paragraphs
it holds; the trainer encodes the chunk, then teacher-forces the questions' answers and a continuation probe
(the tokens right after the chunk) against the compressed memory.

Sources are the shared SQuAD paragraphs (with their answerable questions) when a data directory is given, plus
the project's generated text. The shared HotpotQA file is left out on purpose: its 60 questions are the RULER-HQA
evaluation samples, so its paragraphs (gold and distractors) are evaluation documents. Every paragraph belongs to one split by a hash of
its text (:func:`split_of`), so held-out evaluation never reads a training paragraph. Planted facts use their
own invented vocabulary and sentence templates, none of the evaluation needles' (:mod:`lychee_memory.eval.needles`),
so training never rehearses the exact facts the needle tasks ask about.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigurationError, DocumentError
from ..eval.haystack import generated_paragraphs
from ..eval.tasks import SQUAD_FILE, TokenCounter, format_paragraph

Split = Literal["train", "heldout"]
Tokenizer = Any  # a Hugging Face tokenizer: called as tokenizer(text, add_special_tokens=False).input_ids

HELDOUT_FRACTION = 0.2
SPLITS: tuple[Split, ...] = ("train", "heldout")
GENERATED_SEEDS: dict[str, int] = {"train": 7001, "heldout": 7002}  # evaluation's generated haystacks use 0 and 1
MIN_CHUNK_TOKENS = 64
FACT_KINDS = ("code", "name", "date", "lookalike")
_ATTEMPTS = 20  # draws per sample before giving up on planting a fact inside the chunk
_MARGIN = 4  # tokens left free at the chunk's end for merges that per-paragraph token estimates miss

# Invented vocabulary of the planted facts, disjoint from the evaluation needles' word lists (tests check it).
ITEM_ADJECTIVES = "blue crimson mossy saffron ochre pewter jade russet frosted cobalt tawny ashen".split()
ITEM_NOUNS = "kiln dovecote cistern strongbox pumphouse smokehouse icehouse sluice loft coffer winch furnace".split()
LOOKALIKE_SUFFIXES = "yard works stead row".split()  # "the blue kiln" vs "the blue kilnyard"
PLACES = "Quillbrook Saltharrow Thornwick Umbermoor Vellingford Wrexcombe Yarnmouth Zennacott Brackenholt Corriwell"
PLACES = PLACES.split()
GIVEN_NAMES = (
    "Almeric Briallen Cadogan Delyth Esmond Fionnuala Gwilym Hollis Isaura Jolyon Kerensa Lowri Mabyn Nesta Oriel "
    "Piran Rhoswen Sulien Tegan Wystan"
).split()
FAMILY_NAMES = (
    "Penhallow Trevaskis Colquite Ambrosen Ravenhill Ostrowe Vantreight Bellhaven Carrowmore Duskwood Elderkin "
    "Farnaby Greythorne Hawksmere Ingleby Lanyon Merriweather Nanscawen Pendarves Roskilly Tregarthen"
).split()
MONTHS = "January February March April May June July August September October November December".split()
_CODE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I or O, which read like digits

# (fact sentence, question) templates; {key} is the item a question names, {value} the answer.
CODE_TEMPLATES = (
    ("Ledger entry: the lock combination of the {key} is {value}.", "What is the lock combination of the {key}?"),
    ("The keeper's notebook says that the {key} opens with the code {value}.", "With which code does the {key} open?"),
    ("According to the inventory, the tag on the {key} reads {value}.", "What does the tag on the {key} read?"),
    ("Maintenance log: the {key} was registered under number {value}.", "Under which number was the {key} registered?"),
)
NAME_TEMPLATES = (
    ("The harbour roll lists {value} as the keeper of the {key}.", "Who is listed as the keeper of the {key}?"),
    ("Last winter {value} was appointed warden of the {key}.", "Who was appointed warden of the {key}?"),
    ("Parish note: the {key} was repaired by a carpenter called {value}.", "Which carpenter repaired the {key}?"),
    ("The deed for the {key} is held by {value}.", "Who holds the deed for the {key}?"),
)
DATE_TEMPLATES = (
    ("The {key} was first opened on {value}.", "On what date was the {key} first opened?"),
    ("Records show that the {key} changed hands on {value}.", "On what date did the {key} change hands?"),
    ("A plaque states that the {key} was sealed on {value}.", "On what date was the {key} sealed?"),
)


@dataclass(frozen=True)
class SourceParagraph:
    """A paragraph to build chunks from, with the SQuAD (question, answer) pairs it answers (empty otherwise)."""

    title: str
    text: str
    questions: tuple[tuple[str, str], ...] = ()
    source: str = "generated"  # "squad" or "generated"


@dataclass(frozen=True)
class PlantedFact:
    """A fact sentence planted in a chunk, the question only it answers, and the answer string."""

    sentence: str
    question: str
    answer: str
    kind: str  # one of FACT_KINDS


@dataclass(frozen=True)
class TrainingSample:
    """One training chunk: its token ids, what can be asked about it, and the continuation right after it."""

    chunk_ids: tuple[int, ...]  # exactly chunk_tokens ids, tokenized without special tokens
    facts: tuple[PlantedFact, ...]  # planted facts wholly inside chunk_ids
    questions: tuple[tuple[str, str], ...]  # SQuAD (question, answer) of paragraphs wholly inside the chunk
    probe_ids: tuple[int, ...]  # the probe_tokens ids that follow the chunk in the sample text
    source: str  # "<split>:<index>", e.g. "train:17"
    text: str = ""  # the whole sample text; chunk_ids + probe_ids are the start of its tokenization


# Splits and sources -----------------------------------------------------------------------------------------


def split_of(text: str) -> Split:
    """The split of a paragraph, fixed by a hash of its text: about ``HELDOUT_FRACTION`` of paragraphs are held
    out, the same ones on every machine and run, whatever pool they are drawn into."""
    value = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64
    return "heldout" if value < HELDOUT_FRACTION else "train"


def _squad_paragraphs(directory: Path) -> list[SourceParagraph]:
    """SQuAD paragraphs with their answerable questions (first gold answer each); [] without the file."""
    path = directory / SQUAD_FILE
    if not path.is_file():
        return []
    paragraphs = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        title = article["title"].replace("_", " ")
        for paragraph in article["paragraphs"]:
            questions = tuple(
                (qa["question"].strip(), qa["answers"][0]["text"])
                for qa in paragraph.get("qas", [])
                if not qa.get("is_impossible") and qa.get("answers") and qa["answers"][0]["text"].strip()
            )
            paragraphs.append(SourceParagraph(title, paragraph["context"], questions, "squad"))
    return paragraphs


def _generated(count: int, split: Split, seen: set[str]) -> list[SourceParagraph]:
    """``count`` generated paragraphs of ``split`` (drawn with the split's own seed, then filtered by
    :func:`split_of`, so both splits stay disjoint even if the two seeds ever produced the same paragraph)."""
    if count == 0:
        return []
    fraction = HELDOUT_FRACTION if split == "heldout" else 1 - HELDOUT_FRACTION
    drawn = math.ceil(count / fraction * 1.25) + 20
    while True:
        chosen, taken = [], set(seen)
        for title, text in generated_paragraphs(drawn, seed=GENERATED_SEEDS[split]):
            if text not in taken and split_of(text) == split:
                taken.add(text)
                chosen.append(SourceParagraph(title, text, (), "generated"))
                if len(chosen) == count:
                    return chosen
        drawn *= 2  # generated_paragraphs(n) is a prefix of generated_paragraphs(2n): the order is kept


def paragraph_pool(data: Path | None, split: Split, generated: int = 400) -> list[SourceParagraph]:
    """Every source paragraph of ``split``: with ``data``, its SQuAD paragraphs (answerable questions kept),
    deduplicated by text (never HotpotQA's, which are evaluation documents); then ``generated`` generated paragraphs of the split.
    Missing dataset files are skipped, so ``data=None`` or an empty directory gives generated text only."""
    if split not in SPLITS:
        raise ConfigurationError(f"unknown split {split!r}: use 'train' or 'heldout'")
    if generated < 0:
        raise ConfigurationError(f"generated paragraph count must be >= 0, got {generated}")
    pool: list[SourceParagraph] = []
    seen: set[str] = set()
    if data is not None:
        directory = Path(data).expanduser()
        if not directory.is_dir():
            raise DocumentError(f"dataset directory {str(directory)!r} does not exist")
        for paragraph in _squad_paragraphs(directory):
            if paragraph.text and paragraph.text not in seen and split_of(paragraph.text) == split:
                seen.add(paragraph.text)
                pool.append(paragraph)
    return pool + _generated(generated, split, seen)


# Planted facts ----------------------------------------------------------------------------------------------


def _code(rng: random.Random) -> str:
    """A 4-6 digit number or a letter-digit code like ``QX-4471``."""
    if rng.random() < 0.5:
        digits = rng.randint(4, 6)
        return str(rng.randint(10 ** (digits - 1), 10**digits - 1))
    return f"{rng.choice(_CODE_LETTERS)}{rng.choice(_CODE_LETTERS)}-{rng.randint(1000, 9999)}"


def _name(rng: random.Random) -> str:
    return f"{rng.choice(GIVEN_NAMES)} {rng.choice(FAMILY_NAMES)}"


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1700, 1950)}"


def _key(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(ITEM_ADJECTIVES), rng.choice(ITEM_NOUNS), rng.choice(PLACES)


def _spell(adjective: str, noun: str, place: str) -> str:
    return f"{adjective} {noun} at {place}"


def _lookalike_keys(rng: random.Random, size: int) -> list[str]:
    """``size`` keys that differ in one word: the adjective, the noun's suffix, or the place."""
    adjective, noun, place = _key(rng)
    mode = rng.choice(("adjective", "suffix", "place"))
    if mode == "adjective":
        return [_spell(other, noun, place) for other in rng.sample(ITEM_ADJECTIVES, size)]
    if mode == "place":
        return [_spell(adjective, noun, other) for other in rng.sample(PLACES, size)]
    nouns = [noun] + [noun + suffix for suffix in rng.sample(LOOKALIKE_SUFFIXES, size - 1)]
    rng.shuffle(nouns)
    return [_spell(adjective, other, place) for other in nouns]


def _fresh(rng: random.Random, make, used: set[str]) -> str:
    """A value from ``make(rng)`` not in ``used`` (then recorded there)."""
    while True:
        value = make(rng)
        if value not in used:
            used.add(value)
            return value


def planted_facts(rng: random.Random, count: int) -> list[PlantedFact]:
    """``count`` facts with distinct keys and values: single codes, names and dates, and look-alike groups of 2-3
    facts whose keys differ in one word under the same template, each with its own value and question (the
    distractors a compressor must keep apart)."""
    if count < 0:
        raise ConfigurationError(f"fact count must be >= 0, got {count}")
    facts: list[PlantedFact] = []
    keys: set[str] = set()
    values: set[str] = set()
    while len(facts) < count:
        left = count - len(facts)
        kind = rng.choices(FACT_KINDS, weights=(3, 2.5, 2, 2.5 if left >= 2 else 0))[0]
        if kind == "lookalike":
            size = min(rng.choice((2, 3)), left)
            group = _lookalike_keys(rng, size)
            if keys.intersection(group):
                continue
            keys.update(group)
            templates, make = rng.choice(((CODE_TEMPLATES, _code), (NAME_TEMPLATES, _name)))
            sentence, question = rng.choice(templates)
            for key in group:
                value = _fresh(rng, make, values)
                facts.append(PlantedFact(sentence.format(key=key, value=value), question.format(key=key), value, kind))
            continue
        key = _fresh(rng, lambda r: _spell(*_key(r)), keys)
        templates, make = {"code": (CODE_TEMPLATES, _code), "name": (NAME_TEMPLATES, _name)}.get(
            kind, (DATE_TEMPLATES, _date)
        )
        sentence, question = rng.choice(templates)
        value = _fresh(rng, make, values)
        facts.append(PlantedFact(sentence.format(key=key, value=value), question.format(key=key), value, kind))
    return facts


# Samples ----------------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "no", "vs", "etc", "co", "inc", "mt", "ft", "gen"}


def sentence_ends(text: str) -> list[int]:
    """Character offsets just after each sentence of ``text`` (and its end): where a fact can be appended
    without splitting a sentence. Abbreviations and initials ("Mr.", "U.S.", "J.") are not sentence ends."""
    ends = []
    for match in _SENTENCE_END.finditer(text):
        word = text[: match.start()].rsplit(None, 1)[-1] if text[: match.start()].strip() else ""
        if word.lower().strip("(\"'") in _ABBREVIATIONS or "." in word or len(word) == 1:
            continue
        ends.append(match.end())
    return sorted(set(ends) | {len(text.rstrip())})


class _Deck:
    """Random paragraph indices for one sample: no paragraph repeats until the whole pool has been used."""

    def __init__(self, size: int, rng: random.Random):
        self.size, self.rng = size, rng
        self.used: set[int] = set()

    def draw(self) -> int:
        if len(self.used) >= self.size:
            self.used.clear()
        while True:
            index = self.rng.randrange(self.size)
            if index not in self.used:
                self.used.add(index)
                return index


def _token_count(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False).input_ids)


def _positions(
    paragraphs: list[SourceParagraph], counts: list[int], tokenizer: Tokenizer, budget: int, limit: int
) -> list[tuple[int, int]]:
    """(paragraph, character offset) places where facts costing ``budget`` tokens still end inside the first
    ``limit`` tokens: the sentence ends of paragraphs wholly inside, or, when even the first paragraph is longer
    than the chunk, the sentence ends of that straddling paragraph that fit (counted on its prefixes), and failing
    those its very start (offset 0)."""
    positions: list[tuple[int, int]] = []
    start = 0
    for index, (paragraph, count) in enumerate(zip(paragraphs, counts)):
        if start + count + budget > limit:
            if positions:
                return positions
            for end in sentence_ends(paragraph.text):
                prefix = format_paragraph(index + 1, paragraph.title, paragraph.text[:end])
                if start + _token_count(tokenizer, prefix) + budget > limit:
                    break
                positions.append((index, end))
            if not positions and index == 0:  # a first sentence longer than the chunk: plant before it
                opening = format_paragraph(1, paragraph.title, "")
                if _token_count(tokenizer, opening) + budget <= limit:
                    positions.append((0, 0))
            return positions
        positions += [(index, end) for end in sentence_ends(paragraph.text)]
        start += count
    return positions


def _planted_text(paragraph: SourceParagraph, inserts: dict[int, list[str]]) -> str:
    """The paragraph's text with each list of fact sentences appended after the sentence ending at its offset
    (offset 0: put before the first sentence)."""
    text = paragraph.text
    for end in sorted(inserts, reverse=True):
        facts = " ".join(inserts[end])
        text = text[:end] + " " + facts + text[end:] if end else facts + " " + text
    return text


def _build_sample(
    pool: Sequence[SourceParagraph],
    tokenizer: Tokenizer,
    counter: TokenCounter,
    chunk_tokens: int,
    probe_tokens: int,
    facts_per_chunk: tuple[int, int],
    rng: random.Random,
    source: str,
) -> TrainingSample | None:
    """One draw of a sample, or None when no planted fact ended up inside the chunk (the caller draws again)."""
    facts = planted_facts(rng, rng.randint(*facts_per_chunk))
    costs = [_token_count(tokenizer, " " + fact.sentence) for fact in facts]
    deck = _Deck(len(pool), rng)
    paragraphs: list[SourceParagraph] = []
    counts: list[int] = []
    while sum(counts) <= chunk_tokens + probe_tokens:
        paragraphs.append(pool[deck.draw()])
        counts.append(counter(paragraphs[-1].title, paragraphs[-1].text))

    # Plant as many of the facts as fit inside the chunk (at least one), each after a random sentence.
    limit = chunk_tokens - _MARGIN
    for kept in range(len(facts), 0, -1):
        positions = _positions(paragraphs, counts, tokenizer, sum(costs[:kept]), limit)
        if positions:
            facts = facts[:kept]
            break
    else:
        return None
    inserts: dict[int, dict[int, list[str]]] = {}
    for fact in facts:
        index, end = rng.choice(positions)
        inserts.setdefault(index, {}).setdefault(end, []).append(fact.sentence)
    pieces = [
        format_paragraph(index + 1, paragraph.title, _planted_text(paragraph, inserts.get(index, {})))
        for index, paragraph in enumerate(paragraphs)
    ]

    while True:  # token estimates can fall short of the real count: add paragraphs until the probe fits
        text = "\n\n".join(pieces)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=_fast(tokenizer), verbose=False)
        ids = list(encoded["input_ids"])
        if len(ids) >= chunk_tokens + probe_tokens:
            break
        paragraph = pool[deck.draw()]
        pieces.append(format_paragraph(len(pieces) + 1, paragraph.title, paragraph.text))
        paragraphs.append(paragraph)

    chunk_ids = ids[:chunk_tokens]
    if "offset_mapping" in encoded:
        chunk_text = text[: encoded["offset_mapping"][chunk_tokens - 1][1]]
    else:
        chunk_text = tokenizer.decode(chunk_ids)
    kept_facts = tuple(fact for fact in facts if fact.sentence in chunk_text)
    if not kept_facts:
        return None
    questions: list[tuple[str, str]] = []
    for paragraph, piece in zip(paragraphs, pieces):
        if paragraph.questions and piece in chunk_text:
            questions += [qa for qa in paragraph.questions if qa[1] in piece and qa not in questions]
    return TrainingSample(
        chunk_ids=tuple(chunk_ids),
        facts=kept_facts,
        questions=tuple(questions),
        probe_ids=tuple(ids[chunk_tokens : chunk_tokens + probe_tokens]),
        source=source,
        text=text,
    )


def _fast(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer gives character offsets (Hugging Face fast tokenizers do)."""
    return bool(getattr(tokenizer, "is_fast", False))


def _check(pool: Sequence[SourceParagraph], chunk_tokens: int, facts_per_chunk: tuple[int, int], probe: int) -> None:
    if chunk_tokens < MIN_CHUNK_TOKENS:
        raise ConfigurationError(
            f"training chunks must be at least {MIN_CHUNK_TOKENS} tokens (room for a planted fact), got {chunk_tokens}"
        )
    if not pool:
        raise ConfigurationError("the paragraph pool is empty: give a data directory or generated paragraphs")
    low, high = facts_per_chunk
    if low < 1 or high < low:
        raise ConfigurationError(f"facts_per_chunk must be (low, high) with 1 <= low <= high, got {facts_per_chunk}")
    if probe < 0:
        raise ConfigurationError(f"probe_tokens must be >= 0, got {probe}")


def _pool_label(pool: Sequence[SourceParagraph]) -> str:
    """The split all of the pool's paragraphs belong to, or "mixed"."""
    splits = {split_of(paragraph.text) for paragraph in pool}
    return splits.pop() if len(splits) == 1 else "mixed"


def iter_samples(
    pool: Sequence[SourceParagraph],
    tokenizer: Tokenizer,
    chunk_tokens: int,
    seed: int,
    facts_per_chunk: tuple[int, int] = (1, 3),
    probe_tokens: int = 32,
    start: int = 0,
) -> Iterator[TrainingSample]:
    """Samples ``start``, ``start + 1``, ... without end: sample ``i`` depends only on ``seed`` and ``i``, so a
    trainer can stream as many as it needs and resume at any index (``make_samples`` takes the first ``n``)."""
    _check(pool, chunk_tokens, facts_per_chunk, probe_tokens)  # here, not in the generator: errors come at once
    return _samples(pool, tokenizer, chunk_tokens, seed, facts_per_chunk, probe_tokens, start)


def _samples(
    pool: Sequence[SourceParagraph],
    tokenizer: Tokenizer,
    chunk_tokens: int,
    seed: int,
    facts_per_chunk: tuple[int, int],
    probe_tokens: int,
    start: int,
) -> Iterator[TrainingSample]:
    counter = TokenCounter(tokenizer)
    label = _pool_label(pool)
    for index in itertools.count(start):
        rng = random.Random(f"compressor-data-{seed}-{index}")
        for _ in range(_ATTEMPTS):
            sample = _build_sample(
                pool, tokenizer, counter, chunk_tokens, probe_tokens, facts_per_chunk, rng, f"{label}:{index}"
            )
            if sample is not None:
                yield sample
                break
        else:
            raise ConfigurationError(
                f"could not plant a fact inside a {chunk_tokens}-token chunk in {_ATTEMPTS} draws: the pool's "
                "sentences are too long for chunks this short; use a larger chunk_tokens"
            )


def make_samples(
    pool: Sequence[SourceParagraph],
    tokenizer: Tokenizer,
    chunk_tokens: int,
    n: int,
    seed: int,
    facts_per_chunk: tuple[int, int] = (1, 3),
    probe_tokens: int = 32,
) -> list[TrainingSample]:
    """``n`` training samples of exactly ``chunk_tokens`` chunk tokens, each with >= 1 planted fact inside the
    chunk and ``probe_tokens`` continuation tokens after it; deterministic for ``seed``."""
    if n < 1:
        raise ConfigurationError(f"need at least one training sample, got n={n}")
    samples = iter_samples(pool, tokenizer, chunk_tokens, seed, facts_per_chunk, probe_tokens)
    return list(itertools.islice(samples, n))
