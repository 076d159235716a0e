"""Verbatim excerpts: sentences cut from a block's text with their source spans, scored against a question.

The excerpt memory (``working_memory.ExcerptMemory``) keeps, after each read, the block's sentences most relevant to
the question and the current memory, word for word, so a name or a code reaches the answer as the document wrote
it. This module holds what needs no model: sentence splitting (abbreviations, initials, decimals and codes do not
end a sentence; a line break does), the lexical score (BM25 over the candidate sentences, question terms plus the
memory's at a lower weight), and fitting scored sentences into a token budget without cutting one mid-sentence.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .lexical import Bm25Statistics, TermCounts

# Words after which a period does not end a sentence (compared lowercased, without the final period).
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc e.g i.e cf al inc ltd co corp mt ft gen col lt sgt capt cmdr rev hon gov sen "
    "rep pres no nos vol pp fig figs approx dept univ est ca jan feb mar apr jun jul aug sep sept oct nov dec "
    "u.s u.k u.n a.m p.m ph.d b.a m.a d.c op ed eds".split()
)
STOPWORDS = frozenset(
    "a an the and or but if of at by for with about against between into through during before after above below to "
    "from up down in out on off over under again further then once here there when where why how all any both each "
    "few more most other some such no nor not only own same so than too very can will just don should now is are was "
    "were be been being have has had having do does did doing i me my we our you your he him his she her it its they "
    "them their what which who whom this that these those am as until while would could also one".split()
)
_CANDIDATE_END = re.compile(r"[.!?]+[\"')\]\u201d\u2019]*(?=\s)")
_TERM = re.compile(r"[0-9A-Za-z\u00c0-\uffff]+")
SENTENCE_REACH = 1000  # characters looked at past a block's edge to complete a sentence it cuts


@dataclass(frozen=True)
class Excerpt:
    """A sentence kept verbatim: ``text`` is ``document[char_start:char_end]`` of ``document_id``."""

    text: str
    document_id: str
    char_start: int
    char_end: int
    block_index: int  # the block it was read from, numbered as its own bank numbers it
    score: float  # its relevance when last scored (higher: more relevant)
    bank: str | None = None  # the bank the block belongs to (a query over several banks reads their union)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "doc": self.document_id,
            "start": self.char_start,
            "end": self.char_end,
            "block": self.block_index,
            "score": round(self.score, 6),
            "bank": self.bank,
        }


def _ends_sentence(text: str, end: int) -> bool:
    """Whether the punctuation run ending at ``end`` (exclusive) closes a sentence, judged from the word before."""
    run_start = end
    while run_start > 0 and text[run_start - 1] in ".!?\"')]\u201d\u2019":
        run_start -= 1
    if "." not in text[run_start:end] or any(mark in text[run_start:end] for mark in "!?"):
        return True
    word_start = run_start
    while word_start > 0 and not text[word_start - 1].isspace() and text[word_start - 1] not in "(\"'\u201c":
        word_start -= 1
    word = text[word_start:run_start]
    following = text[end:].lstrip()
    if following[:1].islower():
        return False  # "approx. five" reads on
    if not word:
        return True
    if word.lower() in ABBREVIATIONS or (len(word) == 1 and word.isalpha() and word.isupper()):
        return False  # "Dr. Smith", the initial in "J. K. Rowling"
    if re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", word):
        return False  # "U.S." or "e.g." written without their last space
    return True


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of ``text``'s sentences, stripped of surrounding whitespace, in order.

    A sentence ends at ``.``/``!``/``?`` (with closing quotes or brackets) followed by whitespace, unless the word
    before is an abbreviation or an initial, or the next word starts lowercase; a line break always ends one.
    Decimals and codes ("3.14", "X-7.2B") never end a sentence: the period is not followed by whitespace.
    """
    cuts = {match.end() for match in _CANDIDATE_END.finditer(text) if _ends_sentence(text, match.end())}
    cuts |= {match.start() for match in re.finditer(r"\n", text)}
    spans: list[tuple[int, int]] = []
    start = 0
    for cut in [*sorted(cuts), len(text)]:
        piece = text[start:cut]
        left = len(piece) - len(piece.lstrip())
        right = len(piece.rstrip())
        if right > left:
            spans.append((start + left, start + right))
        start = cut
    return spans


