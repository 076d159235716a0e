"""Writing any bank (built in memory, or read from another store) into a store: ``MemoryStore.save_bank``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..blocks import MemoryBank
from .codec import block_key, encode_block
from .gate_index import conforms, stored_index, write_index
from .manifest import (
    FINGERPRINT_SCHEME,
    BankManifest,
    StoredBlock,
    StoredDocument,
    block_entry,
    check_bank_name,
    check_new_bank_name,
    json_metadata,
    merge_documents,
    now,
)

if TYPE_CHECKING:
    from .store import MemoryStore
    from .stored_bank import StoredBank

logger = logging.getLogger(__name__)


def save_bank(store: MemoryStore, bank: MemoryBank, name: str | None) -> StoredBank:
    """Write ``bank``'s texts, blocks and gate index items not stored yet, then add its documents to bank ``name``.

    The target bank keeps its gate index spec (a new one takes the bank's); a saved block indexed under another
    spec names the target spec's item when the store holds one, else none (it cannot be computed without an
    engine), which is logged.
    """
    target = check_bank_name(name if name is not None else bank.name)
    identity, storage, spec = bank.identity, store.block_dtype, bank.gate_index
    scheme = getattr(bank, "fingerprint_scheme", FINGERPRINT_SCHEME)
    stored_documents = []
    with store.writing_blocks():
        existing = store._read_manifest(target)
        if existing is None:
            check_new_bank_name(target)
        else:
            store.check_bank_identity(existing, identity)
        for document_index, document in enumerate(bank.documents):
            text_key = store._write_text(document)
            entries: list[StoredBlock] = []
            for index, span in enumerate(bank.spans):
                if span.document_index != document_index:
                    continue
                block = bank.block(index)
                key = block_key(
                    identity.model_fingerprint, identity.compressor, storage, block.token_ids, identity.opening
                )
                shape = store._stored_block_shape(key)
                if shape is None:
                    data = encode_block(block, storage, identity)
                    store._items.put("block:" + key, data)
                    shape = (block.num_slots, len(data))
                index_entry = stored_index(store._items, key, spec) if spec is not None else None
                if spec is not None and index_entry is None:
                    gate_keys = bank.gate_keys(index)  # a stored bank reads it alone
                    if gate_keys is not None:
                        index_entry = write_index(store._items, key, spec, gate_keys, block.keys.shape[-1])
                entries.append(block_entry(key, storage, span, shape, index_entry))
            stored_documents.append(
                StoredDocument(
                    id=document.id,
                    metadata=json_metadata(document),
                    text_key=text_key,
                    characters=len(document.text),
                    blocks=entries,
                )
            )
        for attempt in store._manifest_updates():
            with attempt:
                current = store._read_manifest(target)
                if current is not None:
                    store.check_bank_identity(current, identity)
                moment = now()
                manifest = (
                    current.model_copy(deep=True)
                    if current is not None
                    else BankManifest(
                        name=target,
                        created=moment,
                        updated=moment,
                        model_fingerprint=identity.model_fingerprint,
                        fingerprint_scheme=scheme,
                        compressor=dict(identity.compressor),
                        chunk_tokens=identity.chunk_tokens,
                        opening=list(identity.opening) if identity.opening is not None else None,
                        gate_index=spec,
                        documents=[],
                    )
                )
                stored_documents, unindexed = _indexed_as(store, stored_documents, manifest.gate_index)
                if unindexed:
                    logger.warning(
                        "bank %r in store %s: %d saved block(s) have no gate index of the bank's index spec (the saved "
                        "bank had another index, or none for them); the gate judges them without one until the bank "
                        "is rebuilt with recompress=True",
                        target,
                        store.location,
                        unindexed,
                    )
                manifest.documents = merge_documents(manifest.documents, stored_documents)[0]
                manifest.updated = moment
                store._write_manifest(manifest, current)
    sample = next((block for block in bank._blocks if block is not None), None)
    return store.load_bank(target, dtype=sample.keys.dtype if sample is not None else None)


def _indexed_as(
    store: MemoryStore, documents: list[StoredDocument], spec: dict | None
) -> tuple[list[StoredDocument], int]:
    """The documents with every entry naming its index item for the target bank's ``spec`` (an item already stored
    for that spec, else none), and how many blocks are left without one."""
    result, unindexed = [], 0
    for document in documents:
        blocks = []
        for entry in document.blocks:
            if not conforms(entry, spec):
                found = stored_index(store._items, entry.key, spec) if spec is not None else None
                entry = entry.model_copy(
                    update={"index_key": found[0] if found else None, "index_bytes": found[1] if found else 0}
                )
                unindexed += spec is not None and found is None
            blocks.append(entry)
        result.append(document.model_copy(update={"blocks": blocks}))
    return result, unindexed
