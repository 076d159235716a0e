"""Where a store's bank manifests live, and how writers, gc and readers keep out of each other's way.

A catalog holds the manifests (``bank:<name>``) and the store's coordination; blocks, index items and texts live
in the store's objects (``disk.Items`` or ``objects.FsspecObjects``). Two kinds:

- ``LocalCatalog``: manifests in the local diskcache beside the blocks, ``flock`` locks (``locks.py``). One
  machine, a local disk (flock is unsafe on NFS).
- ``DatabaseCatalog``: manifests as rows of a SQLite file (one machine) or a PostgreSQL database (several),
  written with optimistic version checks: a manifest is replaced only if its generation is still the one the
  writer read, else ``ManifestConflict`` and the writer merges again. Writers, gc and readers register as lease
  rows that expire unless renewed (a heartbeat thread renews them; a killed process's rows expire), timed by the
  database's clock, so machines with skewed clocks agree.

Every catalog keeps the same three promises, which the store relies on:

1. ``writing()`` (blocks are being written that no manifest names yet) and ``collecting()`` (gc) exclude each
   other: gc never deletes a block an ingest is about to name; a writer waits for gc, gc refuses to start.
2. A reader leases the keys of the manifest it read, then checks the manifest did not change meanwhile
   (``Manifests.leased``); gc reads manifests first and leases second, so a leased block is never deleted.
3. ``put`` replaces a manifest only over the generation the caller read (``ManifestConflict`` otherwise).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .disk import Items
from .locks import ReaderLease, file_lock, live_leased_keys

logger = logging.getLogger(__name__)

MANIFEST_PREFIX = "bank:"
DEFAULT_LEASE_SECONDS = 30.0  # a lease row of a dead process stops counting this long after its last renewal
_WAIT_FOR_GC_SECONDS = 600.0  # a writer waits this long for a running gc before giving up


class ManifestConflict(Exception):
    """Another writer replaced the manifest since it was read: read it again, merge, and write again."""


class Lease(ABC):
    """A claim on block and index keys that gc keeps while the lease lives."""

    @abstractmethod
    def release(self) -> None: ...


class Catalog(ABC):
    """Bank manifests (framed bytes by name) plus the coordination of writers, gc and readers."""

    location: str

    @abstractmethod
    def read(self, name: str) -> bytes | None:
        """The bank's framed manifest, or None when there is no such bank."""

    @abstractmethod
    def names(self) -> list[str]: ...

    @abstractmethod
    def put(self, name: str, data: bytes, generation: int, expected: int) -> None:
        """Store manifest ``data`` at ``generation`` if the stored one is at ``expected`` (0: no bank yet)."""

    @abstractmethod
    def remove(self, name: str, expected: int) -> None:
        """Delete the manifest if it is still at generation ``expected``."""

    @abstractmethod
    def rename(self, old: str, new: str, data: bytes, generation: int, expected: int) -> None:
        """Move a manifest to a new name, atomically (``data``: the renamed manifest at ``generation``)."""

    def changing(self) -> ContextManager[None]:
        """Held around a manifest's read, change and write (a lock where the catalog has one)."""
        return contextlib.nullcontext()

    @abstractmethod
    def writing(self) -> ContextManager[None]:
        """Held while blocks no manifest names yet are written, until the manifest naming them is written."""

    @abstractmethod
    def collecting(self, busy_message: str) -> ContextManager[None]:
        """Held by gc; StoreError(busy_message) at once if a writer is active."""

    @abstractmethod
    def lease(self, keys: Iterable[str]) -> Lease | None:
        """A reader's lease on ``keys``; None where the store cannot record one (a read-only local store)."""

    @abstractmethod
    def leased_keys(self, remove_stale: bool) -> set[str]:
        """Keys named by live leases; with ``remove_stale``, forget the leases of dead processes."""

    def scrub(self) -> None:  # noqa: B027 (a catalog whose files keep no old copies has nothing to do)
        """After gc: drop the old copies of replaced or deleted manifests the catalog's own files still hold, so a
        forgotten document's text and metadata leave no trace (a no-op where the objects' store does it)."""

    def close(self) -> None:  # noqa: B027 (most catalogs hold nothing to release)
        """Release connections (a no-op where there are none)."""


# Local: diskcache manifests, flock -------------------------------------------------------------------------


class _FileLease(Lease):
    def __init__(self, lease: ReaderLease):
        self._lease = lease

    def release(self) -> None:
        self._lease.release()


