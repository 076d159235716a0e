"""``lychee serve``: its flags, choices and defaults come from ``ServerSettings`` (``integrations/server/settings.py``).

Registering the command needs nothing of the server extra, so ``lychee --help`` works without it; running it
imports FastAPI and uvicorn, and says how to install them when they are missing.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ..errors import LycheeError
from ..integrations.server.settings import ServerSettings
from .fields import add_field_flags, field_values
from .options import add_engine_options, base_config, engine_options

# The ServerSettings fields that are flags of ``lychee serve`` (``engine`` and ``engine_config`` come from the
# engine options, which every engine command shares).
SERVE_FIELDS = [name for name in ServerSettings.model_fields if name not in ("engine", "engine_config")]
LOG_LEVELS = ["debug", "info", "warning", "error"]


def _serve(args: argparse.Namespace, dests: Mapping[str, str]) -> int:
    try:
        from ..integrations.server.runner import run_server
    except ImportError as error:
        raise LycheeError(
            f"lychee serve needs the server extra ({error.name or error} is missing): pip install 'lychee-memory[server]'"
        ) from None
    from pydantic import ValidationError

    options = engine_options(args)
    options.setdefault("show_progress", False)
    values = field_values(args, dests)
    try:
        settings = ServerSettings(
            **{**values, "api_keys": values["api_keys"] or []}, engine=options, engine_config=base_config(args)
        )
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise LycheeError(f"invalid server option: {problems}") from None
    return run_server(settings, log_level=args.log_level)


def add_serve_command(commands: Any) -> None:
    """Register ``lychee serve``: one flag per ``ServerSettings`` field, ``--log-level``, and the engine options."""
    serve = commands.add_parser(
        "serve", help="HTTP memory service: banks, ingest jobs, query, retrieve, OpenAI-compatible chat, metrics"
    )
    dests = add_field_flags(
        serve,
        ServerSettings,
        SERVE_FIELDS,
        spellings={"api_keys": "api_key"},
        helps={"api_keys": "{description} (repeatable)"},
        overrides={
            "api_keys": {"action": "append", "nargs": None, "default": None},  # --api-key A --api-key B
            "recompress": {"action": "store_true"},
        },
    )
    serve.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="log level of the server and uvicorn (access lines at debug)",
    )
    add_engine_options(serve)
    serve.set_defaults(handler=lambda args: _serve(args, dests))
