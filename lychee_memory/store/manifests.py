"""A store's bank manifests as records: read, require, write, and the read-change-write loop, over its catalog.

``manifest.py`` defines the record; this module keeps records in a ``Catalog`` (``catalog.py``). Every write goes
through ``write`` (one generation after the manifest it changes, the check the catalog enforces), and every
read-change-write through ``update``, which reads again and retries when another writer won the race
(``ManifestConflict``). ``save``, ``verify``, ``writing`` and ``MemoryStore`` all change manifests this way.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from typing import Any

from pydantic import ValidationError

from ..blocks import BankIdentity
from ..errors import BankNotFoundError, StoreError
from .catalog import Catalog, Lease, ManifestConflict
from .codec import MANIFEST_MAGIC, Damaged, frame, unframe
from .manifest import BankManifest, check_bank_name, check_new_bank_name, now

logger = logging.getLogger(__name__)

MANIFEST_ROUNDS = 20  # a manifest write that loses the race to another writer merges again this many times
_READ_ONLY_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}

Change = Callable[[BankManifest | None], BankManifest | None]
"""Given the bank's manifest as just read (None: no such bank), the manifest to write, or None to write nothing."""


def framed(manifest: BankManifest) -> bytes:
    """A manifest as stored: its JSON in a checksummed frame."""
    return frame(MANIFEST_MAGIC, manifest.model_dump_json().encode("utf-8"))


class Manifests:
    """The bank manifests of one store (``location`` names it in errors), kept in ``catalog``."""

    def __init__(self, catalog: Catalog, location: str):
        self.catalog, self.location = catalog, location

    def close(self) -> None:
        self.catalog.close()

    # Locks -------------------------------------------------------------------------------------------------

    def changing(self) -> ContextManager[None]:
        """Held around a read, change and write (a lock where the catalog has one)."""
        return self.catalog.changing()

    def writing(self) -> ContextManager[None]:
        """Held while blocks no manifest names yet are written, until the manifest naming them is: gc stays out."""
        return self.catalog.writing()

    # Reading -----------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return self.catalog.names()

    def exists(self, name: str) -> bool:
        return self.catalog.read(check_bank_name(name)) is not None

    def read(self, name: str) -> BankManifest | None:
        """The bank's manifest, None when there is no such bank; StoreError when it is damaged."""
        data = self.catalog.read(name)
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

    def size(self, name: str) -> int:
        """Bytes of the bank's manifest as stored (framed), 0 when there is no such bank."""
        data = self.catalog.read(name)
        return len(data) if data is not None else 0

    def require(self, name: str) -> BankManifest:
        """The bank's manifest; BankNotFoundError naming the banks there are when there is no such bank."""
        manifest = self.read(check_bank_name(name))
        if manifest is None:
            known = ", ".join(sorted(self.names())) or "none"
            raise BankNotFoundError(f"no bank named {name!r} in store {self.location!r} (banks: {known})")
        return manifest

    def leased(self, name: str) -> tuple[BankManifest, Lease | None]:
        """The bank's manifest and a lease on its blocks: the lease is taken, then the manifest read again; if it
        changed meanwhile, the lease is taken again for the new one. gc reads manifests before leases, so it sees
        either the manifest or the lease of every block handed out."""
        try:
            with self.catalog.changing():
                manifest = self.require(name)
                for _ in range(MANIFEST_ROUNDS):
                    lease = self.catalog.lease(manifest.block_keys() | manifest.index_keys())
                    latest = self.require(name)
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
            return self.require(name), None

    def check_identity(self, manifest: BankManifest, identity: BankIdentity) -> None:
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

    # Writing -----------------------------------------------------------------------------------------------

    def write(self, manifest: BankManifest, previous: BankManifest | None) -> None:
        """Write ``manifest`` one generation after ``previous`` (call inside ``changing``); ManifestConflict when
        the stored manifest is no longer ``previous``."""
        expected = _advance(manifest, previous)
        self.catalog.put(manifest.name, framed(manifest), manifest.generation, expected)

    def update(self, name: str, change: Change, *, require: bool = False) -> BankManifest | None:
        """Read bank ``name``, ``change`` it and write the result, from a fresh read again whenever another writer
        wrote meanwhile. Returns the manifest written (None: ``change`` wrote nothing). With ``require``, a
        missing bank is BankNotFoundError instead of None given to ``change``."""
        for attempt in self._attempts():
            with attempt:
                current = self.require(name) if require else self.read(name)
                changed = change(current)
                if changed is not None:
                    self.write(changed, current)
                return changed
        raise AssertionError("unreachable: _attempts raises when it runs out of rounds")

    def remove(self, name: str) -> None:
        """Remove a bank's manifest (BankNotFoundError when there is none)."""
        for attempt in self._attempts():
            with attempt:
                self.catalog.remove(name, self.require(name).generation)

    def rename(self, old: str, new: str) -> None:
        """Give a bank a new name, atomically; renaming onto an existing bank is refused."""
        check_new_bank_name(new)
        for attempt in self._attempts():
            with attempt:
                manifest = self.require(old)
                if old == new:
                    return
                if self.exists(new):
                    raise StoreError(f"cannot rename bank {old!r} to {new!r}: a bank named {new!r} already exists")
                manifest.name, manifest.updated = new, now()
                expected = _advance(manifest, manifest)  # its generation as read, then the next
                self.catalog.rename(old, new, framed(manifest), manifest.generation, expected)

    def _attempts(self) -> Iterator[_Attempt]:
        """Rounds of a read-change-write: ``for attempt in ...: with attempt: ...``. A round whose write finds the
        manifest changed by another writer (ManifestConflict) is run again from a fresh read."""
        for _ in range(MANIFEST_ROUNDS):
            attempt = _Attempt(self.catalog.changing())
            yield attempt
            if attempt.done:
                return
        raise StoreError(f"the banks of store {self.location!r} kept changing under this writer; try again")


def _advance(manifest: BankManifest, previous: BankManifest | None) -> int:
    """Set ``manifest``'s generation to the one after ``previous``'s; returns the generation the write expects."""
    expected = previous.generation if previous is not None else 0
    manifest.generation = expected + 1
    return expected


class _Attempt:
    """One round of a read-change-write: holds the catalog's lock (if any); a ManifestConflict inside ends the
    round quietly, undone, so the next round reads again."""

    def __init__(self, lock: ContextManager[None]):
        self.lock, self.done = lock, False

    def __enter__(self) -> _Attempt:
        self.lock.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> bool:
        self.lock.__exit__(kind, error, trace)
        if kind is None:
            self.done = True
            return False
        return issubclass(kind, ManifestConflict)
