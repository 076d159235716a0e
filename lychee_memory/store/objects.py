"""A store's blocks, index items and texts on any fsspec filesystem (S3-compatible, GCS, a local directory...).

Every object is immutable and content-addressed (``block:<sha256>`` -> ``ROOT/block/<2 hex>/<sha256>``), which is
what object stores do well: a write is one PUT of the whole object (atomic on S3; a temporary file renamed on a
local filesystem), a read is one GET, nothing is ever updated in place. Manifests never live here (``catalog.py``).

``CachedObjects`` keeps the objects a process read on its local disk, bounded by size (least recently used
first out): safe because an object's bytes never change under its key, and blocks are checked on every read.
Whether an object exists is always asked of the object store, so an ingest never trusts a copy gc removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import StoreError, StoreFullError
from .codec import Damaged, unframe
from .disk import empty_write_ahead_log, open_plain_cache

logger = logging.getLogger(__name__)

_KEY = re.compile(r"(block|index|text):([0-9a-f]{16,128})")
_PREFIXES = ("block:", "index:", "text:")
_TEMPORARY = ".partial-"


class FsspecObjects:
    """Plain bytes under content keys in ``root`` on an fsspec filesystem, with the store's errors."""

    def __init__(self, filesystem: Any, root: str, location: str, size_limit_bytes: int | None = None):
        self.fs, self.root, self.location = filesystem, root.rstrip("/"), location
        self.size_limit_bytes = size_limit_bytes
        self.local = "file" in _protocols(filesystem)
        self._volume: int | None = None  # counted once when a size limit needs it, then kept up to date

    def close(self) -> None:
        """Nothing to release: fsspec filesystems hold no per-store state."""

    def path(self, key: str) -> str:
        match = _KEY.fullmatch(key)
        if match is None:
            raise StoreError(f"{key!r} is not a content key (block:, index: or text: and a hex digest)")
        kind, digest = match.groups()
        return f"{self.root}/{kind}/{digest[:2]}/{digest}"

    def _error(self, action: str, key: str, error: Exception) -> StoreError:
        return StoreError(f"cannot {action} {key!r} in store {self.location!r}: {error}")

    def get(self, key: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError:
            return None
        except StoreError:
            raise
        except Exception as error:
            raise self._error("read", key, error) from None

    def size(self, key: str) -> int:
        try:
            return int(self.fs.size(self.path(key)))
        except FileNotFoundError:
            return 0
        except Exception as error:
            raise self._error("look up", key, error) from None

    def read_prefix(self, key: str, length: int) -> bytes | None:
        try:
            return self.fs.cat_file(self.path(key), start=0, end=length)
        except FileNotFoundError:
            return None
        except Exception as error:
            raise self._error("read", key, error) from None

    def volume(self) -> int:
        """Bytes of every object (one listing; kept up to date by this handle's writes afterwards)."""
        total = 0
        for prefix in _PREFIXES:
            total += sum(self._sizes(prefix).values())
        self._volume = total
        return total

    def put(self, key: str, data: bytes) -> None:
        """Write one object whole; StoreFullError when the size limit would be passed."""
        if self.size_limit_bytes is not None:
            used = self._volume if self._volume is not None else self.volume()
            if used + len(data) > self.size_limit_bytes:
                raise StoreFullError(
                    f"store {self.location!r} is full: it uses {used} of its {self.size_limit_bytes}-byte limit "
                    f"and the next item needs {len(data)} bytes; raise size_limit_bytes, delete banks, or run "
                    "`lychee store gc`. No bank was changed."
                )
        path = self.path(key)
        try:
            if self.local:  # a reader must never see half a file: write beside it, then rename
                directory = path.rsplit("/", 1)[0]
                self.fs.makedirs(directory, exist_ok=True)
                temporary = f"{directory}/{_TEMPORARY}{uuid.uuid4().hex}"
                try:
                    self.fs.pipe_file(temporary, data)
                    self.fs.mv(temporary, path)
                except BaseException:
                    with contextlib.suppress(Exception):
                        self.fs.rm_file(temporary)
                    raise
            else:
                self.fs.pipe_file(path, data)
        except OSError as error:
            if getattr(error, "errno", None) in {28, 122, 27}:  # ENOSPC, EDQUOT, EFBIG
                raise StoreFullError(f"the disk holding store {self.location!r} is full ({error})") from None
            raise self._error("write", key, error) from None
        except Exception as error:
            raise self._error("write", key, error) from None
        if self._volume is not None:
            self._volume += len(data)

    def delete(self, key: str) -> bool:
        path = self.path(key)
        try:
            size = self.fs.size(path)
            self.fs.rm_file(path)
        except FileNotFoundError:
            return False
        except Exception as error:
            raise self._error("delete", key, error) from None
        if self._volume is not None:
            self._volume -= int(size or 0)
        return True

    def _sizes(self, prefix: str) -> dict[str, int]:
        kind = prefix.rstrip(":")
        try:
            found = self.fs.find(f"{self.root}/{kind}", detail=True)
        except FileNotFoundError:
            return {}
        except Exception as error:
            raise StoreError(f"cannot list store {self.location!r}: {error}") from None
        sizes = {}
        for path, info in found.items():
            name = path.rsplit("/", 1)[-1]
            if not name.startswith(_TEMPORARY) and _KEY.fullmatch(f"{kind}:{name}"):
                sizes[f"{kind}:{name}"] = int(info.get("size") or 0)
        return sizes

    def keys(self, prefix: str) -> list[str]:
        if prefix not in _PREFIXES:
            return []  # manifests and anything else live elsewhere
        return sorted(self._sizes(prefix))

    def remove_orphan_files(self) -> None:
        """Delete temporary files a killed writer left behind (local filesystems only; a PUT leaves none)."""
        if not self.local:
            return
        for kind in ("block", "index", "text"):
            with contextlib.suppress(FileNotFoundError):
                for path in self.fs.find(f"{self.root}/{kind}"):
                    if path.rsplit("/", 1)[-1].startswith(_TEMPORARY):
                        with contextlib.suppress(Exception):
                            self.fs.rm_file(path)

    def read_marker(self, name: str) -> bytes | None:
        try:
            return self.fs.cat_file(f"{self.root}/{name}")
        except FileNotFoundError:
            return None
        except Exception as error:
            raise StoreError(f"cannot open store {self.location!r}: {error}") from None

    def write_marker(self, name: str, data: bytes) -> None:
        try:
            if self.local:
                self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(f"{self.root}/{name}", data)
        except Exception as error:
            raise StoreError(f"cannot create store {self.location!r}: {error}") from None


class CachedObjects:
    """An object store with a bounded local copy of what was read (LRU, on disk), for lazy reads of remote blocks.

    Only ``get`` is served from the copy; existence and sizes go to the object store, so ingest and gc see the
    truth.
    """

    def __init__(self, remote: FsspecObjects, directory: Path, size_limit_bytes: int):
        if size_limit_bytes <= 0:
            raise StoreError(f"the local cache size must be positive, got {size_limit_bytes!r}")
        self.remote, self.directory, self.location = remote, directory, remote.location
        self.cache_limit_bytes = size_limit_bytes
        self._through = 0  # > 0 while ``reading_through``: reads skip the copy
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create the local cache at {str(directory)!r}: {error}") from None
        where = f"the local cache at {str(directory)!r}"
        self.copy = open_plain_cache(directory, where, "least-recently-used", size_limit_bytes, 10)  # the local copy

    def __getattr__(self, name: str) -> Any:  # size, read_prefix, keys, volume, markers: the object store's
        return getattr(self.remote, name)

    def close(self) -> None:
        self.copy.close()
        self.remote.close()

    @contextlib.contextmanager
    def reading_through(self) -> Iterator[None]:
        """Read every object from the object store meanwhile (verify checks the store, not this process's copy)."""
        self._through += 1
        try:
            yield
        finally:
            self._through -= 1

    def get(self, key: str) -> bytes | None:
        data = None
        if not self._through:
            try:
                data = self.copy.get(key, retry=True)
            except (OSError, sqlite3.Error) as error:
                logger.warning("local cache %s unreadable (%s); reading %s from the store", self.directory, error, key)
        if data is not None and not _sound(key, data):  # damaged on the local disk: drop it, ask the store
            with contextlib.suppress(OSError, sqlite3.Error):
                self.copy.delete(key, retry=True)
            data = None
        if data is not None:
            return data
        data = self.remote.get(key)
        if data is not None:
            self._keep(key, data)
        return data

    def _keep(self, key: str, data: bytes) -> None:
        if len(data) > self.cache_limit_bytes or not _sound(key, data):  # a damaged object, once repaired, is
            return  # read again from the store, never served from a copy of its damage
        try:
            self.copy.set(key, data, retry=True)
        except (OSError, sqlite3.Error) as error:  # a full local disk only costs speed
            logger.warning("cannot keep %s in the local cache %s: %s", key, self.directory, error)

    def put(self, key: str, data: bytes) -> None:
        self.remote.put(key, data)

    def delete(self, key: str) -> bool:
        self.copy.delete(key, retry=True)
        return self.remote.delete(key)

    def remove_orphan_files(self) -> None:
        """The object store's leftovers, and the deleted values' old versions in the local copy's log (gc)."""
        self.remote.remove_orphan_files()
        with contextlib.suppress(OSError, sqlite3.Error):  # an unreadable local copy only costs speed, as in get
            empty_write_ahead_log(self.copy)


def _sound(key: str, data: bytes) -> bool:
    """Whether a copy is intact: a text hashes to its key, a block or index item matches its frame's checksum."""
    kind, _, digest = key.partition(":")
    if kind == "text":
        return hashlib.sha256(data).hexdigest() == digest
    try:
        unframe(data[:8], data)  # every framed record starts with an 8-byte magic; only the checksum matters here
    except Damaged:
        return False
    return True


def _protocols(filesystem: Any) -> tuple[str, ...]:
    protocol = getattr(filesystem, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
