"""A bounded, thread-safe LRU of encoded blocks: what index-only (``none``) banks read instead of stored KV.

An engine owns one and shares it between all its banks; entries are keyed by the block's content key (model,
compressor, storage, opening, tokens), so two banks holding the same chunk encode it once. The bound is the KV's
bytes (keys and values); a block larger than the whole cache is handed back without being kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .blocks import MemoryBlock
from .errors import ConfigurationError


@dataclass(frozen=True)
class BlockCacheStats:
    """What a cache did since it was made: hits, encodes (misses), evictions, and what it holds now."""

    hits: int
    encodes: int
    evictions: int
    blocks: int
    bytes: int
    capacity_bytes: int


class BlockCache:
    """LRU of encoded blocks up to ``capacity_bytes`` of KV; ``get_or_encode`` runs ``encode`` on a miss only."""

    def __init__(self, capacity_bytes: int):
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes < 0:
            raise ConfigurationError(f"a block cache needs a size of 0 or more bytes, got {capacity_bytes!r}")
        self.capacity_bytes = capacity_bytes
        self.lock = threading.Lock()
        self.entries: OrderedDict[str, MemoryBlock] = OrderedDict()
        self.bytes = self.hits = self.encodes = self.evictions = 0

    def get_or_encode(self, key: str, encode: Callable[[], MemoryBlock]) -> MemoryBlock:
        """The block cached under ``key``, else ``encode()`` kept (evicting the least recently used) and returned.

        ``encode`` runs outside the cache's lock, so readers of other blocks never wait on it; two threads missing
        the same key may both encode it (the same bytes: the second is kept)."""
        with self.lock:
            block = self.entries.get(key)
            if block is not None:
                self.entries.move_to_end(key)
                self.hits += 1
                return block
        block = encode()
        size = block.nbytes
        with self.lock:
            self.encodes += 1
            if size > self.capacity_bytes:
                return block
            previous = self.entries.pop(key, None)
            if previous is not None:
                self.bytes -= previous.nbytes
            self.entries[key] = block
            self.bytes += size
            while self.bytes > self.capacity_bytes:
                _, evicted = self.entries.popitem(last=False)
                self.bytes -= evicted.nbytes
                self.evictions += 1
        return block

    def clear(self) -> None:
        """Drop every cached block (the counters stay)."""
        with self.lock:
            self.entries.clear()
            self.bytes = 0

    def stats(self) -> BlockCacheStats:
        with self.lock:
            return BlockCacheStats(
                self.hits, self.encodes, self.evictions, len(self.entries), self.bytes, self.capacity_bytes
            )