def block_sentences(document: str, start: int, end: int, reach: int = SENTENCE_REACH) -> list[tuple[int, int]]:
    """Document character spans of the whole sentences that ``document[start:end]`` (a block) overlaps.

    A block's edge can fall inside a sentence; that sentence is completed from the document, looking at most
    ``reach`` characters past each edge (to the line break before and after), so no excerpt is a fragment.
    """
    before = document.rfind("\n", max(0, start - reach), start)
    low = before + 1 if before >= 0 else max(0, start - reach)
    after = document.find("\n", end, end + reach)
    high = after if after >= 0 else min(len(document), end + reach)
    return [
        (low + first, low + last)
        for first, last in split_sentences(document[low:high])
        if low + last > start and low + first < end
    ]


def fit_pieces(
    text: str, span: tuple[int, int], max_tokens: int, count_tokens: Callable[[str], int]
) -> list[tuple[int, int]]:
    """``span`` of ``text`` as it is, or cut at spaces into pieces of at most ``max_tokens`` when it is longer.

    A run-on "sentence" (a table row, a list without full stops) can outgrow any budget; its pieces are whole
    words, so nothing is truncated and every piece can be kept or dropped on its own.
    """
    start, end = span
    if count_tokens(text[start:end]) <= max_tokens:
        return [span]
    words = [(start + m.start(), start + m.end()) for m in re.finditer(r"\S+", text[start:end])]
    pieces: list[tuple[int, int]] = []
    first = 0
    while first < len(words):
        last = first
        while last + 1 < len(words) and count_tokens(text[words[first][0] : words[last + 1][1]]) <= max_tokens:
            last += 1
        pieces.append((words[first][0], words[last][1]))
        first = last + 1
    return pieces


def terms(text: str) -> list[str]:
    """The lowercased content words and numbers of ``text`` (stopwords left out)."""
    return [word for word in (m.group().lower() for m in _TERM.finditer(text)) if word not in STOPWORDS]


@dataclass(frozen=True)
class LexicalScorer:
    """BM25 of each candidate sentence for the question's terms, plus ``memory_weight`` times the memory's.

    Document frequencies come from the candidate sentences themselves (a block's, or the kept excerpts' when the
    memory is re-scored), so a word every sentence shares weighs little and a rare name or code weighs most. A
    heading-like line (fewer than two words that are not numbers: "Document 23:", "Chapter 4") scores through the
    question's terms only: through the memory, one kept heading would make every other heading look relevant.
    """

    memory_weight: float = 0.5

    def scores(self, sentences: Sequence[str], question: str, memories: Sequence[str]) -> list[float]:
        """Score of each sentence; ``memories[i]`` is the memory text sentence ``i`` is judged against."""
        counts = [TermCounts(Counter(found), len(found)) for found in map(terms, sentences)]
        if not counts:
            return []
        statistics = Bm25Statistics.of(counts)  # the project's BM25 (lexical.py), over these sentences
        asked = set(terms(question))
        return [
            statistics.score(asked, sentence)
            + (self.memory_weight * statistics.score(set(terms(memory)) - asked, sentence) if worded(sentence) else 0.0)
            for sentence, memory in zip(counts, memories)
        ]


def worded(sentence: TermCounts) -> bool:
    """Whether a sentence has at least two distinct content words that are not numbers (not a heading or a label)."""
    return sum(not term.isdigit() for term in sentence.counts) >= 2


def keep_within(scores: Sequence[float], costs: Sequence[int], budget: int, at_least_one: bool = True) -> list[int]:
    """Positions kept, best score first while their costs fit ``budget``; with ``at_least_one`` the best that fits
    is kept even at score 0 (the gate judged the block relevant). Returns the positions in ascending order."""
    order = sorted(range(len(scores)), key=lambda position: (-scores[position], position))
    kept: list[int] = []
    used = 0
    for position in order:
        if scores[position] <= 0 and (kept or not at_least_one):
            break
        if used + costs[position] <= budget:
            kept.append(position)
            used += costs[position]
    return sorted(kept)
