"""Running the server: uvicorn in this process, stopped cleanly on SIGINT/SIGTERM, and stopped with an error when
the service cannot start (a model that fails to load, a store built with another model)."""

from __future__ import annotations

import logging
import sys

from .app import create_app
from .service import MemoryService, ServerSettings

logger = logging.getLogger("lychee_memory.server")


def run_server(settings: ServerSettings, log_level: str = "info") -> int:
    """Serve until stopped; 0 after a clean shutdown, 2 when the service could not start."""
    import uvicorn

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s: %(message)s")
    fatal: list[str] = []
    servers: list[uvicorn.Server] = []

    def stop_with(message: str) -> None:
        fatal.append(message)
        logger.error("cannot serve: %s", message)
        for server in servers:
            server.should_exit = True

    service = MemoryService(settings, on_fatal=stop_with)
    config = uvicorn.Config(
        create_app(settings, service),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout)),
        access_log=log_level == "debug",
    )
    server = uvicorn.Server(config)
    servers.append(server)
    if fatal:  # failed before uvicorn existed
        server.should_exit = True
    server.run()
    if fatal:
        print(f"lychee: error: {fatal[0]}", file=sys.stderr)
        return 2
    return 0