class LocalCatalog(Catalog):
    """Manifests in the store's own diskcache, coordinated by flock files in the store directory (one machine)."""

    def __init__(self, path: Path, items: Items):
        self.path, self.items, self.location = path, items, str(path)

    def read(self, name: str) -> bytes | None:
        return self.items.get(MANIFEST_PREFIX + name)

    def names(self) -> list[str]:
        return sorted(key.removeprefix(MANIFEST_PREFIX) for key in self.items.keys(MANIFEST_PREFIX))

    # The manifest lock serialises every read-change-write, so the generation the caller read is current.
    def put(self, name: str, data: bytes, generation: int, expected: int) -> None:
        self.items.put(MANIFEST_PREFIX + name, data)

    def remove(self, name: str, expected: int) -> None:
        self.items.delete(MANIFEST_PREFIX + name)

    def rename(self, old: str, new: str, data: bytes, generation: int, expected: int) -> None:
        with self.items.transact():
            self.items.put(MANIFEST_PREFIX + new, data)
            self.items.delete(MANIFEST_PREFIX + old)

    def changing(self) -> ContextManager[None]:
        return file_lock(self.path / "manifest.lock", exclusive=True)

    def writing(self) -> ContextManager[None]:
        return file_lock(self.path / "ingest.lock", exclusive=False)

    def collecting(self, busy_message: str) -> ContextManager[None]:
        return file_lock(self.path / "ingest.lock", exclusive=True, wait=False, busy_message=busy_message)

    def lease(self, keys: Iterable[str]) -> Lease | None:
        return _FileLease(ReaderLease(self.path, keys))

    def leased_keys(self, remove_stale: bool) -> set[str]:
        return live_leased_keys(self.path, remove_stale)


# Database: SQLite or PostgreSQL rows, optimistic versions, expiring leases -------------------------------


class _Dialect:
    """What differs between SQLite and PostgreSQL for the catalog's few statements."""

    def __init__(self, name: str, blob: str, number: str, now: str, placeholder: str):
        self.name, self.blob, self.number, self.now, self.placeholder = name, blob, number, now, placeholder

    def sql(self, statement: str) -> str:
        return statement.replace("?", self.placeholder).replace("{now}", self.now)


SQLITE = _Dialect("sqlite", "BLOB", "REAL", "((julianday('now') - 2440587.5) * 86400.0)", "?")
POSTGRES = _Dialect("postgresql", "BYTEA", "DOUBLE PRECISION", "EXTRACT(EPOCH FROM clock_timestamp())", "%s")


class _DatabaseLease(Lease):
    def __init__(self, catalog: DatabaseCatalog, lease_id: str):
        self.catalog, self.lease_id, self._released = catalog, lease_id, False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.catalog._drop_lease(self.lease_id)


