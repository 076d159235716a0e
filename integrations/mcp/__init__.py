"""``lychee mcp``: lychee-memory as an MCP server agents attach as memory tools (install ``lychee-memory[mcp]``).

- ``run_mcp(settings, transport)``: serve over stdio or streamable HTTP (what ``lychee mcp`` runs).
- ``build_server(MemoryTools(service))``: the ``MCPServer`` with the tools remember, recall, ask, forget and
  list_banks, and the banks as resources (``lychee://banks``, ``lychee://banks/{name}``).

Names are imported on first use, so ``lychee --help`` works without the mcp extra.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "KeyCheck": "runner",
    "run_mcp": "runner",
    "stdio_tenant": "runner",
    "MemoryTools": "tools",
    "build_server": "tools",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
