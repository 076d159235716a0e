"""The compressor interface: a batch of chunks in, one MemoryBlock per chunk out."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ..blocks import BlockOpening, MemoryBlock, SourceSpan
from ..chunking import Chunk
from ..kv_prefix import encode_opening
from ..model_loading import LoadedModel
from ..prompts import sequence_start_ids


def slots_for(tokens: int, ratio: int) -> int:
    """Memory slots for a chunk of ``tokens`` tokens at ``ratio``: ceil(tokens / ratio), at least one."""
    return max(1, math.ceil(tokens / ratio))


def span_of(chunk: Chunk) -> SourceSpan:
    return SourceSpan(
        document_id=chunk.document_id,
        document_index=chunk.document_index,
        char_start=chunk.char_start,
        char_end=chunk.char_end,
        token_start=chunk.token_start,
        token_end=chunk.token_end,
        text=chunk.text,
    )


class Compressor(ABC):
    """Turns each chunk, on its own, into a block of per-layer KV memory slots."""

    name: ClassVar[str]
    ratio: int
    # Framed compressors encode each chunk after the engine's opening (``blocks.BlockOpening``) and keep only the
    # chunk's slots; the beacon compressor keeps the released checkpoint's layout (memory slots from position 0).
    framed: ClassVar[bool] = False
    # Compressors that see the chunk's raw keys also write each block's gate index when the engine sets a spec.
    builds_gate_index: ClassVar[bool] = False

    opening: BlockOpening | None = None  # framed compressors: set by the engine; None = the sequence start alone

    def opening_for(self, loaded: LoadedModel) -> BlockOpening:
        """The opening framed chunks are encoded after: the engine's, else the tokenizer's sequence start alone."""
        if self.opening is None:
            self.opening = encode_opening(loaded, sequence_start_ids(loaded.tokenizer))
        return self.opening

    @abstractmethod
    def compress(self, loaded: LoadedModel, chunks: list[Chunk]) -> list[MemoryBlock]:
        """Compress chunks independently (batching is an optimisation, never a change in result)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The settings that determine the blocks' KV: part of a stored block's identity."""

    @property
    def trained(self) -> bool:
        """Whether the compressor's memory comes from learned weights (then the reasoner reads KV)."""
        return False

    def prompt_position(self, chunk_tokens: int, start_tokens: int) -> int:
        """The position a prompt after a block of ``chunk_tokens`` raw tokens continues at (the most any block of
        this compressor needs): training-free compressors keep the chunk's positions (after ``start_tokens``
        opening tokens), so the prompt continues after the chunk."""
        return start_tokens + chunk_tokens
