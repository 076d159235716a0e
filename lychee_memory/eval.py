"""Evaluation helpers: the sub_em metric, RULER-HQA samples, and needle-in-a-haystack documents.

Datasets are read at run time from a directory given by the caller or ``LYCHEE_DATA_DIR`` (HotpotQA
dev and SQuAD v2 dev subsets, CC BY-SA 4.0); nothing from them ships with the package.
"""

from __future__ import annotations

import json
import os
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import DocumentError

HOTPOT_FILE = Path("hotpotqa") / "hotpot_dev_distractor_q0-59.json"
SQUAD_FILE = Path("squad") / "squad_dev_v2_subset.json"


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The dataset directory: ``path``, else $LYCHEE_DATA_DIR; raises a DocumentError naming what is missing."""
    chosen = path or os.environ.get("LYCHEE_DATA_DIR")
    if not chosen:
        raise DocumentError(
            "no dataset directory: pass --data DIR or set LYCHEE_DATA_DIR (it holds hotpotqa/ and squad/)"
        )
    directory = Path(chosen).expanduser()
    if not directory.is_dir():
        raise DocumentError(f"dataset directory {str(directory)!r} does not exist")
    return directory


# Metric ------------------------------------------------------------------------------------------------


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


# Data --------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class QASample:
    """A question, its gold answers, and the document text to answer it from."""

    question: str
    answers: list[str]
    context: str
    sample_id: str


def ruler_hqa_sample(row: dict, pool: list[dict], n_documents: int, seed: int) -> QASample:
    """RULER-HQA style: the question's own 10 paragraphs plus random dev paragraphs, shuffled and numbered."""
    rng = random.Random(seed)
    own = [
        (title, "".join(sentences)) for title, sentences in zip(row["context"]["title"], row["context"]["sentences"])
    ]
    others = [
        (title, "".join(sentences))
        for other in pool
        if other is not row
        for title, sentences in zip(other["context"]["title"], other["context"]["sentences"])
    ]
    rng.shuffle(others)
    paragraphs = own + others[: max(0, n_documents - len(own))]
    rng.shuffle(paragraphs)
    context = "\n\n".join(format_paragraph(i + 1, title, text) for i, (title, text) in enumerate(paragraphs))
    return QASample(row["question"], [row["answer"]], context, f"hotpot-{row.get('_id', seed)}-{n_documents}")


@dataclass(frozen=True)
class Needle:
    """A planted fact and the question that only it answers."""

    fact: str
    question: str
    answer: str


NEEDLES = [
    Needle(
        "Harbourmaster's note: the access code for the east pier storage shed is 58213.",
        "What is the access code for the east pier storage shed?",
        "58213",
    ),
    Needle(
        "Ship registry entry: the research vessel that carried the Arvel survey team was named the Silver Heron.",
        "What was the name of the research vessel that carried the Arvel survey team?",
        "Silver Heron",
    ),
    Needle(
        "Archive memo: the quarterly review of the Tollan bridge project was moved to the city of Marrowgate.",
        "To which city was the quarterly review of the Tollan bridge project moved?",
        "Marrowgate",
    ),
    Needle(
        "Staff bulletin: the new head gardener at Kestrel Hall is a botanist named Odile Fenwick.",
        "Who is the new head gardener at Kestrel Hall?",
        "Odile Fenwick",
    ),
]


def needle_document(
    paragraphs: list[tuple[str, str]], tokenizer, target_tokens: int, needle: Needle, depth: float, seed: int
) -> str:
    """A haystack of numbered paragraphs of about ``target_tokens`` tokens with the needle at ``depth`` (0..1)."""
    rng = random.Random(seed)
    order = list(range(len(paragraphs)))
    rng.shuffle(order)
    chosen, total = [], 0
    for index in order:
        title, text = paragraphs[index]
        piece = format_paragraph(len(chosen) + 1, title, text)
        total += len(tokenizer(piece, add_special_tokens=False, verbose=False).input_ids) + 2
        chosen.append((title, text))
        if total >= target_tokens:
            break
    else:
        raise DocumentError(
            f"the paragraph pool holds only about {total} tokens, fewer than the {target_tokens} asked for"
        )
    position = min(len(chosen) - 1, max(0, round(depth * (len(chosen) - 1))))
    title, text = chosen[position]
    chosen[position] = (title, text + " " + needle.fact)
    return "\n\n".join(format_paragraph(i + 1, title, text) for i, (title, text) in enumerate(chosen))


# Running an evaluation ---------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """One question's outcome."""

    sample_id: str
    question: str
    answers: list[str]
    prediction: str
    correct: bool
    blocks_read: int
    query_seconds: float


@dataclass
class EvalReport:
    """Accuracy and timing over a set of samples."""

    benchmark: str
    mode: str
    results: list[EvalResult]

    @property
    def accuracy(self) -> float:
        return sum(r.correct for r in self.results) / max(1, len(self.results))

    def to_dict(self) -> dict:
        return {
            "benchmark": self.benchmark,
            "mode": self.mode,
            "samples": len(self.results),
            "sub_em": round(self.accuracy, 4),
            "mean_query_seconds": round(sum(r.query_seconds for r in self.results) / max(1, len(self.results)), 3),
            "results": [r.__dict__ for r in self.results],
        }


def ruler_hqa_samples(directory: Path, n_documents: int, limit: int | None, seed: int = 0) -> list[QASample]:
    """RULER-HQA samples built from the HotpotQA dev file, ``n_documents`` paragraphs each."""
    rows = load_hotpot(directory)
    chosen = rows[:limit] if limit else rows
    return [ruler_hqa_sample(row, rows, n_documents, seed + index) for index, row in enumerate(chosen)]


def evaluate(
    engine, samples: Sequence[QASample], mode: str = "lychee", benchmark: str = "ruler-hqa", progress=None
) -> EvalReport:
    """Answer every sample with ``engine`` in ``mode`` and score it with sub_em."""
    results = []
    for sample in samples:
        answer = engine.ask(sample.question, [sample.context], mode=mode)
        results.append(
            EvalResult(
                sample_id=sample.sample_id,
                question=sample.question,
                answers=sample.answers,
                prediction=answer.text,
                correct=sub_em(answer.text, sample.answers),
                blocks_read=len(answer.blocks),
                query_seconds=answer.timings.get("query", 0.0),
            )
        )
        if progress is not None:
            progress(1)
    return EvalReport(benchmark, mode, results)


REFERENCE_FILE = Path("hotpotqa") / "lycheememory_reference_samples.json"


def reference_samples(directory: Path) -> list[QASample]:
    """The RULER-HQA rows exactly as the reference implementation built them (50 documents each)."""
    path = directory / REFERENCE_FILE
    if not path.is_file():
        raise DocumentError(f"reference samples file {str(path)!r} not found")
    rows = json.loads(path.read_text(encoding="utf-8"))
    samples = []
    for row in rows:
        truth = row["reward_model"]["ground_truth"]
        answers = truth if isinstance(truth, list) else [truth]
        info = row.get("extra_info", {})
        samples.append(
            QASample(
                info.get("question") or row["prompt"][0]["content"],
                answers,
                row["context"],
                f"reference-{info.get('index', len(samples))}",
            )
        )
    return samples