class DatabaseCatalog(Catalog):
    """Manifests and leases as rows of a SQLite file or a PostgreSQL database, shared by every handle on the store.

    ``store_id`` names the store within the database (its object-store URL), so one database can hold several
    stores' catalogs. One connection per thread; statements autocommit unless grouped in a transaction.
    """

    def __init__(self, url: str, store_id: str, lease_seconds: float = DEFAULT_LEASE_SECONDS):
        if lease_seconds <= 0:
            raise StoreError(f"lease_seconds must be positive, got {lease_seconds!r}")
        self.url, self.store_id, self.lease_seconds = url, store_id, float(lease_seconds)
        self.location = _redacted(url)
        if url.startswith("sqlite:///"):
            self.dialect = SQLITE
            self._sqlite_path = Path(url.removeprefix("sqlite:///")).expanduser()
            if not url.removeprefix("sqlite:///").startswith("/"):
                self._sqlite_path = Path.cwd() / self._sqlite_path
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = POSTGRES
        else:
            raise StoreError(
                f"unknown manifest database {self.location!r}: use sqlite:///PATH (one machine) or "
                "postgresql://USER@HOST/DATABASE (several)"
            )
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()
        self._holder = f"{socket.gethostname()}:{os.getpid()}"
        self._live: set[str] = set()  # lease ids this process renews
        self._live_lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._closed = threading.Event()
        self._create_tables()
        weakref.finalize(self, DatabaseCatalog._shutdown, self._closed, self._connections)

    # Connections ---------------------------------------------------------------------------------------

    def _connect(self) -> Any:
        try:
            if self.dialect is SQLITE:
                self._sqlite_path.parent.mkdir(parents=True, exist_ok=True)
                connection = sqlite3.connect(
                    str(self._sqlite_path), timeout=60, isolation_level=None, check_same_thread=False
                )
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA busy_timeout=60000")
                connection.execute("PRAGMA secure_delete=ON")  # a replaced manifest's page space is zeroed, not kept
                return connection
            try:
                import psycopg
            except ImportError:
                raise StoreError(
                    "a PostgreSQL manifest database needs psycopg: pip install 'lychee-memory[shared-store]'"
                ) from None
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except StoreError:
            raise
        except Exception as error:  # sqlite3.Error, psycopg.Error, OSError: all mean the same to a user
            raise StoreError(f"cannot open the manifest database {self.location!r}: {error}") from None

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _execute(self, statement: str, parameters: tuple = ()) -> Any:
        try:
            cursor = self._connection().cursor()
            cursor.execute(self.dialect.sql(statement), parameters)
            return cursor
        except Exception as error:
            if _is_integrity_error(error):
                raise ManifestConflict(str(error)) from None
            raise StoreError(f"manifest database {self.location!r}: {error}") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        connection = self._connection()
        if self.dialect is SQLITE:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        else:
            with connection.transaction():
                yield

    def _create_tables(self) -> None:
        blob, number = self.dialect.blob, self.dialect.number
        statements = [
            "CREATE TABLE IF NOT EXISTS lychee_manifests (store TEXT NOT NULL, name TEXT NOT NULL, "
            f"generation BIGINT NOT NULL, data {blob} NOT NULL, PRIMARY KEY (store, name))",
            "CREATE TABLE IF NOT EXISTS lychee_leases (store TEXT NOT NULL, id TEXT NOT NULL, kind TEXT NOT NULL, "
            f"holder TEXT NOT NULL, keys TEXT NOT NULL, expires {number} NOT NULL, PRIMARY KEY (store, id))",
        ]
        for statement in statements:
            for attempt in range(5):  # two processes creating the tables at once: one wins, the other retries
                try:
                    self._execute(statement)
                    break
                except (ManifestConflict, StoreError):
                    if attempt == 4:
                        raise
                    time.sleep(0.2)

    def close(self) -> None:
        DatabaseCatalog._shutdown(self._closed, self._connections)

    @staticmethod
    def _shutdown(closed: threading.Event, connections: list[Any]) -> None:
        closed.set()
        for connection in connections:
            with contextlib.suppress(Exception):
                connection.close()
        connections.clear()

    # Manifests -----------------------------------------------------------------------------------------

    def read(self, name: str) -> bytes | None:
        row = self._execute(
            "SELECT data FROM lychee_manifests WHERE store = ? AND name = ?", (self.store_id, name)
        ).fetchone()
        return bytes(row[0]) if row is not None else None

    def names(self) -> list[str]:
        rows = self._execute("SELECT name FROM lychee_manifests WHERE store = ?", (self.store_id,)).fetchall()
        return sorted(row[0] for row in rows)

    def put(self, name: str, data: bytes, generation: int, expected: int) -> None:
        if expected == 0:
            self._execute(  # a primary-key clash means another writer created the bank first
                "INSERT INTO lychee_manifests (store, name, generation, data) VALUES (?, ?, ?, ?)",
                (self.store_id, name, generation, data),
            )
            return
        cursor = self._execute(
            "UPDATE lychee_manifests SET generation = ?, data = ? WHERE store = ? AND name = ? AND generation = ?",
            (generation, data, self.store_id, name, expected),
        )
        if cursor.rowcount != 1:
            raise ManifestConflict(f"bank {name!r} is no longer at generation {expected}")

    def remove(self, name: str, expected: int) -> None:
        cursor = self._execute(
            "DELETE FROM lychee_manifests WHERE store = ? AND name = ? AND generation = ?",
            (self.store_id, name, expected),
        )
        if cursor.rowcount != 1:
            raise ManifestConflict(f"bank {name!r} is no longer at generation {expected}")

    def rename(self, old: str, new: str, data: bytes, generation: int, expected: int) -> None:
        with self._transaction():
            self.put(new, data, generation, 0)
            self.remove(old, expected)

    def scrub(self) -> None:
        """SQLite: copy the write-ahead log into the file and empty it (old manifest versions live on there; the
        file's own freed space is zeroed by ``secure_delete``). PostgreSQL: ``VACUUM FULL`` rewrites the manifest
        table without its dead row versions; the server's own write-ahead log keeps them until it recycles its
        segments, which is the database's durability, not something a client can erase."""
        try:
            if self.dialect is SQLITE:
                self._execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            else:
                self._execute("VACUUM FULL lychee_manifests")
        except StoreError as error:  # a reader holding the log or a role that does not own the table: gc still ran
            logger.warning("gc could not scrub old manifest versions from %s: %s", self.location, error)

    # Leases --------------------------------------------------------------------------------------------

    def _add_lease(self, kind: str, keys: Iterable[str]) -> str:
        lease_id = f"{kind}-{uuid.uuid4().hex}"
        self._execute(
            "INSERT INTO lychee_leases (store, id, kind, holder, keys, expires) VALUES (?, ?, ?, ?, ?, {now} + ?)",
            (self.store_id, lease_id, kind, self._holder, json.dumps(sorted(set(keys))), self.lease_seconds),
        )
        with self._live_lock:
            self._live.add(lease_id)
        self._start_heartbeat()
        return lease_id

    def _drop_lease(self, lease_id: str) -> None:
        with self._live_lock:
            self._live.discard(lease_id)
        if not self._closed.is_set():
            with contextlib.suppress(StoreError):
                self._execute("DELETE FROM lychee_leases WHERE store = ? AND id = ?", (self.store_id, lease_id))

    def _live_kinds(self, kind: str, excluding: str | None = None) -> list[str]:
        rows = self._execute(
            "SELECT id, holder FROM lychee_leases WHERE store = ? AND kind = ? AND expires > {now}",
            (self.store_id, kind),
        ).fetchall()
        return [row[1] for row in rows if row[0] != excluding]

    def _start_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        self._heartbeat = threading.Thread(
            target=_renew_leases, args=(weakref.ref(self), self._closed), name="lychee-lease-heartbeat", daemon=True
        )
        self._heartbeat.start()

    def renew(self) -> None:
        """Push the expiry of every lease this process holds one lease period ahead (the heartbeat calls it)."""
        with self._live_lock:
            live = sorted(self._live)
        for lease_id in live:
            self._execute(
                "UPDATE lychee_leases SET expires = {now} + ? WHERE store = ? AND id = ?",
                (self.lease_seconds, self.store_id, lease_id),
            )

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        deadline = time.monotonic() + _WAIT_FOR_GC_SECONDS
        while True:
            lease_id = self._add_lease("writer", [])
            if not self._live_kinds("gc"):
                break
            self._drop_lease(lease_id)  # a gc runs: let it finish, then register again
            if time.monotonic() > deadline:
                raise StoreError(f"store {self.store_id!r}: a gc has run for too long; try again when it ends")
            time.sleep(0.5)
        try:
            yield
        finally:
            self._drop_lease(lease_id)

    @contextlib.contextmanager
    def collecting(self, busy_message: str) -> Iterator[None]:
        lease_id = self._add_lease("gc", [])
        try:
            writers = self._live_kinds("writer")
            if writers:
                raise StoreError(f"{busy_message} (writers: {', '.join(sorted(set(writers)))})")
            yield
        finally:
            self._drop_lease(lease_id)

    def lease(self, keys: Iterable[str]) -> Lease | None:
        return _DatabaseLease(self, self._add_lease("reader", keys))

    def leased_keys(self, remove_stale: bool) -> set[str]:
        if remove_stale:
            self._execute("DELETE FROM lychee_leases WHERE store = ? AND expires <= {now}", (self.store_id,))
        rows = self._execute(
            "SELECT keys FROM lychee_leases WHERE store = ? AND kind = 'reader' AND expires > {now}", (self.store_id,)
        ).fetchall()
        return {key for row in rows for key in json.loads(row[0])}


def _renew_leases(catalog_reference: weakref.ref, closed: threading.Event) -> None:
    """The heartbeat: renew the catalog's leases a few times per lease period until it closes or is collected."""
    while True:
        catalog = catalog_reference()
        if catalog is None:
            return
        period = catalog.lease_seconds / 4
        try:
            catalog.renew()
        except StoreError as error:  # the database is unreachable for a moment: leases expire if it stays so
            logger.warning("cannot renew store leases: %s", error)
        del catalog
        if closed.wait(period):
            return


def _is_integrity_error(error: Exception) -> bool:
    if isinstance(error, sqlite3.IntegrityError):
        return True
    return type(error).__name__ in {"UniqueViolation", "IntegrityError"}


def _redacted(url: str) -> str:
    """A database URL without its password, for messages."""
    scheme, separator, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{scheme}{separator}{user}:***@{rest.split('@', 1)[1]}"
    return url
