"""The ``lychee`` command: ask questions over documents, keep them in stores, measure, train and serve.

    lychee ask PATH... --question Q [--json]
    lychee ask --store DIR --bank NAME --question Q [--json]
    lychee ingest PATH... [--store DIR --bank NAME] [--ray [ADDRESS]]
    lychee store ls|du|rm|mv|gc|verify [--repair] [--store DIR]
    lychee eval ruler-hqa|needle|needle-multikey|needle-twohop --lengths 7k,14k [--n N] [--methods ...]
    lychee bench [--quick] [--lengths 7k,28k] [--methods ...] [--json PATH]
    lychee report RUN_DIR... [--out DIR]
    lychee probe heads [--lengths 14k] [--count 8] [--json PATH]
    lychee calibrate [--lengths 7k] [--rules RULE...] [--out PRESET]
    lychee train compressor|gate|rl --out DIR [--model SPEC] [...]
    lychee serve [--store DIR] [--host 127.0.0.1] [--port 8000] [--api-key KEY]... [engine options]
    lychee mcp [--store DIR] [--transport stdio|http] [--port 8765] [--api-key KEY]... [engine options]
    lychee info [--no-load]

Every command that builds an engine takes the engine options of ``options.py``, derived from ``EngineConfig``.
Errors the library raises on purpose are printed as one line and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import LycheeError
from .ask import add_ask_command, add_ingest_command
from .calibrate import add_calibrate_command, add_probe_command
from .evaluation import add_bench_command, add_eval_command, add_report_command
from .info import add_info_command
from .mcp import add_mcp_command
from .options import engine_options
from .serve import add_serve_command
from .store import EXIT_DAMAGED, add_store_command, recipe_for_settings
from .train import add_train_commands

__all__ = ["EXIT_DAMAGED", "EXIT_USAGE", "build_parser", "engine_options", "main", "recipe_for_settings"]

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, each command registered by the module of its group."""
    parser = argparse.ArgumentParser(
        prog="lychee", description="Question answering over long documents with compressed KV memory."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_ask_command(commands)
    add_ingest_command(commands)
    add_store_command(commands)
    add_eval_command(commands)
    add_bench_command(commands)
    add_probe_command(commands)
    add_calibrate_command(commands)
    add_train_commands(commands)
    add_report_command(commands)
    add_serve_command(commands)
    add_mcp_command(commands)
    add_info_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``lychee`` command; library errors become one line on stderr and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except LycheeError as error:
        print(f"lychee: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("lychee: interrupted", file=sys.stderr)
        return 130
