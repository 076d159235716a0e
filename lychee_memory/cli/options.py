"""Options several commands share: the engine flags, derived from ``EngineConfig``, and ``--store``/``--bank``.

Each engine flag is an ``EngineConfig.from_kwargs`` option (``config.FLAT_OPTIONS`` or a section shortcut); its
type, choices, help and shown default are read from the pydantic field, so the command line cannot drift from the
config. A flag left out stays ``None`` and leaves the field to ``--config`` and the engine's per-model resolution.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic.fields import FieldInfo

from ..choices import DEFAULT_BLOCK_DTYPE, DEFAULT_INDEX_DTYPE
from ..config import FLAT_OPTIONS, NAME_SHORTCUTS, EngineConfig
from ..errors import LycheeError
from .fields import field_argument, field_help, flag_name

if TYPE_CHECKING:  # the engine and the store load torch: imported when a command runs
    from ..engine import LycheeMemory
    from ..store import MemoryStore

# The engine options offered as flags, in --help order, by their EngineConfig option name.
ENGINE_FLAGS = (
    "spec",
    "compressor",
    "compressor_weights",
    "ratio",
    "chunk_tokens",
    "gate",
    "gate_weights",
    "threshold",
    "max_relevant_blocks",
    "fallback_blocks",
    "min_blocks",
    "prefilter",
    "candidates",
    "prefilter_heads",
    "read_mode",
    "reasoner_weights",
    "memory",
    "excerpt_read_tokens",
    "excerpt_total_tokens",
    "excerpt_answer_order",
    "excerpt_answer_share",
    "max_memory_tokens",
    "max_answer_tokens",
    "temperature",
    "seed",
    "device",
    "dtype",
    "attention",
)
# A flag is --OPTION with dashes for underscores, except these shorter spellings the command line has always had.
FLAG_SPELLINGS = {"spec": "model", "max_relevant_blocks": "max_blocks"}
# Help that says more on the command line than the field's description does.
FLAG_HELP = {"spec": "model spec: {description}"}


def flag_of(option: str) -> str:
    """The command-line flag of an engine option: ``max_relevant_blocks`` -> ``--max-blocks``."""
    return flag_name(option, FLAG_SPELLINGS)


def dest_of(option: str) -> str:
    """Where argparse stores an engine option's flag (``args.max_blocks``)."""
    return flag_of(option)[2:].replace("-", "_")


def config_field(option: str) -> FieldInfo:
    """The pydantic field an engine option sets (a section shortcut such as ``gate`` sets ``gate.rule``)."""
    section, name = FLAT_OPTIONS.get(option) or (option, NAME_SHORTCUTS[option])
    settings = EngineConfig.model_fields[section].annotation
    return settings.model_fields[name]  # type: ignore[union-attr]


def add_engine_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Add the engine flags to a command; returns their actions (``command_line`` replays them)."""
    group = parser.add_argument_group("engine")
    actions = []
    for option in ENGINE_FLAGS:
        field = config_field(option)
        help_text = field_help(field, FLAG_HELP.get(option, "{description}"))
        kwargs = {**field_argument(field), "default": None, "help": help_text}  # None: --config and the engine decide
        actions.append(group.add_argument(flag_of(option), dest=dest_of(option), **kwargs))
        if option == "spec":
            actions.append(
                group.add_argument(
                    "--config", type=Path, default=None, help="JSON file with an EngineConfig (flags below override it)"
                )
            )
    actions.append(group.add_argument("--no-progress", action="store_true", help="hide progress bars"))
    return actions


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine flags given, as ``EngineConfig.from_kwargs`` options (``--no-progress`` -> show_progress=False)."""
    options = {option: getattr(args, dest_of(option)) for option in ENGINE_FLAGS}
    options = {option: value for option, value in options.items() if value is not None}
    if args.no_progress:
        options["show_progress"] = False
    return options


def base_config(args: argparse.Namespace) -> EngineConfig | None:
    """The --config file's EngineConfig (None without one); engine flags override it."""
    if args.config is None:
        return None
    try:
        return EngineConfig.model_validate_json(args.config.read_text(encoding="utf-8"))
    except OSError as error:
        raise LycheeError(f"cannot read config file {str(args.config)!r}: {error.strerror or error}") from None
    except ValueError as error:
        raise LycheeError(f"config file {str(args.config)!r} is not a valid engine config: {error}") from None


def load_engine(args: argparse.Namespace) -> LycheeMemory:
    """The engine the command's flags (and --config) describe."""
    from ..engine import LycheeMemory

    return LycheeMemory.from_pretrained(config=base_config(args), **engine_options(args))


def evaluation_options(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    """(model spec, other engine options) for the commands that build engines per method; they read no --config."""
    if args.config is not None:
        raise LycheeError("--config is not read by eval and bench; give engine options as flags or per method")
    options = engine_options(args)
    options["show_progress"] = False
    return options.pop("spec", None), options


def command_line(
    words: Sequence[str], args: argparse.Namespace, actions: Iterable[argparse.Action], skip: Iterable[str] = ()
) -> str:
    """The command line that repeats ``args``: each of ``actions`` given a value, as the parser would read it back.

    Flags at their default are written too, so the line reproduces the run whatever later defaults become.
    """
    skipped = set(skip)
    out = list(words)
    for action in actions:
        value = getattr(args, action.dest)
        if not action.option_strings or action.dest in skipped or value is None or value is False:
            continue
        flag = action.option_strings[0]
        if value is True and action.nargs == 0:
            out.append(flag)
        elif isinstance(value, list) and action.nargs in ("+", "*"):
            out += [flag, *map(str, value)]
        else:
            out += [flag, json.dumps(value) if isinstance(value, (list, tuple)) else str(value)]
    return shlex.join(out)


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """--store and --bank: a persistent bank to reuse, create or extend."""
    group = parser.add_argument_group("persistent bank")
    group.add_argument("--store", default=None, help="store directory or URL (default: the user cache's store)")
    group.add_argument(
        "--bank",
        default=None,
        help="bank name in the store: reused, and created or extended (new blocks stored as "
        f"{DEFAULT_BLOCK_DTYPE} with an {DEFAULT_INDEX_DTYPE} gate index unless told otherwise)",
    )


def open_store(args: argparse.Namespace, *, create: bool, block_dtype: str = DEFAULT_BLOCK_DTYPE) -> MemoryStore:
    """The store named by --store (default store without it); commands that only read never create one."""
    from ..store import MemoryStore

    return MemoryStore(args.store, block_dtype=block_dtype, create=create)
