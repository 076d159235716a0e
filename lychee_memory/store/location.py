"""Where a store lives, from a path or a URL: its objects (blocks, index items, texts) and its manifests.

- ``/some/dir``: a local directory, diskcache for everything, flock locks (the default; one machine).
- ``/some/dir?manifests=sqlite:///some/dir/manifests.sqlite``: the same objects, manifests in SQLite.
- ``s3://bucket/prefix?manifests=postgresql://user@host/db``: objects in an object store through fsspec (any
  protocol fsspec knows: s3, gs, az, file, memory...), manifests in a database every machine reaches. An object
  store needs ``manifests=``: it has no transactions of its own.

Other options: ``cache=DIR`` and ``cache_bytes=N`` (the bounded local copy of blocks read from an object store;
default under the lychee cache directory, 1 GiB), ``endpoint_url=URL`` (an S3-compatible server other than AWS;
AWS_ENDPOINT_URL works too), ``lease_seconds=S`` (how long a dead process's database leases still count).
Credentials come from the filesystem's usual places (AWS_* variables, ~/.aws, ...), never from the URL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from ..config import cache_root
from ..errors import ConfigurationError

DEFAULT_CACHE_BYTES = 1 << 30
_OPTIONS = {"manifests", "cache", "cache_bytes", "endpoint_url", "lease_seconds"}


@dataclass(frozen=True)
class StoreLocation:
    """A parsed store location: a local directory or an fsspec URL for objects, and where manifests live."""

    text: str  # as given, for messages (a database password is never part of it: see catalog._redacted)
    directory: Path | None = None  # a local diskcache store
    objects_url: str | None = None  # an fsspec URL for blocks, index items and texts
    manifests: str | None = None  # sqlite:///PATH or postgresql://...; None: beside the blocks (local only)
    cache_directory: Path | None = None
    cache_bytes: int = DEFAULT_CACHE_BYTES
    lease_seconds: float | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return self.objects_url is not None

    @property
    def local_path(self) -> Path:
        """The local directory this handle keeps its files in (the store itself, or an object store's cache)."""
        if self.directory is not None:
            return self.directory
        if self.cache_directory is not None:
            return self.cache_directory
        endpoint = str(self.storage_options.get("endpoint_url", ""))  # one bucket name, two servers: two caches
        digest = hashlib.sha256(f"{self.objects_url}|{endpoint}".encode()).hexdigest()[:16]
        return cache_root() / "remote-stores" / digest


def parse_store_location(text: str, storage_options: dict[str, Any] | None = None) -> StoreLocation:
    """Split a store path or URL into its parts; ConfigurationError naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigurationError(f"a store location must be a non-empty path or URL, got {text!r}")
    base, _, query = text.partition("?")
    if not query and "://" not in base:
        return StoreLocation(text=text, directory=Path(base).expanduser(), storage_options=dict(storage_options or {}))
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown store option {unknown[0]!r} in {text!r}; known: {', '.join(sorted(_OPTIONS))}"
        )
    manifests = options.get("manifests") or None
    if manifests is not None and not manifests.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigurationError(
            f"manifests={manifests!r}: use sqlite:///PATH (one machine) or postgresql://USER@HOST/DATABASE"
        )
    try:
        cache_bytes = int(options.get("cache_bytes", DEFAULT_CACHE_BYTES))
        lease_seconds = float(options["lease_seconds"]) if "lease_seconds" in options else None
    except ValueError:
        raise ConfigurationError(f"cache_bytes and lease_seconds must be numbers in {text!r}") from None
    if cache_bytes <= 0 or (lease_seconds is not None and lease_seconds <= 0):
        raise ConfigurationError(f"cache_bytes and lease_seconds must be positive in {text!r}")
    extra = dict(storage_options or {})
    if options.get("endpoint_url"):
        extra.setdefault("endpoint_url", options["endpoint_url"])
    cache = Path(options["cache"]).expanduser() if options.get("cache") else None
    if "://" not in base:  # a local directory with its manifests in a database
        return StoreLocation(
            text=text, directory=Path(base).expanduser(), manifests=manifests, lease_seconds=lease_seconds
        )
    if manifests is None:
        raise ConfigurationError(
            f"store {base!r} is an object store, which has no transactions for manifests: add "
            "?manifests=postgresql://USER@HOST/DATABASE (several machines) or ?manifests=sqlite:///PATH (one)"
        )
    return StoreLocation(
        text=text,
        objects_url=base.rstrip("/"),
        manifests=manifests,
        cache_directory=cache,
        cache_bytes=cache_bytes,
        lease_seconds=lease_seconds,
        storage_options=extra,
    )


def open_filesystem(location: StoreLocation) -> tuple[Any, str]:
    """The fsspec filesystem and root path of an object-store location."""
    try:
        import fsspec
    except ImportError:
        raise ConfigurationError(
            "an object-store location needs fsspec (and s3fs for s3://): pip install 'lychee-memory[shared-store]'"
        ) from None
    assert location.objects_url is not None
    # No listing cache: other processes add and delete objects, and a cached listing would make ``exists`` and
    # ``size`` deny objects written since (gc would leave them behind).
    options = {"use_listings_cache": False, **location.storage_options}
    try:
        filesystem, root = fsspec.core.url_to_fs(location.objects_url, **options)
    except (ImportError, ValueError) as error:
        raise ConfigurationError(f"cannot open object store {location.objects_url!r}: {error}") from None
    return filesystem, root
