"""Who may change a store when, and which blocks a live reader still needs.

Locks are ``flock`` locks, released by the kernel when a process dies, even by ``kill -9``:

- ``ingest.lock``: held shared by every writer of blocks until the manifest naming them is written,
  exclusively by ``gc`` (so gc never deletes blocks an ingest in flight has not named yet);
- ``manifest.lock``: held while a manifest is read, changed and written, and while a reader takes a lease;
- ``leases/*.lease``: one per open stored bank, listing the blocks it names and held shared while the bank
  lives; ``gc`` keeps those blocks, and a lease whose lock nobody holds (its process died) is deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import StoreError

LEASES = "leases"


@contextlib.contextmanager
def file_lock(path: Path, exclusive: bool, wait: bool = True, busy_message: str = "") -> Iterator[None]:
    """Hold an flock on ``path`` (created if missing) for the block; StoreError(busy_message) if ``wait`` is False
    and someone else holds it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(descriptor, flags)
        except BlockingIOError:
            raise StoreError(busy_message or f"{str(path)!r} is locked by another process") from None
        yield
    finally:
        os.close(descriptor)  # closing the descriptor releases the lock


class ReaderLease:
    """A live reader's claim on blocks: ``gc`` keeps every block named here while the lease is held.

    Take it with the manifest lock held (so gc cannot run between reading a manifest and leasing its blocks);
    ``release`` (or the owner's death) ends it.
    """

    def __init__(self, store_path: Path, keys: Iterable[str]):
        directory = store_path / LEASES
        directory.mkdir(exist_ok=True)
        self.path = directory / f"{os.getpid()}-{uuid.uuid4().hex}.lease"
        self._descriptor: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(self._descriptor, fcntl.LOCK_SH)
            os.write(self._descriptor, json.dumps(sorted(set(keys))).encode("utf-8"))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._descriptor is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._descriptor)
        self._descriptor = None


def live_leased_keys(store_path: Path, remove_stale: bool) -> set[str]:
    """Block keys named by leases whose holders are alive; with ``remove_stale``, delete the others' files."""
    directory = store_path / LEASES
    keys: set[str] = set()
    if not directory.is_dir():
        return keys
    for path in directory.glob("*.lease"):
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # released meanwhile
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a reader holds it: its blocks stay
                try:
                    keys.update(json.loads(Path(path).read_text(encoding="utf-8")))
                except (OSError, ValueError) as error:  # leases are written under the manifest lock, so never
                    raise StoreError(f"cannot read the reader lease {str(path)!r} ({error}); try again") from None
                continue
            if remove_stale:
                with contextlib.suppress(OSError):
                    path.unlink()
        finally:
            os.close(descriptor)
    return keys
