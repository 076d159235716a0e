"""A store's blocks, gate index items and texts as one part: write, read and measure each by its content key.

The items live in the local diskcache (``disk.Items``) or in an object store with a bounded local copy
(``objects.CachedObjects``); ``items`` is that backend (plain bytes under ``block:``, ``index:`` and ``text:``
keys). ``save``, ``verify``, ``writing`` and ``MemoryStore`` reach the store's items only through this part.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from contextlib import AbstractContextManager as ContextManager
from typing import Any

import torch

from ..blocks import BankIdentity, MemoryBlock
from ..documents import Document
from ..errors import CorruptDocumentError
from .codec import HEADER_BYTES, INDEX_ONLY, Damaged, encode_block, header_length, safetensors_header
from .disk import Items
from .gate_index import INDEX_PREFIX, read_index, stored_index, write_index
from .manifest import BankManifest, BlockDtype, StoredBlock, StoredDocument
from .objects import CachedObjects

BLOCK_PREFIX = "block:"
TEXT_PREFIX = "text:"


class BlockObjects:
    """The blocks, index items and texts of the store at ``location``; new blocks are written as ``block_dtype``."""

    def __init__(self, items: Items | CachedObjects, location: str, block_dtype: BlockDtype):
        self.items, self.location, self.block_dtype = items, location, block_dtype
        # A text's size by its hash (content-addressed, so it never changes): an ingest's report sizes a bank's
        # texts without asking an object store once per document every time.
        self.text_sizes: dict[str, int] = {}

    def close(self) -> None:
        self.items.close()

    def reading_through(self) -> ContextManager[None]:
        """Reads meanwhile see the store itself, never this process's local copy (verify checks the store)."""
        return self.items.reading_through()

    # Blocks ------------------------------------------------------------------------------------------------

    def block(self, key: str) -> bytes | None:
        """A block's framed bytes, None when missing (not checked: ``reading.check_block`` does that)."""
        return self.items.get(BLOCK_PREFIX + key)

    def write_block(self, key: str, block: MemoryBlock, identity: BankIdentity, storage: str | None = None) -> int:
        """Encode ``block`` (as ``storage``, default the store's block dtype) and write it; returns its bytes (0 for
        the index-only ``none``, which writes nothing: its KV is encoded from the text when read)."""
        if (storage or self.block_dtype) == INDEX_ONLY:
            return 0
        data = encode_block(block, storage or self.block_dtype, identity)
        self.items.put(BLOCK_PREFIX + key, data)
        return len(data)

    def block_shape(self, key: str) -> tuple[int, int] | None:
        """(slots, bytes) of a stored block from its header alone; None when missing or unreadable."""
        head = self.items.read_prefix(BLOCK_PREFIX + key, HEADER_BYTES)
        length = header_length(head) if head is not None else None
        if length is None:
            return None
        prefix = self.items.read_prefix(BLOCK_PREFIX + key, HEADER_BYTES + length)
        try:
            header = safetensors_header(prefix[HEADER_BYTES - 8 :])
            return int(header["keys"]["shape"][2]), self.items.size(BLOCK_PREFIX + key)
        except (Damaged, KeyError, IndexError, TypeError, ValueError):
            return None

    # Gate index items --------------------------------------------------------------------------------------

    def index_item(self, block_key: str, spec: Mapping[str, Any]) -> tuple[str, int] | None:
        """(key, bytes) of the block's index item for ``spec`` when one is stored, else None (not checked)."""
        return stored_index(self.items, block_key, spec)

    def write_index(
        self, block_key: str, spec: Mapping[str, Any], keys: torch.Tensor, head_dim: int
    ) -> tuple[str, int]:
        """Write a block's index item; returns its (key, bytes)."""
        return write_index(self.items, block_key, spec, keys, head_dim)

    def read_index(self, entry: StoredBlock, manifest: BankManifest) -> tuple[torch.Tensor | None, str | None]:
        """(keys, None) for an entry's usable gate index, else (None, why not); (None, None): the bank has none."""
        return read_index(self.items, entry, manifest)

    def index_size(self, key: str) -> int:
        """Bytes of a stored index item (``key`` without ``index:``), 0 when missing."""
        return self.items.size(INDEX_PREFIX + key)

    # Texts -------------------------------------------------------------------------------------------------

    def write_text(self, document: Document) -> str:
        """Store a document's text under its own hash unless the store holds it intact; returns the hash."""
        data = document.text.encode("utf-8")
        key = hashlib.sha256(data).hexdigest()
        with self.items.reading_through():  # whether the store holds it, never whether a local copy does
            stored = self.items.get(TEXT_PREFIX + key)
        if stored is None or hashlib.sha256(stored).hexdigest() != key:
            self.items.put(TEXT_PREFIX + key, data)
        self.text_sizes[key] = len(data)
        return key

    def text_size(self, key: str) -> int:
        """Bytes of a stored document text (``key``: its hash), 0 when missing."""
        if key not in self.text_sizes:
            size = self.items.size(TEXT_PREFIX + key)
            if not size:
                return 0
            self.text_sizes[key] = size
        return self.text_sizes[key]

    def read_text(self, bank: str, document: StoredDocument) -> str:
        """A stored document's text, checked against its hash; CorruptDocumentError when missing or damaged."""
        data = self.items.get(TEXT_PREFIX + document.text_key)
        if data is None:
            raise CorruptDocumentError(
                f"bank {bank!r}: the text of document {document.id!r} is missing from store {self.location!r}; "
                "the document must be ingested again"
            )
        if hashlib.sha256(data).hexdigest() != document.text_key:
            raise CorruptDocumentError(
                f"bank {bank!r}: the stored text of document {document.id!r} fails its checksum; "
                "the document must be ingested again"
            )
        return data.decode("utf-8")
