"""``lychee serve``: its command line (registered by the ``lychee_memory.cli`` package).

Importing this module needs nothing of the server extra, so ``lychee --help`` works without it; running the
command imports FastAPI and uvicorn, and says how to install them when they are missing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from lychee_memory.cli.fields import add_field_flags, field_values
from lychee_memory.errors import LycheeError

from .settings import ServerSettings

OptionsOf = Callable[[argparse.Namespace], dict[str, Any]]
ConfigOf = Callable[[argparse.Namespace], Any]

# The ServerSettings fields that are flags of ``lychee serve`` (``engine`` and ``engine_config`` come from the
# engine options, which every engine command shares).
SERVE_FIELDS = [name for name in ServerSettings.model_fields if name not in ("engine", "engine_config")]


def _serve(args: argparse.Namespace, dests: Mapping[str, str], engine_options: OptionsOf, base_config: ConfigOf) -> int:
    try:
        from .runner import run_server
    except ImportError as error:
        raise LycheeError(
            f"lychee serve needs the server extra ({error.name or error} is missing): pip install 'lychee-memory[server]'"
        ) from None
    from pydantic import ValidationError

    options = engine_options(args)
    options.setdefault("show_progress", False)
    try:
        values = field_values(args, dests)
        settings = ServerSettings(
            **{**values, "api_keys": values["api_keys"] or []},
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
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    add_engine_options(serve)
    serve.set_defaults(handler=lambda args: _serve(args, dests, engine_options, base_config))
