"""``MemoryStore``: persistent memory banks; compress once, reuse across sessions and machines, lose nothing.

A store is a directory (the layout below) or, opened by URL (``location.py``), blocks in an object store with
manifests in a database (``objects.py``, ``catalog.py``); everything below holds on every backend. Blocks are
content-addressed: a block's key hashes the model fingerprint, the compressor settings, the storage format, the
opening framed blocks are encoded after and the chunk's token ids, so re-ingesting an unchanged document
compresses nothing, and a chunk shared by two banks is stored once. A bank is a JSON manifest written last and
atomically, after every block, index item and text it names, so a crash at any moment leaves every bank as it
was or as it became. The store knows no engine: what it compresses with comes in as a ``BlockRecipe``.

``MemoryStore`` is a facade: its items are ``objects`` (``BlockObjects``), its manifests ``manifests``
(``Manifests``), and saving, verifying and writing banks are functions over those two parts (``save.py``,
``verify.py``, ``writing.py``).

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

import json
import os
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..blocks import BankIdentity, MemoryBank, SourceSpan
from ..choices import DEFAULT_BLOCK_DTYPE
from ..config import cache_root
from ..documents import Document
from ..errors import ConfigurationError, DocumentNotFoundError, NonFiniteScalesError, StoreError
from .block_objects import BLOCK_PREFIX, TEXT_PREFIX, BlockObjects
from .catalog import Catalog, DatabaseCatalog, LocalCatalog
from .codec import INDEX_ONLY
from .disk import Items
from .gate_index import INDEX_PREFIX, IndexLoader, conforms
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
    now,
)
from .manifests import Manifests
from .objects import CachedObjects, FsspecObjects
from .reading import BlockLoader
from .recipe import BlockRecipe, RecipeForSettings
from .recompress import recompress_bank
from .reports import BankInfo, BytesByPart, GcReport, IngestReport, RecompressReport, StoreUsage, VerifyReport
from .save import save_bank
from .verify import verify_store
from .writing import commit_documents, rebuild_documents, write_blocks

_MARKER = "lychee-store.json"


def default_store_path() -> Path:
    """The store used when none is named: ``<cache dir>/stores/default`` (LYCHEE_CACHE_DIR overrides)."""
    return cache_root() / "stores" / "default"


class MemoryStore:
    """A directory of memory banks on diskcache: content-addressed blocks, JSON manifests, checksums.

    ``block_dtype`` is how new blocks are written (``choices.DEFAULT_BLOCK_DTYPE``: k4v3; int8 keeps
    per-channel key and per-slot value scales; int4, int2, k4v2 and k4v3 are group-quantised,
    ``codec.GroupCodec``; ``none`` keeps only the gate index and the texts, its blocks encoded when read); blocks
    are converted back to the engine's dtype when read. diskcache's eviction is off, so nothing is ever dropped
    silently; ``size_limit_bytes`` is enforced by the store and a full store or disk raises StoreFullError without
    changing any bank. With ``create=False`` a
    missing store is a StoreError instead of a new empty directory (for commands that only read).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        block_dtype: BlockDtype = DEFAULT_BLOCK_DTYPE,
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
        self.size_limit_bytes = size_limit_bytes
        self.last_ingest: IngestReport | None = None
        database: Catalog | None = None
        if self.where.manifests is not None:  # first: an unreachable database leaves no half-made store behind
            lease = {"lease_seconds": self.where.lease_seconds} if self.where.lease_seconds else {}
            # The store's name in the database: its objects URL, or its directory made absolute (any cwd agrees).
            store_id = self.where.objects_url or str(self.path.expanduser().resolve())
            database = DatabaseCatalog(self.where.manifests, store_id, **lease)
        items: Items | CachedObjects
        if self.where.remote:
            filesystem, root = open_filesystem(self.where)
            remote = FsspecObjects(filesystem, root, self.location, size_limit_bytes)
            self._prepare_object_store(remote, create)
            items = CachedObjects(remote, self.path / "cache", self.where.cache_bytes)
        else:
            self._prepare_directory(create)
            items = Items(self.path / "cache", self.path, size_limit_bytes)
        assert database is not None or isinstance(items, Items)
        catalog = database if database is not None else LocalCatalog(self.path, items)
        self.objects = BlockObjects(items, self.location, block_dtype)  # blocks, gate index items, texts
        self.manifests = Manifests(catalog, self.location)  # bank manifests and the store's coordination

    @property
    def block_dtype(self) -> BlockDtype:
        """How new blocks are written (``BLOCK_DTYPES``)."""
        return self.objects.block_dtype

    def __repr__(self) -> str:
        manifests = f", manifests={self.manifests.catalog.location!r}" if self.where.manifests else ""
        return f"MemoryStore({self.location!r}{manifests}, block_dtype={self.block_dtype!r})"

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def close(self) -> None:
        self.manifests.close()
        self.objects.close()

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
        return self.manifests.writing()

    def check_bank_identity(self, manifest: BankManifest, identity: BankIdentity) -> None:
        """Raise BankMismatchError, saying what differs and what to do, unless ``identity`` built the bank."""
        self.manifests.check_identity(manifest, identity)

    def bank_names(self) -> list[str]:
        return self.manifests.names()

    # Public queries --------------------------------------------------------------------------------

    def list_banks(self) -> list[BankInfo]:
        """Every bank in the store, by name."""
        return [self.manifests.require(name).info() for name in self.bank_names()]

    def has_bank(self, name: str) -> bool:
        return self.manifests.exists(name)

    def bank_info(self, name: str) -> BankInfo:
        return self.manifests.require(name).info()

    def bank_generation(self, name: str) -> int:
        """How many times the bank's manifest was written: an open bank older than this is out of date."""
        return self.manifests.require(name).generation

    def bank_manifest(self, name: str) -> BankManifest:
        """The bank's manifest as stored (a copy): documents, block entries, identity and recorded settings."""
        return self.manifests.require(name)

    def usage(self) -> StoreUsage:
        """Bytes on disk, counts, and the blocks nothing references (what ``gc`` would free)."""
        items = self.objects.items
        manifests = [self.manifests.require(name) for name in self.bank_names()]
        referenced = {key for manifest in manifests for key in manifest.block_keys()}
        referenced_indexes = {key for manifest in manifests for key in manifest.index_keys()}
        live = self.manifests.catalog.leased_keys(remove_stale=False)
        leased = live - referenced
        blocks = [key.removeprefix(BLOCK_PREFIX) for key in items.keys(BLOCK_PREFIX)]
        sizes = {key: items.size(BLOCK_PREFIX + key) for key in blocks}
        unreferenced = [key for key in blocks if key not in referenced and key not in leased]
        indexes = [key.removeprefix(INDEX_PREFIX) for key in items.keys(INDEX_PREFIX)]
        index_sizes = {key: items.size(INDEX_PREFIX + key) for key in indexes}
        unreferenced_indexes = [key for key in indexes if key not in referenced_indexes and key not in live]
        texts = [key.removeprefix(TEXT_PREFIX) for key in items.keys(TEXT_PREFIX)]
        text_sizes = {key: items.size(TEXT_PREFIX + key) for key in texts}
        manifest_sizes = {manifest.name: self.manifests.size(manifest.name) for manifest in manifests}
        bank_parts = {
            manifest.name: bytes_by_part(manifest, sizes, index_sizes, text_sizes, manifest_sizes[manifest.name])
            for manifest in manifests
        }
        parts = BytesByPart(
            tokens=sum(part.tokens for part in bank_parts.values()),
            blocks=sum(sizes.values()),
            index=sum(index_sizes.values()),
            texts=sum(text_sizes.values()),
            manifests=sum(manifest_sizes.values()),
        )
        return StoreUsage(
            path=self.location if self.where.remote else self.path,
            bytes=items.volume(),
            blocks=len(blocks),
            block_bytes=sum(sizes.values()),
            texts=len(items.keys(TEXT_PREFIX)),
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
            parts=parts,
            bank_parts=bank_parts,
        )

    def bank_parts(self, name: str) -> BytesByPart:
        """The bank's bytes by part and per document token (its distinct blocks, index items and texts, and its
        manifest), from the item sizes its manifest recorded and one size look-up per document text."""
        manifest = self.manifests.require(name)
        entries = [entry for _, _, entry in manifest.entries()]
        texts = {document.text_key: self.objects.text_size(document.text_key) for document in manifest.documents}
        return bytes_by_part(
            manifest,
            {entry.key: entry.nbytes for entry in entries},
            {entry.index_key: entry.index_bytes for entry in entries if entry.index_key is not None},
            texts,
            self.manifests.size(name),
        )

    # Changing banks --------------------------------------------------------------------------------

    def delete_bank(self, name: str) -> None:
        """Remove a bank's manifest; its blocks stay until ``gc`` (other banks may share them)."""
        self.manifests.remove(name)

    def rename_bank(self, old: str, new: str) -> None:
        """Give a bank a new name, atomically; renaming onto an existing bank is refused."""
        self.manifests.rename(old, new)

    def remove_documents(
        self,
        name: str,
        document_ids: Iterable[str],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        recipe: BlockRecipe | None = None,
    ) -> StoredBank:
        """Rewrite a bank without some documents (their blocks stay until ``gc``); returns the new bank (``recipe``:
        as for ``load_bank``)."""
        ids = [document_ids] if isinstance(document_ids, str) else list(document_ids)

        def without(manifest: BankManifest | None) -> BankManifest:
            assert manifest is not None  # required
            present = {document.id for document in manifest.documents}
            missing = [document_id for document_id in ids if document_id not in present]
            if missing:
                raise DocumentNotFoundError(
                    f"bank {name!r} holds no document with id {missing[0]!r} (documents: {', '.join(sorted(present))})"
                )
            removed = set(ids)
            manifest.documents = [document for document in manifest.documents if document.id not in removed]
            manifest.updated = now()
            return manifest

        self.manifests.update(name, without, require=True)
        return self.load_bank(name, dtype=dtype, device=device, recipe=recipe)

    def gc(self) -> GcReport:
        """Delete blocks, gate index items and texts nothing references, and files a killed writer left behind.

        Blocks and index items that an open bank of a live process still names are kept (reader leases). Waits
        for nothing: if an ingest is writing blocks right now, it raises StoreError (they are not referenced yet).
        """
        busy = f"store {self.location!r} is busy: an ingest or repair is writing blocks; try again when it ends"
        catalog, items = self.manifests.catalog, self.objects.items
        with catalog.collecting(busy):
            with catalog.changing():
                before = items.volume()
                manifests = [self.manifests.require(name) for name in self.bank_names()]  # first manifests, then leases
                leased = catalog.leased_keys(remove_stale=True)  # block and index keys of open banks
                blocks = {key for manifest in manifests for key in manifest.block_keys()} | leased
                indexes = {key for manifest in manifests for key in manifest.index_keys()} | leased
                texts = {document.text_key for manifest in manifests for document in manifest.documents}
                removed = {BLOCK_PREFIX: 0, INDEX_PREFIX: 0, TEXT_PREFIX: 0}
                for prefix, kept in ((BLOCK_PREFIX, blocks), (INDEX_PREFIX, indexes), (TEXT_PREFIX, texts)):
                    for key in items.keys(prefix):
                        if key.removeprefix(prefix) not in kept:
                            removed[prefix] += items.delete(key)
                items.remove_orphan_files()  # no writer runs now
                catalog.scrub()
                return GcReport(
                    removed[BLOCK_PREFIX], removed[TEXT_PREFIX], before, items.volume(), removed[INDEX_PREFIX]
                )

    # Reading banks ---------------------------------------------------------------------------------

    def load_bank(
        self,
        name: str,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        recipe: BlockRecipe | None = None,
    ) -> StoredBank:
        """A lazy bank: documents and spans in memory, each block read (and checked) only when used.

        Blocks come back in ``dtype`` on ``device`` (default: the dtype they were computed in, on CPU); a block's
        gate index (``bank.gate_keys(i)``) is read alone, float16 on CPU, None when missing or damaged. While the
        bank lives, its blocks and index items are leased: ``gc`` in any process keeps them even if the bank changes.
        An index-only (``none``) bank's blocks are encoded from its stored text with ``recipe`` (an engine's; one
        that did not build the bank is refused) through the recipe's block cache; without one, reading such a block
        is a StoreError.
        """
        manifest, lease = self.manifests.leased(name)
        if recipe is not None and manifest.identity != recipe.identity:
            if any(entry.storage == INDEX_ONLY for _, _, entry in manifest.entries()):
                if lease is not None:
                    lease.release()
                self.check_bank_identity(manifest, recipe.identity)
            recipe = None
        try:
            documents, spans, slot_counts, entries = [], [], [], []
            for document_index, stored in enumerate(manifest.documents):
                text = self.objects.read_text(name, stored)
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
        items = self.objects.items
        bank = StoredBank(
            documents=documents,
            spans=spans,
            slot_counts=slot_counts,
            identity=manifest.identity,
            name=name,
            loader=BlockLoader(items, self.location, manifest, entries, spans, dtype, device, documents, recipe),
            gate_index=manifest.gate_index,
            index_loader=IndexLoader(items, self.location, manifest, entries, spans),
            store=self,
            block_keys=[entry.key for entry in entries],
            generation=manifest.generation,
            fingerprint_scheme=manifest.fingerprint_scheme,
        )
        if lease is not None:
            weakref.finalize(bank, lease.release)
        return bank

    # Writing banks ---------------------------------------------------------------------------------

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
            try:
                index_only = self.index_only_slots(name)
                stored, *counts = write_blocks(self.objects, list(documents), recipe, show_progress, index_only)
            except NonFiniteScalesError as error:
                raise NonFiniteScalesError(f"bank {name!r} in store {self.location!r}: {error}") from None
            return self.commit_documents(name, stored, recipe, counts, started, show_progress=show_progress)

    def index_only_slots(self, name: str) -> dict[str, int]:
        """Slots of bank ``name``'s index-only blocks by key: they have no payload, so re-ingesting an unchanged
        document finds them here instead of in the items."""
        manifest = self.manifests.read(name)
        if manifest is None:
            return {}
        return {entry.key: entry.slots for _, _, entry in manifest.entries() if entry.storage == INDEX_ONLY}

    def check_ingest_target(self, name: str, recipe: BlockRecipe) -> None:
        """Refuse, before anything is compressed, a bank name that is not allowed or a bank another engine built."""
        check_bank_name(name)
        existing = self.manifests.read(name)
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
        added, replaced, totals = commit_documents(
            self.objects, self.manifests, name, stored, recipe, counts, show_progress
        )
        self.last_ingest = IngestReport(
            bank=name,
            documents_added=added,
            documents_replaced=replaced,
            chunks=totals[0],
            compressed=totals[1],
            reused=totals[2],
            written_bytes=totals[3],
            seconds=time.perf_counter() - started,
            parts=self.bank_parts(name),
        )
        return self.load_bank(name, dtype=recipe.dtype, device=recipe.device, recipe=recipe)

    def rebuild_bank(self, name: str, recipe: BlockRecipe, *, show_progress: bool = False) -> StoredBank:
        """Rebuild a bank from its stored text with another engine (``recipe``), under the same name.

        Documents another process adds or replaces while this runs are rebuilt too before the manifest is
        written (it is written only if the bank did not change since it was last read), so nothing is lost.
        """
        started = time.perf_counter()
        rebuilt, totals = rebuild_documents(self.objects, self.manifests, name, recipe, show_progress)
        self.last_ingest = IngestReport(
            name, 0, rebuilt, *totals, seconds=time.perf_counter() - started, parts=self.bank_parts(name)
        )
        return self.load_bank(name, dtype=recipe.dtype, device=recipe.device, recipe=recipe)

    def recompress(self, name: str, codec: str | None = None, *, index_dtype: str | None = None) -> RecompressReport:
        """Convert bank ``name``'s blocks in place to ``codec`` (a ``BLOCK_DTYPES`` name) and/or its gate index to
        ``index_dtype`` (``float16 | int8``) from their stored payloads, without a model; generation-checked like
        every rebuild, the old items left for ``gc``.

        Refused (ConfigurationError naming the bank, nothing stored changed): an unknown codec or index dtype, one
        that would need bits already thrown away (int4 to int8, int8 to bfloat16; an int8 index to float16), an
        index dtype for a bank without a gate index. A bank already stored so is left as it is (``report.changed``
        False).
        """
        return recompress_bank(self.objects, self.manifests, name, codec, index_dtype)

    def save_bank(self, bank: MemoryBank, name: str | None = None) -> StoredBank:
        """Write any bank (built in memory, or read from another store) into this store, in this store's format.

        Blocks and gate index items already stored are skipped; documents are added to bank ``name`` (default
        ``bank.name``) as by ingest. A bank saved this way records no engine settings, so repairing it needs an
        engine.
        """
        target = save_bank(self.objects, self.manifests, bank, name)
        return self.load_bank(target, dtype=bank.resident_dtype())

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
        with self.objects.reading_through():  # the object store's own bytes, not this process's copies
            return verify_store(self.objects, self.manifests, repair, recipe, recipe_for_settings)


