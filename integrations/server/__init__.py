"""``lychee serve``: lychee-memory as an HTTP service many users and agents share (install ``lychee-memory[server]``).

- ``create_app(ServerSettings(...))``: the FastAPI app (banks, documents, ingest jobs, query, retrieve,
  OpenAI-compatible chat completions, Prometheus metrics).
- ``run_server(settings)``: serve it with uvicorn (what ``lychee serve`` runs).
- ``MemoryService``: what the routes call (engine, store, jobs, batching, auth).

Names are imported on first use, so ``ServerSettings`` (``settings.py``, what ``lychee serve``'s flags are
derived from) loads without FastAPI installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "app",
    "KeyRing": "auth",
    "Tenant": "auth",
    "run_server": "runner",
    "MemoryService": "service",
    "ServerSettings": "settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
