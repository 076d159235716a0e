"""Writing blocks in three steps, so the middle one can run anywhere: plan, write batches, assemble.

1. ``plan_blocks`` (where the documents are): write the texts, chunk, name every block by its content key, and
   list the chunks whose block (or gate index item) is not stored yet, cut into the engine's compression batches.
2. ``write_batch`` (in this process, or in a distributed worker with its own engine and store handle): compress one
   batch and write its blocks and index items straight to the store; returns what the manifest needs.
3. ``assemble_documents``: the documents' manifest entries, from the plan and every batch's result.

A single-process ingest runs the same three steps in order, with the same batches, so a distributed ingest
writes the same bytes under the same keys. The steps write only items (``BlockObjects``); ``commit_documents``
and ``rebuild_documents`` then write the manifest, last (``Manifests``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..chunking import Chunk
from ..documents import Document
from ..errors import BankNotFoundError, CorruptDocumentError, StoreError
from ..progress import progress_bar
from .block_objects import BlockObjects
from .codec import block_key
from .gate_index import conforms, narrowed, without_index
from .manifest import (
    BankManifest,
    StoredDocument,
    block_entry,
    check_new_bank_name,
    json_metadata,
    manifest_for,
    merge_documents,
)
from .manifests import Change, Manifests
from .recipe import BlockRecipe

REBUILD_ROUNDS = 5  # a rebuild that finds its bank changed by another writer catches up this many times


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


def plan_blocks(
    objects: BlockObjects,
    documents: list[Document],
    recipe: BlockRecipe,
    index_only: Mapping[str, int] | None = None,
) -> BlockPlan:
    """Write the documents' texts and decide which chunks need compressing (call with ``writing_blocks`` held).

    A stored block whose gate index item is missing while the recipe builds an index is compressed again (the
    only way to get its index keys), so a bank's index is always complete. Identical chunks are compressed once.
    ``index_only`` (block key -> slots, from manifests) names index-only blocks, which have no payload to find.
    """
    identity, storage, spec = recipe.identity, objects.block_dtype, recipe.gate_index
    metadata = {document.id: json_metadata(document) for document in documents}
    text_keys = {document.id: objects.write_text(document) for document in documents}
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
        complete, shape = _stored(objects, key, spec, index_only)
        if complete is not None:
            plan.known[key] = complete
        else:
            work[key] = BlockWork(key, chunk, shape)
    pending = list(work.values())
    plan.batches = [pending[start : start + recipe.batch_size] for start in range(0, len(pending), recipe.batch_size)]
    return plan


def write_batch(
    objects: BlockObjects, batch: list[BlockWork], recipe: BlockRecipe, *, skip_stored: bool = False
) -> list[WrittenBlock]:
    """Compress one batch and write each block (unless already stored) and its gate index item.

    With ``skip_stored`` (a retried distributed task), a batch whose every block and index item another attempt
    already wrote is not compressed again; a partly written one is compressed whole (the same batch gives the
    same bytes) and only its missing items are written.
    """
    spec, results = recipe.gate_index, []
    if skip_stored:
        found = [_stored(objects, work.key, spec) for work in batch]
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
            written = objects.write_block(work.key, block, recipe.identity)
            shape = (block.num_slots, written)
        index = None
        if spec is not None and block.gate_keys is not None:
            index = objects.write_index(work.key, spec, block.gate_keys, block.keys.shape[-1])
            written += index[1]
        results.append(WrittenBlock(work.key, shape, index, written, compressed=True))
    return results


def _stored(
    objects: BlockObjects, key: str, spec: dict | None, index_only: Mapping[str, int] | None = None
) -> tuple[WrittenBlock | None, tuple[int, int] | None]:
    """One look at the store: the block as stored with everything the recipe needs (its index item when it builds
    one), else None; and the block's stored (slots, bytes), else None (missing). An index-only block counts as
    stored when ``index_only`` names it (its slots; it has no payload)."""
    shape = (index_only[key], 0) if index_only and key in index_only else objects.block_shape(key)
    if shape is None:
        return None, None
    index = objects.index_item(key, spec) if spec is not None else None
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
    objects: BlockObjects,
    documents: list[Document],
    recipe: BlockRecipe,
    show_progress: bool,
    index_only: Mapping[str, int] | None = None,
) -> tuple[list[StoredDocument], int, int, int, int]:
    """All three steps in this process (call with ``writing_blocks`` held): the documents' manifest entries and the
    counts (chunks, compressed, reused, bytes written). Memory stays one batch deep. ``index_only``: as for
    ``plan_blocks``."""
    plan = plan_blocks(objects, documents, recipe, index_only)
    total, written = plan.to_compress, []
    if recipe.progress is not None:
        recipe.progress(0, total)
    with progress_bar(total, "compressing", show_progress) as bar:
        done = 0
        for batch in plan.batches:
            written.extend(write_batch(objects, batch, recipe))
            done += len(batch)
            bar.update(len(batch))
            if recipe.progress is not None:
                recipe.progress(done, total)
    stored = assemble_documents(plan, written, objects.block_dtype)
    return stored, len(plan.chunks), total, len(plan.known), sum(block.written_bytes for block in written)


# Committing: the manifest, written last -------------------------------------------------------------------


def recipe_manifest(
    name: str, recipe: BlockRecipe, documents: list[StoredDocument], current: BankManifest | None
) -> BankManifest:
    """A manifest of ``documents`` built by ``recipe``'s engine (its settings recorded), keeping ``current``'s
    creation time."""
    return manifest_for(
        name,
        recipe.identity,
        documents,
        current=current,
        gate_index=recipe.gate_index,
        model_spec=recipe.model_spec,
        model_dtype=recipe.model_dtype,
        engine_config=recipe.settings,
    )


def with_recipe_index(
    objects: BlockObjects,
    name: str,
    documents: list[StoredDocument],
    recipe: BlockRecipe,
    show_progress: bool,
    ready: dict[str, StoredDocument],
    totals: list[int],
) -> list[StoredDocument]:
    """``documents`` with every block naming the gate index ``recipe`` builds (call with ``writing_blocks``).

    A document written under another index spec is rewritten from its stored text (only blocks whose item is
    missing are compressed); with no index, its entries' index fields are cleared. ``ready`` holds documents
    already rewritten (by id; reused when from the same source, and updated); ``totals`` adds the counts.
    """
    spec = recipe.gate_index
    result = list(documents)
    todo: list[Document] = []
    for position, document in enumerate(documents):
        if document.id in ready and same_source(ready[document.id], document):
            result[position] = ready[document.id]
        elif all(conforms(entry, spec) for entry in document.blocks):
            continue
        elif spec is None:
            result[position] = without_index(document, None)
        elif (reindexed := _narrowed_document(objects, document, spec)) is not None:
            result[position] = reindexed
        else:
            try:
                text = objects.read_text(name, document)
            except CorruptDocumentError:  # verify names the damaged text; its blocks keep no stale index
                result[position] = without_index(document, spec)
                continue
            todo.append(Document(text=text, id=document.id, metadata=dict(document.metadata)))
    if todo:
        rewritten, *counts = write_blocks(objects, todo, recipe, show_progress)
        totals[:] = [total + count for total, count in zip(totals, counts)]
        by_id = {document.id: document for document in rewritten}
        ready.update(by_id)
        result = [by_id.get(document.id, document) for document in result]
    return result


def _narrowed_document(
    objects: BlockObjects, document: StoredDocument, spec: Mapping[str, Any]
) -> StoredDocument | None:
    """The document with every block's float16 gate index converted to the int8 ``spec`` without a model (its blocks
    kept as they are), or None when a block lacks a usable float16 item (then it is rewritten from its text)."""
    blocks = []
    for entry in document.blocks:
        converted = entry if conforms(entry, spec) else narrowed(objects.items, entry, spec)
        if converted is None:
            return None
        blocks.append(converted)
    return document.model_copy(update={"blocks": blocks})


def commit_documents(
    objects: BlockObjects,
    manifests: Manifests,
    name: str,
    stored: list[StoredDocument],
    recipe: BlockRecipe,
    counts: Sequence[int],
    show_progress: bool,
) -> tuple[int, int, list[int]]:
    """Add documents whose blocks are all written (``assemble_documents``) to bank ``name``, merging with whatever
    other writers committed meanwhile; the bank's other documents get the recipe's gate index. Returns (documents
    added, documents replaced, ``counts`` plus what re-indexing wrote)."""
    with manifests.writing():  # re-entrant in effect: a shared flock, or one more writer row
        existing = manifests.read(name)
        totals, ready = list(counts), {}  # documents given a new index
        if existing is not None:  # index the bank's other documents as this recipe does, outside the lock
            incoming = {document.id for document in stored}
            kept = [document for document in existing.documents if document.id not in incoming]
            with_recipe_index(objects, name, kept, recipe, show_progress, ready, totals)
        outcome = [0, 0]  # added, replaced: of the round that wrote

        def merged(current: BankManifest | None) -> BankManifest:
            if current is not None:  # another process may have changed the bank meanwhile
                manifests.check_identity(current, recipe.identity)
            elif existing is None:
                check_new_bank_name(name)
            documents, outcome[0], outcome[1] = merge_documents(current.documents if current else [], stored)
            documents = with_recipe_index(objects, name, documents, recipe, show_progress, ready, totals)
            return recipe_manifest(name, recipe, documents, current)

        manifests.update(name, merged)
    return outcome[0], outcome[1], totals


def rebuild_documents(
    objects: BlockObjects, manifests: Manifests, name: str, recipe: BlockRecipe, show_progress: bool
) -> tuple[int, list[int]]:
    """Rebuild bank ``name`` from its stored text with ``recipe``'s engine, under the same name.

    Documents another process adds or replaces while this runs are rebuilt too before the manifest is written (it
    is written only if the bank did not change since it was last read). Returns (documents rebuilt, counts).
    """
    rebuilt: dict[str, StoredDocument] = {}  # document id -> its rebuilt entry (for the text it names)
    totals = [0, 0, 0, 0]  # chunks, compressed, reused, written
    for _ in range(REBUILD_ROUNDS):
        current = manifests.require(name)
        stale = [d for d in current.documents if d.id not in rebuilt or not same_source(rebuilt[d.id], d)]
        texts = [Document(text=objects.read_text(name, d), id=d.id, metadata=dict(d.metadata)) for d in stale]
        with manifests.writing():
            stored, *counts = write_blocks(objects, texts, recipe, show_progress)
            totals = [total + count for total, count in zip(totals, counts)]
            rebuilt.update({document.id: document for document in stored})
            if manifests.update(name, _rebuilt(name, recipe, rebuilt, current.generation)) is not None:
                break  # else changed meanwhile: rebuild what changed, then try again
    else:
        raise StoreError(f"bank {name!r} kept changing while it was being rebuilt; try again")
    return len(rebuilt), totals


def _rebuilt(name: str, recipe: BlockRecipe, rebuilt: dict[str, StoredDocument], generation: int) -> Change:
    """The change writing the rebuilt documents if the bank is still at ``generation`` (else nothing)."""

    def change(latest: BankManifest | None) -> BankManifest | None:
        if latest is None:
            raise BankNotFoundError(f"bank {name!r} was deleted or renamed while it was being rebuilt")
        if latest.generation != generation:
            return None
        return recipe_manifest(name, recipe, [rebuilt[document.id] for document in latest.documents], latest)

    return change


def same_source(rebuilt: StoredDocument, stored: StoredDocument) -> bool:
    """Whether a rebuilt document entry came from this stored version (same text and metadata)."""
    return rebuilt.text_key == stored.text_key and rebuilt.metadata == stored.metadata
