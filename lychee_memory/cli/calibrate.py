"""``lychee probe heads`` and ``lychee calibrate``: measure a model's gate heads, thresholds and read mode."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from .options import add_engine_options, command_line, evaluation_options

# Flags that change where results go or how they show, not what is measured: left out of the recorded command.
_NOT_RECORDED = ("out", "gate_out", "no_progress", "config")


def _command_probe(args: argparse.Namespace) -> int:
    from ..eval.head_probe import probe_heads
    from ..eval.tasks import build_samples, parse_lengths

    model, options = evaluation_options(args)
    options["compressor"] = "none"  # the probe reads every layer's keys
    from ..engine import LycheeMemory

    engine = LycheeMemory.from_pretrained(model, **options)
    tokenizer = engine.loaded.tokenizer
    probe = [
        sample
        for length in parse_lengths(args.lengths)
        for sample in build_samples("needle", tokenizer, length, args.n, args.data, args.sample_seed)
    ]
    heldout = [
        sample
        for length in parse_lengths(args.heldout_lengths)
        for sample in build_samples("needle", tokenizer, length, args.heldout_n, args.data, args.sample_seed + 1)
    ]
    result = probe_heads(engine, probe, heldout, count=args.count, show_progress=not args.no_progress)
    data = {"model": engine.loaded.resolved.spec, "probe_samples": len(probe), **result.to_dict()}
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2), encoding="utf-8")
    print("| layer | head | mean reciprocal rank of the fact's block |\n|---|---|---|")
    for row in data["top_heads"][: max(args.count, 12)]:
        print(f"| {row['layer']} | {row['head']} | {row['mrr']:.3f} |")
    print(f"\nchosen heads: {data['chosen_heads']}")
    print(f"rank of the fact's block with them, probe samples: {result.probe_ranks}")
    print(f"held-out samples (blocks per bank {result.heldout_blocks}): {result.heldout_ranks}")
    print(f"use them with: --prefilter-heads '{json.dumps(data['chosen_heads'])}' or gate.prefilter_heads in a config")
    return 0


def _command_calibrate(args: argparse.Namespace, actions: list[argparse.Action]) -> int:
    from ..calibration import CalibrationSettings, calibrate, format_table, merge_earlier
    from ..engine import LycheeMemory
    from ..eval.tasks import parse_lengths
    from ..gate.adapter import rethresholded_gate_file
    from ..presets import check_preset_path, default_preset_path, where_preset_applies, write_preset_file

    model, options = evaluation_options(args)
    families = [name.strip() for item in args.families for name in item.split(",") if name.strip()]
    settings = CalibrationSettings(
        lengths=tuple(parse_lengths(args.lengths)),
        n=args.n,
        heldout_n=args.heldout_n,
        families=tuple(families),
        rules=tuple(args.rules) if args.rules else None,
        read_budget=args.read_budget,
        target_recall=args.target_recall,
        data=args.data,
        seed=args.sample_seed,
        head_count=args.head_count,
        skip_heads=args.skip_heads,
        skip_read_mode=args.skip_read_mode,
        skip_memory=args.skip_memory,
        read_questions=args.read_questions,
        end_to_end=args.end_to_end,
        show_progress=not args.no_progress,
    )
    out = check_preset_path(args.out) if args.out else None  # before the model loads and anything is measured
    gate_out = _check_gate_out(args)
    engine = LycheeMemory.from_pretrained(model, **options)
    if gate_out is not None and "trained" not in (settings.rules or (engine.rule.name,)):
        raise ConfigurationError(f"--gate-out: the trained gate is not among the rules calibrated ({engine.rule.name})")
    target = out or check_preset_path(default_preset_path(engine.loaded.resolved.spec, engine.loaded.fingerprint()))
    calibration = calibrate(
        engine, settings, command=command_line(["lychee", "calibrate"], args, actions, skip=_NOT_RECORDED)
    )
    preset, kept = merge_earlier(calibration.preset, target)
    written = write_preset_file(preset, target)
    print(format_table(calibration))
    print(f"\npreset written to {written}" + (f" (kept its earlier {', '.join(kept)})" if kept else ""))
    print(where_preset_applies(preset, written))
    if gate_out is not None:
        (trained,) = (result for result in calibration.rules if result.rule == "trained")
        gate_file = rethresholded_gate_file(
            engine.config.gate.weights, gate_out, trained.chosen.threshold, calibration.preset.evidence
        )
        print(f"trained gate with threshold {trained.chosen.threshold:.4f} written to {gate_file} (use --gate-weights)")
    return 0


def _check_gate_out(args: argparse.Namespace) -> Path | None:
    """``--gate-out``, refused before anything loads when it cannot be written or cannot apply."""
    if args.gate_out is None:
        return None
    path = Path(args.gate_out).expanduser()
    if path.suffix != ".safetensors":
        raise ConfigurationError(f"--gate-out {path} must end in .safetensors")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigurationError(f"--gate-out {path}: {path.parent} is not a directory")
    if args.rules and "trained" not in args.rules:
        raise ConfigurationError("--gate-out writes the trained gate's file: add trained to --rules")
    if not args.rules and args.gate not in (None, "auto", "trained"):
        raise ConfigurationError(f"--gate-out writes the trained gate's file, but the gate is {args.gate}")
    if getattr(args, "gate_weights", None) is not None:
        from ..gate.adapter import refuse_overwriting

        refuse_overwriting(args.gate_weights, path)
    return path


def add_probe_command(commands: Any) -> None:
    """Register ``lychee probe``."""
    probe = commands.add_parser("probe", help="measure a model: which attention heads the gate's key index should use")
    probe_kinds = probe.add_subparsers(dest="probe_command", required=True)
    heads = probe_kinds.add_parser("heads", help="rank every head by how well its keys find planted facts")
    heads.add_argument("--lengths", default="14k", help="haystack lengths of the probe samples (default 14k)")
    heads.add_argument("--n", type=int, default=6, help="probe samples per length (default 6)")
    heads.add_argument("--heldout-lengths", default="28k", help="lengths of the held-out check (default 28k)")
    heads.add_argument("--heldout-n", type=int, default=6, help="held-out samples per length (default 6)")
    heads.add_argument("--count", type=int, default=8, help="heads to choose (default 8)")
    heads.add_argument("--data", default=None, help="dataset dir for the haystack (default: the generated one)")
    heads.add_argument("--sample-seed", type=int, default=0)
    heads.add_argument("--json", default=None, help="write the full result here")
    add_engine_options(heads)
    heads.set_defaults(handler=_command_probe)


def add_calibrate_command(commands: Any) -> None:
    """Register ``lychee calibrate``."""
    calibrate = commands.add_parser(
        "calibrate", help="measure a model's gate thresholds, prefilter heads and read mode; write them as its preset"
    )
    actions: list[argparse.Action] = []  # replayed as the command line recorded in the preset

    def add(*flags: str, **options: Any) -> None:
        actions.append(calibrate.add_argument(*flags, **options))

    add("--lengths", default="7k", help="haystack lengths of the samples (default 7k)")
    add("--n", type=int, default=6, help="probe samples per family and length (default 6)")
    add("--heldout-n", type=int, default=4, help="held-out samples (next seed) per family and length (default 4)")
    add(
        "--families",
        nargs="+",
        default=["needle,needle-multikey"],
        help="needle families (default needle,needle-multikey)",
    )
    add("--rules", nargs="+", default=None, metavar="RULE", help="gate rules to calibrate (default: the engine's rule)")
    add(
        "--read-budget",
        type=float,
        default=1.0,
        help="mean other blocks per question a threshold may let through (default 1.0)",
    )
    add("--target-recall", type=float, default=None, help="instead: the fewest false reads reaching this fact recall")
    add("--head-count", type=int, default=8, help="prefilter heads to choose (default 8)")
    add("--skip-heads", action="store_true", help="do not probe the prefilter heads")
    add("--skip-read-mode", action="store_true", help="do not compare the kv and text read modes")
    add("--skip-memory", action="store_true", help="do not compare the memory strategies (notes, excerpts)")
    add(
        "--read-questions",
        type=int,
        default=4,
        help="questions answered in each read mode and each memory strategy (default 4)",
    )
    add(
        "--end-to-end",
        type=int,
        default=0,
        help="probe questions answered at each candidate threshold, the threshold then chosen by answers and blocks "
        "read (default 0: by block recall alone)",
    )
    add("--out", default=None, help="preset file to write (default: the user presets dir, which the engine reads)")
    add(
        "--gate-out",
        default=None,
        help="with the trained gate: write its file again here with the calibrated threshold (the source is kept)",
    )
    add("--data", default=None, help="dataset dir for a SQuAD haystack (default: the generated one)")
    add("--sample-seed", type=int, default=0, help="seed of the probe samples (held out: +1)")
    actions += add_engine_options(calibrate)
    calibrate.set_defaults(handler=lambda args: _command_calibrate(args, actions))
