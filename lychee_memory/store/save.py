"""Writing any bank (built in memory, or read from another store) into a store: ``MemoryStore.save_bank``."""

from __future__ import annotations

import logging

from ..blocks import MemoryBank
from .block_objects import BlockObjects
from .codec import block_key
from .gate_index import conforms
from .manifest import (
    FINGERPRINT_SCHEME,
    BankManifest,
    StoredBlock,
    StoredDocument,
    block_entry,
    check_bank_name,
    check_new_bank_name,
    json_metadata,
    manifest_for,
    merge_documents,
    now,
)
from .manifests import Manifests

logger = logging.getLogger(__name__)


def save_bank(objects: BlockObjects, manifests: Manifests, bank: MemoryBank, name: str | None) -> str:
    """Write ``bank``'s texts, blocks and gate index items not stored yet, then add its documents to bank ``name``
    (default ``bank.name``); returns the target bank's name.

    The target bank keeps its gate index spec (a new one takes the bank's); a saved block indexed under another
    spec names the target spec's item when the store holds one, else none (it cannot be computed without an
    engine), which is logged.
    """
    target = check_bank_name(name if name is not None else bank.name)
    identity, storage, spec = bank.identity, objects.block_dtype, bank.gate_index
    scheme = getattr(bank, "fingerprint_scheme", FINGERPRINT_SCHEME)
    stored_documents = []
    with manifests.writing():
        existing = manifests.read(target)
        if existing is None:
            check_new_bank_name(target)
        else:
            manifests.check_identity(existing, identity)
        for document_index, document in enumerate(bank.documents):
            text_key = objects.write_text(document)
            entries: list[StoredBlock] = []
            for index, span in enumerate(bank.spans):
                if span.document_index != document_index:
                    continue
                block = bank.block(index)
                key = block_key(
                    identity.model_fingerprint, identity.compressor, storage, block.token_ids, identity.opening
                )
                shape = objects.block_shape(key)
                if shape is None:
                    shape = (block.num_slots, objects.write_block(key, block, identity, storage))
                index_entry = objects.index_item(key, spec) if spec is not None else None
                if spec is not None and index_entry is None:
                    gate_keys = bank.gate_keys(index)  # a stored bank reads it alone
                    if gate_keys is not None:
                        index_entry = objects.write_index(key, spec, gate_keys, block.keys.shape[-1])
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

        def added(current: BankManifest | None) -> BankManifest:
            moment = now()
            if current is not None:
                manifests.check_identity(current, identity)
                manifest = current.model_copy(deep=True)
            else:
                manifest = manifest_for(target, identity, [], gate_index=spec, fingerprint_scheme=scheme)
            documents, unindexed = _indexed_as(objects, stored_documents, manifest.gate_index)
            if unindexed:
                logger.warning(
                    "bank %r in store %s: %d saved block(s) have no gate index of the bank's index spec (the saved "
                    "bank had another index, or none for them); the gate judges them without one until the bank "
                    "is rebuilt with recompress=True",
                    target,
                    objects.location,
                    unindexed,
                )
            manifest.documents = merge_documents(manifest.documents, documents)[0]
            manifest.updated = moment
            if current is None:
                manifest.created = moment
            return manifest

        manifests.update(target, added)
    return target


def _indexed_as(
    objects: BlockObjects, documents: list[StoredDocument], spec: dict | None
) -> tuple[list[StoredDocument], int]:
    """The documents with every entry naming its index item for the target bank's ``spec`` (an item already stored
    for that spec, else none), and how many blocks are left without one."""
    result, unindexed = [], 0
    for document in documents:
        blocks = []
        for entry in document.blocks:
            if not conforms(entry, spec):
                found = objects.index_item(entry.key, spec) if spec is not None else None
                entry = entry.model_copy(
                    update={"index_key": found[0] if found else None, "index_bytes": found[1] if found else 0}
                )
                unindexed += spec is not None and found is None
            blocks.append(entry)
        result.append(document.model_copy(update={"blocks": blocks}))
    return result, unindexed
