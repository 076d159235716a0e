"""Evaluation tasks: RULER-HQA-style samples and generated needle families, at any context length.

Datasets are read at run time from a directory given by the caller or ``LYCHEE_DATA_DIR`` (HotpotQA dev
and SQuAD v2 dev subsets, CC BY-SA 4.0), or from a published RULER-HQA file; nothing from them ships with
the package. Needle tasks need no dataset: without one their haystack is the project's generated text. Every sample records where its evidence sits (character spans of the gold paragraphs or
planted facts) so the gate's recall and precision can be measured, and every builder is deterministic for
a seed.
"""

from __future__ import annotations

import json
import os
import random
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..choices import TASKS
from ..errors import ConfigurationError, DocumentError
from .haystack import generated_paragraphs
from .needles import NEEDLE_FAMILIES, Needle, distinct_needles, distinct_twohop_chains

HOTPOT_FILE = Path("hotpotqa") / "hotpot_dev_distractor_q0-59.json"
SQUAD_FILE = Path("squad") / "squad_dev_v2_subset.json"

Tokenizer = Any  # a Hugging Face tokenizer: called as tokenizer(text, add_special_tokens=False).input_ids


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The dataset directory: ``path``, else $LYCHEE_DATA_DIR, else ``shared/data`` next to or above the
    current directory; raises a DocumentError naming what is missing."""
    chosen = path or os.environ.get("LYCHEE_DATA_DIR")
    if not chosen:
        for parent in default_data_places():
            for candidate in (parent / "shared" / "data", parent / "data"):
                if (candidate / HOTPOT_FILE).is_file() or (candidate / SQUAD_FILE).is_file():
                    return candidate
        raise DocumentError(
            "no dataset directory: pass --data DIR or set LYCHEE_DATA_DIR (it holds hotpotqa/ and squad/)"
        )
    directory = Path(chosen).expanduser()
    if not directory.exists():
        raise DocumentError(f"dataset path {str(directory)!r} does not exist")
    return directory


def default_data_places() -> list[Path]:
    """Where the shared data is looked for when no directory is given: the working directory, the
    project, and their parents (each may hold ``shared/data`` or ``data``)."""
    return list(dict.fromkeys([Path.cwd(), *Path.cwd().parents, *Path(__file__).resolve().parents]))


def parse_lengths(text: str) -> list[int]:
    """``"7k,14k,28k"`` -> [7000, 14000, 28000] tokens; plain numbers are tokens."""
    lengths = []
    for item in text.split(","):
        item = item.strip().lower()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(k|m)?", item)
        if not match:
            raise ConfigurationError(f"cannot read context length {item!r}: use tokens like 7k, 14k, 28000")
        value = float(match.group(1)) * {"k": 1_000, "m": 1_000_000, None: 1}[match.group(2)]
        if value < 1:
            raise ConfigurationError(f"context length {item!r} must be at least one token")
        lengths.append(int(value))
    if not lengths:
        raise ConfigurationError("no context lengths given")
    return lengths


@dataclass(frozen=True)
class QASample:
    """A question, its gold answers, the document text to answer it from, and where the evidence sits."""

    question: str
    answers: list[str]
    context: str
    sample_id: str
    evidence: list[tuple[int, int]] = field(default_factory=list)  # character spans in ``context``


# Sources ---------------------------------------------------------------------------------------------------


def load_hotpot(directory: Path) -> list[dict]:
    path = directory / HOTPOT_FILE
    if not path.is_file():
        raise DocumentError(f"HotpotQA file {str(path)!r} not found")
    return json.loads(path.read_text(encoding="utf-8"))


def load_squad_paragraphs(directory: Path) -> list[tuple[str, str]]:
    """(title, paragraph) pairs of the SQuAD subset, in file order."""
    path = directory / SQUAD_FILE
    if not path.is_file():
        raise DocumentError(f"SQuAD file {str(path)!r} not found")
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    return [
        (article["title"].replace("_", " "), paragraph["context"])
        for article in data
        for paragraph in article["paragraphs"]
    ]


def format_paragraph(index: int, title: str, text: str) -> str:
    return f"Document {index}:\n{title}\n{text}"


def join_paragraphs(paragraphs: Sequence[tuple[str, str]], marked: set[int]) -> tuple[str, list[tuple[int, int]]]:
    """Numbered paragraphs joined by blank lines, and the character spans of the ``marked`` ones."""
    pieces, spans, offset = [], [], 0
    for position, (title, text) in enumerate(paragraphs):
        piece = format_paragraph(position + 1, title, text)
        if position in marked:
            spans.append((offset, offset + len(piece)))
        pieces.append(piece)
        offset += len(piece) + 2
    return "\n\n".join(pieces), spans


class TokenCounter:
    """Token counts of paragraphs under one tokenizer, cached: samples at many lengths reuse them."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._counts: dict[tuple[str, str], int] = {}

    def __call__(self, title: str, text: str) -> int:
        key = (title, text)
        if key not in self._counts:
            piece = format_paragraph(999, title, text)
            self._counts[key] = len(self.tokenizer(piece, add_special_tokens=False, verbose=False).input_ids) + 2
        return self._counts[key]


