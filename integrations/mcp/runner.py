"""``run_mcp``: serve the memory tools over stdio (the default: the client starts ``lychee mcp`` itself) or over
streamable HTTP, with ``lychee serve``'s keys.

Over HTTP every request needs ``Authorization: Bearer KEY`` when keys are set (401 otherwise, before any MCP
message is read), and each tool call reaches only the key's bank prefixes. Over stdio there are no headers: with
keys set, the key comes from the ``LYCHEE_API_KEY`` environment variable, checked at startup. Logs go to stderr;
stdout carries the protocol alone.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Literal

import anyio

from lychee_memory import ConfigurationError, LycheeError

from ..server.auth import KeyRing, Tenant
from ..server.problems import ApiError, body
from ..server.settings import ServerSettings
from .tools import MemoryTools, build_server, tool_error

if TYPE_CHECKING:
    from ..server.service import MemoryService

KEY_VARIABLE = "LYCHEE_API_KEY"
Transport = Literal["stdio", "http"]
MCP_PATH = "/mcp"
logger = logging.getLogger("lychee_memory.mcp")


def stdio_tenant(keys: KeyRing, environ: dict[str, str] | None = None) -> Tenant | None:
    """The caller of a stdio session: the tenant of ``LYCHEE_API_KEY`` when the server has keys, else None (open)."""
    if not keys.enabled:
        return None
    key = (environ if environ is not None else dict(os.environ)).get(KEY_VARIABLE, "")
    if not key.strip():
        raise ConfigurationError(
            f"this server has API keys: over stdio give yours in the environment variable {KEY_VARIABLE}"
        )
    try:
        return keys.tenant(f"Bearer {key}")
    except ApiError as error:
        raise ConfigurationError(f"{KEY_VARIABLE}: {error.message}") from None


class DeferredService:
    """The server's ``MemoryService``, imported and built when a tool first reaches it: that module brings the engine,
    the store and torch, which ``initialize`` needs none of. The keys are read at startup (a bad key file, or a
    missing ``LYCHEE_API_KEY``, still fails there); every other attribute is the service's. A store that cannot be
    opened is each tool's error, naming it, as the server's tools report every library error."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.keys = KeyRing.build(settings.api_keys, settings.keys_file)
        self.built: MemoryService | None = None
        self.lock = threading.Lock()

    def service(self) -> MemoryService:
        """The service, built on the first call (thread-safe)."""
        with self.lock:
            if self.built is None:
                from ..server.service import MemoryService

                try:
                    self.built = MemoryService(self.settings)
                except LycheeError as error:
                    logger.error("the memory service did not start: %s", error)
                    raise tool_error(error) from None
            return self.built

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service(), name)

    def stop(self) -> None:
        """Stop the service if a tool built it; nothing to stop otherwise."""
        if self.built is not None:
            self.built.stop()


class KeyCheck:
    """ASGI middleware: refuse an HTTP request without a known key (401, the server's error body)."""

    def __init__(self, app: Any, keys: KeyRing):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.keys.enabled:
            headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
            try:
                self.keys.tenant(headers.get("authorization"))
            except ApiError as error:
                from starlette.responses import JSONResponse

                response = JSONResponse(body(error), status_code=error.status, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def run_mcp(settings: ServerSettings, transport: Transport = "stdio", log_level: str = "warning") -> int:
    """Serve until the client closes stdin (stdio) or the process is stopped (HTTP); the exit status."""
    logging.basicConfig(stream=sys.stderr, level=log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
    service = DeferredService(settings)  # imports no engine and loads no model: the first tool that needs one does
    tenant = stdio_tenant(service.keys) if transport == "stdio" else None
    server = build_server(MemoryTools(service, tenant))  # type: ignore[arg-type]  # a MemoryService on first use
    try:
        if transport == "stdio":
            anyio.run(server.run_stdio_async)
        else:
            import uvicorn

            app = KeyCheck(server.streamable_http_app(streamable_http_path=MCP_PATH, host=settings.host), service.keys)
            uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, access_log=False)
    finally:
        service.stop()
    return 0
