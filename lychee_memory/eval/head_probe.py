"""Which attention heads make a good gate index: a probe over planted facts (``lychee probe heads``).

Every (layer, query head) scores every block of a needle haystack with the stage-1 formula of ``gate/key_scorer.py``
(mean over the question's tokens of logsumexp q.k/sqrt(d) over the block's keys, minus the null question's,
z-scored across blocks). Heads are ranked by the mean reciprocal rank of the fact's block over the probe samples;
the chosen heads' combined score is then checked on held-out samples (other facts, depths and lengths), where the
rank of the fact's block tells how many candidates stage 1 must pass on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..blocks import MemoryBank
from ..engine import LycheeMemory
from ..gate.heads import model_geometry
from ..gate.index_format import IndexSpec
from ..gate.key_scorer import KeyScorer, zscore
from ..progress import progress_bar
from .tasks import QASample


@dataclass
class ProbeResult:
    """Per-head mean reciprocal rank on the probe samples, the chosen heads, and their held-out ranks."""

    head_mrr: dict[tuple[int, int], float]
    chosen: list[tuple[int, int]]
    probe_ranks: list[int]  # rank (1 = first) of the fact's block under the chosen heads, per probe sample
    heldout_ranks: list[int] = field(default_factory=list)
    heldout_blocks: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        best = sorted(self.head_mrr.items(), key=lambda item: -item[1])[:32]
        return {
            "chosen_heads": [list(head) for head in self.chosen],
            "probe_ranks": self.probe_ranks,
            "heldout_ranks": self.heldout_ranks,
            "heldout_blocks": self.heldout_blocks,
            "top_heads": [{"layer": head[0], "head": head[1], "mrr": round(mrr, 4)} for head, mrr in best],
        }


def fact_blocks(bank: MemoryBank, sample: QASample) -> list[int]:
    """The blocks holding the start of each evidence span of the sample."""
    found = []
    for start, _ in sample.evidence:
        for index, span in enumerate(bank.spans):
            if span.char_start <= start < span.char_end:
                found.append(index)
                break
    return found


def every_head(config) -> tuple[tuple[int, int], ...]:
    layers, query_heads, _, _ = model_geometry(config)
    return tuple((layer, head) for layer in range(layers) for head in range(query_heads))


def _full_index(bank: MemoryBank, spec: IndexSpec):
    """Index keys of every (layer, KV head) from a raw-KV bank's blocks, built on the fly per block."""

    def index_keys(index: int) -> torch.Tensor:
        keys = bank.block(index).keys  # [layers, kv_heads, tokens, head_dim]
        return spec.extract([keys[layer][None] for layer in range(keys.shape[0])], 0, 0, keys.shape[2])

    return index_keys


def head_scores(engine: LycheeMemory, bank: MemoryBank, question: str, spec: IndexSpec) -> torch.Tensor:
    """Calibrated, z-scored stage-1 scores [blocks, heads] of every head of ``spec`` for one question."""
    prefilter = KeyScorer(engine.stage_one.context, spec)
    query = prefilter.query(question, engine.config.prompts.initial_memory)
    scored, means, missing = prefilter.raw_scores(query, _full_index(bank, spec), range(len(bank)))
    assert not missing and scored == list(range(len(bank)))
    return zscore(means[:, :, 0] - means[:, :, 2])


def _rank(scores: torch.Tensor, target: int) -> int:
    """1-based rank of ``target`` in ``scores`` (ties counted against it)."""
    return int((scores >= scores[target]).sum())


def probe_heads(
    engine: LycheeMemory,
    probe: Sequence[QASample],
    heldout: Sequence[QASample] = (),
    count: int = 8,
    show_progress: bool = True,
) -> ProbeResult:
    """Rank every head by the fact block's reciprocal rank on ``probe``; check the best ``count`` on ``heldout``.

    The engine must store raw KV (compressor "none"), so every layer's keys are at hand.
    """
    if engine.compressor.name != "none":
        raise ValueError("the head probe reads every layer's keys: load the engine with compressor='none'")
    heads = every_head(engine.loaded.config)
    _, query_heads, kv_heads, _ = model_geometry(engine.loaded.config)
    spec = IndexSpec(
        heads=heads,
        skip_tokens=engine.index_spec.skip_tokens if engine.index_spec else 0,
        group=query_heads // kv_heads,
    )
    reciprocal = torch.zeros(len(heads))
    per_sample: list[tuple[torch.Tensor, int]] = []
    with progress_bar(len(probe) + len(heldout), "probing heads", show_progress) as bar:
        for sample in probe:
            bank = engine.ingest(sample.context, show_progress=False)
            target = fact_blocks(bank, sample)[0]
            scores = head_scores(engine, bank, sample.question, spec)
            ranks = (scores >= scores[target : target + 1]).sum(dim=0).float()
            reciprocal += 1.0 / ranks
            per_sample.append((scores, target))
            bar.update(1)
        mrr = reciprocal / max(1, len(probe))
        order = sorted(range(len(heads)), key=lambda h: (-float(mrr[h]), heads[h]))
        chosen_positions = sorted(order[:count])
        chosen = [heads[h] for h in chosen_positions]
        probe_ranks = [_rank(scores[:, chosen_positions].mean(dim=1), target) for scores, target in per_sample]
        heldout_ranks, heldout_blocks = [], []
        chosen_spec = IndexSpec(heads=tuple(chosen), skip_tokens=spec.skip_tokens, group=spec.group)
        for sample in heldout:
            bank = engine.ingest(sample.context, show_progress=False)
            target = fact_blocks(bank, sample)[0]
            combined = head_scores(engine, bank, sample.question, chosen_spec).mean(dim=1)
            heldout_ranks.append(_rank(combined, target))
            heldout_blocks.append(len(bank))
            bar.update(1)
    return ProbeResult(
        {heads[h]: float(mrr[h]) for h in range(len(heads))}, chosen, probe_ranks, heldout_ranks, heldout_blocks
    )