class PoolRepeatWarning(UserWarning):
    """A haystack needed more tokens than its paragraph pool holds, so paragraphs repeat in it."""


def draw_paragraphs(
    pool: Sequence[tuple[str, str]],
    count: TokenCounter,
    target_tokens: int,
    rng: random.Random,
    *,
    start_tokens: int = 0,
    at_least: int = 0,
    keep: Callable[[tuple[str, str]], bool] | None = None,
) -> list[tuple[str, str]]:
    """Paragraphs of ``pool`` in random order until they hold ``target_tokens`` (counting ``start_tokens``
    already placed) and number ``at_least``. A pool smaller than the target is drawn again in a fresh order,
    with a :class:`PoolRepeatWarning`: every paragraph appears once before any appears twice, so a 224K
    haystack can be built from a ~120K-token dataset subset."""
    chosen: list[tuple[str, str]] = []
    total, passes = start_tokens, 0
    while total < target_tokens or len(chosen) < at_least:
        order = list(range(len(pool)))
        rng.shuffle(order)
        passes += 1
        added = 0
        for index in order:
            if keep is not None and not keep(pool[index]):
                continue
            chosen.append(pool[index])
            total += count(*pool[index])
            added += 1
            if total >= target_tokens and len(chosen) >= at_least:
                break
        if added == 0:
            raise DocumentError(f"the paragraph pool has no usable paragraph for a {target_tokens}-token haystack")
        if passes == 1 and (total < target_tokens or len(chosen) < at_least):
            warnings.warn(
                f"the paragraph pool holds only about {total - start_tokens} tokens, fewer than the "
                f"{target_tokens} asked for: its paragraphs repeat, each pass in a fresh order",
                PoolRepeatWarning,
                stacklevel=3,
            )
    return chosen


# RULER-HQA --------------------------------------------------------------------------------------------------


def hotpot_paragraphs(row: dict) -> list[tuple[str, str]]:
    return [
        (title, "".join(sentences)) for title, sentences in zip(row["context"]["title"], row["context"]["sentences"])
    ]


def _gold_positions(row: dict, paragraphs: Sequence[tuple[str, str]]) -> set[int]:
    own = dict(hotpot_paragraphs(row))
    titles = set(row.get("supporting_facts", {}).get("title", []))
    return {i for i, (title, text) in enumerate(paragraphs) if title in titles and own.get(title) == text}


def ruler_hqa_at_length(
    row: dict,
    distractors: Sequence[tuple[str, str]],
    count: TokenCounter,
    target_tokens: int,
    seed: int,
    sample_id: str,
) -> QASample:
    """RULER-HQA by length: the question's own paragraphs plus shuffled distractors until ``target_tokens``."""
    rng = random.Random(seed)
    paragraphs = hotpot_paragraphs(row)
    own_titles = {title for title, _ in paragraphs}
    own_tokens = sum(count(title, text) for title, text in paragraphs)
    paragraphs += draw_paragraphs(
        distractors, count, target_tokens, rng, start_tokens=own_tokens, keep=lambda p: p[0] not in own_titles
    )
    rng.shuffle(paragraphs)
    context, spans = join_paragraphs(paragraphs, _gold_positions(row, paragraphs))
    return QASample(row["question"], [row["answer"]], context, sample_id, spans)


def ruler_hqa_samples(
    directory: Path, tokenizer: Tokenizer, target_tokens: int, n: int | None, seed: int = 0
) -> list[QASample]:
    """RULER-HQA-style samples at ``target_tokens``: HotpotQA questions, distractors from HotpotQA and SQuAD."""
    rows = load_hotpot(directory)
    chosen = rows[:n] if n else rows
    count = TokenCounter(tokenizer)
    samples = []
    for index, row in enumerate(chosen):
        own = {title for title, _ in hotpot_paragraphs(row)}
        distractors = [p for other in rows if other is not row for p in hotpot_paragraphs(other) if p[0] not in own]
        squad_path = directory / SQUAD_FILE
        if squad_path.is_file():
            distractors += load_squad_paragraphs_cached(directory)
        samples.append(
            ruler_hqa_at_length(
                row, distractors, count, target_tokens, seed + index, f"hotpot-{index}-{target_tokens // 1000}k"
            )
        )
    return samples


_SQUAD_CACHE: dict[Path, list[tuple[str, str]]] = {}