@dataclass
class StoredBank(MemoryBank):
    """A bank kept in a MemoryStore, as read at one ``generation`` of its manifest: a MemoryBank whose blocks are
    read lazily, that knows its store and keys; its blocks and gate index items are leased while it lives.

    ``block_keys`` are the content keys of its blocks in order; changes (adding or removing documents) are
    made in the store, which returns a new StoredBank.
    """

    store: MemoryStore | None = field(default=None, repr=False, compare=False)
    block_keys: list[str] = field(default_factory=list, repr=False)
    generation: int = 0
    fingerprint_scheme: str = field(default=FINGERPRINT_SCHEME, repr=False)

    def gate_index_key(self, index: int) -> str | None:
        """The key of the block's gate index item (content-addressed: the block's key and the index spec); None
        when the manifest names no item of the bank's spec."""
        if self.origins is not None or not isinstance(self.index_loader, IndexLoader):
            return super().gate_index_key(index)
        entry = self.index_loader.entries[index]
        return entry.index_key if self.gate_index is not None and conforms(entry, self.gate_index) else None

    def is_current(self) -> bool:
        """Whether the store still holds this version of the bank (no writer changed it since it was read)."""
        assert self.store is not None and self.name is not None
        return self.store.has_bank(self.name) and self.store.bank_generation(self.name) == self.generation

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "store": self.store.location if self.store is not None else None}


def bytes_by_part(
    manifest: BankManifest,
    block_sizes: Mapping[str, int],
    index_sizes: Mapping[str, int],
    text_sizes: Mapping[str, int],
    manifest_bytes: int,
) -> BytesByPart:
    """A bank's bytes by part: each distinct item its manifest names, sized from the maps given (0 when absent)."""
    return BytesByPart(
        tokens=manifest.info().tokens,
        blocks=sum(block_sizes.get(key, 0) for key in manifest.block_keys()),
        index=sum(index_sizes.get(key, 0) for key in manifest.index_keys()),
        texts=sum(text_sizes.get(key, 0) for key in {document.text_key for document in manifest.documents}),
        manifests=manifest_bytes,
    )


def as_store(store: MemoryStore | str | os.PathLike[str] | None, *, create: bool = True) -> MemoryStore:
    """A MemoryStore from a store, a directory, or None (the default store); ``create=False`` for reading."""
    if isinstance(store, MemoryStore):
        return store
    if store is None or isinstance(store, (str, os.PathLike)):
        return MemoryStore(store, create=create)
    raise ConfigurationError(f"store must be a MemoryStore, a directory path or None, got {type(store).__name__}")
