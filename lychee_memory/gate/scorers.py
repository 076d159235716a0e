"""The stage-1 scorers by name (``gate.prefilter``), and an engine's stage 1: its scorer, built once per kind of bank.

Add a scorer by writing a :class:`~lychee_memory.gate.stage1.StageOneScorer` and naming it in :data:`SCORERS`
(and in ``config.PrefilterName``); the engine and the scan stay as they are.
"""

from __future__ import annotations

import logging

from ..blocks import BlockOpening, MemoryBank
from ..config import EngineConfig
from ..model_loading import LoadedModel
from ..prompts import PromptBuilder
from .fused_scorer import HybridScorer, HybridSumScorer
from .heads import index_spec_for
from .index_cache import IndexCache
from .index_format import IndexSpec
from .key_scorer import KeyScorer
from .lexical_scorer import LexicalScorer
from .question_template import QuestionTemplate
from .rules import RULES
from .stage1 import StageOneContext, StageOneScorer

logger = logging.getLogger(__name__)

SCORERS: dict[str, type[StageOneScorer]] = {
    "keys": KeyScorer,
    "lexical": LexicalScorer,
    "hybrid": HybridScorer,
    "hybrid_sum": HybridSumScorer,
}


class StageOne:
    """An engine's stage 1: the scorer ``gate.prefilter`` names (none when it is off or the rule reads every
    block), the gate index ingest writes for it, and one scorer per kind of bank."""

    def __init__(
        self,
        loaded: LoadedModel,
        config: EngineConfig,
        prompts: PromptBuilder,
        opening: BlockOpening | None,
        start_position: int,
        builds_index: bool,
    ):
        gate = config.gate
        self.gate = gate
        off = gate.prefilter == "off" or not RULES[gate.rule].needs_model
        self.scorer: type[StageOneScorer] | None = None if off else SCORERS[gate.prefilter]
        self.index_spec: IndexSpec | None = None
        if self.scorer is not None and self.scorer.needs_key_index:
            self.index_spec = index_spec_for(loaded, gate, opening, config.use_presets)
        self.builds_index = builds_index  # whether the engine's compressor writes the index (beacon does not)
        questions = QuestionTemplate.from_settings(config.prompts)
        self.index_cache = IndexCache(int(gate.index_cache_mb * 2**20))  # shared by the engine's banks and callers
        self.context = StageOneContext(
            loaded,
            prompts,
            opening,
            start_position,
            gate.memory_weight,
            questions,
            self.index_cache,
            gate.coarse_keep,
            tuple(tuple(head) for head in gate.coarse_heads or ()),
        )
        self._scorers: dict[tuple[str, str], StageOneScorer] = {}
        self._unindexed_warned: set[str] = set()

    def for_bank(self, bank: MemoryBank) -> StageOneScorer | None:
        """The scorer for ``bank``; None when stage 1 is off or the bank lacks what the scorer reads."""
        if self.scorer is None:
            return None
        key = self.scorer.bank_key(bank)
        if self.scorer.needs_key_index and self.builds_index and bank.gate_index is None:
            self._warn_unindexed(bank, "the gate judges every block" if key is None else "stage 1 ranks it by its text")
        return None if key is None else self._built(self.scorer, key, bank)

    def scorer_named(self, name: str, bank: MemoryBank) -> StageOneScorer | None:
        """The scorer ``name`` (a key of ``SCORERS``) for ``bank``, whatever ``gate.prefilter`` says (an agent's
        recall ranks by its own); None when the bank lacks what it reads. Built once per engine and kind of bank."""
        kind = SCORERS[name]
        key = kind.bank_key(bank)
        return None if key is None else self._built(kind, key, bank)

    def _built(self, kind: type[StageOneScorer], key: str, bank: MemoryBank) -> StageOneScorer:
        if (kind.name, key) not in self._scorers:
            self._scorers[(kind.name, key)] = kind.for_bank(self.context, bank)
        return self._scorers[(kind.name, key)]

    def _warn_unindexed(self, bank: MemoryBank, instead: str) -> None:
        """Once per bank: a bank built without a gate index is judged block by block (or, by a fused scorer,
        ranked by its text alone)."""
        if len(bank) > self.gate.candidates and (bank.name or "") not in self._unindexed_warned:
            self._unindexed_warned.add(bank.name or "")
            logger.warning(
                "bank %s has no gate index (it was built with gate.prefilter='off' or 'lexical'): %s; "
                "ingest into it again with this engine to use the key index (a stored bank is re-indexed from its "
                "stored text)",
                bank.name or "(unnamed)",
                instead,
            )