def load_squad_paragraphs_cached(directory: Path) -> list[tuple[str, str]]:
    if directory not in _SQUAD_CACHE:
        _SQUAD_CACHE[directory] = load_squad_paragraphs(directory)
    return _SQUAD_CACHE[directory]


def published_samples(path: Path, n: int | None = None) -> list[QASample]:
    """Rows of a published RULER-HQA file (MemAgent format: ``context``, ``input``, ``answers``; JSON or JSONL)
    or of the reference-implementation format (``context``, ``reward_model.ground_truth``, ``extra_info``)."""
    if not path.is_file():
        raise DocumentError(f"RULER-HQA file {str(path)!r} not found")
    text = path.read_text(encoding="utf-8")
    try:
        loaded = json.loads(text)
        rows = loaded if isinstance(loaded, list) else loaded.get("data", [loaded])
    except json.JSONDecodeError:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise DocumentError(f"{str(path)!r} is neither JSON nor JSON lines: {error}") from None
    samples = []
    for position, row in enumerate(rows[:n] if n else rows):
        if not isinstance(row, dict) or "context" not in row:
            raise DocumentError(f"row {position} of {str(path)!r} has no 'context' field")
        if "input" in row:
            question, answers = row["input"], row.get("answers", row.get("outputs", []))
        elif "reward_model" in row:
            info = row.get("extra_info", {})
            question = info.get("question") or row["prompt"][0]["content"]
            answers = row["reward_model"]["ground_truth"]
        else:
            raise DocumentError(
                f"row {position} of {str(path)!r} has neither 'input'/'answers' (MemAgent) nor 'reward_model' fields"
            )
        answers = [answers] if isinstance(answers, str) else list(answers)
        samples.append(QASample(question, answers, row["context"], f"{path.stem}-{row.get('index', position)}"))
    return samples


# Needles ----------------------------------------------------------------------------------------------------


def haystack_with_facts(
    paragraphs: Sequence[tuple[str, str]],
    count: TokenCounter,
    target_tokens: int,
    facts: Sequence[str],
    rng: random.Random,
    *,
    spread: bool = False,
) -> tuple[str, list[tuple[int, int]]]:
    """Shuffled numbered paragraphs of about ``target_tokens`` tokens, each fact appended to its own paragraph
    at a random depth (``spread``: at evenly spaced depths, so many facts land in different blocks); returns the
    text and the facts' character spans."""
    chosen = draw_paragraphs(paragraphs, count, target_tokens, rng, at_least=len(facts))
    if spread:
        positions = [int((i + 0.5) * len(chosen) / len(facts)) for i in range(len(facts))]
    else:
        positions = sorted(rng.sample(range(len(chosen)), len(facts)))
    shuffled_facts = list(facts)
    rng.shuffle(shuffled_facts)  # a chained fact may come before or after the one it depends on
    for position, fact in zip(positions, shuffled_facts):
        title, text = chosen[position]
        chosen[position] = (title, f"{text} {fact}")
    context, _ = join_paragraphs(chosen, set())
    spans = []
    for fact in facts:
        start = context.index(fact)
        spans.append((start, start + len(fact)))
    return context, spans


def needle_samples(
    family: str, paragraphs: Sequence[tuple[str, str]], tokenizer: Tokenizer, target_tokens: int, n: int, seed: int = 0
) -> list[QASample]:
    """``n`` generated samples of a needle family at ``target_tokens``, deterministic for ``seed``."""
    if family not in NEEDLE_FAMILIES:
        raise ConfigurationError(f"unknown needle family {family!r}; choose from {', '.join(NEEDLE_FAMILIES)}")
    count = TokenCounter(tokenizer)
    samples = []
    for index in range(n):
        rng = random.Random(f"{family}-{seed}-{index}-{target_tokens}")
        facts, question, answer = NEEDLE_FAMILIES[family](rng)
        context, spans = haystack_with_facts(paragraphs, count, target_tokens, facts, rng)
        samples.append(QASample(question, [answer], context, f"{family}-{index}-{target_tokens // 1000}k", spans))
    return samples


def many_needle_sample(
    paragraphs: Sequence[tuple[str, str]], tokenizer: Tokenizer, target_tokens: int, needles: int, seed: int
) -> list[QASample]:
    """One haystack of about ``target_tokens`` holding ``needles`` distinct facts of the ``needle`` family at evenly
    spread depths, one sample (question) per fact, all sharing the context: one ingest answers them all."""
    rng = random.Random(f"needles-{seed}-{target_tokens}")
    planted = distinct_needles(rng, needles)
    context, spans = haystack_with_facts(
        paragraphs, TokenCounter(tokenizer), target_tokens, [fact for fact, _, _ in planted], rng, spread=True
    )
    return [
        QASample(question, [answer], context, f"needles{seed}-{number}-{target_tokens // 1000}k", [span])
        for number, ((_, question, answer), span) in enumerate(zip(planted, spans))
    ]


