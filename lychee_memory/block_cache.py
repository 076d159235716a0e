"""Bounded, thread-safe LRU caches an engine shares between its banks: ``BoundedCache`` (any value, sized by a
function) and ``BlockCache``, the encoded blocks that index-only (``none``) banks read instead of stored KV.

Entries are keyed by content (a block: model, compressor, storage, opening, tokens; see ``store/codec.py``), so two
banks holding the same chunk share one entry and a changed bank names new keys instead of reading stale ones. The
bound is bytes; a value larger than the whole cache is handed back without being kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .blocks import MemoryBlock
from .errors import ConfigurationError

Value = TypeVar("Value")


@dataclass(frozen=True)
class CacheStats:
    """What a cache did since it was made: hits, misses (values made), evictions, and what it holds now."""

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    capacity_bytes: int


@dataclass(frozen=True)
class BlockCacheStats:
    """What a block cache did since it was made: hits, encodes (misses), evictions, and what it holds now."""

    hits: int
    encodes: int
    evictions: int
    blocks: int
    bytes: int
    capacity_bytes: int


class BoundedCache(Generic[Value]):
    """LRU of values up to ``capacity_bytes`` (each sized by ``size``); ``get_or_make`` runs ``make`` on a miss only."""

    def __init__(self, capacity_bytes: int, size: Callable[[Value], int], what: str = "cache"):
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes < 0:
            raise ConfigurationError(f"a {what} needs a size of 0 or more bytes, got {capacity_bytes!r}")
        self.capacity_bytes = capacity_bytes
        self.size = size
        self.lock = threading.Lock()
        self.entries: OrderedDict[str, tuple[Value, int]] = OrderedDict()
        self.bytes = self.hits = self.misses = self.evictions = 0

    def get(self, key: str) -> Value | None:
        """The value cached under ``key`` (now the most recently used), or None (counted as a miss by ``put``)."""
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                return None
            self.entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: str, value: Value) -> None:
        """Keep ``value`` under ``key`` (a miss made it), evicting the least recently used down to the bound."""
        size = self.size(value)
        with self.lock:
            self.misses += 1
            if size > self.capacity_bytes:
                return
            previous = self.entries.pop(key, None)
            if previous is not None:
                self.bytes -= previous[1]
            self.entries[key] = (value, size)
            self.bytes += size
            while self.bytes > self.capacity_bytes:
                _, (_, evicted) = self.entries.popitem(last=False)
                self.bytes -= evicted
                self.evictions += 1

    def get_or_make(self, key: str, make: Callable[[], Value]) -> Value:
        """The value cached under ``key``, else ``make()`` kept (evicting the least recently used) and returned.

        ``make`` runs outside the cache's lock, so readers of other keys never wait on it; two threads missing the
        same key may both make it (the same content: the second is kept)."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        with self.lock:
            self.entries.clear()
            self.bytes = 0

    def counts(self) -> CacheStats:
        """Hits, misses, evictions since the cache was made, and what it holds now."""
        with self.lock:
            return CacheStats(
                self.hits, self.misses, self.evictions, len(self.entries), self.bytes, self.capacity_bytes
            )


class BlockCache(BoundedCache[MemoryBlock]):
    """LRU of encoded blocks up to ``capacity_bytes`` of KV (keys and values), keyed by the block's content key."""

    def __init__(self, capacity_bytes: int):
        super().__init__(capacity_bytes, lambda block: block.nbytes, "block cache")

    def get_or_encode(self, key: str, encode: Callable[[], MemoryBlock]) -> MemoryBlock:
        """The block cached under ``key``, else ``encode()`` kept and returned (see ``get_or_make``)."""
        return self.get_or_make(key, encode)

    def stats(self) -> BlockCacheStats:
        """``counts`` under the block cache's names (encodes for misses, blocks for entries)."""
        counts = self.counts()
        return BlockCacheStats(
            counts.hits, counts.misses, counts.evictions, counts.entries, counts.bytes, counts.capacity_bytes
        )
