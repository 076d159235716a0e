"""``lychee train compressor|gate|rl``: the trainers' command lines.

Each trainer's flags are read from its config model (``CompressorTrainingConfig``, ``GateTrainingConfig``,
``RLTrainingConfig``): type, choices, default and help are the model's, so the two cannot drift apart. The config
models live beside their trainers, which import torch: a trainer's flags are added when its command is parsed or its
help shown (``DeferredParser``), so building the rest of the command line imports neither.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..config import DtypeName
from ..errors import LycheeError
from .fields import add_field_flags, field_values

# What the command line says differently from the config models (the env fallback, raw JSON, the dtype names).
_SPELLINGS = {"ratios": "ratio", "init_weights": "init"}
_OVERRIDES: dict[str, dict[str, Any]] = {
    "data": {"help": "shared HotpotQA/SQuAD directory (default $LYCHEE_DATA_DIR)"},
    "dtype": {"choices": list(typing.get_args(DtypeName))},
    "per_family": {"type": str, "metavar": "JSON"},  # read by _training_config
}
_PER_FAMILY_HELP = """{description} as JSON, e.g. '{{"needle": 80, "squad": 0}}'"""
_GATE_HELP = {"per_family": _PER_FAMILY_HELP}
_RL_HELP = {
    "per_family": _PER_FAMILY_HELP,
    "rank": "LoRA rank (attention and MLP projections)",
    "clip": "PPO clip of the policy ratio",
    "train_compressor": "{description} (needs --compressor-weights)",
}
_COMPRESSOR_FLAGS = (
    "model",
    "ratios",
    "rank",
    "chunk_tokens",
    "steps",
    "learning_rate",
    "eval_every",
    "eval_samples",
    "train_samples",
    "seed",
    "init_weights",
    "data",
    "device",
    "dtype",
    "gradient_checkpointing",
)
_GATE_FLAGS = (
    "model",
    "data",
    "rank",
    "steps",
    "batch_size",
    "learning_rate",
    "loss",
    "eval_every",
    "eval_states",
    "read_budget",
    "document_tokens",
    "per_family",
    "seed",
    "device",
    "dtype",
)
_RL_FLAGS = (
    "model",
    "data",
    "per_family",
    "document_tokens",
    "max_memory_tokens",
    "max_answer_tokens",
    "steps",
    "group",
    "learning_rate",
    "temperature",
    "epochs",
    "reward",
    "kl",
    "clip",
    "rank",
    "eval_every",
    "eval_questions",
    "compressor_weights",
    "chunk_tokens",
    "train_reasoner",
    "train_compressor",
    "seed",
    "device",
    "dtype",
)


def _training_config(model: type[BaseModel], args: argparse.Namespace, dests: Mapping[str, str]) -> Any:
    """The trainer's config from its flags; ``--data`` falls back to $LYCHEE_DATA_DIR, ``--per-family`` is JSON."""
    values = field_values(args, dests)
    values["data"] = values["data"] or os.environ.get("LYCHEE_DATA_DIR")
    try:
        if "per_family" in values:
            values["per_family"] = json.loads(values["per_family"]) if values["per_family"] else None
        return model(**values)
    except ValueError as error:  # a pydantic ValidationError or malformed --per-family JSON
        raise LycheeError(f"bad training settings: {error}") from None


def _command_train_compressor(args: argparse.Namespace, dests: Mapping[str, str]) -> int:
    from ..training.compressor import CompressorTrainingConfig, train_compressor

    config = _training_config(CompressorTrainingConfig, args, dests)
    summary = train_compressor(config, args.out, show_progress=not args.no_progress)
    print(json.dumps({key: value for key, value in summary.items() if key != "evaluations"}, indent=2))
    print(f"use it with: --compressor-weights {summary['weights']}")
    return 0


