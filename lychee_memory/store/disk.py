"""The store's items on disk: a diskcache Cache restricted to string keys and bytes values, never pickling.

diskcache's defaults would silently evict (1 GiB, least recently stored): eviction is off here and the store
enforces its own size limit. A full disk or size limit raises StoreFullError and leaves no half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import warnings
from pathlib import Path
from typing import IO

import diskcache

from ..errors import StoreError, StoreFullError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_UNLIMITED = 2**62  # diskcache's own size limit; with eviction off it never culls, the store enforces its limit


class PlainDisk(diskcache.Disk):
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


def open_plain_cache(
    directory: Path, what: str, eviction_policy: str, size_limit: int, cull_limit: int
) -> diskcache.Cache:
    """A diskcache Cache of plain bytes (``PlainDisk``), no statistics or tags; StoreError naming ``what`` if it
    cannot be opened."""
    try:
        return diskcache.Cache(
            str(directory),
            disk=PlainDisk,
            eviction_policy=eviction_policy,
            size_limit=size_limit,
            cull_limit=cull_limit,
            statistics=0,
            tag_index=0,
            sqlite_secure_delete=1,  # a deleted value is overwritten with zeros, not left in a free page
        )
    except (OSError, sqlite3.Error) as error:
        raise StoreError(f"cannot open {what}: {error}") from None


def empty_write_ahead_log(cache: diskcache.Cache) -> None:
    """Copy a diskcache's write-ahead log into its database and empty it: old versions of deleted values live on
    there (the database's own freed pages are zeroed by ``sqlite_secure_delete``)."""
    with contextlib.closing(sqlite3.connect(cache.directory + "/cache.db", timeout=60)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


class Items:
    """Plain bytes under string keys in ``directory``, with the store's errors instead of OSError/sqlite3's."""

    def __init__(self, directory: Path, store_path: Path, size_limit_bytes: int | None):
        self.store_path = store_path
        self.size_limit_bytes = size_limit_bytes
        self.cache = open_plain_cache(directory, f"the store at {str(store_path)!r}", "none", _UNLIMITED, 0)

    def close(self) -> None:
        self.cache.close()

    def get(self, key: str) -> bytes | None:
        try:
            return self.cache.get(key, retry=True)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot read {key!r} from store {str(self.store_path)!r}: {error}") from None

    def put(self, key: str, data: bytes) -> None:
        """Write one item, refusing (StoreFullError) when the size limit or the disk is full."""
        where = str(self.store_path)
        if self.size_limit_bytes is not None:
            used = self.cache.volume()
            if used + len(data) > self.size_limit_bytes:
                raise StoreFullError(
                    f"store {where!r} is full: it uses {used} of its {self.size_limit_bytes}-byte limit and "
                    f"the next item needs {len(data)} bytes; raise size_limit_bytes, delete banks, or run "
                    "`lychee store gc`. No bank was changed."
                )
        try:
            self.cache.set(key, data, retry=True)
        except OSError as error:
            if error.errno in _FULL_ERRNOS:
                raise StoreFullError(
                    f"the disk holding store {where!r} is full ({error.strerror or error}); free space or "
                    "run `lychee store gc`. No bank was changed."
                ) from None
            raise StoreError(f"cannot write to store {where!r}: {error.strerror or error}") from None
        except sqlite3.Error as error:
            if "full" in str(error).lower():
                raise StoreFullError(
                    f"the disk holding store {where!r} is full ({error}); free space or run "
                    "`lychee store gc`. No bank was changed."
                ) from None
            raise StoreError(f"cannot write to store {where!r}: {error}") from None

    def delete(self, key: str) -> bool:
        return bool(self.cache.delete(key, retry=True))

    def keys(self, prefix: str) -> list[str]:
        return [key for key in self.cache.iterkeys() if key.startswith(prefix)]

    def volume(self) -> int:
        return self.cache.volume()

    def _handle(self, key: str) -> bytes | IO[bytes] | None:
        return self.cache.get(key, read=True, retry=True)

    def size(self, key: str) -> int:
        """Bytes of one stored value, from its file size when it lives in a file (no full read)."""
        handle = self._handle(key)
        if handle is None:
            return 0
        if isinstance(handle, bytes):
            return len(handle)
        with handle:
            return os.fstat(handle.fileno()).st_size

    def read_prefix(self, key: str, length: int) -> bytes | None:
        handle = self._handle(key)
        if handle is None or isinstance(handle, bytes):
            return handle
        with handle:
            return handle.read(length)

    def transact(self):
        return self.cache.transact(retry=True)

    def reading_through(self) -> contextlib.AbstractContextManager[None]:
        """Reads that must see the store itself (a no-op here: there is no copy to skip; see CachedObjects)."""
        return contextlib.nullcontext()

    def remove_orphan_files(self) -> None:
        """Delete value files no index row names (left by a killed or failed write); only when no writer runs."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.cache.check(fix=True, retry=True)
        empty_write_ahead_log(self.cache)