def many_twohop_sample(
    paragraphs: Sequence[tuple[str, str]], tokenizer: Tokenizer, target_tokens: int, chains: int, seed: int
) -> list[QASample]:
    """One haystack of about ``target_tokens`` holding ``chains`` distinct two-hop chains (a person's employer, that
    employer's city), one sample per chain, all sharing the context. The 2 x ``chains`` facts sit at evenly spread
    depths in random pairs; chain i states the person first when i is even and the company first when it is odd,
    so both fact orders are asked equally. A sample's evidence is its two facts' spans, in chain order."""
    rng = random.Random(f"twohop-chains-{seed}-{target_tokens}")
    planted = distinct_twohop_chains(rng, chains)
    chosen = draw_paragraphs(paragraphs, TokenCounter(tokenizer), target_tokens, rng, at_least=2 * chains)
    slots = [int((i + 0.5) * len(chosen) / (2 * chains)) for i in range(2 * chains)]
    rng.shuffle(slots)
    for number, (facts, _, _) in enumerate(planted):
        early, late = sorted(slots[2 * number : 2 * number + 2])
        first, second = (facts[0], facts[1]) if number % 2 == 0 else (facts[1], facts[0])
        for position, fact in ((early, first), (late, second)):
            title, text = chosen[position]
            chosen[position] = (title, f"{text} {fact}")
    context, _ = join_paragraphs(chosen, set())
    samples = []
    for number, (facts, question, answer) in enumerate(planted):
        spans = [(context.index(fact), context.index(fact) + len(fact)) for fact in facts]
        sample_id = f"twohop{seed}-{number}-{'person-first' if number % 2 == 0 else 'company-first'}"
        samples.append(QASample(question, [answer], context, f"{sample_id}-{target_tokens // 1000}k", spans))
    return samples


def needle_document(
    paragraphs: list[tuple[str, str]], tokenizer: Tokenizer, target_tokens: int, needle: Needle, depth: float, seed: int
) -> str:
    """A haystack of numbered paragraphs of about ``target_tokens`` tokens with the needle at ``depth`` (0..1)."""
    rng = random.Random(seed)
    chosen = draw_paragraphs(paragraphs, TokenCounter(tokenizer), target_tokens, rng)
    position = min(len(chosen) - 1, max(0, round(depth * (len(chosen) - 1))))
    title, text = chosen[position]
    chosen[position] = (title, text + " " + needle.fact)
    return join_paragraphs(chosen, set())[0]


def task_source(task: str, data: str | os.PathLike[str] | None = None) -> Path | None:
    """Where ``task`` reads its text: a dataset directory or RULER-HQA file, or None for the project's own
    generated haystack (needle tasks without ``--data`` / $LYCHEE_DATA_DIR, so they work on a fresh clone).

    RULER-HQA needs HotpotQA: without ``data`` it looks in $LYCHEE_DATA_DIR and ``shared/data`` above the
    working directory, and says what is missing when none is found.
    """
    if task not in TASKS:
        raise ConfigurationError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if task == "ruler-hqa":
        return data_dir(data)
    if data is None and not os.environ.get("LYCHEE_DATA_DIR"):
        return None
    source = data_dir(data)
    if source.is_file():
        raise DocumentError(
            f"the {task} task builds its haystack from a dataset directory, not the file {str(source)!r}"
        )
    return source


def source_name(task: str, source: Path | None) -> str:
    """How reports name what a task's text came from: the generated haystack, SQuAD or HotpotQA (with path)."""
    if source is None:
        return "generated haystack"
    return f"{'HotpotQA' if task == 'ruler-hqa' else 'SQuAD haystack'} ({source})"


def build_samples(
    task: str,
    tokenizer: Tokenizer,
    target_tokens: int,
    n: int,
    data: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> list[QASample]:
    """The samples of ``task`` at one length. ``data`` is the dataset directory, or for ruler-hqa a published
    RULER-HQA file (then the file's own contexts are used and ``target_tokens`` is ignored); needle tasks
    without it plant their facts in the generated haystack (``haystack.py``)."""
    if n < 1:
        raise ConfigurationError(f"--n must be at least 1, got {n}")
    source = task_source(task, data)
    if task == "ruler-hqa":
        assert source is not None
        if source.is_file():
            return published_samples(source, n)
        return ruler_hqa_samples(source, tokenizer, target_tokens, n, seed)
    pool = generated_paragraphs() if source is None else load_squad_paragraphs_cached(source)
    return needle_samples(task, pool, tokenizer, target_tokens, n, seed)
