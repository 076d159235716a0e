"""Coarse stage 1 (``gate.coarse_keep``, ``gate.coarse_heads``): a first pass over a few of the index's heads ranks a
large bank, and only the blocks it keeps get the exact key score, so a pass reads a fraction of the index.

Why heads and not pages: a pass is memory-bound (every float16 index key is upcast and multiplied once, whatever
the number of query tokens), so a coarse pass only saves time by reading fewer keys. Per-page summaries of the keys
(Quest-style channel bounds, or page centroids) read 4-16x fewer, but lost the fact's block: the stage-1 signal of a
planted fact lives in a few keys of its block. The keys of two of the eight preset heads kept it as well as all
eight (BENCHMARKS, "coarse stage 1"; ``benchmarks/coarse_stage1.py`` measures every variant).

Statistics: exact scores are z-scored per head across the bank, which would need every block. The kept blocks and
an even sample of the pruned ones (``SAMPLE_BLOCKS``) are scored exactly, and each sampled block stands for
``pruned / sampled`` blocks in the mean and variance; when the sample holds every pruned block the scores equal the
exact path's. A bank of at most ``coarse_keep + SAMPLE_BLOCKS`` blocks is scored exactly as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SAMPLE_BLOCKS = 32  # pruned blocks scored exactly for the z-score statistics (fixed: the cost stays bounded)


def kept_and_sample(coarse: dict[int, float], keep: int, sample: int) -> tuple[list[int], list[int]]:
    """The ``keep`` best blocks by coarse score (ties by position) and an even sample (by position) of the rest."""
    ranked = sorted(coarse, key=lambda index: (-coarse[index], index))
    kept, pruned = ranked[:keep], sorted(ranked[keep:])
    if len(pruned) <= sample:
        return kept, pruned
    step = len(pruned) / sample
    return kept, [pruned[math.floor(step * (at + 0.5))] for at in range(sample)]


def weighted_zscore(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Standardise [blocks, heads] per head with row ``r`` counted ``weights[r]`` times (a constant column stays 0);
    with unit weights this is the plain z-score (unbiased variance)."""
    total = float(weights.sum())
    if total <= 1.0:
        return torch.zeros_like(values)
    w = weights.to(values.dtype)[:, None]
    mean = (w * values).sum(dim=0, keepdim=True) / total
    variance = (w * (values - mean) ** 2).sum(dim=0, keepdim=True) / (total - 1.0)
    std = variance.sqrt()
    return (values - mean) / torch.where(std > 0, std, torch.ones_like(std))


def sample_weights(scored: Sequence[int], kept: Sequence[int], pruned_count: int, sampled: int) -> torch.Tensor:
    """Weight per scored block: 1 for a kept one, ``pruned_count / sampled`` for a sampled one."""
    kept_set = set(kept)
    stands_for = pruned_count / sampled if sampled else 0.0
    return torch.tensor([1.0 if at in kept_set else stands_for for at in scored], dtype=torch.float64)
