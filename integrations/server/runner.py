"""Running the server: uvicorn in this process, stopped cleanly on SIGINT/SIGTERM, and stopped with an error when
the service cannot start (a model that fails to load, a store built with another model)."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from .app import create_app
from .service import MemoryService, ServerSettings

logger = logging.getLogger("lychee_memory.server")


def run_server(settings: ServerSettings, log_level: str = "info") -> int:
    """Serve until stopped; 0 after a clean shutdown, 2 when the service could not start."""
    import uvicorn

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s: %(message)s")
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID` prints every thread's stack to stderr: a stuck server says where
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    fatal: list[str] = []
    servers: list[uvicorn.Server] = []

    def stop_with(message: str) -> None:
        fatal.append(message)
        logger.error("cannot serve: %s", message)
        for server in servers:
            server.should_exit = True

    service = MemoryService(settings, on_fatal=stop_with)
    if not service.keys.enabled and settings.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "serving on %s without API keys: anyone who can reach this address can read and change every bank; "
            "pass --api-key or --keys-file",
            settings.host,
        )
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
    with _stop_signals_end_cleanly(server):
        server.run()
    code = 0
    if fatal:
        print(f"lychee: error: {fatal[0]}", file=sys.stderr)
        code = 2
    if service.still_working():
        # A thread still in torch (a model loading, an ingest that did not stop in time) makes a normal interpreter
        # exit abort in C++ ("terminate called without an active exception"): leave without finalizing instead.
        # Nothing is lost: the store writes a bank's manifest last, and a restart settles the job's record.
        logger.warning("leaving with a thread still in the model: its work is abandoned")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


@contextlib.contextmanager
def _stop_signals_end_cleanly(server: Any) -> Iterator[None]:
    """A SIGTERM or SIGINT that uvicorn turned into a graceful shutdown ends the process with 0.

    uvicorn re-raises the signal that stopped it once it has shut down, into the handler it found when it started:
    without this, Python's defaults, so a clean shutdown by SIGTERM died of the signal (exit status -15) and one by
    Ctrl-C raised KeyboardInterrupt. Here that handler asks the server to stop (which it is already doing, or, for
    a signal that came before uvicorn listened for signals, will do); the previous handlers return afterwards.
    """
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return
    stopping = (signal.SIGINT, signal.SIGTERM)

    def stop(number: int, frame: Any) -> None:
        server.should_exit = True

    previous = {number: signal.signal(number, stop) for number in stopping}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
