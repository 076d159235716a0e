"""``MemoryStore``: persistent memory banks on diskcache; compress once, reuse across sessions, lose nothing.

A store is a directory. Blocks are content-addressed: a block's key hashes the model fingerprint, the
compressor settings, the storage format, the opening framed blocks are encoded after and the chunk's token ids,
so re-ingesting an unchanged document compresses nothing, and a chunk shared by two banks is stored once. A
bank is a JSON manifest written last and atomically, after every block, index item and text it names, so a
crash at any moment leaves every bank as it was or as it became. The store knows no engine: what it
compresses with comes in as a ``BlockRecipe``.

Layout::

    STORE/lychee-store.json   marks the directory as a store (format version)
    STORE/cache/              a diskcache Cache: SQLite index plus value files; eviction is off
    STORE/ingest.lock         held shared by every writer of blocks, exclusively by gc
    STORE/manifest.lock       held while a bank manifest is read, changed and written
    STORE/leases/             one file per open bank of a live process: blocks gc must keep

Keys are plain strings and values plain bytes: ``block:<sha256>`` (a framed safetensors block),
``index:<sha256>`` (a block's gate index for one index spec, ``gate_index.py``), ``text:<sha256>`` (a document's
UTF-8 text, named by its own hash) and ``bank:<name>`` (a framed manifest).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from pydantic import ValidationError

from ..blocks import BankIdentity, MemoryBank, SourceSpan
from ..chunking import Chunk
from ..config import cache_root
from ..documents import Document
from ..errors import (
    BankNotFoundError,
    ConfigurationError,
    CorruptDocumentError,
    DocumentNotFoundError,
    StoreError,
)
from ..progress import progress_bar
from .codec import (
    HEADER_BYTES,
    MANIFEST_MAGIC,
    Damaged,
    block_key,
    encode_block,
    frame,
    header_length,
    safetensors_header,
    unframe,
)
from .disk import Items
from .gate_index import INDEX_PREFIX, IndexLoader, conforms, stored_index, without_index, write_index
from .locks import ReaderLease, file_lock, live_leased_keys
from .manifest import (
    BLOCK_DTYPES,
    FINGERPRINT_SCHEME,
    FORMAT_VERSION,
    BankManifest,
    BlockDtype,
    StoredDocument,
    block_entry,
    check_bank_name,
    check_new_bank_name,
    json_metadata,
    merge_documents,
    now,
)
from .reading import BlockLoader
from .recipe import BlockRecipe, RecipeForSettings
from .reports import BankInfo, GcReport, IngestReport, StoreUsage, VerifyReport
from .save import save_bank
from .stored_bank import StoredBank
from .verify import verify_store

logger = logging.getLogger(__name__)

_MARKER = "lychee-store.json"
_REBUILD_ROUNDS = 5  # a rebuild that finds its bank changed by another writer catches up this many times
_READ_ONLY_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def default_store_path() -> Path:
    """The store used when none is named: ``<cache dir>/stores/default`` (LYCHEE_CACHE_DIR overrides)."""
    return cache_root() / "stores" / "default"


class MemoryStore:
    """A directory of memory banks on diskcache: content-addressed blocks, JSON manifests, checksums.

    ``block_dtype`` is how new blocks are written (bfloat16 by default; int8 keeps per-channel key and
    per-slot value scales); blocks are converted back to the engine's dtype when read. diskcache's
    eviction is off, so nothing is ever dropped silently; ``size_limit_bytes`` is enforced by the store
    and a full store or disk raises StoreFullError without changing any bank. With ``create=False`` a
    missing store is a StoreError instead of a new empty directory (for commands that only read).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        block_dtype: BlockDtype = "bfloat16",
        size_limit_bytes: int | None = None,
        create: bool = True,
    ):
        if block_dtype not in BLOCK_DTYPES:
            raise ConfigurationError(f"unknown block dtype {block_dtype!r}; choose one of {', '.join(BLOCK_DTYPES)}")
        if size_limit_bytes is not None and (
            isinstance(size_limit_bytes, bool) or not isinstance(size_limit_bytes, int) or size_limit_bytes <= 0
        ):
            raise ConfigurationError(f"size_limit_bytes must be a positive number of bytes, got {size_limit_bytes!r}")
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self.block_dtype: BlockDtype = block_dtype
        self.size_limit_bytes = size_limit_bytes
        self.last_ingest: IngestReport | None = None
        self._prepare_directory(create)
        self._items = Items(self.path / "cache", self.path, size_limit_bytes)

    def __repr__(self) -> str:
        return f"MemoryStore({str(self.path)!r}, block_dtype={self.block_dtype!r})"

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def close(self) -> None:
        self._items.close()

    def _prepare_directory(self, create: bool) -> None:
        marker = self.path / _MARKER
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"store path {str(self.path)!r} is a file, not a directory")
        partial = f".{_MARKER}."  # another process creating this store right now
        if (
            self.path.is_dir()
            and not marker.is_file()
            and any(not entry.name.startswith(partial) for entry in self.path.iterdir())
        ):
            raise StoreError(
                f"{str(self.path)!r} is a non-empty directory that is not a lychee-memory store; "
                "choose an empty or new directory"
            )
        if not create and not marker.is_file():
            raise StoreError(f"no store at {str(self.path)!r}: ingest documents into a bank there to create one")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if not marker.is_file():
                temporary = self.path / f".{_MARKER}.{os.getpid()}"
                temporary.write_text(json.dumps({"format": FORMAT_VERSION}) + "\n", encoding="utf-8")
                os.replace(temporary, marker)
            data = json.loads(marker.read_text(encoding="utf-8"))
        except OSError as error:
            raise StoreError(f"cannot use {str(self.path)!r} as a store: {error.strerror or error}") from None
        except ValueError:
            raise StoreError(f"store marker {str(marker)!r} is not valid JSON") from None
        if data.get("format") != FORMAT_VERSION:
            raise StoreError(
                f"store {str(self.path)!r} has format {data.get('format')!r}; this lychee-memory reads format "
                f"{FORMAT_VERSION}"
            )

    # Locks -----------------------------------------------------------------------------------------

    def _writing_blocks(self):
        """Held while blocks are written and until the manifest naming them is written (gc waits)."""
        return file_lock(self.path / "ingest.lock", exclusive=False)

    def _changing_manifests(self):
        return file_lock(self.path / "manifest.lock", exclusive=True)

    # Manifests -------------------------------------------------------------------------------------

    def _read_manifest(self, name: str) -> BankManifest | None:
        data = self._items.get("bank:" + name)
        if data is None:
            return None
        try:
            return BankManifest.model_validate_json(unframe(MANIFEST_MAGIC, data))
        except Damaged as damage:
            raise StoreError(
                f"the manifest of bank {name!r} in store {str(self.path)!r} is damaged: {damage}"
            ) from None
        except ValidationError as error:
            raise StoreError(
                f"the manifest of bank {name!r} in store {str(self.path)!r} is not a valid manifest: {error}"
            ) from None

    def _manifest(self, name: str) -> BankManifest:
        manifest = self._read_manifest(check_bank_name(name))
        if manifest is None:
            known = ", ".join(sorted(self.bank_names())) or "none"
            raise BankNotFoundError(f"no bank named {name!r} in store {str(self.path)!r} (banks: {known})")
        return manifest

    def _write_manifest(self, manifest: BankManifest, previous: BankManifest | None) -> None:
        """Write ``manifest`` (call with the manifest lock held), one generation after ``previous``."""
        manifest.generation = (previous.generation if previous is not None else 0) + 1
        self._items.put("bank:" + manifest.name, frame(MANIFEST_MAGIC, manifest.model_dump_json().encode("utf-8")))

    def check_bank_identity(self, manifest: BankManifest, identity: BankIdentity) -> None:
        """Raise BankMismatchError, saying what differs and what to do, unless ``identity`` built the bank."""
        remedy = (
            "use another bank name, load the engine with the bank's settings, or open it with recompress=True "
            "(CLI: --recompress) to rebuild it from its stored text with this engine"
        )
        if manifest.legacy_fingerprint:
            remedy = (
                "the bank was built before lychee-memory 0.2, whose fingerprints name the checkpoint files; "
                "rebuild it once from its stored text with recompress=True (CLI: --recompress)"
            )
        elif manifest.before_framing and identity.opening is not None:
            remedy = (
                "upgrade it in place, under the same name, with open_bank(name, store, recompress=True) "
                "(CLI: --recompress)"
            )
        built_with = manifest.model_spec or "an unrecorded model"
        subject = f"bank {manifest.name!r} in store {str(self.path)!r} (built with {built_with})"
        manifest.identity.require_same(identity, subject, remedy)

    def bank_names(self) -> list[str]:
        return sorted(key.removeprefix("bank:") for key in self._items.keys("bank:"))

    # Public queries --------------------------------------------------------------------------------

    def list_banks(self) -> list[BankInfo]:
        """Every bank in the store, by name."""
        return [self._manifest(name).info() for name in self.bank_names()]

    def has_bank(self, name: str) -> bool:
        return self._items.has("bank:" + check_bank_name(name))

    def bank_info(self, name: str) -> BankInfo:
        return self._manifest(name).info()

    def bank_generation(self, name: str) -> int:
        """How many times the bank's manifest was written: an open bank older than this is out of date."""
        return self._manifest(name).generation

    def bank_manifest(self, name: str) -> BankManifest:
        """The bank's manifest as stored (a copy): documents, block entries, identity and recorded settings."""
        return self._manifest(name)

    def usage(self) -> StoreUsage:
        """Bytes on disk, counts, and the blocks nothing references (what ``gc`` would free)."""
        manifests = [self._manifest(name) for name in self.bank_names()]
        referenced = {key for manifest in manifests for key in manifest.block_keys()}
        referenced_indexes = {key for manifest in manifests for key in manifest.index_keys()}
        live = live_leased_keys(self.path, remove_stale=False)
        leased = live - referenced
        blocks = [key.removeprefix("block:") for key in self._items.keys("block:")]
        sizes = {key: self._items.size("block:" + key) for key in blocks}
        unreferenced = [key for key in blocks if key not in referenced and key not in leased]
        indexes = [key.removeprefix(INDEX_PREFIX) for key in self._items.keys(INDEX_PREFIX)]
        index_sizes = {key: self._items.size(INDEX_PREFIX + key) for key in indexes}
        unreferenced_indexes = [key for key in indexes if key not in referenced_indexes and key not in live]
        return StoreUsage(
            path=self.path,
            bytes=self._items.volume(),
            blocks=len(blocks),
            block_bytes=sum(sizes.values()),
            texts=len(self._items.keys("text:")),
            banks=len(manifests),
            unreferenced_blocks=len(unreferenced),
            unreferenced_bytes=sum(sizes[key] for key in unreferenced)
            + sum(index_sizes[key] for key in unreferenced_indexes),
            size_limit_bytes=self.size_limit_bytes,
            bank_bytes={
                manifest.name: sum(sizes.get(key, 0) for key in manifest.block_keys())
                + sum(index_sizes.get(key, 0) for key in manifest.index_keys())
                for manifest in manifests
            },
            leased_blocks=len(leased & set(sizes)),
            indexes=len(indexes),
            index_bytes=sum(index_sizes.values()),
            unreferenced_indexes=len(unreferenced_indexes),
        )

    # Changing banks --------------------------------------------------------------------------------

    def delete_bank(self, name: str) -> None:
        """Remove a bank's manifest; its blocks stay until ``gc`` (other banks may share them)."""
        with self._changing_manifests():
            self._manifest(name)
            self._items.delete("bank:" + name)

    def rename_bank(self, old: str, new: str) -> None:
        """Give a bank a new name, atomically; renaming onto an existing bank is refused."""
        check_new_bank_name(new)
        with self._changing_manifests():
            manifest = self._manifest(old)
            if old == new:
                return
            if self._items.has("bank:" + new):
                raise StoreError(f"cannot rename bank {old!r} to {new!r}: a bank named {new!r} already exists")
            previous = manifest.model_copy()
            manifest.name = new
            manifest.updated = now()
            with self._items.transact():
                self._write_manifest(manifest, previous)
                self._items.delete("bank:" + old)

    def remove_documents(
        self,
        name: str,
        document_ids: Iterable[str],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> StoredBank:
        """Rewrite a bank without some documents (their blocks stay until ``gc``); returns the new bank."""
        ids = [document_ids] if isinstance(document_ids, str) else list(document_ids)
        with self._changing_manifests():
            manifest = self._manifest(name)
            present = {document.id for document in manifest.documents}
            missing = [document_id for document_id in ids if document_id not in present]
            if missing:
                raise DocumentNotFoundError(
                    f"bank {name!r} holds no document with id {missing[0]!r} (documents: {', '.join(sorted(present))})"
                )
            previous = manifest.model_copy()
            removed = set(ids)
            manifest.documents = [document for document in manifest.documents if document.id not in removed]
            manifest.updated = now()
            self._write_manifest(manifest, previous)
        return self.load_bank(name, dtype=dtype, device=device)

    def gc(self) -> GcReport:
        """Delete blocks, gate index items and texts nothing references, and files a killed writer left behind.

        Blocks and index items that an open bank of a live process still names are kept (reader leases). Waits
        for nothing: if an ingest is writing blocks right now, it raises StoreError (they are not referenced yet).
        """
        busy = f"store {str(self.path)!r} is busy: an ingest or repair is writing blocks; try again when it ends"
        with file_lock(self.path / "ingest.lock", exclusive=True, wait=False, busy_message=busy):
            with self._changing_manifests():
                before = self._items.volume()
                manifests = [self._manifest(name) for name in self.bank_names()]
                leased = live_leased_keys(self.path, remove_stale=True)  # block and index keys of open banks
                blocks = {key for manifest in manifests for key in manifest.block_keys()} | leased
                indexes = {key for manifest in manifests for key in manifest.index_keys()} | leased
                texts = {document.text_key for manifest in manifests for document in manifest.documents}
                removed = {"block:": 0, INDEX_PREFIX: 0, "text:": 0}
                for prefix, kept in (("block:", blocks), (INDEX_PREFIX, indexes), ("text:", texts)):
                    for key in self._items.keys(prefix):
                        if key.removeprefix(prefix) not in kept:
                            removed[prefix] += self._items.delete(key)
                self._items.remove_orphan_files()  # no writer runs now
                return GcReport(
                    removed["block:"], removed["text:"], before, self._items.volume(), removed[INDEX_PREFIX]
                )

    # Reading banks ---------------------------------------------------------------------------------

    def _read_text(self, bank: str, document: StoredDocument) -> str:
        data = self._items.get("text:" + document.text_key)
        if data is None:
            raise CorruptDocumentError(
                f"bank {bank!r}: the text of document {document.id!r} is missing from store {str(self.path)!r}; "
                "the document must be ingested again"
            )
        if hashlib.sha256(data).hexdigest() != document.text_key:
            raise CorruptDocumentError(
                f"bank {bank!r}: the stored text of document {document.id!r} fails its checksum; "
                "the document must be ingested again"
            )
        return data.decode("utf-8")

    def _leased_manifest(self, name: str) -> tuple[BankManifest, ReaderLease | None]:
        """The bank's manifest and a lease on its blocks, taken together so gc cannot slip in between."""
        try:
            with self._changing_manifests():
                manifest = self._manifest(name)
                return manifest, ReaderLease(self.path, manifest.block_keys() | manifest.index_keys())
        except OSError as error:
            if error.errno not in _READ_ONLY_ERRNOS:
                raise StoreError(f"cannot open bank {name!r} in store {str(self.path)!r}: {error}") from None
            logger.warning("store %s is read-only: bank %r is read without a lease", self.path, name)
            return self._manifest(name), None

    def load_bank(
        self, name: str, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> StoredBank:
        """A lazy bank: documents and spans in memory, each block read (and checked) only when used.

        Blocks come back in ``dtype`` on ``device`` (default: the dtype they were computed in, on CPU); a block's
        gate index (``bank.gate_keys(i)``) is read alone, float16 on CPU, None when missing or damaged. While the
        bank lives, its blocks and index items are leased: ``gc`` in any process keeps them even if the bank changes.
        """
        manifest, lease = self._leased_manifest(name)
        try:
            documents, spans, slot_counts, entries = [], [], [], []
            for document_index, stored in enumerate(manifest.documents):
                text = self._read_text(name, stored)
                documents.append(Document(text=text, id=stored.id, metadata=dict(stored.metadata)))
                for entry in stored.blocks:
                    spans.append(
                        SourceSpan(
                            document_id=stored.id,
                            document_index=document_index,
                            char_start=entry.char_start,
                            char_end=entry.char_end,
                            token_start=entry.token_start,
                            token_end=entry.token_end,
                            text=text[entry.char_start : entry.char_end],
                        )
                    )
                    slot_counts.append(entry.slots)
                    entries.append(entry)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        bank = StoredBank(
            documents=documents,
            spans=spans,
            slot_counts=slot_counts,
            identity=manifest.identity,
            name=name,
            loader=BlockLoader(self._items, str(self.path), manifest, entries, spans, dtype, device),
            gate_index=manifest.gate_index,
            index_loader=IndexLoader(self._items, str(self.path), manifest, entries, spans),
            store=self,
            block_keys=[entry.key for entry in entries],
            generation=manifest.generation,
            fingerprint_scheme=manifest.fingerprint_scheme,
        )
        if lease is not None:
            weakref.finalize(bank, lease.release)
        return bank

    # Writing banks ---------------------------------------------------------------------------------

    def _stored_block_shape(self, key: str) -> tuple[int, int] | None:
        """(slots, bytes) of a stored block from its header alone; None when missing or unreadable."""
        head = self._items.read_prefix("block:" + key, HEADER_BYTES)
        length = header_length(head) if head is not None else None
        if length is None:
            return None
        prefix = self._items.read_prefix("block:" + key, HEADER_BYTES + length)
        try:
            header = safetensors_header(prefix[HEADER_BYTES - 8 :])
            return int(header["keys"]["shape"][2]), self._items.size("block:" + key)
        except (Damaged, KeyError, IndexError, TypeError, ValueError):
            return None

    def _write_text(self, document: Document) -> str:
        data = document.text.encode("utf-8")
        key = hashlib.sha256(data).hexdigest()
        stored = self._items.get("text:" + key)
        if stored is None or hashlib.sha256(stored).hexdigest() != key:
            self._items.put("text:" + key, data)
        return key

    def _write_blocks(
        self, documents: Sequence[Document], recipe: BlockRecipe, show_progress: bool
    ) -> tuple[list[StoredDocument], int, int, int, int]:
        """Write the documents' texts and every block not stored yet (call with ``_writing_blocks`` held).

        A stored block whose gate index item is missing while the recipe builds an index is compressed again
        (the only way to get its index keys), so a bank's index is always complete. Returns the documents'
        manifest entries and the counts (chunks, compressed, reused, bytes written).
        """
        identity, storage, spec = recipe.identity, self.block_dtype, recipe.gate_index
        metadata = {document.id: json_metadata(document) for document in documents}
        text_keys = {document.id: self._write_text(document) for document in documents}
        chunks = recipe.chunk(documents)
        keys = [
            block_key(
                identity.model_fingerprint,
                identity.compressor,
                storage,
                torch.tensor(chunk.token_ids),
                identity.opening,
            )
            for chunk in chunks
        ]
        shapes: dict[str, tuple[int, int]] = {}
        indexes: dict[str, tuple[str, int]] = {}  # block key -> (index key, bytes)
        present: dict[str, tuple[int, int]] = {}  # stored blocks compressed again for their index only
        to_compress: dict[str, Chunk] = {}  # identical chunks are compressed once
        for key, chunk in zip(keys, chunks):
            if key in shapes or key in to_compress:
                continue
            shape = self._stored_block_shape(key)
            index = stored_index(self._items, key, spec) if spec is not None else None
            if shape is not None and (spec is None or index is not None):
                shapes[key] = shape
                if index is not None:
                    indexes[key] = index
                continue
            to_compress[key] = chunk
            if shape is not None:
                present[key] = shape
        reused = len(shapes)
        written = self._compress_and_write(list(to_compress.items()), recipe, shapes, indexes, present, show_progress)
        stored_documents = []
        for document_index, document in enumerate(documents):
            entries = [
                block_entry(key, storage, chunk, shapes[key], indexes.get(key))
                for key, chunk in zip(keys, chunks)
                if chunk.document_index == document_index
            ]
            stored_documents.append(
                StoredDocument(
                    id=document.id,
                    metadata=metadata[document.id],
                    text_key=text_keys[document.id],
                    characters=len(document.text),
                    blocks=entries,
                )
            )
        return stored_documents, len(chunks), len(to_compress), reused, written

    def _compress_and_write(
        self,
        work: list[tuple[str, Chunk]],
        recipe: BlockRecipe,
        shapes: dict[str, tuple[int, int]],
        indexes: dict[str, tuple[str, int]],
        present: dict[str, tuple[int, int]],
        show_progress: bool,
    ) -> int:
        """Compress chunks a batch at a time and write each block (unless ``present``) and its gate index at once,
        so memory stays one batch deep."""
        written = 0
        spec = recipe.gate_index
        if recipe.progress is not None:
            recipe.progress(0, len(work))
        with progress_bar(len(work), "compressing", show_progress) as bar:
            for start in range(0, len(work), recipe.batch_size):
                group = work[start : start + recipe.batch_size]
                blocks = recipe.compress([chunk for _, chunk in group])
                for (key, _), block in zip(group, blocks):
                    if key in present:
                        shapes[key] = present[key]
                    else:
                        data = encode_block(block, self.block_dtype, recipe.identity)
                        self._items.put("block:" + key, data)
                        shapes[key] = (block.num_slots, len(data))
                        written += len(data)
                    if spec is not None and block.gate_keys is not None:
                        indexes[key] = write_index(self._items, key, spec, block.gate_keys, block.keys.shape[-1])
                        written += indexes[key][1]
                del blocks
                bar.update(len(group))
                if recipe.progress is not None:
                    recipe.progress(start + len(group), len(work))
        return written

    def _with_recipe_index(
        self,
        name: str,
        documents: list[StoredDocument],
        recipe: BlockRecipe,
        show_progress: bool,
        ready: dict[str, StoredDocument],
        totals: list[int],
    ) -> list[StoredDocument]:
        """``documents`` with every block naming the gate index ``recipe`` builds (call with ``_writing_blocks``).

        A document written under another index spec is rewritten from its stored text (only blocks whose item is
        missing are compressed); with no index, its entries' index fields are cleared. ``ready`` holds documents
        already rewritten (by id; reused when from the same source, and updated); ``totals`` adds the counts.
        """
        spec = recipe.gate_index
        result = list(documents)
        todo: list[Document] = []
        for position, document in enumerate(documents):
            if document.id in ready and _same_source(ready[document.id], document):
                result[position] = ready[document.id]
            elif all(conforms(entry, spec) for entry in document.blocks):
                continue
            elif spec is None:
                result[position] = without_index(document, None)
            else:
                try:
                    text = self._read_text(name, document)
                except CorruptDocumentError:  # verify names the damaged text; its blocks keep no stale index
                    result[position] = without_index(document, spec)
                    continue
                todo.append(Document(text=text, id=document.id, metadata=dict(document.metadata)))
        if todo:
            rewritten, *counts = self._write_blocks(todo, recipe, show_progress)
            totals[:] = [total + count for total, count in zip(totals, counts)]
            by_id = {document.id: document for document in rewritten}
            ready.update(by_id)
            result = [by_id.get(document.id, document) for document in result]
        return result

    def _manifest_for(
        self, name: str, recipe: BlockRecipe, documents: list[StoredDocument], current: BankManifest | None
    ) -> BankManifest:
        """A manifest of ``documents`` built by ``recipe``'s engine, keeping ``current``'s creation time."""
        moment = now()
        identity = recipe.identity
        return BankManifest(
            name=name,
            created=current.created if current is not None else moment,
            updated=moment,
            model_fingerprint=identity.model_fingerprint,
            fingerprint_scheme=FINGERPRINT_SCHEME,
            model_spec=recipe.model_spec,
            model_dtype=recipe.model_dtype,
            compressor=dict(identity.compressor),
            chunk_tokens=identity.chunk_tokens,
            engine_config=recipe.settings,
            opening=list(identity.opening) if identity.opening is not None else None,
            gate_index=recipe.gate_index,
            documents=documents,
        )

    def add_documents(
        self, name: str, documents: Sequence[Document], recipe: BlockRecipe, *, show_progress: bool = False
    ) -> StoredBank:
        """Compress only the chunks not stored yet and add the documents to bank ``name`` (created if new).

        A document whose id is already in the bank replaces the old version in place. Blocks, index items and
        texts are written first; the manifest last, in one atomic write. The bank's gate index becomes the
        recipe's (documents indexed otherwise get it too). ``engine.ingest(..., store=, bank=)`` calls this.
        """
        check_bank_name(name)
        started = time.perf_counter()
        with self._writing_blocks():
            existing = self._read_manifest(name)
            if existing is None:
                check_new_bank_name(name)
            else:
                self.check_bank_identity(existing, recipe.identity)
            stored, *counts = self._write_blocks(documents, recipe, show_progress)
            totals, ready = list(counts), {}  # chunks, compressed, reused, written; documents given a new index
            if existing is not None:  # index the bank's other documents as this recipe does, outside the lock
                incoming = {document.id for document in stored}
                kept = [document for document in existing.documents if document.id not in incoming]
                self._with_recipe_index(name, kept, recipe, show_progress, ready, totals)
            with self._changing_manifests():
                current = self._read_manifest(name)  # another process may have changed the bank meanwhile
                if current is not None:
                    self.check_bank_identity(current, recipe.identity)
                merged, added, replaced = merge_documents(current.documents if current else [], stored)
                merged = self._with_recipe_index(name, merged, recipe, show_progress, ready, totals)
                self._write_manifest(self._manifest_for(name, recipe, merged, current), current)
        self.last_ingest = IngestReport(
            bank=name,
            documents_added=added,
            documents_replaced=replaced,
            chunks=totals[0],
            compressed=totals[1],
            reused=totals[2],
            written_bytes=totals[3],
            seconds=time.perf_counter() - started,
        )
        return self.load_bank(name, dtype=recipe.dtype, device=recipe.device)

    def rebuild_bank(self, name: str, recipe: BlockRecipe, *, show_progress: bool = False) -> StoredBank:
        """Rebuild a bank from its stored text with another engine (``recipe``), under the same name.

        Documents another process adds or replaces while this runs are rebuilt too before the manifest is
        written (it is written only if the bank did not change since it was last read), so nothing is lost.
        """
        started = time.perf_counter()
        rebuilt: dict[str, StoredDocument] = {}  # document id -> its rebuilt entry (for the text it names)
        totals = [0, 0, 0, 0]  # chunks, compressed, reused, written
        for _ in range(_REBUILD_ROUNDS):
            current = self._manifest(name)
            stale = [d for d in current.documents if d.id not in rebuilt or not _same_source(rebuilt[d.id], d)]
            texts = [Document(text=self._read_text(name, d), id=d.id, metadata=dict(d.metadata)) for d in stale]
            with self._writing_blocks():
                stored, *counts = self._write_blocks(texts, recipe, show_progress)
                totals = [total + count for total, count in zip(totals, counts)]
                rebuilt.update({document.id: document for document in stored})
                with self._changing_manifests():
                    latest = self._read_manifest(name)
                    if latest is None:
                        raise BankNotFoundError(f"bank {name!r} was deleted or renamed while it was being rebuilt")
                    if latest.generation != current.generation:
                        continue  # changed meanwhile: rebuild what changed, then try again
                    documents = [rebuilt[document.id] for document in latest.documents]
                    self._write_manifest(self._manifest_for(name, recipe, documents, latest), latest)
                    break
        else:
            raise StoreError(f"bank {name!r} kept changing while it was being rebuilt; try again")
        self.last_ingest = IngestReport(name, 0, len(rebuilt), *totals, seconds=time.perf_counter() - started)
        return self.load_bank(name, dtype=recipe.dtype, device=recipe.device)

    def save_bank(self, bank: MemoryBank, name: str | None = None) -> StoredBank:
        """Write any bank (built in memory, or read from another store) into this store, in this store's format.

        Blocks and gate index items already stored are skipped; documents are added to bank ``name`` (default
        ``bank.name``) as by ingest. A bank saved this way records no engine settings, so repairing it needs an
        engine.
        """
        return save_bank(self, bank, name)

    # Verification and repair -----------------------------------------------------------------------

    def verify(
        self,
        repair: bool = False,
        recipe: BlockRecipe | None = None,
        *,
        recipe_for_settings: RecipeForSettings | None = None,
    ) -> VerifyReport:
        """Check every manifest, document text and block checksum; with ``repair``, recompress bad blocks.

        Repair recompresses a block from the bank's stored text with ``recipe`` (an engine's
        ``block_recipe()``) when it built the bank, else with ``recipe_for_settings(recorded settings)``, which
        rebuilds the engine the bank recorded at ingest (the CLI's ``lychee store verify --repair`` does so). A
        damaged text cannot be repaired (the source is gone): ingest that document again.
        """
        return verify_store(self, repair, recipe, recipe_for_settings)


def _same_source(rebuilt: StoredDocument, stored: StoredDocument) -> bool:
    """Whether a rebuilt document entry came from this stored version (same text and metadata)."""
    return rebuilt.text_key == stored.text_key and rebuilt.metadata == stored.metadata


def as_store(store: MemoryStore | str | os.PathLike[str] | None, *, create: bool = True) -> MemoryStore:
    """A MemoryStore from a store, a directory, or None (the default store); ``create=False`` for reading."""
    if isinstance(store, MemoryStore):
        return store
    if store is None or isinstance(store, (str, os.PathLike)):
        return MemoryStore(store, create=create)
    raise ConfigurationError(f"store must be a MemoryStore, a directory path or None, got {type(store).__name__}")
