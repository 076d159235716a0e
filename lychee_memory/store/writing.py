"""Writing blocks in three steps, so the middle one can run anywhere: plan, write batches, assemble.

1. ``plan_blocks`` (where the documents are): write the texts, chunk, name every block by its content key, and
   list the chunks whose block (or gate index item) is not stored yet, cut into the engine's compression batches.
2. ``write_batch`` (in this process, or in a distributed worker with its own engine and store handle): compress one
   batch and write its blocks and index items straight to the store; returns what the manifest needs.
3. ``assemble_documents``: the documents' manifest entries, from the plan and every batch's result.

A single-process ingest runs the same three steps in order, with the same batches, so a distributed ingest
writes the same bytes under the same keys. Nothing here writes a manifest (``MemoryStore`` does, last).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..chunking import Chunk
from ..documents import Document
from ..progress import progress_bar
from .codec import block_key, encode_block
from .gate_index import stored_index, write_index
from .manifest import StoredDocument, block_entry, json_metadata
from .recipe import BlockRecipe

if TYPE_CHECKING:
    from .store import MemoryStore


@dataclass(frozen=True)
class BlockWork:
    """One chunk to compress: its content key, and its stored (slots, bytes) when only its index item is missing."""

    key: str
    chunk: Chunk
    present: tuple[int, int] | None = None


@dataclass(frozen=True)
class WrittenBlock:
    """What the manifest needs of a block: (slots, bytes), its index item's (key, bytes), and the bytes written."""

    key: str
    shape: tuple[int, int]
    index: tuple[str, int] | None
    written_bytes: int
    compressed: bool = False  # whether this call ran the compressor for it


@dataclass
class BlockPlan:
    """The documents' chunks and keys, what is already stored, and the batches still to compress."""

    documents: list[Document]
    metadata: dict[str, dict]
    text_keys: dict[str, str]
    chunks: list[Chunk]
    keys: list[str]
    known: dict[str, WrittenBlock] = field(default_factory=dict)  # blocks stored with what the recipe needs
    batches: list[list[BlockWork]] = field(default_factory=list)

    @property
    def to_compress(self) -> int:
        return sum(len(batch) for batch in self.batches)


def plan_blocks(store: MemoryStore, documents: list[Document], recipe: BlockRecipe) -> BlockPlan:
    """Write the documents' texts and decide which chunks need compressing (call with ``writing_blocks`` held).

    A stored block whose gate index item is missing while the recipe builds an index is compressed again (the
    only way to get its index keys), so a bank's index is always complete. Identical chunks are compressed once.
    """
    identity, storage, spec = recipe.identity, store.block_dtype, recipe.gate_index
    metadata = {document.id: json_metadata(document) for document in documents}
    text_keys = {document.id: store._write_text(document) for document in documents}
    chunks = recipe.chunk(documents)
    keys = [
        block_key(
            identity.model_fingerprint, identity.compressor, storage, torch.tensor(chunk.token_ids), identity.opening
        )
        for chunk in chunks
    ]
    plan = BlockPlan(list(documents), metadata, text_keys, chunks, keys)
    work: dict[str, BlockWork] = {}
    for key, chunk in zip(keys, chunks):
        if key in plan.known or key in work:
            continue
        complete, shape = _stored(store, key, spec)
        if complete is not None:
            plan.known[key] = complete
        else:
            work[key] = BlockWork(key, chunk, shape)
    pending = list(work.values())
    plan.batches = [pending[start : start + recipe.batch_size] for start in range(0, len(pending), recipe.batch_size)]
    return plan


def write_batch(
    store: MemoryStore, batch: list[BlockWork], recipe: BlockRecipe, *, skip_stored: bool = False
) -> list[WrittenBlock]:
    """Compress one batch and write each block (unless already stored) and its gate index item.

    With ``skip_stored`` (a retried distributed task), a batch whose every block and index item another attempt
    already wrote is not compressed again; a partly written one is compressed whole (the same batch gives the
    same bytes) and only its missing items are written.
    """
    spec, results = recipe.gate_index, []
    if skip_stored:
        found = [_stored(store, work.key, spec) for work in batch]
        if all(complete is not None for complete, _ in found):
            return [complete for complete, _ in found if complete is not None]
        batch = [
            BlockWork(work.key, work.chunk, shape if shape is not None else work.present)
            for work, (_, shape) in zip(batch, found)
        ]
    blocks = recipe.compress([work.chunk for work in batch])
    for work, block in zip(batch, blocks):
        written = 0
        if work.present is not None:
            shape = work.present
        else:
            data = encode_block(block, store.block_dtype, recipe.identity)
            store._items.put("block:" + work.key, data)
            shape, written = (block.num_slots, len(data)), len(data)
        index = None
        if spec is not None and block.gate_keys is not None:
            index = write_index(store._items, work.key, spec, block.gate_keys, block.keys.shape[-1])
            written += index[1]
        results.append(WrittenBlock(work.key, shape, index, written, compressed=True))
    return results


def _stored(store: MemoryStore, key: str, spec: dict | None) -> tuple[WrittenBlock | None, tuple[int, int] | None]:
    """One look at the store: the block as stored with everything the recipe needs (its index item when it builds
    one), else None; and the block's stored (slots, bytes), else None (missing)."""
    shape = store._stored_block_shape(key)
    if shape is None:
        return None, None
    index = stored_index(store._items, key, spec) if spec is not None else None
    if spec is not None and index is None:
        return None, shape
    return WrittenBlock(key, shape, index, 0), shape


def assemble_documents(plan: BlockPlan, written: list[WrittenBlock], storage: str) -> list[StoredDocument]:
    """The plan's documents as manifest entries, once every planned block is in ``plan.known`` or ``written``."""
    blocks = {**plan.known, **{block.key: block for block in written}}
    missing = [key for key in dict.fromkeys(plan.keys) if key not in blocks]
    if missing:
        raise ValueError(f"{len(missing)} planned block(s) were never written (first: {missing[0][:16]})")
    result = []
    for document_index, document in enumerate(plan.documents):
        entries = [
            block_entry(key, storage, chunk, blocks[key].shape, blocks[key].index)
            for key, chunk in zip(plan.keys, plan.chunks)
            if chunk.document_index == document_index
        ]
        result.append(
            StoredDocument(
                id=document.id,
                metadata=plan.metadata[document.id],
                text_key=plan.text_keys[document.id],
                characters=len(document.text),
                blocks=entries,
            )
        )
    return result


def write_blocks(
    store: MemoryStore, documents: list[Document], recipe: BlockRecipe, show_progress: bool
) -> tuple[list[StoredDocument], int, int, int, int]:
    """All three steps in this process (call with ``writing_blocks`` held): the documents' manifest entries and the
    counts (chunks, compressed, reused, bytes written). Memory stays one batch deep."""
    plan = plan_blocks(store, documents, recipe)
    total, written = plan.to_compress, []
    if recipe.progress is not None:
        recipe.progress(0, total)
    with progress_bar(total, "compressing", show_progress) as bar:
        done = 0
        for batch in plan.batches:
            written.extend(write_batch(store, batch, recipe))
            done += len(batch)
            bar.update(len(batch))
            if recipe.progress is not None:
                recipe.progress(done, total)
    stored = assemble_documents(plan, written, store.block_dtype)
    return stored, len(plan.chunks), total, len(plan.known), sum(block.written_bytes for block in written)
