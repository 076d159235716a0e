"""``MemoryStore``: persistent memory banks; compress once, reuse across sessions and machines, lose nothing.

A store is a directory (the layout below) or, opened by URL (``location.py``), blocks in an object store with
manifests in a database (``objects.py``, ``catalog.py``); everything below holds on every backend. Blocks are
content-addressed: a block's key hashes the model fingerprint, the compressor settings, the storage format, the
opening framed blocks are encoded after and the chunk's token ids, so re-ingesting an unchanged document
compresses nothing, and a chunk shared by two banks is stored once. A bank is a JSON manifest written last and
atomically, after every block, index item and text it names, so a crash at any moment leaves every bank as it
was or as it became. The store knows no engine: what it compresses with comes in as a ``BlockRecipe``.

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
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from ..blocks import BankIdentity, MemoryBank, SourceSpan
from ..config import cache_root
from ..documents import Document
from ..errors import (
    BankNotFoundError,
    ConfigurationError,
    CorruptDocumentError,
    DocumentNotFoundError,
    StoreError,
)
from .catalog import Catalog, DatabaseCatalog, Lease, LocalCatalog, ManifestConflict
from .codec import (
    HEADER_BYTES,
    MANIFEST_MAGIC,
    Damaged,
    frame,
    header_length,
    safetensors_header,
    unframe,
)
from .disk import Items
from .gate_index import INDEX_PREFIX, IndexLoader, conforms, without_index
from .location import StoreLocation, open_filesystem, parse_store_location
from .manifest import (
    BLOCK_DTYPES,
    FINGERPRINT_SCHEME,
    FORMAT_VERSION,
    BankManifest,
    BlockDtype,
    StoredDocument,
    check_bank_name,
    check_new_bank_name,
    merge_documents,
    now,
)
from .objects import CachedObjects, FsspecObjects
from .reading import BlockLoader
from .recipe import BlockRecipe, RecipeForSettings
from .reports import BankInfo, GcReport, IngestReport, StoreUsage, VerifyReport
from .save import save_bank
from .stored_bank import StoredBank
from .verify import verify_store
from .writing import write_blocks

logger = logging.getLogger(__name__)

_MARKER = "lychee-store.json"
_REBUILD_ROUNDS = 5  # a rebuild that finds its bank changed by another writer catches up this many times
_MANIFEST_ROUNDS = 20  # a manifest write that loses the race to another writer merges again this many times
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
        storage_options: dict[str, Any] | None = None,
    ):
        if block_dtype not in BLOCK_DTYPES:
            raise ConfigurationError(f"unknown block dtype {block_dtype!r}; choose one of {', '.join(BLOCK_DTYPES)}")
        if size_limit_bytes is not None and (
            isinstance(size_limit_bytes, bool) or not isinstance(size_limit_bytes, int) or size_limit_bytes <= 0
        ):
            raise ConfigurationError(f"size_limit_bytes must be a positive number of bytes, got {size_limit_bytes!r}")
        where = os.fspath(path) if path is not None else str(default_store_path())
        self.where: StoreLocation = parse_store_location(where, storage_options)
        self.location = self.where.objects_url or str(self.where.directory)
        self.path = self.where.local_path  # the store itself, or an object store's local cache
        self.block_dtype: BlockDtype = block_dtype
        self.size_limit_bytes = size_limit_bytes
        self.last_ingest: IngestReport | None = None
        database: Catalog | None = None
        if self.where.manifests is not None:  # first: an unreachable database leaves no half-made store behind
            lease = {"lease_seconds": self.where.lease_seconds} if self.where.lease_seconds else {}
            # The store's name in the database: its objects URL, or its directory made absolute (any cwd agrees).
            store_id = self.where.objects_url or str(self.path.expanduser().resolve())
            database = DatabaseCatalog(self.where.manifests, store_id, **lease)
        if self.where.remote:
            filesystem, root = open_filesystem(self.where)
            remote = FsspecObjects(filesystem, root, self.location, size_limit_bytes)
            self._prepare_object_store(remote, create)
            self._items: Items | CachedObjects = CachedObjects(remote, self.path / "cache", self.where.cache_bytes)
        else:
            self._prepare_directory(create)
            self._items = Items(self.path / "cache", self.path, size_limit_bytes)
        assert database is not None or isinstance(self._items, Items)
        self._catalog: Catalog = database if database is not None else LocalCatalog(self.path, self._items)

    def __repr__(self) -> str:
        manifests = f", manifests={self._catalog.location!r}" if self.where.manifests else ""
        return f"MemoryStore({self.location!r}{manifests}, block_dtype={self.block_dtype!r})"

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def close(self) -> None:
        self._catalog.close()
        self._items.close()

    def _prepare_object_store(self, remote: FsspecObjects, create: bool) -> None:
        marker = remote.read_marker(_MARKER)
        if marker is None:
            if not create:
                raise StoreError(f"no store at {self.location!r}: ingest documents into a bank there to create one")
            remote.write_marker(_MARKER, (json.dumps({"format": FORMAT_VERSION}) + "\n").encode("utf-8"))
            return
        try:
            data = json.loads(marker)
        except ValueError:
            raise StoreError(f"store marker of {self.location!r} is not valid JSON") from None
        if data.get("format") != FORMAT_VERSION:
            raise StoreError(f"store {self.location!r} has format {data.get('format')!r}; this reads {FORMAT_VERSION}")

    def _prepare_directory(self, create: bool) -> None:
        marker = self.path / _MARKER
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"store path {self.location!r} is a file, not a directory")
        partial = f".{_MARKER}."  # another process creating this store right now
        if (
            self.path.is_dir()
            and not marker.is_file()
            and any(not entry.name.startswith(partial) for entry in self.path.iterdir())
        ):
            raise StoreError(
                f"{self.location!r} is a non-empty directory that is not a lychee-memory store; "
                "choose an empty or new directory"
            )
        if not create and not marker.is_file():
            raise StoreError(f"no store at {self.location!r}: ingest documents into a bank there to create one")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if not marker.is_file():
                temporary = self.path / f".{_MARKER}.{os.getpid()}"
                temporary.write_text(json.dumps({"format": FORMAT_VERSION}) + "\n", encoding="utf-8")
                os.replace(temporary, marker)
            data = json.loads(marker.read_text(encoding="utf-8"))
        except OSError as error:
            raise StoreError(f"cannot use {self.location!r} as a store: {error.strerror or error}") from None
        except ValueError:
            raise StoreError(f"store marker {str(marker)!r} is not valid JSON") from None
        if data.get("format") != FORMAT_VERSION:
            raise StoreError(
                f"store {self.location!r} has format {data.get('format')!r}; this lychee-memory reads format "
                f"{FORMAT_VERSION}"
            )

    # Locks -----------------------------------------------------------------------------------------

    def writing_blocks(self) -> ContextManager[None]:
        """Held while blocks are written and until the manifest naming them is written, here or by distributed
        workers: gc in any process refuses to run meanwhile, so it never deletes blocks before they are named."""
        return self._catalog.writing()

    def _manifest_updates(self) -> Iterator[_ManifestAttempt]:
        """Rounds of a manifest read-change-write: ``for attempt in ...: with attempt: ...``. A round whose write
        finds the manifest changed by another writer (ManifestConflict) is run again from a fresh read."""
        for _ in range(_MANIFEST_ROUNDS):
            attempt = _ManifestAttempt(self._catalog.changing())
            yield attempt
            if attempt.done:
                return
        raise StoreError(f"the banks of store {self.location!r} kept changing under this writer; try again")

    # Manifests -------------------------------------------------------------------------------------

    def _read_manifest(self, name: str) -> BankManifest | None:
        data = self._catalog.read(name)
        if data is None:
            return None
        try:
            return BankManifest.model_validate_json(unframe(MANIFEST_MAGIC, data))
        except Damaged as damage:
            raise StoreError(f"the manifest of bank {name!r} in store {self.location!r} is damaged: {damage}") from None
        except ValidationError as error:
            raise StoreError(
                f"the manifest of bank {name!r} in store {self.location!r} is not a valid manifest: {error}"
            ) from None

    def _manifest(self, name: str) -> BankManifest:
        manifest = self._read_manifest(check_bank_name(name))
        if manifest is None:
            known = ", ".join(sorted(self.bank_names())) or "none"
            raise BankNotFoundError(f"no bank named {name!r} in store {self.location!r} (banks: {known})")
        return manifest

    def _write_manifest(self, manifest: BankManifest, previous: BankManifest | None) -> None:
        """Write ``manifest`` (call with the manifest lock held), one generation after ``previous``."""
        expected = previous.generation if previous is not None else 0
        manifest.generation = expected + 1
        self._catalog.put(manifest.name, _framed(manifest), manifest.generation, expected)

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
        subject = f"bank {manifest.name!r} in store {self.location!r} (built with {built_with})"
        manifest.identity.require_same(identity, subject, remedy)

    def bank_names(self) -> list[str]:
        return self._catalog.names()

    # Public queries --------------------------------------------------------------------------------

    def list_banks(self) -> list[BankInfo]:
        """Every bank in the store, by name."""
        return [self._manifest(name).info() for name in self.bank_names()]

    def has_bank(self, name: str) -> bool:
        return self._catalog.read(check_bank_name(name)) is not None

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
        live = self._catalog.leased_keys(remove_stale=False)
        leased = live - referenced
        blocks = [key.removeprefix("block:") for key in self._items.keys("block:")]
        sizes = {key: self._items.size("block:" + key) for key in blocks}
        unreferenced = [key for key in blocks if key not in referenced and key not in leased]
        indexes = [key.removeprefix(INDEX_PREFIX) for key in self._items.keys(INDEX_PREFIX)]
        index_sizes = {key: self._items.size(INDEX_PREFIX + key) for key in indexes}
        unreferenced_indexes = [key for key in indexes if key not in referenced_indexes and key not in live]
        return StoreUsage(
            path=self.location if self.where.remote else self.path,
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
        for attempt in self._manifest_updates():
            with attempt:
                self._catalog.remove(name, self._manifest(name).generation)

    def rename_bank(self, old: str, new: str) -> None:
        """Give a bank a new name, atomically; renaming onto an existing bank is refused."""
        check_new_bank_name(new)
        for attempt in self._manifest_updates():
            with attempt:
                manifest = self._manifest(old)
                if old == new:
                    return
                if self.has_bank(new):
                    raise StoreError(f"cannot rename bank {old!r} to {new!r}: a bank named {new!r} already exists")
                expected = manifest.generation
                manifest.name, manifest.updated, manifest.generation = new, now(), expected + 1
                self._catalog.rename(old, new, _framed(manifest), manifest.generation, expected)

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
        for attempt in self._manifest_updates():
            with attempt:
                manifest = self._manifest(name)
                present = {document.id for document in manifest.documents}
                missing = [document_id for document_id in ids if document_id not in present]
                if missing:
                    raise DocumentNotFoundError(
                        f"bank {name!r} holds no document with id {missing[0]!r} "
                        f"(documents: {', '.join(sorted(present))})"
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
        busy = f"store {self.location!r} is busy: an ingest or repair is writing blocks; try again when it ends"
        with self._catalog.collecting(busy):
            with self._catalog.changing():
                before = self._items.volume()
                manifests = [self._manifest(name) for name in self.bank_names()]  # manifests first, leases second
                leased = self._catalog.leased_keys(remove_stale=True)  # block and index keys of open banks
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
                f"bank {bank!r}: the text of document {document.id!r} is missing from store {self.location!r}; "
                "the document must be ingested again"
            )
        if hashlib.sha256(data).hexdigest() != document.text_key:
            raise CorruptDocumentError(
                f"bank {bank!r}: the stored text of document {document.id!r} fails its checksum; "
                "the document must be ingested again"
            )
        return data.decode("utf-8")

    def _leased_manifest(self, name: str) -> tuple[BankManifest, Lease | None]:
        """The bank's manifest and a lease on its blocks: the lease is taken, then the manifest read again; if it
        changed meanwhile, the lease is taken again for the new one. gc reads manifests before leases, so it sees
        either the manifest or the lease of every block handed out."""
        try:
            with self._catalog.changing():
                manifest = self._manifest(name)
                for _ in range(_MANIFEST_ROUNDS):
                    lease = self._catalog.lease(manifest.block_keys() | manifest.index_keys())
                    latest = self._manifest(name)
                    if latest.generation == manifest.generation:
                        return manifest, lease
                    if lease is not None:
                        lease.release()
                    manifest = latest
                raise StoreError(f"bank {name!r} in store {self.location!r} kept changing while it was opened")
        except OSError as error:
            if error.errno not in _READ_ONLY_ERRNOS:
                raise StoreError(f"cannot open bank {name!r} in store {self.location!r}: {error}") from None
            logger.warning("store %s is read-only: bank %r is read without a lease", self.location, name)
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
            loader=BlockLoader(self._items, self.location, manifest, entries, spans, dtype, device),
            gate_index=manifest.gate_index,
            index_loader=IndexLoader(self._items, self.location, manifest, entries, spans),
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
        with self._items.reading_through():  # whether the store holds it, never whether a local copy does
            stored = self._items.get("text:" + key)
        if stored is None or hashlib.sha256(stored).hexdigest() != key:
            self._items.put("text:" + key, data)
        return key

    def _write_blocks(
        self, documents: Sequence[Document], recipe: BlockRecipe, show_progress: bool
    ) -> tuple[list[StoredDocument], int, int, int, int]:
        """Texts and blocks not stored yet (call with ``writing_blocks`` held): entries and counts (``writing``)."""
        return write_blocks(self, list(documents), recipe, show_progress)

    def _with_recipe_index(
        self,
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
        started = time.perf_counter()
        with self.writing_blocks():
            self.check_ingest_target(name, recipe)
            stored, *counts = self._write_blocks(documents, recipe, show_progress)
            return self.commit_documents(name, stored, recipe, counts, started, show_progress=show_progress)

    def check_ingest_target(self, name: str, recipe: BlockRecipe) -> None:
        """Refuse, before anything is compressed, a bank name that is not allowed or a bank another engine built."""
        check_bank_name(name)
        existing = self._read_manifest(name)
        if existing is None:
            check_new_bank_name(name)
        else:
            self.check_bank_identity(existing, recipe.identity)

    def commit_documents(
        self,
        name: str,
        stored: list[StoredDocument],
        recipe: BlockRecipe,
        counts: Sequence[int] = (0, 0, 0, 0),
        started: float | None = None,
        *,
        show_progress: bool = False,
    ) -> StoredBank:
        """Add documents whose blocks are all written (``writing.assemble_documents``) to bank ``name``, merging with
        whatever other writers committed meanwhile; the manifest is the only write. Hold ``writing_blocks()`` from
        before the blocks were written until this returns. ``counts``: chunks, compressed, reused, bytes written.
        """
        started = time.perf_counter() if started is None else started
        with self.writing_blocks():  # re-entrant in effect: a shared flock, or one more writer row
            existing = self._read_manifest(name)
            totals, ready = list(counts), {}  # documents given a new index
            if existing is not None:  # index the bank's other documents as this recipe does, outside the lock
                incoming = {document.id for document in stored}
                kept = [document for document in existing.documents if document.id not in incoming]
                self._with_recipe_index(name, kept, recipe, show_progress, ready, totals)
            for attempt in self._manifest_updates():
                with attempt:
                    current = self._read_manifest(name)  # another process may have changed the bank meanwhile
                    if current is not None:
                        self.check_bank_identity(current, recipe.identity)
                    elif existing is None:
                        check_new_bank_name(name)
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
            with self.writing_blocks():
                stored, *counts = self._write_blocks(texts, recipe, show_progress)
                totals = [total + count for total, count in zip(totals, counts)]
                rebuilt.update({document.id: document for document in stored})
                with self._catalog.changing():
                    latest = self._read_manifest(name)
                    if latest is None:
                        raise BankNotFoundError(f"bank {name!r} was deleted or renamed while it was being rebuilt")
                    if latest.generation != current.generation:
                        continue  # changed meanwhile: rebuild what changed, then try again
                    documents = [rebuilt[document.id] for document in latest.documents]
                    try:
                        self._write_manifest(self._manifest_for(name, recipe, documents, latest), latest)
                    except ManifestConflict:
                        continue  # another machine's writer won the race: rebuild what it changed
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
        if isinstance(self._items, CachedObjects):  # the object store's own bytes, not this process's copies
            with self._items.reading_through():
                return verify_store(self, repair, recipe, recipe_for_settings)
        return verify_store(self, repair, recipe, recipe_for_settings)


def _framed(manifest: BankManifest) -> bytes:
    """A manifest as stored: its JSON in a checksummed frame."""
    return frame(MANIFEST_MAGIC, manifest.model_dump_json().encode("utf-8"))


class _ManifestAttempt:
    """One round of a manifest read-change-write: holds the catalog's lock (if any); a ManifestConflict inside
    ends the round quietly, undone, so the next round reads again."""

    def __init__(self, lock: ContextManager[None]):
        self.lock, self.done = lock, False

    def __enter__(self) -> _ManifestAttempt:
        self.lock.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> bool:
        self.lock.__exit__(kind, error, trace)
        if kind is None:
            self.done = True
            return False
        return issubclass(kind, ManifestConflict)


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
