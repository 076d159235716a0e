"""Reading a stored bank's blocks: one block per call, checked against its key and manifest, keeping nothing;
and the per-query cache that fetches (and decodes) each block at most once while one query runs.

An index-only (``none``) block has no payload: it is encoded from the bank's stored text with the engine's recipe
(the same chunk tokens and opening, so the same KV ingest computed) through the engine's shared ``BlockCache``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from ..blocks import MemoryBank, MemoryBlock, SourceSpan
from ..chunking import Chunk
from ..documents import Document
from ..errors import CorruptBlockError, StoreError
from .codec import BLOCK_MAGIC, INDEX_ONLY, Damaged, DecodedBlock, block_key, decode_payload, unframe
from .manifest import BankManifest, StoredBlock

if TYPE_CHECKING:
    from .disk import Items
    from .recipe import BlockRecipe


def check_block(data: bytes, entry: StoredBlock, manifest: BankManifest, dtype: torch.dtype | None) -> DecodedBlock:
    """Checksum, decode, and confirm the block is the one the key names (same model, compressor, opening, tokens)."""
    decoded = decode_payload(unframe(BLOCK_MAGIC, data), dtype)
    metadata = decoded.metadata
    if metadata["storage"] != entry.storage:  # never read with a codec the bank's manifest did not write it with
        raise Damaged(f"it is stored as {metadata['storage']}, its manifest says {entry.storage}")
    if metadata.get("model_fingerprint") != manifest.model_fingerprint:
        raise Damaged("it was computed by another model than the bank's")
    if json.loads(metadata.get("compressor", "null")) != manifest.compressor:
        raise Damaged("it was computed by another compressor than the bank's")
    if decoded.token_ids.numel() != entry.token_end - entry.token_start or decoded.keys.shape[2] != entry.slots:
        raise Damaged("its shape does not match the manifest")
    expected = block_key(
        manifest.model_fingerprint, manifest.compressor, metadata["storage"], decoded.token_ids, manifest.opening
    )
    if expected != entry.key:
        raise Damaged("its content does not match its key")
    return decoded


class BlockLoader:
    """A stored bank's loader: reads, checks and converts one block per call, keeping nothing (an index-only block
    is encoded from ``documents`` with ``recipe`` instead, kept in the recipe's block cache)."""

    def __init__(
        self,
        items: Items,
        store_path: str,
        manifest: BankManifest,
        entries: list[StoredBlock],
        spans: list[SourceSpan],
        dtype: torch.dtype | None,
        device: torch.device | str | None,
        documents: list[Document] | None = None,
        recipe: BlockRecipe | None = None,
    ):
        self.items, self.store_path, self.manifest, self.entries, self.spans = (
            items,
            store_path,
            manifest,
            entries,
            spans,
        )
        self.dtype, self.device = dtype, device
        self.documents, self.recipe = documents, recipe
        self.chunks: dict[int, list[Chunk]] = {}  # index-only banks: each document's chunks, cut once
        self.chunk_lock = threading.Lock()

    def __call__(self, index: int) -> MemoryBlock:
        entry, span, device = self.entries[index], self.spans[index], self.device
        where = (
            f"bank {self.manifest.name!r} block {index} (document {span.document_id!r}, chars {span.char_start}-"
            f"{span.char_end}, key {entry.key[:16]})"
        )
        if entry.storage == INDEX_ONLY:
            return self.encoded(entry, span, where)
        data = self.items.get("block:" + entry.key)
        advice = f"run `lychee store verify --repair --store {self.store_path}` to recompress it from the stored text"
        if data is None:
            raise CorruptBlockError(f"{where} is missing from store {self.store_path!r}; {advice}")
        try:
            decoded = check_block(data, entry, self.manifest, self.dtype)
        except Damaged as damage:
            raise CorruptBlockError(f"{where} is damaged: {damage}; {advice}") from None
        return MemoryBlock(
            keys=decoded.keys.to(device) if device is not None else decoded.keys,
            values=decoded.values.to(device) if device is not None else decoded.values,
            valid=decoded.valid,
            next_position=int(decoded.metadata["next_position"]),
            token_ids=decoded.token_ids,
            span=span,
            compressor=decoded.metadata["compressor_name"],
        )

    def encoded(self, entry: StoredBlock, span: SourceSpan, where: str) -> MemoryBlock:
        """An index-only block, from the engine's block cache or encoded now from the stored text."""
        recipe = self.recipe
        if recipe is None or self.documents is None:
            raise StoreError(
                f"{where} is index-only (block dtype none): its KV is encoded from the stored text by an engine of "
                "the bank's model and compressor; open the bank with that engine (engine.open_bank)"
            )

        def encode() -> MemoryBlock:
            chunk = self.chunk_of(entry, span, where)
            block = recipe.compress([chunk])[0]
            return block.to(device=self.device, dtype=self.dtype)

        cache = recipe.block_cache
        block = cache.get_or_encode(entry.key, encode) if cache is not None else encode()
        return dataclasses.replace(block, span=span)

    def chunk_of(self, entry: StoredBlock, span: SourceSpan, where: str) -> Chunk:
        """The chunk the entry was made from, cut from its document's stored text and checked against its key."""
        assert self.recipe is not None and self.documents is not None
        with self.chunk_lock:
            chunks = self.chunks.get(span.document_index)
            if chunks is None:
                document = self.documents[span.document_index]
                chunks = self.chunks[span.document_index] = self.recipe.chunk([document])
        found = [c for c in chunks if (c.token_start, c.token_end) == (entry.token_start, entry.token_end)]
        manifest = self.manifest
        if found:
            tokens = torch.tensor(found[0].token_ids)
            if block_key(manifest.model_fingerprint, manifest.compressor, INDEX_ONLY, tokens, manifest.opening) == (
                entry.key
            ):
                return dataclasses.replace(found[0], document_index=span.document_index)
        raise CorruptBlockError(
            f"{where} cannot be encoded: the stored text of document {span.document_id!r} no longer gives the block's "
            "tokens (its text or the tokenizer changed); ingest the document again"
        )