def _command_train_gate(args: argparse.Namespace, dests: Mapping[str, str]) -> int:
    from ..training.gate import GateTrainingConfig, train_gate

    config = _training_config(GateTrainingConfig, args, dests)
    summary = train_gate(config, args.out, show_progress=not args.no_progress)
    print("| rule | threshold | held-out precision | recall | F1 | hotpot F1 | needle F1 | squad F1 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in summary["comparison"].items():
        heldout = row["heldout"]
        by_source = [f"{heldout[s]['f1']:.3f}" if s in heldout else "-" for s in ("hotpot", "needle", "squad")]
        print(
            f"| {name} | {row['threshold']:.3f} | {heldout['all']['precision']:.3f} | {heldout['all']['recall']:.3f} "
            f"| {heldout['all']['f1']:.3f} | " + " | ".join(by_source) + " |"
        )
    print(f"\nweights: {summary['weights']} ({summary['bytes']:,} bytes, sha256 {summary['sha256'][:16]})")
    print(f"use it with: --gate trained --gate-weights {summary['weights']}")
    return 0


def _command_train_rl(args: argparse.Namespace, dests: Mapping[str, str]) -> int:
    from ..training.rl_run import RLTrainingConfig, train_rl

    config = _training_config(RLTrainingConfig, args, dests)
    summary = train_rl(config, args.out, show_progress=not args.no_progress)
    if summary["rank"] != 0:  # under torchrun, rank 0 reports
        return 0
    before, after = summary["before"]["all"], summary["after"]["all"]
    print(
        f"held-out sub_em {before['sub_em']:.3f} -> {after['sub_em']:.3f}, F1 {before['f1']:.3f} -> {after['f1']:.3f}, "
        f"copying failures {before['copy_failures']:.0f} -> {after['copy_failures']:.0f} (n={after['n']})"
    )
    print(
        f"{summary['seconds_per_step']} s per step ({summary['rollout_seconds_per_step']} rollout, "
        f"{summary['update_seconds_per_step']} update), peak memory {summary['peak_memory_gib']} GiB"
    )
    print(f"use it with: --reasoner-weights {summary['adapter']}")
    if summary["compressor"]:
        print(f"and the jointly trained compressor: --compressor learned --compressor-weights {summary['compressor']}")
    return 0


class DeferredParser(argparse.ArgumentParser):
    """A command's parser whose arguments ``populate`` adds the first time it parses or renders help or usage, so a
    command whose flags come from a heavy module costs nothing until it is the command run (or asked about)."""

    def __init__(self, *args: Any, populate: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.populate = populate

    def ensure_populated(self) -> None:
        """Add the deferred arguments once."""
        populate, self.populate = self.populate, None
        if populate is not None:
            populate(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self.ensure_populated()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.ensure_populated()
        return super().format_usage()

    def format_help(self) -> str:
        self.ensure_populated()
        return super().format_help()


def _add_trainer(
    kinds: Any,
    name: str,
    help_text: str,
    model: str,
    flags: tuple[str, ...],
    handler: Any,
    helps: Mapping[str, str] | None = None,
) -> argparse.ArgumentParser:
    """Register ``lychee train NAME``; ``model`` ("module:Class" under ``lychee_memory.training``) is imported and
    its flags added only when the command is parsed or its help shown."""

    def populate(parser: argparse.ArgumentParser) -> None:
        module, _, class_name = model.partition(":")
        config: type[BaseModel] = getattr(importlib.import_module(f"..training.{module}", __package__), class_name)
        parser.add_argument("--out", type=Path, required=True, help="output directory (resumes a run found there)")
        dests = add_field_flags(parser, config, flags, spellings=_SPELLINGS, helps=helps or {}, overrides=_OVERRIDES)
        parser.add_argument("--no-progress", action="store_true")
        parser.set_defaults(handler=lambda args: handler(args, dests))

    return kinds.add_parser(name, help=help_text, populate=populate)


def add_train_commands(commands: Any) -> None:
    """``lychee train compressor``, ``lychee train gate`` and ``lychee train rl``."""
    train = commands.add_parser("train", help="train a learned part of the method")
    kinds = train.add_subparsers(dest="train_command", required=True, parser_class=DeferredParser)
    _add_trainer(
        kinds,
        "compressor",
        "distil raw-KV reads into learned memory slots (resumable; writes weights, curve PNG)",
        "compressor:CompressorTrainingConfig",
        _COMPRESSOR_FLAGS,
        _command_train_compressor,
    )
    _add_trainer(
        kinds,
        "gate",
        "train the gate as a LoRA classifier over (question, memory, block) states (resumable; writes the adapter "
        "with its calibrated threshold, a curve PNG, and a comparison with the untrained rules)",
        "gate:GateTrainingConfig",
        _GATE_FLAGS,
        _command_train_gate,
        _GATE_HELP,
    )
    _add_trainer(
        kinds,
        "rl",
        "train the reasoner as a LoRA adapter with GRPO over whole trajectories (memory updates and answer) on the "
        "answer reward (resumable; writes the adapter, a curve PNG and summary.json)",
        "rl_run:RLTrainingConfig",
        _RL_FLAGS,
        _command_train_rl,
        _RL_HELP,
    )
