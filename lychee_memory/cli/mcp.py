"""``lychee mcp``: the memory tools over MCP (stdio by default, streamable HTTP with ``--transport http``).

Its store, address and key flags are ``lychee serve``'s, read from ``ServerSettings``; registering the command
needs nothing of the mcp extra, running it says how to install the extra when it is missing.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ..errors import LycheeError
from ..integrations.server.settings import ServerSettings
from .fields import add_field_flags, field_values
from .options import add_engine_options, base_config, engine_options

MCP_FIELDS = ["store", "host", "port", "api_keys", "keys_file"]
TRANSPORTS = ["stdio", "http"]
DEFAULT_PORT = 8765  # not lychee serve's 8000: both may run beside each other
LOG_LEVELS = ["debug", "info", "warning", "error"]


def _mcp(args: argparse.Namespace, dests: Mapping[str, str]) -> int:
    try:
        from ..integrations.mcp.runner import run_mcp
    except ImportError as error:
        raise LycheeError(
            f"lychee mcp needs the mcp extra ({error.name or error} is missing): pip install 'lychee-memory[mcp]'"
        ) from None
    from pydantic import ValidationError

    options = engine_options(args)
    options.setdefault("show_progress", False)  # progress goes to the client as notifications, never to a terminal
    values = field_values(args, dests)
    try:
        settings = ServerSettings(
            **{**values, "api_keys": values["api_keys"] or []}, engine=options, engine_config=base_config(args)
        )
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise LycheeError(f"invalid mcp option: {problems}") from None
    return run_mcp(settings, args.transport, log_level=args.log_level)


def add_mcp_command(commands: Any) -> None:
    """Register ``lychee mcp``: ``--transport``, the store and key flags of ``lychee serve``, and the engine options."""
    mcp = commands.add_parser(
        "mcp", help="MCP server for agents: remember, recall, ask, forget, list_banks; banks as resources"
    )
    mcp.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="stdio",
        help="stdio (default: the client starts this command) or http (streamable HTTP on --host/--port, path /mcp)",
    )
    dests = add_field_flags(
        mcp,
        ServerSettings,
        MCP_FIELDS,
        spellings={"api_keys": "api_key"},
        helps={
            "api_keys": "{description} (repeatable; over stdio the client's key comes from LYCHEE_API_KEY)",
            "port": f"{{description}}, with --transport http (default {DEFAULT_PORT})",
        },
        overrides={
            "api_keys": {"action": "append", "nargs": None, "default": None},
            "port": {"default": DEFAULT_PORT},
        },
    )
    mcp.add_argument("--log-level", choices=LOG_LEVELS, default="warning", help="log level (logs go to stderr)")
    add_engine_options(mcp)
    mcp.set_defaults(handler=lambda args: _mcp(args, dests))
