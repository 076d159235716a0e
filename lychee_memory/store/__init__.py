"""Persistent memory banks: content-addressed blocks and JSON manifests (``MemoryStore``), on one machine or many.

``store`` (``MemoryStore`` and the ``StoredBank`` it opens) is a facade over two parts: ``block_objects`` (blocks,
gate index items and texts by content key) and ``manifests`` (bank records: read, require, write, and the
read-change-write loop with its generation check). ``save`` (``save_bank``), ``verify`` (checks and repairs) and
``writing`` (plan, write batches, assemble, commit: the steps a distributed ingest spreads) and ``recompress``
(a bank's blocks converted to another codec) are functions over those parts and never import the facade (an import contract in ``pyproject.toml``). Below them, one module per
concept: ``codec`` (blocks and manifests as checked bytes; block codecs by storage format), ``gate_index`` (each
block's gate index as its own item), ``manifest`` (the bank record and bank names), ``location`` (a store path or
URL), ``disk`` (local objects: diskcache without pickles), ``objects`` (objects on any fsspec filesystem, and the
bounded local copy of what was read), ``catalog`` (where manifests live and how writers, gc and readers
coordinate: flock locally, optimistic versions and leases in SQLite/PostgreSQL), ``locks`` (the local flock locks
and reader leases), ``reports``, ``recipe`` (what the store needs from an engine) and ``reading`` (a stored bank's
block loader).
"""

from .manifest import BANK_NAME_RULE, BLOCK_DTYPES, BankManifest, BlockDtype, check_new_bank_name
from .recipe import BlockRecipe, RecipeForSettings
from .reports import BankInfo, GcReport, IngestReport, RecompressReport, StoreProblem, StoreUsage, VerifyReport
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
    "RecompressReport",
    "StoreProblem",
    "StoreUsage",
    "StoredBank",
    "VerifyReport",
    "as_store",
    "check_new_bank_name",
    "default_store_path",
]
