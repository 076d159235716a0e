"""Persistent memory banks: content-addressed blocks and JSON manifests (``MemoryStore``), on one machine or many.

One module per concept: ``codec`` (blocks and manifests as checked bytes, int8), ``gate_index`` (each block's gate
index as its own item), ``manifest`` (the bank record and bank names), ``location`` (a store path or URL),
``disk`` (local objects: diskcache without pickles), ``objects`` (objects on any fsspec filesystem, and the bounded
local copy of what was read), ``catalog`` (where manifests live and how writers, gc and readers coordinate: flock
locally, optimistic versions and leases in SQLite/PostgreSQL), ``locks`` (the local flock locks and reader
leases), ``reports``, ``recipe`` (what the store needs from an engine), ``writing`` (plan, write batches,
assemble: the steps a distributed ingest spreads), ``reading`` (a stored bank's block loader), ``save``
(``save_bank``), ``verify`` (checks and repairs), ``stored_bank`` and ``store`` (``MemoryStore``).
"""

from .manifest import BANK_NAME_RULE, BLOCK_DTYPES, BankManifest, BlockDtype, check_new_bank_name
from .recipe import BlockRecipe, RecipeForSettings
from .reports import BankInfo, GcReport, IngestReport, StoreProblem, StoreUsage, VerifyReport
from .store import MemoryStore, StoredBank, as_store, default_store_path

__all__ = [
    "BANK_NAME_RULE",
    "BLOCK_DTYPES",
    "BankInfo",
    "BankManifest",
    "BlockDtype",
    "BlockRecipe",
    "GcReport",
    "IngestReport",
    "MemoryStore",
    "RecipeForSettings",
    "StoreProblem",
    "StoreUsage",
    "StoredBank",
    "VerifyReport",
    "as_store",
    "check_new_bank_name",
    "default_store_path",
]
