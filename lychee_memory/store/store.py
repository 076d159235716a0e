"""Persistent memory banks on diskcache: compress once, reuse across sessions, lose nothing.

A store is a directory. Blocks are content-addressed: a block's key hashes the model fingerprint, the
compressor settings, the storage format and the chunk's token ids, so re-ingesting an unchanged document
compresses nothing, and a chunk shared by two banks is stored once. A bank is a JSON manifest (documents,
their text by hash, the ordered block keys, model and compressor) written last and atomically, after every
block and text it names, so a crash at any moment leaves every bank as it was or as it became.

Layout::

    STORE/lychee-store.json   marks the directory as a store (format version)
    STORE/cache/              a diskcache Cache: SQLite index plus value files; eviction is off
    STORE/ingest.lock         held shared by every writer of blocks, exclusively by gc
    STORE/manifest.lock       held while a bank manifest is read, changed and written

Keys are plain strings and values plain bytes, so diskcache never pickles anything:
``block:<sha256>`` (magic, SHA-256 of the payload, safetensors payload), ``text:<sha256>`` (a document's
UTF-8 text, named by its own hash) and ``bank:<name>`` (magic, SHA-256, manifest JSON). Every read checks
the hash. Locks are ``flock`` locks, released by the kernel when a process dies, even by ``kill -9``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sqlite3
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import diskcache
import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from .blocks import MemoryBank, MemoryBlock, SourceSpan
from .chunking import Chunk, chunk_documents, tokenize_with_offsets
from .documents import Document
from .errors import (
    BankMismatchError,
    BankNotFoundError,
    ConfigurationError,
    CorruptBlockError,
    CorruptDocumentError,
    DocumentError,
    DocumentNotFoundError,
    StoreError,
    StoreFullError,
)
from .model_loading import cache_root

if TYPE_CHECKING:
    from .engine import LycheeMemory

BlockDtype = Literal["float32", "bfloat16", "float16", "int8"]
BLOCK_DTYPES: tuple[str, ...] = get_args(BlockDtype)
FORMAT_VERSION = 1
_FLOAT_STORAGE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_BLOCK_MAGIC = b"LYCHEEB1"
_MANIFEST_MAGIC = b"LYCHEEM1"
_DIGEST_BYTES = 32
_MARKER = "lychee-store.json"
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_UNLIMITED = 2**62  # diskcache's own size limit; with eviction off it never culls, the store enforces its limit
_MAX_NAME = 200


def default_store_path() -> Path:
    """The store used when none is named: ``<cache dir>/stores/default`` (LYCHEE_CACHE_DIR overrides)."""
    return cache_root() / "stores" / "default"


# Reports -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BankInfo:
    """What a bank holds and what built it, read from its manifest without loading any block."""

    name: str
    documents: tuple[str, ...]
    blocks: int
    tokens: int
    slots: int
    created: datetime
    updated: datetime
    model_fingerprint: str
    model_spec: str | None
    compressor: dict[str, Any]
    chunk_tokens: int
    block_dtypes: tuple[str, ...]
    stored_bytes: int  # bytes of the distinct blocks this bank references (shared blocks counted here too)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "documents": list(self.documents),
            "blocks": self.blocks,
            "tokens": self.tokens,
            "slots": self.slots,
            "created": self.created.isoformat(),
            "updated": self.updated.isoformat(),
            "model_fingerprint": self.model_fingerprint,
            "model_spec": self.model_spec,
            "compressor": self.compressor,
            "chunk_tokens": self.chunk_tokens,
            "block_dtypes": list(self.block_dtypes),
            "stored_bytes": self.stored_bytes,
        }


@dataclass(frozen=True)
class StoreUsage:
    """Disk use of a store: totals, blocks no bank references, and each bank's share."""

    path: Path
    bytes: int
    blocks: int
    block_bytes: int
    texts: int
    banks: int
    unreferenced_blocks: int
    unreferenced_bytes: int
    size_limit_bytes: int | None
    bank_bytes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "bytes": self.bytes,
            "blocks": self.blocks,
            "block_bytes": self.block_bytes,
            "texts": self.texts,
            "banks": self.banks,
            "unreferenced_blocks": self.unreferenced_blocks,
            "unreferenced_bytes": self.unreferenced_bytes,
            "size_limit_bytes": self.size_limit_bytes,
            "bank_bytes": dict(self.bank_bytes),
        }


@dataclass(frozen=True)
class GcReport:
    """What garbage collection removed."""

    removed_blocks: int
    removed_texts: int
    bytes_before: int
    bytes_after: int

    @property
    def freed_bytes(self) -> int:
        return max(0, self.bytes_before - self.bytes_after)

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed_blocks": self.removed_blocks,
            "removed_texts": self.removed_texts,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "freed_bytes": self.freed_bytes,
        }


@dataclass(frozen=True)
class StoreProblem:
    """One damaged item found by ``verify``: a manifest, a document text or a block of a bank."""

    bank: str
    kind: Literal["manifest", "document", "block"]
    reason: str
    key: str | None = None
    block_index: int | None = None
    document_id: str | None = None
    repaired: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "bank": self.bank,
            "kind": self.kind,
            "reason": self.reason,
            "key": self.key,
            "block_index": self.block_index,
            "document_id": self.document_id,
            "repaired": self.repaired,
        }


@dataclass(frozen=True)
class VerifyReport:
    """Result of ``verify``: what was checked and every problem found (and whether it was repaired)."""

    banks: int
    documents_checked: int
    blocks_checked: int
    problems: tuple[StoreProblem, ...]

    @property
    def unrepaired(self) -> tuple[StoreProblem, ...]:
        return tuple(problem for problem in self.problems if not problem.repaired)

    @property
    def ok(self) -> bool:
        """True when nothing is damaged any more."""
        return not self.unrepaired

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "banks": self.banks,
            "documents_checked": self.documents_checked,
            "blocks_checked": self.blocks_checked,
            "problems": [problem.to_dict() for problem in self.problems],
        }


