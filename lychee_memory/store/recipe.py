"""What a store needs from an engine to turn documents into blocks, so the store never imports the engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..blocks import BankIdentity, MemoryBlock
from ..chunking import Chunk
from ..documents import Document

if TYPE_CHECKING:
    from ..block_cache import BlockCache


@dataclass(frozen=True)
class BlockRecipe:
    """How one engine makes blocks: its identity, its chunker, its compressor, and what it records.

    ``LycheeMemory.block_recipe()`` builds it; the store calls ``chunk`` and ``compress`` to build, extend,
    rebuild and repair banks, and records ``settings`` so a later repair can rebuild the same engine.
    """

    identity: BankIdentity
    chunk: Callable[[Sequence[Document]], list[Chunk]]
    tokenize: Callable[[str], list[int]]  # a document text's token ids, exactly as ``chunk`` cuts them
    compress: Callable[[list[Chunk]], list[MemoryBlock]]  # one batch of chunks, one block each
    batch_size: int  # chunks per ``compress`` call
    gate_index: dict[str, Any] | None  # the gate index ``compress`` puts on each block (IndexSpec.describe())
    dtype: torch.dtype  # blocks of banks opened for this engine come back in this dtype, on this device
    device: torch.device
    model_spec: str | None = None
    settings: dict[str, Any] | None = None  # the engine's resolved configuration (JSON)
    # Told (chunks compressed, chunks to compress) before the first batch and after each (an ingest job's progress)
    progress: Callable[[int, int], None] | None = None
    # The engine's encoded blocks, shared by its banks: what index-only (``none``) banks read (``block_cache.py``)
    block_cache: BlockCache | None = None

    @property
    def model_dtype(self) -> str:
        return str(self.dtype).removeprefix("torch.")


RecipeForSettings = Callable[[dict[str, Any]], BlockRecipe]
"""Builds the recipe of the engine a bank recorded (its settings), for repairs without an engine at hand."""
