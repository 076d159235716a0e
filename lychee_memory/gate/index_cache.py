"""Decoded gate indexes kept in memory (``IndexCache``), so stage 1 reads, checksums and stacks a stored bank's index
once instead of on every pass (twice a query: at the start and after each memory update; and for every question).

The cached unit is an ``IndexBatch``: the indexes of ``BLOCKS_PER_BATCH`` consecutive blocks of a bank (aligned to
the bank's positions, so every pass over the bank names the same batches), padded and stacked on the scoring
device, exactly what the scorer's kernel reads. A batch is keyed by its blocks' index content keys (a stored
index item's key is a hash of its block's content key and the index spec), so banks sharing blocks share batches,
and a bank that changed (documents added, replaced or removed) names new keys instead of reading stale ones. A
batch holding a block without a usable index is not kept (a repaired index is read the next time). One cache per
engine (``StageOne``), bounded in bytes (``gate.index_cache_mb``), least recently used out first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..block_cache import BoundedCache, CacheStats
from .index_format import INDEX_DTYPE

BLOCKS_PER_BATCH = 64  # blocks whose index keys are stacked and scored in one kernel call (bounds memory, not results)


@dataclass(frozen=True)
class IndexBatch:
    """Gate indexes of some blocks padded to the longest: ``keys`` [n, pairs, T, head_dim] float16, ``valid`` [n, T];
    ``usable[row]`` is False for a block whose index is missing or malformed (its row is zeros, never scored)."""

    keys: torch.Tensor
    valid: torch.Tensor
    usable: tuple[bool, ...]

    @property
    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() + self.valid.numel() * self.valid.element_size()


def stack_indexes(
    indexes: Sequence[torch.Tensor | None],
    check: Callable[[torch.Tensor], bool],
    pairs: int,
    head_dim: int,
    device: torch.device | str,
) -> IndexBatch:
    """One batch from per-block index tensors ([pairs, tokens, head_dim], or None); ``check`` says which are usable."""
    usable = tuple(keys is not None and check(keys) for keys in indexes)
    longest = max((keys.shape[1] for keys, ok in zip(indexes, usable) if ok and keys is not None), default=0)
    stacked = torch.zeros(len(indexes), pairs, longest, head_dim, dtype=INDEX_DTYPE)
    valid = torch.zeros(len(indexes), longest, dtype=torch.bool)
    for row, (keys, ok) in enumerate(zip(indexes, usable)):
        if ok and keys is not None:
            stacked[row, :, : keys.shape[1]] = keys
            valid[row, : keys.shape[1]] = True
    return IndexBatch(stacked.to(device), valid.to(device), usable)


def batch_key(content_keys: Sequence[str], device: torch.device | str) -> str:
    """The cache key of a batch: its blocks' index content keys in order, and the device its tensors live on."""
    digest = hashlib.sha256(str(device).encode("utf-8"))
    for key in content_keys:
        digest.update(b"\0")
        digest.update(key.encode("utf-8"))
    return digest.hexdigest()


class IndexCache(BoundedCache[IndexBatch]):
    """LRU of stacked index batches up to ``capacity_bytes`` (their tensors' bytes), shared by an engine's banks."""

    def __init__(self, capacity_bytes: int):
        super().__init__(capacity_bytes, lambda batch: batch.nbytes, "gate index cache")

    def stats(self) -> CacheStats:
        """Hits and misses (batches stacked) since the cache was made, evictions, and the batches and bytes held."""
        return self.counts()
