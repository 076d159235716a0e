"""A bank kept in a MemoryStore: a MemoryBank whose blocks are read lazily, that knows its store and keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import MemoryStore

from ..blocks import MemoryBank
from .manifest import FINGERPRINT_SCHEME


@dataclass
class StoredBank(MemoryBank):
    """A stored bank as read at one ``generation`` of its manifest; its blocks and gate index items are leased while
    it lives.

    ``block_keys`` are the content keys of its blocks in order; changes (adding or removing documents) are
    made in the store, which returns a new StoredBank.
    """

    store: MemoryStore | None = field(default=None, repr=False, compare=False)
    block_keys: list[str] = field(default_factory=list, repr=False)
    generation: int = 0
    fingerprint_scheme: str = field(default=FINGERPRINT_SCHEME, repr=False)

    def is_current(self) -> bool:
        """Whether the store still holds this version of the bank (no writer changed it since it was read)."""
        assert self.store is not None and self.name is not None
        return self.store.has_bank(self.name) and self.store.bank_generation(self.name) == self.generation

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "store": self.store.location if self.store is not None else None}
