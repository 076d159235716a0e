"""Recall for agents: which stored messages matter for a query, with no decoding at all.

Two ways to rank, chosen by :class:`RecallSettings` (the memory block, the LangGraph store and the MCP server call
:func:`recall` with theirs):

- ``ranker="gate"``: the engine's own selection (``engine.select``) with a working memory that a read leaves as it
  was (``KeptMemory``): every candidate is judged against the query alone by the gate's rule, the scan's
  selections, scores and top-k fallbacks are otherwise the engine's own. On a conversation this recalls the
  user's own questions, since a block that is itself a question makes any question likely.
- a stage-1 scorer (``"lexical"``, ``"keys"``, ``"hybrid"``, ``"hybrid_sum"``: ``gate.scorers.SCORERS``) ranks every
  block; the gate's rule then judges only the ``judged`` best of them, each gain minus the block's own gain for a
  null question (its prior: how likely the block makes *any* question), so question-shaped blocks stop drawing
  every query. ``judged=0`` returns stage 1's ranking as it is.

``supersede``: of two recalled blocks where the newer one matches every query term the older one matches (both
state the same slot: "my favourite drink is green tea", later "my favourite drink is now espresso"), only the newer
is recalled; bank order is time order in an appended bank. ``floor``: only blocks scoring above it are recalled, so
a query about something never stored can get nothing back ("you never told me"). The lexical ranker's score is the
raw BM25 (its z-score's order, with an absolute zero): a floor of 0 there means "shares a term with the query".
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from lychee_memory import LycheeMemory, MemoryBank, SelectedBlock
from lychee_memory.answer import selected_block
from lychee_memory.errors import ConfigurationError
from lychee_memory.filters import DocumentFilter
from lychee_memory.gate import GateScan, LexicalScorer, ScanState, StageOneScorer
from lychee_memory.lexical import terms
from lychee_memory.reasoner import Reasoner, UpdateObserver
from lychee_memory.working_memory import MemoryStrategy

from .engines import call_engine

RecallRanker = Literal["gate", "lexical", "keys", "hybrid", "hybrid_sum"]
NULL_QUESTION = "N/A"  # the key scorer's null question too: it asks about nothing
PRIORS_KEPT = 4096  # block priors kept per engine: a stored message's prior is computed once per process


@dataclass(frozen=True)
class KeptMemory(MemoryStrategy):
    """A read changes nothing: no notes are written, so nothing is decoded."""

    name: ClassVar[str] = "kept"

    def update(
        self,
        reasoner: Reasoner,
        bank: MemoryBank,
        reads: Sequence[tuple[ScanState, int]],
        observe: UpdateObserver | None = None,
    ) -> list[str]:
        return [state.memory for state, _ in reads]


@dataclass(frozen=True)
class RecallSettings:
    """How recall ranks a bank's blocks for a query (see the module docstring), validated on creation.

    ``ranker``: ``"gate"`` (the engine's scan) or a stage-1 scorer name. ``judged``: blocks of stage 1's best the
    gate's rule judges (0: stage 1 alone; ignored by ``"gate"``). ``prior``: subtract each judged block's own gain
    for ``null_question``. ``floor``: only scores above it are recalled (None: the k best always are); its scale is
    the final score's (nats of gain when blocks are judged, else BM25 for lexical, z-scores for the others).
    ``supersede``: drop a recalled block when a newer recalled one contains every query term it contains.
    """

    ranker: RecallRanker = "gate"
    judged: int = 0
    prior: bool = False
    floor: float | None = None
    supersede: bool = False
    null_question: str = NULL_QUESTION

    def __post_init__(self) -> None:
        if self.ranker not in get_args(RecallRanker):
            raise ConfigurationError(
                f"recall ranker must be one of {', '.join(get_args(RecallRanker))}, got {self.ranker!r}"
            )
        if isinstance(self.judged, bool) or not isinstance(self.judged, int) or self.judged < 0:
            raise ConfigurationError(f"recall judged must be a whole number of blocks, 0 or more, got {self.judged!r}")
        if self.floor is not None and (
            isinstance(self.floor, bool) or not isinstance(self.floor, (int, float)) or not math.isfinite(self.floor)
        ):
            raise ConfigurationError(f"recall floor must be a finite number or None, got {self.floor!r}")
        if not isinstance(self.null_question, str) or not self.null_question.strip():
            raise ConfigurationError("recall null_question must be a non-empty question")
        if self.ranker != "gate" and self.judged == 0 and self.prior:
            raise ConfigurationError("recall prior needs judged blocks (judged > 0): stage 1 has no per-block prior")


GATE_RECALL = RecallSettings()
"""The engine's scan, as recall was before ``RecallSettings`` (the default of :func:`recall`)."""

CONVERSATION_RECALL = RecallSettings(ranker="lexical", supersede=True, floor=0.0)
"""The memory block's default: BM25 over the messages, newer statements of a slot superseding older ones, nothing
recalled when no message shares a term with the query. On the scripted 320-turn conversation of
benchmarks/agent_memory.py (k=2) it passes 15/22 probes on seed 0 (where it was chosen) and on seed 1 (where it was
confirmed) against the gate's 1 and 2, returns nothing for 8 of the 10 never-mentioned probes, and decodes nothing
and runs no forward at all."""


def recall(
    engine: LycheeMemory,
    query: str,
    bank: MemoryBank,
    k: int,
    filters: dict[str, object] | None = None,
    settings: RecallSettings | None = None,
) -> list[SelectedBlock]:
    """Up to ``k`` blocks of ``bank`` for ``query``, best first by ``settings`` (default :data:`GATE_RECALL`),
    decoding nothing; ``filters`` restrict them to matching documents."""
    settings = GATE_RECALL if settings is None else settings
    if settings.ranker == "gate":
        blocks = call_engine(engine, lambda: engine.select(query, bank, k=k, filters=filters, memory=KeptMemory()))
    else:
        blocks = call_engine(engine, lambda: _ranked(engine, query, bank, k, filters, settings))
    if settings.floor is not None:
        blocks = [block for block in blocks if block.score > settings.floor]
    return superseded(query, blocks) if settings.supersede else blocks


def superseded(query: str, blocks: Sequence[SelectedBlock]) -> list[SelectedBlock]:
    """``blocks`` (in their order) without those a newer one of them supersedes: a block whose query terms (the
    query's lexical terms it contains) are not empty and all in a later block of the same bank."""
    asked = set(terms(query))
    matched = [asked & set(terms(block.text)) for block in blocks]
    kept = []
    for block, own in zip(blocks, matched):
        newer = (
            other
            for other, theirs in zip(blocks, matched)
            if other.bank == block.bank
            and other.document_id != block.document_id
            and other.index > block.index
            and own <= theirs
        )
        if not own or next(newer, None) is None:
            kept.append(block)
    return kept


def _ranked(
    engine: LycheeMemory,
    query: str,
    bank: MemoryBank,
    k: int,
    filters: dict[str, object] | None,
    settings: RecallSettings,
) -> list[SelectedBlock]:
    """Stage 1 over every block, then the gate's rule (minus each block's prior) over the best ``judged``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigurationError(f"k must be a positive number of blocks, got {k!r}")
    question = engine.check_question(query)
    engine.check_bank(bank)
    bank = DocumentFilter.parse(filters).apply(bank)
    indices = list(range(len(bank)))
    if not indices:
        return []
    initial = engine.config.prompts.initial_memory
    scorer = _scorer(engine, settings.ranker, bank)
    if isinstance(scorer, LexicalScorer):  # raw BM25: the same order as its z-score, and 0 means no shared term
        stage_one = dict(zip(indices, scorer.bm25(bank, terms(question), indices)))
    else:
        stage_one, _ = scorer.rank(bank, question, initial, indices)
    floor = min(stage_one.values(), default=0.0) - 1.0
    for index in indices:  # without the index the scorer reads, or pruned by its coarse pass: last, not never
        stage_one.setdefault(index, floor)
    ranked = sorted(indices, key=lambda index: (-stage_one[index], index))
    if settings.judged == 0:
        return [selected_block(bank, index, stage_one[index], fallback=False) for index in ranked[:k]]
    judged = ranked[: max(settings.judged, k)]
    scan = _gate_scan(engine)
    gains = scan.gains(bank, ScanState(question, initial), judged)
    if settings.prior:
        priors = _priors(engine, scan, bank, judged, settings.null_question)
        gains = [gain - prior for gain, prior in zip(gains, priors)]
    order = sorted(range(len(judged)), key=lambda position: (-gains[position], judged[position]))
    return [
        selected_block(bank, judged[position], gains[position], fallback=False, selected=True) for position in order[:k]
    ]


def _gate_scan(engine: LycheeMemory) -> GateScan:
    """A scan with the engine's rule and settings, used only to score blocks (``GateScan.gains``)."""
    gate = engine.config.gate
    assert gate.boundary_tolerance is not None
    return GateScan(engine.loaded, engine.prompts, engine.rule, gate, engine.threshold, gate.boundary_tolerance)


_priors_by_engine: weakref.WeakKeyDictionary[LycheeMemory, OrderedDict[tuple[str, str, int, str], float]] = (
    weakref.WeakKeyDictionary()
)


def _scorer(engine: LycheeMemory, name: str, bank: MemoryBank) -> StageOneScorer:
    """The engine's stage-1 scorer ``name`` for ``bank``; a bank without the gate index the key scorer reads is
    ranked by its text (the lexical scorer)."""
    scorer = engine.stage_one.scorer_named(name, bank)
    if scorer is None:
        scorer = engine.stage_one.scorer_named("lexical", bank)
    assert scorer is not None  # every bank has text
    return scorer


def _priors(engine: LycheeMemory, scan: GateScan, bank: MemoryBank, indices: list[int], null: str) -> list[float]:
    """Each block's gain for the null question (computed once per engine and block: keyed by document, offset and text)."""
    cache = _priors_by_engine.setdefault(engine, OrderedDict())
    keys = [
        (null, bank.spans[index].document_id, bank.spans[index].char_start, bank.spans[index].text) for index in indices
    ]
    todo = sorted({key: index for key, index in zip(keys, indices) if key not in cache}.items(), key=lambda x: x[1])
    if todo:
        initial = engine.config.prompts.initial_memory
        gains = scan.gains(bank, ScanState(null, initial), [index for _, index in todo])
        for (key, _), gain in zip(todo, gains):
            cache[key] = gain
        while len(cache) > PRIORS_KEPT:
            cache.popitem(last=False)
    for key in keys:
        cache.move_to_end(key)
    return [cache[key] for key in keys]
