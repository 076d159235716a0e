"""The key scorer (``gate.prefilter = "keys"``): stage 1 from a small index of each block's own keys.

Index: see ``index_format.py`` (the keys of a few chosen heads, stored per block at ingest).

Query: one forward of the gate prompt alone (after the opening, at the positions the prompt takes after a full
block); at each chosen (layer, query head) the query vectors of the question's tokens (and of the memory's once it
holds notes), RoPE applied. A null question ("N/A") is run the same way once per engine, for calibration.

Score of block b at head h for a group of query tokens: the mean over the group of
``logsumexp_t(q . k_t / sqrt(head_dim))`` over the block's index keys, minus the same for the null question (some
blocks draw every query); z-scored across the bank's blocks per head; averaged over heads. Once the memory holds
notes its tokens add ``memory_weight`` times their own z-score, so the block of hop 2 can enter once hop 1 is read.

With ``gate.coarse_keep`` a large bank is first ranked by the same score over ``gate.coarse_heads`` alone, and only
the blocks kept are scored exactly (``coarse.py``); the pruned blocks are left out of the scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from lychee_memory.kernels import key_logsumexp

from ..blocks import MemoryBank
from ..errors import ConfigurationError
from .coarse import SAMPLE_BLOCKS, kept_and_sample, sample_weights, weighted_zscore
from .heads import model_geometry
from .hooks import capture_queries
from .index_cache import BLOCKS_PER_BATCH, IndexBatch, batch_key, stack_indexes
from .index_format import IndexSpec
from .stage1 import StageOneContext, StageOneScorer

NULL_QUESTION = "N/A"


@dataclass
class StageOneQuery:
    """Query vectors of one (question, memory) and, per group of its tokens, their weights (rows sum to 1).

    Groups: 0 the question, 1 the memory (empty while it is the initial placeholder), 2 the null question.
    """

    vectors: torch.Tensor  # [heads, Q, head_dim]
    weights: torch.Tensor  # [3, Q]
    has_memory: bool


def _mean_weights(length: int, spans: list[tuple[int, int] | None], offset_by: list[int]) -> torch.Tensor:
    weights = torch.zeros(len(spans), length)
    for group, (span, offset) in enumerate(zip(spans, offset_by)):
        if span is not None and span[1] > span[0]:
            weights[group, offset + span[0] : offset + span[1]] = 1.0 / (span[1] - span[0])
    return weights


@dataclass
class KeyScorer(StageOneScorer):
    """Scores blocks from their index keys (the heads of ``spec``) against the question's query vectors."""

    name: ClassVar[str] = "keys"
    needs_key_index: ClassVar[bool] = True

    context: StageOneContext
    spec: IndexSpec
    prune: bool = True  # whether the coarse pass applies (a fused scorer needs every block's key score)
    _null: tuple[torch.Tensor, tuple[int, int]] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def bank_key(cls, bank: MemoryBank) -> str | None:
        return None if bank.gate_index is None else repr(sorted(bank.gate_index.items()))

    @classmethod
    def for_bank(cls, context: StageOneContext, bank: MemoryBank) -> KeyScorer:
        """Scoring with the heads the bank's index was built with."""
        assert bank.gate_index is not None
        return cls(context, IndexSpec.from_description(bank.gate_index))

    @property
    def scale(self) -> float:
        return model_geometry(self.context.loaded.model.config)[3] ** -0.5

    def unpruned(self) -> KeyScorer:
        """This scorer without the coarse pass: every block of a ranking gets its exact score."""
        return replace(self, prune=False)

    def coarse_positions(self) -> list[int]:
        """Positions in the index's heads of ``gate.coarse_heads``; ConfigurationError naming the index's heads when
        one is not among them (the coarse pass can only read keys the index holds)."""
        wanted = [tuple(head) for head in self.context.coarse_heads or ()]
        missing = [head for head in wanted if head not in self.spec.heads]
        if missing or not wanted:
            raise ConfigurationError(
                f"gate.coarse_heads {[list(head) for head in missing or wanted]} are not heads of the bank's gate "
                f"index; choose among {[list(head) for head in self.spec.heads]}"
            )
        return [self.spec.heads.index(head) for head in wanted]

    def rank(self, bank, question, memory, indices):
        return self.scores(self.query(question, memory), bank.gate_keys, indices, bank)

    def _vectors(self, prompt_ids: list[int]) -> torch.Tensor:
        context = self.context
        return capture_queries(context.loaded, context.opening, prompt_ids, context.start_position, self.spec.heads)

    def _null_vectors(self) -> tuple[torch.Tensor, tuple[int, int]]:
        if self._null is None:
            segmented = self.context.questions.segments(
                self.context.prompts, NULL_QUESTION, self.context.questions.initial_memory
            )
            self._null = (self._vectors(segmented.token_ids), segmented.spans["question"])
        return self._null

    def query(self, question: str, memory: str) -> StageOneQuery:
        """The stage-1 query of a question under a memory (its notes count once it is not the placeholder)."""
        has_memory = self.context.questions.has_notes(memory)
        segmented = self.context.questions.segments(self.context.prompts, question, memory)
        vectors = self._vectors(segmented.token_ids)
        null_vectors, null_span = self._null_vectors()
        own = vectors.shape[1]
        weights = _mean_weights(
            own + null_vectors.shape[1],
            [segmented.spans["question"], segmented.spans.get("memory") if has_memory else None, null_span],
            [0, 0, own],
        )
        return StageOneQuery(torch.cat([vectors, null_vectors], dim=1), weights, has_memory)

    def raw_scores(
        self,
        query: StageOneQuery,
        index_keys: Callable[[int], torch.Tensor | None],
        indices: Sequence[int],
        bank: MemoryBank | None = None,
        heads: Sequence[int] | None = None,
    ) -> tuple[list[int], torch.Tensor, list[int]]:
        """(scored indices, their group means [n, heads, 3], indices without a usable index).

        With ``bank`` (whose ``gate_keys`` is ``index_keys``) and the engine's index cache, the bank's indexes are
        read in position-aligned batches kept in the cache (``index_cache.py``), so a later pass reads none again.
        ``heads``: positions of the index's heads to score (the others are not read); None = all of them.
        """
        device = self.context.loaded.device
        used = query.weights.sum(dim=0) > 0  # template tokens ("Question:") carry no weight: not scored at all
        vectors = query.vectors[:, used].to(device)
        weights = query.weights[:, used].to(device)
        head_pairs = torch.tensor(self.spec.head_pairs, dtype=torch.long, device=device)
        if heads is not None:
            chosen = torch.tensor(list(heads), dtype=torch.long)
            vectors, head_pairs = vectors[chosen.to(device)], head_pairs[chosen.to(device)]
        scored, missing, results = [], [], []
        for positions, batch in self.batches(index_keys, indices, bank):
            rows = [row for row, ok in enumerate(batch.usable) if ok and positions[row] is not None]
            missing.extend(at for at, ok in zip(positions, batch.usable) if at is not None and not ok)
            if not rows:
                continue
            keys, valid = batch.keys, batch.valid
            if 2 * len(rows) <= len(positions):  # a few rows of a cached batch: read only those
                picked = torch.tensor(rows, dtype=torch.long, device=keys.device)
                keys, valid = keys[picked], valid[picked]
            lse = key_logsumexp(vectors, keys, valid, head_pairs, self.scale)
            means = torch.einsum("nhq,gq->nhg", lse, weights).cpu()
            results.append(means if means.shape[0] == len(rows) else means[rows])
            scored.extend(positions[row] for row in rows)
        means = torch.cat(results) if results else torch.zeros(0, int(vectors.shape[0]), 3)
        return scored, means, missing

    def batches(
        self, index_keys: Callable[[int], torch.Tensor | None], indices: Sequence[int], bank: MemoryBank | None
    ) -> Iterator[tuple[list[int | None], IndexBatch]]:
        """Stacked indexes of ``indices``, a batch at a time, with each row's block (None: a row not asked for).

        Cached: the bank's aligned batches that hold an asked block, from the engine's index cache (made and kept on
        a miss, unless a block in it has no content key or no usable index). Uncached: ``indices`` in order."""
        head_dim = model_geometry(self.context.loaded.model.config)[3]
        pairs, device = len(self.spec.pairs), self.context.loaded.device

        def stack(blocks: Sequence[int]) -> IndexBatch:
            indexes = [index_keys(at) for at in blocks]
            return stack_indexes(indexes, lambda keys: self.spec.check(keys, head_dim), pairs, head_dim, device)

        cache = self.context.index_cache
        if bank is None or cache is None or cache.capacity_bytes == 0:
            for start in range(0, len(indices), BLOCKS_PER_BATCH):
                group = list(indices[start : start + BLOCKS_PER_BATCH])
                yield list(group), stack(group)
            return
        wanted = set(indices)
        for first in sorted({at - at % BLOCKS_PER_BATCH for at in wanted}):
            blocks = list(range(first, min(first + BLOCKS_PER_BATCH, len(bank))))
            rows: list[int | None] = [at if at in wanted else None for at in blocks]
            content = [bank.gate_index_key(at) for at in blocks]
            if any(key is None for key in content):  # not cacheable: only the asked blocks
                asked = [at for at in blocks if at in wanted]
                yield list(asked), stack(asked)
                continue
            key = batch_key([str(part) for part in content], device)
            batch = cache.get(key)
            if batch is None:
                batch = stack(blocks)
                if all(batch.usable):
                    cache.put(key, batch)
            yield rows, batch

    def scores(
        self,
        query: StageOneQuery,
        index_keys: Callable[[int], torch.Tensor | None],
        indices: Sequence[int],
        bank: MemoryBank | None = None,
    ) -> tuple[dict[int, float], list[int]]:
        """Calibrated stage-1 score per block of ``indices`` (higher: more likely relevant), and those with no index
        (``bank``: read through the index cache, see ``raw_scores``). With the coarse pass on and more blocks than
        it keeps plus its sample, only the kept blocks are in the scores."""
        keep = self.context.coarse_keep
        if self.prune and keep is not None and len(indices) > keep + SAMPLE_BLOCKS:
            return self.pruned_scores(query, index_keys, indices, bank, keep)
        scored, means, missing = self.raw_scores(query, index_keys, indices, bank)
        if not scored:
            return {}, missing
        return dict(zip(scored, self.combined(means, query.has_memory, zscore).tolist())), missing

    def pruned_scores(
        self,
        query: StageOneQuery,
        index_keys: Callable[[int], torch.Tensor | None],
        indices: Sequence[int],
        bank: MemoryBank | None,
        keep: int,
    ) -> tuple[dict[int, float], list[int]]:
        """Exact scores of the ``keep`` blocks best by the coarse heads' score, z-scored with statistics from them
        and an even sample of the others (``coarse.py``); the blocks without an index, as ``scores``."""
        coarse_scored, coarse_means, missing = self.raw_scores(
            query, index_keys, indices, bank, self.coarse_positions()
        )
        if not coarse_scored:
            return {}, missing
        coarse = dict(zip(coarse_scored, self.combined(coarse_means, query.has_memory, zscore).tolist()))
        kept, sample = kept_and_sample(coarse, keep, SAMPLE_BLOCKS)
        scored, means, _ = self.raw_scores(query, index_keys, sorted(kept + sample), bank)
        weights = sample_weights(scored, kept, len(coarse_scored) - len(kept), len(sample))
        combined = self.combined(means, query.has_memory, lambda values: weighted_zscore(values, weights))
        kept_set = set(kept)
        return {at: value for at, value in zip(scored, combined.tolist()) if at in kept_set}, missing

    def combined(
        self, means: torch.Tensor, has_memory: bool, standardise: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """The calibrated score per row of group means [n, heads, 3]: the question's standardised gain over the null
        question averaged over heads, plus ``memory_weight`` times the memory's once it holds notes."""
        combined = standardise(means[:, :, 0] - means[:, :, 2]).mean(dim=1)
        if has_memory:
            combined = combined + self.context.memory_weight * standardise(means[:, :, 1] - means[:, :, 2]).mean(dim=1)
        return combined


def zscore(values: torch.Tensor) -> torch.Tensor:
    """Standardise [blocks, heads] per head across blocks (a constant column stays 0)."""
    if values.shape[0] < 2:
        return torch.zeros_like(values)
    std = values.std(dim=0, keepdim=True)
    return (values - values.mean(dim=0, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std))
