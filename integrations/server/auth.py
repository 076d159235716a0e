"""Who may call the server and which banks each caller may touch.

Without keys the server is open (meant for 127.0.0.1). With keys (``--api-key``, repeatable, or a keys file)
every ``/v1`` route needs ``Authorization: Bearer KEY``; a key reaches the banks whose names start with one of
its prefixes. A keys file is JSON: ``{"KEY": ["acme-", "shared-"], ...}`` or
``{"KEY": {"tenant": "acme", "prefixes": ["acme-"]}, ...}``. A ``--api-key`` key reaches every bank.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lychee_memory import ConfigurationError

from .problems import ApiError


@dataclass(frozen=True)
class Tenant:
    """A caller: a name for logs, and the bank-name prefixes it may touch ("" = every bank)."""

    name: str
    prefixes: tuple[str, ...]

    def may_use(self, bank: str) -> bool:
        return any(bank.startswith(prefix) for prefix in self.prefixes)

    def require(self, bank: str) -> None:
        """403 for a bank outside this caller's prefixes (whether or not it exists: existence is not revealed)."""
        if not self.may_use(bank):
            raise ApiError(403, "forbidden", f"this API key may not use bank {bank!r}")


OPEN = Tenant("anonymous", ("",))


class KeyRing:
    """The API keys the server accepts; empty means no authentication."""

    def __init__(self, tenants: Mapping[str, Tenant] | None = None):
        self._tenants = dict(tenants or {})

    @classmethod
    def build(cls, keys: Iterable[str] = (), keys_file: str | Path | None = None) -> KeyRing:
        """Keys given on the command line (every bank) plus a keys file's keys (their prefixes)."""
        tenants: dict[str, Tenant] = {}
        for position, key in enumerate(keys):
            if not key or not key.strip():
                raise ConfigurationError("an --api-key is empty: give each key some characters")
            tenants[key] = Tenant(f"key-{position + 1}", ("",))
        if keys_file is not None:
            tenants.update(_read_keys_file(Path(keys_file)))
        return cls(tenants)

    @property
    def enabled(self) -> bool:
        return bool(self._tenants)

    def tenant(self, authorization: str | None) -> Tenant:
        """The caller for an ``Authorization`` header; 401 for a missing, malformed or unknown key."""
        if not self._tenants:
            return OPEN
        if not authorization:
            raise ApiError(401, "unauthorized", "missing API key: send the header 'Authorization: Bearer KEY'")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthorized", "malformed Authorization header: expected 'Bearer KEY'")
        key = key.strip()
        for known, tenant in self._tenants.items():  # compare every key in constant time
            if hmac.compare_digest(known.encode(), key.encode()):
                return tenant
        raise ApiError(401, "unauthorized", "unknown API key")


def _read_keys_file(path: Path) -> dict[str, Tenant]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigurationError(f"cannot read keys file {str(path)!r}: {error.strerror or error}") from None
    except ValueError as error:
        raise ConfigurationError(f"keys file {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigurationError(f'keys file {str(path)!r} must be a JSON object {{"KEY": ["bank-prefix", ...]}}')
    tenants = {}
    for key, entry in data.items():
        if not key.strip():
            raise ConfigurationError(f"keys file {str(path)!r} has an empty key")
        name = f"tenant-{len(tenants) + 1}"
        if isinstance(entry, dict):
            name = str(entry.get("tenant", name))
            entry = entry.get("prefixes")
        if not isinstance(entry, list) or not entry or not all(isinstance(prefix, str) for prefix in entry):
            raise ConfigurationError(
                f"keys file {str(path)!r}: the key ending in {key[-4:]!r} needs a non-empty list of bank-name "
                'prefixes (use [""] for every bank)'
            )
        tenants[key] = Tenant(name, tuple(entry))
    return tenants