@dataclass(frozen=True)
class IngestReport:
    """What one ingest into a store did: chunks seen, blocks compressed, blocks reused, bytes written."""

    bank: str
    documents_added: int
    documents_replaced: int
    chunks: int
    compressed: int
    reused: int
    written_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "bank": self.bank,
            "documents_added": self.documents_added,
            "documents_replaced": self.documents_replaced,
            "chunks": self.chunks,
            "compressed": self.compressed,
            "reused": self.reused,
            "written_bytes": self.written_bytes,
            "seconds": self.seconds,
        }


# Manifests ---------------------------------------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoredBlock(_Record):
    """A manifest's entry for one block: its key, storage format and where its text lies."""

    key: str
    storage: BlockDtype
    char_start: int
    char_end: int
    token_start: int
    token_end: int
    slots: int
    nbytes: int


class StoredDocument(_Record):
    """A manifest's entry for one document: id, metadata, its text by hash, and its blocks in order."""

    id: str
    metadata: dict[str, Any]
    text_key: str
    characters: int
    blocks: list[StoredBlock]


class BankManifest(_Record):
    """Everything that defines a bank; stored as JSON, written last and atomically."""

    format: int = FORMAT_VERSION
    name: str
    created: datetime
    updated: datetime
    model_fingerprint: str
    model_spec: str | None = None
    model_dtype: str | None = None
    compressor: dict[str, Any]
    chunk_tokens: int
    engine_config: dict[str, Any] | None = None  # the resolved EngineConfig, so repair can rebuild the engine
    documents: list[StoredDocument]

    def entries(self) -> Iterator[tuple[int, StoredDocument, StoredBlock]]:
        for document_index, document in enumerate(self.documents):
            for entry in document.blocks:
                yield document_index, document, entry

    def info(self) -> BankInfo:
        entries = [entry for _, _, entry in self.entries()]
        distinct = {entry.key: entry.nbytes for entry in entries}
        return BankInfo(
            name=self.name,
            documents=tuple(document.id for document in self.documents),
            blocks=len(entries),
            tokens=sum(entry.token_end - entry.token_start for entry in entries),
            slots=sum(entry.slots for entry in entries),
            created=self.created,
            updated=self.updated,
            model_fingerprint=self.model_fingerprint,
            model_spec=self.model_spec,
            compressor=dict(self.compressor),
            chunk_tokens=self.chunk_tokens,
            block_dtypes=tuple(sorted({entry.storage for entry in entries})),
            stored_bytes=sum(distinct.values()),
        )


# Block encoding ----------------------------------------------------------------------------------------


