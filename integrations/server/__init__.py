"""``lychee serve``: lychee-memory as an HTTP service many users and agents share (install ``lychee-memory[server]``).

- ``create_app(ServerSettings(...))``: the FastAPI app (banks, documents, ingest jobs, query, retrieve,
  OpenAI-compatible chat completions, Prometheus metrics).
- ``run_server(settings)``: serve it with uvicorn (what ``lychee serve`` runs).
- ``MemoryService``: what the routes call (engine, store, jobs, batching, auth).
"""

from .app import create_app
from .auth import KeyRing, Tenant
from .runner import run_server
from .service import MemoryService, ServerSettings

__all__ = ["KeyRing", "MemoryService", "ServerSettings", "Tenant", "create_app", "run_server"]