QUERY_CACHE_BYTES = 512 * 2**20  # the most a query's block cache holds (at least its last block is always kept)


class QueryBlocks:
    """The blocks one query (or one batch of questions scanned together) fetched last, so a block scored as a
    stage-2 row and then read by the reasoner, or scored for several questions, is fetched and decoded once.

    At most ``max_blocks`` blocks (the engine passes the gate's batch size, so a query holds about one batch as
    before) and ``budget_bytes``; least recently used go first. ``clear`` when the query ends.
    """

    def __init__(self, fetch: Callable[[int], MemoryBlock], max_blocks: int, budget_bytes: int = QUERY_CACHE_BYTES):
        self.fetch, self.max_blocks, self.budget_bytes = fetch, max(1, max_blocks), budget_bytes
        self.blocks: OrderedDict[int, MemoryBlock] = OrderedDict()
        self.held_bytes = self.fetches = self.hits = 0

    def __call__(self, index: int) -> MemoryBlock:
        block = self.blocks.get(index)
        if block is not None:
            self.blocks.move_to_end(index)
            self.hits += 1
            return block
        block = self.fetch(index)
        self.fetches += 1
        self.blocks[index] = block
        self.held_bytes += block.nbytes
        while len(self.blocks) > 1 and (len(self.blocks) > self.max_blocks or self.held_bytes > self.budget_bytes):
            _, dropped = self.blocks.popitem(last=False)
            self.held_bytes -= dropped.nbytes
        return block

    def clear(self) -> None:
        self.blocks.clear()
        self.held_bytes = 0


@contextmanager
def blocks_once(bank: MemoryBank, max_blocks: int, budget_bytes: int = QUERY_CACHE_BYTES) -> Iterator[MemoryBank]:
    """``bank`` as seen by one query: the same blocks, spans and origins, keeping the last ``max_blocks`` fetched
    (``QueryBlocks``), so a block the gate just scored reaches the reasoner without a second fetch and decode; the
    cache is dropped when the ``with`` ends. A bank holding all its blocks in memory is handed back as it is."""
    if bank.loader is None:
        yield bank
        return
    cache = QueryBlocks(bank.block, max_blocks, budget_bytes)
    try:
        yield MemoryBank(
            documents=bank.documents,
            spans=bank.spans,
            slot_counts=bank.slot_counts,
            identity=bank.identity,
            name=bank.name,
            loader=cache,
            gate_index=bank.gate_index,
            index_loader=bank.gate_keys,
            origins=[bank.origin(index) for index in range(len(bank))],
        )
    finally:
        cache.clear()