def block_key(model_fingerprint: str, compressor: dict[str, Any], storage: str, token_ids: torch.Tensor) -> str:
    """Content address of a block: model fingerprint, compressor settings, storage format, chunk token ids."""
    identity = json.dumps(
        {"format": FORMAT_VERSION, "model": model_fingerprint, "compressor": compressor, "storage": storage},
        sort_keys=True,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(identity.encode("utf-8"))
    digest.update(b"\0")
    digest.update(token_ids.detach().to(device="cpu", dtype=torch.int32).contiguous().numpy().astype("<i4").tobytes())
    return digest.hexdigest()


def quantize_int8(
    tensor: torch.Tensor, dim: int, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one float32 scale per slice along ``dim`` (scale = max |x| / 127).

    Each element is off by at most half its scale after ``dequantize_int8``. ``valid`` ([slots]) keeps
    padding slots out of the scales; their values are clamped to the range of the real ones.
    """
    values = tensor.detach().to(device="cpu", dtype=torch.float32)
    magnitudes = values.abs()
    if valid is not None:
        magnitudes = magnitudes * valid.to(torch.float32)[None, None, :, None]
    peak = magnitudes.amax(dim=dim, keepdim=True)
    scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))
    quantized = torch.round(values / scale).clamp_(-127, 127).to(torch.int8)
    return quantized, scale


def dequantize_int8(quantized: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (quantized.to(torch.float32) * scale).to(dtype)


def encode_block(block: MemoryBlock, storage: str, model_fingerprint: str, compressor: dict[str, Any]) -> bytes:
    """A block as framed safetensors bytes: magic, SHA-256 of the payload, payload (tensors + metadata).

    Keys per channel and values per slot get their own int8 scales (keys carry outlier channels, values
    vary by token), the common layout of KV-cache quantisation.
    """
    if storage not in BLOCK_DTYPES:
        raise ConfigurationError(f"unknown block dtype {storage!r}; choose one of {', '.join(BLOCK_DTYPES)}")
    tensors: dict[str, torch.Tensor] = {
        "valid": block.valid.detach().to(device="cpu", dtype=torch.bool).contiguous(),
        "slot_positions": block.slot_positions.detach().to(device="cpu", dtype=torch.int32).contiguous(),
        "token_ids": block.token_ids.detach().to(device="cpu", dtype=torch.int32).contiguous(),
    }
    if storage == "int8":
        tensors["keys"], tensors["key_scales"] = quantize_int8(block.keys, dim=2, valid=block.valid)
        tensors["values"], tensors["value_scales"] = quantize_int8(block.values, dim=3)
    else:
        target = _FLOAT_STORAGE[storage]
        tensors["keys"] = block.keys.detach().to(device="cpu", dtype=target).contiguous()
        tensors["values"] = block.values.detach().to(device="cpu", dtype=target).contiguous()
    metadata = {
        "format": str(FORMAT_VERSION),
        "storage": storage,
        "source_dtype": str(block.keys.dtype).removeprefix("torch."),
        "next_position": str(int(block.next_position)),
        "keys_rotated": "1" if block.keys_rotated else "0",
        "compressor_name": block.compressor,
        "model_fingerprint": model_fingerprint,
        "compressor": json.dumps(compressor, sort_keys=True),
    }
    payload = safetensors.torch.save({name: tensor.contiguous() for name, tensor in tensors.items()}, metadata)
    return _frame(_BLOCK_MAGIC, payload)


def _frame(magic: bytes, payload: bytes) -> bytes:
    return magic + hashlib.sha256(payload).digest() + payload


class _Damaged(Exception):
    """Internal: a stored item failed a check; the caller turns it into a specific StoreError."""


def _unframe(magic: bytes, data: bytes) -> bytes:
    header = len(magic) + _DIGEST_BYTES
    if len(data) < header or data[: len(magic)] != magic:
        raise _Damaged("its header is not a lychee-memory record")
    view = memoryview(data)
    if hashlib.sha256(view[header:]).digest() != data[len(magic) : header]:
        raise _Damaged("its checksum does not match its content")
    return data[header:]


def _safetensors_header(payload: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors payload (shapes, dtypes, metadata) without reading the tensors."""
    if len(payload) < 8:
        raise _Damaged("its payload is truncated")
    (length,) = struct.unpack("<Q", payload[:8])
    if length > len(payload) - 8:
        raise _Damaged("its payload header is truncated")
    try:
        return json.loads(payload[8 : 8 + length])
    except ValueError:
        raise _Damaged("its payload header is not valid JSON") from None


@dataclass
class _DecodedBlock:
    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    slot_positions: torch.Tensor
    token_ids: torch.Tensor
    metadata: dict[str, str]


def decode_payload(payload: bytes, dtype: torch.dtype | None = None) -> _DecodedBlock:
    """Tensors and metadata of an unframed block payload; keys/values in ``dtype`` (default: as computed)."""
    metadata = _safetensors_header(payload).get("__metadata__") or {}
    try:
        tensors = safetensors.torch.load(payload)
    except Exception as error:  # safetensors raises its own error types for malformed payloads
        raise _Damaged(f"its payload cannot be read ({error})") from None
    storage = metadata.get("storage")
    if storage not in BLOCK_DTYPES or "source_dtype" not in metadata:
        raise _Damaged(f"its metadata names an unknown storage format {storage!r}")
    target = dtype or getattr(torch, metadata["source_dtype"])
    try:
        if storage == "int8":
            keys = dequantize_int8(tensors["keys"], tensors["key_scales"], target)
            values = dequantize_int8(tensors["values"], tensors["value_scales"], target)
        else:
            keys, values = tensors["keys"].to(target), tensors["values"].to(target)
        return _DecodedBlock(
            keys, values, tensors["valid"], tensors["slot_positions"], tensors["token_ids"], dict(metadata)
        )
    except KeyError as missing:
        raise _Damaged(f"its payload lacks the tensor {missing}") from None


# diskcache without pickle ------------------------------------------------------------------------------


class _PlainDisk(diskcache.Disk):
    """diskcache serialisation restricted to str keys and bytes values: nothing is ever pickled.

    A value file left half-written by a failed write (a full disk) is removed at once.
    """

    def put(self, key):
        if type(key) is not str:
            raise TypeError(f"store keys are strings, got {type(key).__name__}")
        return super().put(key)

    def get(self, key, raw):
        if not raw:
            raise StoreError("the store index holds a pickled key, which lychee-memory never writes or reads")
        return super().get(key, raw)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if type(value) is not bytes:
            raise TypeError(f"store values are bytes, got {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode, filename, value, read):
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
            raise StoreError("the store holds a value in a format other than plain bytes; refusing to unpickle it")
        return super().fetch(mode, filename, value, read)

    def _write(self, full_path, iterator, mode, encoding=None):
        try:
            return super()._write(full_path, iterator, mode, encoding)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(full_path)
            raise


# The store ---------------------------------------------------------------------------------------------


def _check_bank_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"a bank name must be a non-empty string, got {name!r}")
    if len(name) > _MAX_NAME or any(ord(character) < 32 for character in name):
        raise ConfigurationError(
            f"bank name {name[:40]!r}... must be at most {_MAX_NAME} characters without control characters"
            if len(name) > _MAX_NAME
            else f"bank name {name!r} must not contain control characters (newlines, tabs)"
        )
    return name


def _json_metadata(document: Document) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(document.metadata))
    except (TypeError, ValueError) as error:
        raise DocumentError(
            f"document {document.id!r} has metadata that cannot be stored as JSON ({error}); use strings, numbers, "
            "lists and dicts"
        ) from None


def _now() -> datetime:
    return datetime.now(timezone.utc)


class MemoryStore:
    """A directory of memory banks on diskcache: content-addressed blocks, JSON manifests, checksums.

    ``block_dtype`` is how new blocks are written (bfloat16 by default; int8 keeps per-channel key and
    per-slot value scales); blocks are converted back to the engine's dtype when read. diskcache's
    eviction is off, so nothing is ever dropped silently; ``size_limit_bytes`` is enforced by the store
    and a full store or disk raises StoreFullError without changing any bank.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        block_dtype: BlockDtype = "bfloat16",
        size_limit_bytes: int | None = None,
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
        self._prepare_directory()
        try:
            self._cache = diskcache.Cache(
                str(self.path / "cache"),
                disk=_PlainDisk,
                eviction_policy="none",
                size_limit=_UNLIMITED,
                cull_limit=0,
                statistics=0,
                tag_index=0,
            )
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open the store at {str(self.path)!r}: {error}") from None

    def __repr__(self) -> str:
        return f"MemoryStore({str(self.path)!r}, block_dtype={self.block_dtype!r})"

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def close(self) -> None:
        self._cache.close()

    def _prepare_directory(self) -> None:
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

    @contextlib.contextmanager
    def _lock(self, name: str, exclusive: bool, wait: bool = True) -> Iterator[None]:
        descriptor = os.open(self.path / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(descriptor, flags)
            except BlockingIOError:
                raise StoreError(
                    f"store {str(self.path)!r} is busy: an ingest or repair is writing blocks; try again when it ends"
                ) from None
            yield
        finally:
            os.close(descriptor)  # closing the descriptor releases the lock

    def _writing_blocks(self) -> contextlib.AbstractContextManager[None]:
        """Held while blocks are written and until the manifest naming them is written (gc waits)."""
        return self._lock("ingest.lock", exclusive=False)

    def _changing_manifests(self) -> contextlib.AbstractContextManager[None]:
        return self._lock("manifest.lock", exclusive=True)

    # Raw items -------------------------------------------------------------------------------------

    def _get(self, key: str) -> bytes | None:
        try:
            return self._cache.get(key, retry=True)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot read {key!r} from store {str(self.path)!r}: {error}") from None

    def _has(self, key: str) -> bool:
        return key in self._cache

    def _put(self, key: str, data: bytes) -> None:
        """Write one item, refusing (StoreFullError) when the size limit or the disk is full."""
        if self.size_limit_bytes is not None:
            used = self._cache.volume()
            if used + len(data) > self.size_limit_bytes:
                raise StoreFullError(
                    f"store {str(self.path)!r} is full: it uses {used} of its {self.size_limit_bytes}-byte limit and "
                    f"the next item needs {len(data)} bytes; raise size_limit_bytes, delete banks, or run "
                    "`lychee store gc`. No bank was changed."
                )
        try:
            self._cache.set(key, data, retry=True)
        except OSError as error:
            if error.errno in _FULL_ERRNOS:
                raise StoreFullError(
                    f"the disk holding store {str(self.path)!r} is full ({error.strerror or error}); free space or "
                    "run `lychee store gc`. No bank was changed."
                ) from None
            raise StoreError(f"cannot write to store {str(self.path)!r}: {error.strerror or error}") from None
        except sqlite3.Error as error:
            if "full" in str(error).lower():
                raise StoreFullError(
                    f"the disk holding store {str(self.path)!r} is full ({error}); free space or run "
                    "`lychee store gc`. No bank was changed."
                ) from None
            raise StoreError(f"cannot write to store {str(self.path)!r}: {error}") from None

    def _keys(self, prefix: str) -> list[str]:
        return [key for key in self._cache.iterkeys() if key.startswith(prefix)]

    def _item_size(self, key: str) -> int:
        """Bytes of one stored value, from its file size when it lives in a file (no full read)."""
        handle = self._cache.get(key, read=True, retry=True)
        if handle is None:
            return 0
        if isinstance(handle, bytes):
            return len(handle)
        with handle:
            return os.fstat(handle.fileno()).st_size

    def _read_prefix(self, key: str, length: int) -> bytes | None:
        handle = self._cache.get(key, read=True, retry=True)
        if handle is None or isinstance(handle, bytes):
            return handle
        with handle:
            return handle.read(length)

    # Manifests -------------------------------------------------------------------------------------

    def _read_manifest(self, name: str) -> BankManifest | None:
        data = self._get("bank:" + name)
        if data is None:
            return None
        try:
            return BankManifest.model_validate_json(_unframe(_MANIFEST_MAGIC, data))
        except _Damaged as damage:
            raise StoreError(
                f"the manifest of bank {name!r} in store {str(self.path)!r} is damaged: {damage}"
            ) from None
        except ValidationError as error:
            raise StoreError(
                f"the manifest of bank {name!r} in store {str(self.path)!r} is not a valid manifest: {error}"
            ) from None

    def _manifest(self, name: str) -> BankManifest:
        manifest = self._read_manifest(_check_bank_name(name))
        if manifest is None:
            known = ", ".join(sorted(self.bank_names())) or "none"
            raise BankNotFoundError(f"no bank named {name!r} in store {str(self.path)!r} (banks: {known})")
        return manifest

    def _write_manifest(self, manifest: BankManifest) -> None:
        self._put("bank:" + manifest.name, _frame(_MANIFEST_MAGIC, manifest.model_dump_json().encode("utf-8")))

    def bank_names(self) -> list[str]:
        return sorted(key.removeprefix("bank:") for key in self._keys("bank:"))

    # Public queries --------------------------------------------------------------------------------

    def list_banks(self) -> list[BankInfo]:
        """Every bank in the store, by name."""
        return [self._manifest(name).info() for name in self.bank_names()]

    def has_bank(self, name: str) -> bool:
        return self._has("bank:" + _check_bank_name(name))

    def bank_info(self, name: str) -> BankInfo:
        return self._manifest(name).info()

    def usage(self) -> StoreUsage:
        """Bytes on disk, counts, and the blocks no bank references (what ``gc`` would free)."""
        manifests = [self._manifest(name) for name in self.bank_names()]
        referenced = {entry.key for manifest in manifests for _, _, entry in manifest.entries()}
        blocks = [key.removeprefix("block:") for key in self._keys("block:")]
        sizes = {key: self._item_size("block:" + key) for key in blocks}
        unreferenced = [key for key in blocks if key not in referenced]
        return StoreUsage(
            path=self.path,
            bytes=self._cache.volume(),
            blocks=len(blocks),
            block_bytes=sum(sizes.values()),
            texts=len(self._keys("text:")),
            banks=len(manifests),
            unreferenced_blocks=len(unreferenced),
            unreferenced_bytes=sum(sizes[key] for key in unreferenced),
            size_limit_bytes=self.size_limit_bytes,
            bank_bytes={
                manifest.name: sum(sizes.get(key, 0) for key in {entry.key for _, _, entry in manifest.entries()})
                for manifest in manifests
            },
        )

    # Changing banks --------------------------------------------------------------------------------

    def delete_bank(self, name: str) -> None:
        """Remove a bank's manifest; its blocks stay until ``gc`` (other banks may share them)."""
        with self._changing_manifests():
            self._manifest(name)
            self._cache.delete("bank:" + name, retry=True)

    def rename_bank(self, old: str, new: str) -> None:
        """Give a bank a new name, atomically; renaming onto an existing bank is refused."""
        _check_bank_name(new)
        with self._changing_manifests():
            manifest = self._manifest(old)
            if old == new:
                return
            if self._has("bank:" + new):
                raise StoreError(f"cannot rename bank {old!r} to {new!r}: a bank named {new!r} already exists")
            manifest.name = new
            manifest.updated = _now()
            with self._cache.transact(retry=True):
                self._write_manifest(manifest)
                self._cache.delete("bank:" + old)

    def remove_documents(
        self,
        name: str,
        document_ids: Iterable[str],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> MemoryBank:
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
            removed = set(ids)
            manifest.documents = [document for document in manifest.documents if document.id not in removed]
            manifest.updated = _now()
            self._write_manifest(manifest)
        return self.load_bank(name, dtype=dtype, device=device)

    def gc(self) -> GcReport:
        """Delete blocks and texts no bank references, and files a killed writer left behind.

        Waits for nothing: if an ingest is writing blocks right now, it raises StoreError (those blocks
        are not referenced yet, and removing them would break the bank being built).
        """
        with self._lock("ingest.lock", exclusive=True, wait=False), self._changing_manifests():
            before = self._cache.volume()
            manifests = [self._manifest(name) for name in self.bank_names()]
            blocks = {entry.key for manifest in manifests for _, _, entry in manifest.entries()}
            texts = {document.text_key for manifest in manifests for document in manifest.documents}
            removed_blocks = removed_texts = 0
            for key in self._keys("block:"):
                if key.removeprefix("block:") not in blocks:
                    removed_blocks += bool(self._cache.delete(key, retry=True))
            for key in self._keys("text:"):
                if key.removeprefix("text:") not in texts:
                    removed_texts += bool(self._cache.delete(key, retry=True))
            # No writer runs now: value files not in the index were left by a killed or failed write.
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._cache.check(fix=True, retry=True)
            return GcReport(removed_blocks, removed_texts, before, self._cache.volume())

    # Reading banks ---------------------------------------------------------------------------------

    def _read_text(self, bank: str, document: StoredDocument) -> str:
        data = self._get("text:" + document.text_key)
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

    def load_bank(
        self, name: str, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> MemoryBank:
        """A lazy bank: documents and spans in memory, each block read (and checked) only when used.

        Blocks come back in ``dtype`` on ``device`` (default: the dtype they were computed in, on CPU).
        """
        manifest = self._manifest(name)
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
        loader = _BlockLoader(self, manifest, entries, spans, dtype, device)
        return MemoryBank(
            documents=documents,
            spans=spans,
            slot_counts=slot_counts,
            model_fingerprint=manifest.model_fingerprint,
            compressor=dict(manifest.compressor),
            chunk_tokens=manifest.chunk_tokens,
            name=name,
            loader=loader,
            store=self,
            block_keys=[entry.key for entry in entries],
        )

    def _load_block(
        self,
        manifest: BankManifest,
        index: int,
        entry: StoredBlock,
        span: SourceSpan,
        dtype: torch.dtype | None,
        device: torch.device | str | None,
    ) -> MemoryBlock:
        data = self._get("block:" + entry.key)
        where = (
            f"bank {manifest.name!r} block {index} (document {span.document_id!r}, chars {span.char_start}-"
            f"{span.char_end}, key {entry.key[:16]})"
        )
        advice = f"run `lychee store verify --repair --store {self.path}` to recompress it from the stored text"
        if data is None:
            raise CorruptBlockError(f"{where} is missing from store {str(self.path)!r}; {advice}")
        try:
            decoded = self._check_block(data, entry, manifest, dtype)
        except _Damaged as damage:
            raise CorruptBlockError(f"{where} is damaged: {damage}; {advice}") from None
        return MemoryBlock(
            keys=decoded.keys.to(device) if device is not None else decoded.keys,
            values=decoded.values.to(device) if device is not None else decoded.values,
            valid=decoded.valid,
            slot_positions=decoded.slot_positions,
            next_position=int(decoded.metadata["next_position"]),
            keys_rotated=decoded.metadata["keys_rotated"] == "1",
            token_ids=decoded.token_ids,
            span=span,
            compressor=decoded.metadata["compressor_name"],
        )

    @staticmethod
    def _check_block(
        data: bytes, entry: StoredBlock, manifest: BankManifest, dtype: torch.dtype | None
    ) -> _DecodedBlock:
        """Checksum, decode, and confirm the block is the one the key names (same model, compressor, tokens)."""
        decoded = decode_payload(_unframe(_BLOCK_MAGIC, data), dtype)
        metadata = decoded.metadata
        if metadata.get("model_fingerprint") != manifest.model_fingerprint:
            raise _Damaged("it was computed by another model than the bank's")
        if json.loads(metadata.get("compressor", "null")) != manifest.compressor:
            raise _Damaged("it was computed by another compressor than the bank's")
        if decoded.token_ids.numel() != entry.token_end - entry.token_start or decoded.keys.shape[2] != entry.slots:
            raise _Damaged("its shape does not match the manifest")
        expected = block_key(manifest.model_fingerprint, manifest.compressor, metadata["storage"], decoded.token_ids)
        if expected != entry.key:
            raise _Damaged("its content does not match its key")
        return decoded

    # Writing banks ---------------------------------------------------------------------------------

    def _stored_block_shape(self, key: str) -> tuple[int, int] | None:
        """(slots, bytes) of a stored block from its header alone; None when missing or unreadable."""
        head = self._read_prefix("block:" + key, len(_BLOCK_MAGIC) + _DIGEST_BYTES + 8)
        if head is None or len(head) < len(_BLOCK_MAGIC) + _DIGEST_BYTES + 8 or not head.startswith(_BLOCK_MAGIC):
            return None
        (length,) = struct.unpack("<Q", head[-8:])
        prefix = self._read_prefix("block:" + key, len(_BLOCK_MAGIC) + _DIGEST_BYTES + 8 + length)
        try:
            header = _safetensors_header(prefix[len(_BLOCK_MAGIC) + _DIGEST_BYTES :])
            return int(header["keys"]["shape"][2]), self._item_size("block:" + key)
        except (_Damaged, KeyError, IndexError, TypeError, ValueError):
            return None

    def _write_text(self, document: Document) -> str:
        data = document.text.encode("utf-8")
        key = hashlib.sha256(data).hexdigest()
        stored = self._get("text:" + key)
        if stored is None or hashlib.sha256(stored).hexdigest() != key:
            self._put("text:" + key, data)
        return key

    def add_documents(
        self, engine: LycheeMemory, documents: Sequence[Document], name: str, *, show_progress: bool | None = None
    ) -> MemoryBank:
        """Compress only the chunks not stored yet and add the documents to bank ``name`` (created if new).

        A document whose id is already in the bank replaces the old version in place. Blocks and texts are
        written first; the manifest last, in one atomic write. ``engine.ingest(..., store=, bank=)`` calls this.
        """
        return self._build(engine, documents, _check_bank_name(name), replace_bank=False, show_progress=show_progress)

    def recompress_bank(self, engine: LycheeMemory, name: str, *, show_progress: bool | None = None) -> MemoryBank:
        """Rebuild a bank from its stored text with ``engine``'s model and compressor, under the same name."""
        manifest = self._manifest(name)
        documents = [
            Document(text=self._read_text(name, stored), id=stored.id, metadata=dict(stored.metadata))
            for stored in manifest.documents
        ]
        return self._build(engine, documents, name, replace_bank=True, show_progress=show_progress)

    def _build(
        self,
        engine: LycheeMemory,
        documents: Sequence[Document],
        name: str,
        *,
        replace_bank: bool,
        show_progress: bool | None,
    ) -> MemoryBank:
        started = time.perf_counter()
        fingerprint = engine.loaded.fingerprint()
        compressor = engine.compressor.describe()
        metadata = {document.id: _json_metadata(document) for document in documents}
        storage = self.block_dtype
        with self._writing_blocks():
            existing = self._read_manifest(name)
            if existing is not None and not replace_bank:
                _check_same_engine(existing, fingerprint, compressor, self.path)
            text_keys = {document.id: self._write_text(document) for document in documents}
            chunks = chunk_documents(
                list(documents), engine.loaded.tokenizer, engine.chunk_tokens, engine.config.chunking.boundary_lookback
            )
            keys = [block_key(fingerprint, compressor, storage, torch.tensor(chunk.token_ids)) for chunk in chunks]
            shapes: dict[str, tuple[int, int]] = {}
            to_compress: dict[str, Chunk] = {}  # identical chunks are compressed once
            for key, chunk in zip(keys, chunks):
                if key in shapes or key in to_compress:
                    continue
                shape = self._stored_block_shape(key)
                if shape is None:
                    to_compress[key] = chunk
                else:
                    shapes[key] = shape
            reused = len(shapes)
            written = self._compress_and_write(
                engine, list(to_compress.items()), fingerprint, compressor, shapes, show_progress
            )
            stored_documents = []
            for document_index, document in enumerate(documents):
                entries = [
                    StoredBlock(
                        key=key,
                        storage=storage,
                        char_start=chunk.char_start,
                        char_end=chunk.char_end,
                        token_start=chunk.token_start,
                        token_end=chunk.token_end,
                        slots=shapes[key][0],
                        nbytes=shapes[key][1],
                    )
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
            with self._changing_manifests():
                current = self._read_manifest(name)  # another process may have changed the bank meanwhile
                if current is not None and not replace_bank:
                    _check_same_engine(current, fingerprint, compressor, self.path)
                manifest, added, replaced = _merged_manifest(
                    current, stored_documents, name, engine, fingerprint, compressor, replace_bank
                )
                self._write_manifest(manifest)
        self.last_ingest = IngestReport(
            bank=name,
            documents_added=added,
            documents_replaced=replaced,
            chunks=len(chunks),
            compressed=len(to_compress),
            reused=reused,
            written_bytes=written,
            seconds=time.perf_counter() - started,
        )
        return self.load_bank(name, dtype=engine.loaded.dtype, device=engine.loaded.device)

    def _compress_and_write(
        self,
        engine: LycheeMemory,
        work: list[tuple[str, Chunk]],
        fingerprint: str,
        compressor: dict[str, Any],
        shapes: dict[str, tuple[int, int]],
        show_progress: bool | None,
    ) -> int:
        """Compress chunks a batch at a time and write each block at once, so memory stays one batch deep."""
        written = 0
        with engine._progress(len(work), "compressing", show_progress) as bar:
            for start in range(0, len(work), engine.ingest_batch_size):
                group = work[start : start + engine.ingest_batch_size]
                blocks = engine.compressor.compress(engine.loaded, [chunk for _, chunk in group])
                for (key, _), block in zip(group, blocks):
                    data = encode_block(block, self.block_dtype, fingerprint, compressor)
                    self._put("block:" + key, data)
                    shapes[key] = (block.num_slots, len(data))
                    written += len(data)
                del blocks
                bar.update(len(group))
        return written

    def save_bank(self, bank: MemoryBank, name: str | None = None) -> MemoryBank:
        """Write any bank (built in memory, or read from another store) into this store, in this store's format.

        Blocks already stored are skipped; documents are added to bank ``name`` (default ``bank.name``) as by
        ingest. A bank saved this way records no engine settings, so ``verify --repair`` needs an engine.
        """
        target = _check_bank_name(name if name is not None else bank.name)
        storage = self.block_dtype
        stored_documents = []
        with self._writing_blocks():
            existing = self._read_manifest(target)
            if existing is not None:
                _check_same_engine(existing, bank.model_fingerprint, bank.compressor, self.path)
            for document_index, document in enumerate(bank.documents):
                text_key = self._write_text(document)
                entries = []
                for index, span in enumerate(bank.spans):
                    if span.document_index != document_index:
                        continue
                    block = bank.block(index)
                    key = block_key(bank.model_fingerprint, bank.compressor, storage, block.token_ids)
                    shape = self._stored_block_shape(key)
                    if shape is None:
                        data = encode_block(block, storage, bank.model_fingerprint, bank.compressor)
                        self._put("block:" + key, data)
                        shape = (block.num_slots, len(data))
                    entries.append(
                        StoredBlock(
                            key=key,
                            storage=storage,
                            char_start=span.char_start,
                            char_end=span.char_end,
                            token_start=span.token_start,
                            token_end=span.token_end,
                            slots=shape[0],
                            nbytes=shape[1],
                        )
                    )
                stored_documents.append(
                    StoredDocument(
                        id=document.id,
                        metadata=_json_metadata(document),
                        text_key=text_key,
                        characters=len(document.text),
                        blocks=entries,
                    )
                )
            with self._changing_manifests():
                current = self._read_manifest(target)
                if current is not None:
                    _check_same_engine(current, bank.model_fingerprint, bank.compressor, self.path)
                now = _now()
                manifest = current or BankManifest(
                    name=target,
                    created=now,
                    updated=now,
                    model_fingerprint=bank.model_fingerprint,
                    compressor=dict(bank.compressor),
                    chunk_tokens=bank.chunk_tokens,
                    documents=[],
                )
                manifest.documents = _merge_documents(manifest.documents, stored_documents)[0]
                manifest.chunk_tokens = max(manifest.chunk_tokens, bank.chunk_tokens)
                manifest.updated = now
                self._write_manifest(manifest)
        sample = next((block for block in bank._blocks if block is not None), None)
        return self.load_bank(target, dtype=sample.keys.dtype if sample is not None else None)

    # Verification and repair -----------------------------------------------------------------------

    def verify(self, repair: bool = False, engine: LycheeMemory | None = None) -> VerifyReport:
        """Check every manifest, document text and block checksum; with ``repair``, recompress bad blocks.

        Repair recompresses a block from the bank's stored text with ``engine``, or, when None, with an
        engine rebuilt from the settings the bank recorded at ingest. A damaged text cannot be repaired
        (the source is gone): ingest that document again.
        """
        problems: list[StoreProblem] = []
        checked: dict[str, str | None] = {}  # key -> reason it is damaged, None when fine
        documents_checked = 0
        names = self.bank_names()
        engines: dict[str, LycheeMemory] = {}
        for name in names:
            try:
                manifest = self._manifest(name)
            except StoreError as error:
                problems.append(StoreProblem(bank=name, kind="manifest", reason=str(error)))
                continue
            texts: dict[str, str | None] = {}
            for stored in manifest.documents:
                documents_checked += 1
                try:
                    texts[stored.id] = self._read_text(name, stored)
                except CorruptDocumentError as error:
                    texts[stored.id] = None
                    problems.append(StoreProblem(name, "document", str(error), stored.text_key, None, stored.id))
            damaged: list[tuple[int, StoredDocument, StoredBlock, str]] = []
            for index, (_, stored, entry) in enumerate(manifest.entries()):
                if entry.key not in checked:
                    checked[entry.key] = self._block_damage(entry, manifest)
                if checked[entry.key] is not None:
                    damaged.append((index, stored, entry, checked[entry.key]))
            for index, stored, entry, reason in damaged:
                repaired = False
                if repair:
                    note = self._repair_block(manifest, stored, entry, texts.get(stored.id), engine, engines)
                    repaired = note is None
                    if repaired:
                        checked[entry.key] = None
                    else:
                        reason = f"{reason}; not repaired: {note}"
                problems.append(StoreProblem(name, "block", reason, entry.key, index, stored.id, repaired))
        return VerifyReport(
            banks=len(names), documents_checked=documents_checked, blocks_checked=len(checked), problems=tuple(problems)
        )

    def _block_damage(self, entry: StoredBlock, manifest: BankManifest) -> str | None:
        data = self._get("block:" + entry.key)
        if data is None:
            return "the block is missing"
        try:
            self._check_block(data, entry, manifest, torch.float32)
        except _Damaged as damage:
            return f"the block is damaged: {damage}"
        return None

    def _repair_block(
        self,
        manifest: BankManifest,
        stored: StoredDocument,
        entry: StoredBlock,
        text: str | None,
        engine: LycheeMemory | None,
        engines: dict[str, LycheeMemory],
    ) -> str | None:
        """Recompress one block from the stored text; returns why it could not, or None when repaired."""
        if text is None:
            return "the document's text is damaged too; ingest the document again"
        if engine is None:
            if manifest.engine_config is None:
                return "the bank records no engine settings; call verify(repair=True, engine=...) with its engine"
            config_key = json.dumps(manifest.engine_config, sort_keys=True)
            if config_key not in engines:
                from .config import EngineConfig
                from .engine import LycheeMemory

                engines[config_key] = LycheeMemory.from_pretrained(
                    config=EngineConfig.model_validate(manifest.engine_config)
                )
            engine = engines[config_key]
        if (
            engine.loaded.fingerprint() != manifest.model_fingerprint
            or engine.compressor.describe() != manifest.compressor
        ):
            return "the engine's model or compressor differs from the bank's"
        token_ids, _ = tokenize_with_offsets(engine.loaded.tokenizer, text)
        ids = tuple(token_ids[entry.token_start : entry.token_end])
        fingerprint, compressor = manifest.model_fingerprint, manifest.compressor
        if block_key(fingerprint, compressor, entry.storage, torch.tensor(ids)) != entry.key:
            return "the text no longer tokenizes to the block's tokens (another tokenizer?)"
        chunk = Chunk(
            document_index=0,  # compression reads only the tokens; the span comes from the manifest
            document_id=stored.id,
            token_ids=ids,
            token_start=entry.token_start,
            token_end=entry.token_end,
            char_start=entry.char_start,
            char_end=entry.char_end,
            text=text[entry.char_start : entry.char_end],
        )
        with self._writing_blocks():
            (block,) = engine.compressor.compress(engine.loaded, [chunk])
            self._put("block:" + entry.key, encode_block(block, entry.storage, fingerprint, compressor))
        return None


class _BlockLoader:
    """A store-backed bank's loader: reads, checks and converts one block per call, keeping nothing."""

    def __init__(
        self,
        store: MemoryStore,
        manifest: BankManifest,
        entries: list[StoredBlock],
        spans: list[SourceSpan],
        dtype: torch.dtype | None,
        device: torch.device | str | None,
    ):
        self.store, self.manifest, self.entries, self.spans = store, manifest, entries, spans
        self.dtype, self.device = dtype, device

    def __call__(self, index: int) -> MemoryBlock:
        return self.store._load_block(
            self.manifest, index, self.entries[index], self.spans[index], self.dtype, self.device
        )


def _check_same_engine(manifest: BankManifest, fingerprint: str, compressor: dict[str, Any], path: Path) -> None:
    if manifest.model_fingerprint != fingerprint:
        raise BankMismatchError(
            f"bank {manifest.name!r} in store {str(path)!r} was built with another model or dtype "
            f"({manifest.model_spec or 'unknown spec'}, fingerprint {manifest.model_fingerprint}; this engine "
            f"{fingerprint}); use another bank name, or open it with recompress=True (CLI: --recompress) to rebuild "
            "it from its stored text with this engine"
        )
    if manifest.compressor != compressor:
        raise BankMismatchError(
            f"bank {manifest.name!r} in store {str(path)!r} was built with compressor {manifest.compressor}, this "
            f"engine uses {compressor}; use another bank name, load the engine with the bank's settings, or open it "
            "with recompress=True (CLI: --recompress) to rebuild it"
        )


def _merge_documents(
    current: list[StoredDocument], incoming: list[StoredDocument]
) -> tuple[list[StoredDocument], int, int]:
    """Documents of ``current`` with ``incoming`` added: same id replaces in place, new ids go last."""
    merged = list(current)
    position = {document.id: index for index, document in enumerate(merged)}
    added = replaced = 0
    for document in incoming:
        if document.id in position:
            merged[position[document.id]] = document
            replaced += 1
        else:
            position[document.id] = len(merged)
            merged.append(document)
            added += 1
    return merged, added, replaced


def _merged_manifest(
    current: BankManifest | None,
    documents: list[StoredDocument],
    name: str,
    engine: LycheeMemory,
    fingerprint: str,
    compressor: dict[str, Any],
    replace_bank: bool,
) -> tuple[BankManifest, int, int]:
    now = _now()
    engine_config = engine.config.model_dump(mode="json")
    if current is None or replace_bank:
        manifest = BankManifest(
            name=name,
            created=current.created if current is not None else now,
            updated=now,
            model_fingerprint=fingerprint,
            model_spec=engine.loaded.resolved.spec,
            model_dtype=str(engine.loaded.dtype).removeprefix("torch."),
            compressor=compressor,
            chunk_tokens=engine.chunk_tokens,
            engine_config=engine_config,
            documents=documents,
        )
        return manifest, len(documents), 0
    merged, added, replaced = _merge_documents(current.documents, documents)
    current.documents = merged
    current.updated = now
    current.chunk_tokens = max(current.chunk_tokens, engine.chunk_tokens)
    current.engine_config = engine_config
    current.model_spec = engine.loaded.resolved.spec
    current.model_dtype = str(engine.loaded.dtype).removeprefix("torch.")
    return current, added, replaced


def as_store(store: MemoryStore | str | os.PathLike[str] | None) -> MemoryStore:
    """A MemoryStore from a store, a directory, or None (the default store)."""
    if isinstance(store, MemoryStore):
        return store
    if store is None or isinstance(store, (str, os.PathLike)):
        return MemoryStore(store)
    raise ConfigurationError(f"store must be a MemoryStore, a directory path or None, got {type(store).__name__}")
