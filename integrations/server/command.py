"""``lychee serve``: its command line (registered by the ``lychee_memory.cli`` package).

Importing this module needs nothing of the server extra, so ``lychee --help`` works without it; running the
command imports FastAPI and uvicorn, and says how to install them when they are missing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lychee_memory.errors import LycheeError

OptionsOf = Callable[[argparse.Namespace], dict[str, Any]]
ConfigOf = Callable[[argparse.Namespace], Any]


def _serve(args: argparse.Namespace, engine_options: OptionsOf, base_config: ConfigOf) -> int:
    try:
        from . import ServerSettings, run_server
    except ImportError as error:
        raise LycheeError(
            f"lychee serve needs the server extra ({error.name or error} is missing): pip install 'lychee-memory[server]'"
        ) from None
    from pydantic import ValidationError

    options = engine_options(args)
    options.setdefault("show_progress", False)
    try:
        settings = ServerSettings(
            store=args.store,
            host=args.host,
            port=args.port,
            api_keys=args.api_key or [],
            keys_file=args.keys_file,
            max_document_bytes=args.max_document_bytes,
            max_request_bytes=args.max_request_bytes,
            batch_window_ms=args.batch_window_ms,
            max_batch=args.max_batch,
            recompress=args.recompress,
            shutdown_timeout=args.shutdown_timeout,
            engine=options,
            engine_config=base_config(args),
        )
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise LycheeError(f"invalid server option: {problems}") from None
    return run_server(settings, log_level=args.log_level)


def add_serve_command(
    commands: Any,
    add_engine_options: Callable[[argparse.ArgumentParser], None],
    engine_options: OptionsOf,
    base_config: ConfigOf,
) -> None:
    """Register ``lychee serve`` with the CLI's engine options (``--model``, ``--chunk-tokens``, ...)."""
    serve = commands.add_parser(
        "serve", help="HTTP memory service: banks, ingest jobs, query, retrieve, OpenAI-compatible chat, metrics"
    )
    serve.add_argument(
        "--store",
        default=None,
        help="store directory, or URL such as s3://bucket/prefix?manifests=postgresql://host/db (default store)",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--api-key", action="append", default=None, help="require 'Authorization: Bearer KEY' (repeatable; any bank)"
    )
    serve.add_argument(
        "--keys-file", type=Path, default=None, help='JSON {"KEY": ["bank-prefix", ...]}: each key reaches its banks'
    )
    serve.add_argument("--max-document-bytes", type=int, default=8 * 1024 * 1024, help="largest document (413 above)")
    serve.add_argument("--max-request-bytes", type=int, default=64 * 1024 * 1024, help="largest request body")
    serve.add_argument(
        "--batch-window-ms", type=float, default=5.0, help="how long a question waits to share a batched scan"
    )
    serve.add_argument("--max-batch", type=int, default=16, help="questions answered by one batched scan")
    serve.add_argument(
        "--recompress", action="store_true", help="rebuild banks another model or other settings built (else refuse)"
    )
    serve.add_argument(
        "--shutdown-timeout", type=float, default=60.0, help="seconds a running ingest may take to finish on shutdown"
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    add_engine_options(serve)
    serve.set_defaults(handler=lambda args: _serve(args, engine_options, base_config))
