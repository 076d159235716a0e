"""``lychee train ...``: the trainers' command lines (registered by ``cli.py``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..config import EMBEDDED_DEFAULT
from ..errors import LycheeError


def _command_train_compressor(args: argparse.Namespace) -> int:
    from .compressor import CompressorTrainingConfig, train_compressor

    try:
        config = CompressorTrainingConfig(
            model=args.model,
            ratios=args.ratio,
            rank=args.rank,
            chunk_tokens=args.chunk_tokens,
            steps=args.steps,
            learning_rate=args.learning_rate,
            eval_every=args.eval_every,
            eval_samples=args.eval_samples,
            train_samples=args.train_samples,
            seed=args.seed,
            init_weights=args.init,
            data=args.data or os.environ.get("LYCHEE_DATA_DIR"),
            device=args.device,
            dtype=args.dtype,
            gradient_checkpointing=args.gradient_checkpointing,
        )
    except ValueError as error:
        raise LycheeError(f"bad training settings: {error}") from None
    summary = train_compressor(config, args.out, show_progress=not args.no_progress)
    print(json.dumps({key: value for key, value in summary.items() if key != "evaluations"}, indent=2))
    print(f"use it with: --compressor-weights {summary['weights']}")
    return 0


def _command_train_gate(args: argparse.Namespace) -> int:
    from .gate import GateTrainingConfig, train_gate

    try:
        config = GateTrainingConfig(
            model=args.model,
            data=args.data or os.environ.get("LYCHEE_DATA_DIR"),
            rank=args.rank,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            loss=args.loss,
            eval_every=args.eval_every,
            eval_states=args.eval_states,
            read_budget=args.read_budget,
            document_tokens=args.document_tokens,
            per_family=json.loads(args.per_family) if args.per_family else None,
            seed=args.seed,
            device=args.device,
            dtype=args.dtype,
        )
    except ValueError as error:  # a pydantic ValidationError or malformed --per-family JSON
        raise LycheeError(f"bad training settings: {error}") from None
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


def _command_train_rl(args: argparse.Namespace) -> int:
    from .rl_run import RLTrainingConfig, train_rl

    try:
        config = RLTrainingConfig(
            model=args.model,
            data=args.data or os.environ.get("LYCHEE_DATA_DIR"),
            per_family=json.loads(args.per_family) if args.per_family else None,
            document_tokens=args.document_tokens,
            steps=args.steps,
            group=args.group,
            learning_rate=args.learning_rate,
            temperature=args.temperature,
            epochs=args.epochs,
            reward=args.reward,
            kl=args.kl,
            clip=args.clip,
            rank=args.rank,
            eval_every=args.eval_every,
            eval_questions=args.eval_questions,
            compressor_weights=args.compressor_weights,
            chunk_tokens=args.chunk_tokens,
            train_reasoner=args.train_reasoner,
            train_compressor=args.train_compressor,
            seed=args.seed,
            device=args.device,
            dtype=args.dtype,
        )
    except ValueError as error:  # a pydantic ValidationError or malformed --per-family JSON
        raise LycheeError(f"bad training settings: {error}") from None
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


def add_train_commands(commands) -> None:
    """``lychee train compressor``, ``lychee train gate`` and ``lychee train rl``."""
    train = commands.add_parser("train", help="train a learned part of the method")
    kinds = train.add_subparsers(dest="train_command", required=True)

    compressor = kinds.add_parser(
        "compressor", help="distil raw-KV reads into learned memory slots (resumable; writes weights, curve PNG)"
    )
    compressor.add_argument("--out", type=Path, required=True, help="output directory (resumes a run found there)")
    compressor.add_argument("--model", default=EMBEDDED_DEFAULT, help="the frozen backbone")
    compressor.add_argument("--ratio", type=int, nargs="+", default=[4], help="ratios to train (one drawn per step)")
    compressor.add_argument("--rank", type=int, default=32, help="rank of the memory q/k/v deltas")
    compressor.add_argument("--chunk-tokens", type=int, nargs="+", default=[1024], help="training chunk lengths")
    compressor.add_argument("--steps", type=int, default=400)
    compressor.add_argument("--learning-rate", type=float, default=2e-3)
    compressor.add_argument("--eval-every", type=int, default=50)
    compressor.add_argument("--eval-samples", type=int, default=12)
    compressor.add_argument("--train-samples", type=int, default=2000)
    compressor.add_argument("--seed", type=int, default=0)
    compressor.add_argument("--init", default=None, help="start from a weights file (e.g. the 4x one for 8x)")
    compressor.add_argument("--data", default=None, help="shared HotpotQA/SQuAD directory (default $LYCHEE_DATA_DIR)")
    compressor.add_argument("--device", default="auto")
    compressor.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    compressor.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None, help="default: on GPUs"
    )
    compressor.add_argument("--no-progress", action="store_true")
    compressor.set_defaults(handler=_command_train_compressor)

    gate = kinds.add_parser(
        "gate",
        help="train the gate as a LoRA classifier over (question, memory, block) states (resumable; writes the "
        "adapter with its calibrated threshold, a curve PNG, and a comparison with the untrained rules)",
    )
    gate.add_argument("--out", type=Path, required=True, help="output directory (resumes a run found there)")
    gate.add_argument("--model", default=EMBEDDED_DEFAULT, help="the frozen backbone")
    gate.add_argument("--data", default=None, help="shared HotpotQA/SQuAD directory (default $LYCHEE_DATA_DIR)")
    gate.add_argument("--rank", type=int, default=8, help="LoRA rank on q/k/v/o")
    gate.add_argument("--steps", type=int, default=300)
    gate.add_argument("--batch-size", type=int, default=8, help="states per step, half relevant")
    gate.add_argument("--learning-rate", type=float, default=5e-4)
    gate.add_argument("--loss", choices=["bce", "focal"], default="bce")
    gate.add_argument("--eval-every", type=int, default=50)
    gate.add_argument("--eval-states", type=int, default=240, help="held-out states scored at each evaluation")
    gate.add_argument("--read-budget", type=float, default=1.0, help="false reads per question allowed at calibration")
    gate.add_argument("--document-tokens", type=int, default=1500, help="tokens of each example's text")
    gate.add_argument(
        "--per-family", default=None, help='examples per family as JSON, e.g. \'{"squad": 40, "needle": 30}\''
    )
    gate.add_argument("--seed", type=int, default=0)
    gate.add_argument("--device", default="auto")
    gate.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    gate.add_argument("--no-progress", action="store_true")
    gate.set_defaults(handler=_command_train_gate)

    rl = kinds.add_parser(
        "rl",
        help="train the reasoner as a LoRA adapter with GRPO over whole trajectories (memory updates and answer) "
        "on the answer reward (resumable; writes the adapter, a curve PNG and summary.json)",
    )
    rl.add_argument("--out", type=Path, required=True, help="output directory (resumes a run found there)")
    rl.add_argument("--model", default=EMBEDDED_DEFAULT, help="the frozen backbone")
    rl.add_argument("--data", default=None, help="shared HotpotQA/SQuAD directory (default $LYCHEE_DATA_DIR)")
    rl.add_argument(
        "--per-family", default=None, help='questions per family as JSON, e.g. \'{"needle": 80, "squad": 0}\''
    )
    rl.add_argument("--document-tokens", type=int, default=1500, help="tokens of each training document")
    rl.add_argument("--steps", type=int, default=120, help="rollout groups (one question each)")
    rl.add_argument("--group", type=int, default=8, help="trajectories sampled per question")
    rl.add_argument("--learning-rate", type=float, default=3e-5)
    rl.add_argument("--temperature", type=float, default=0.8, help="rollout sampling temperature")
    rl.add_argument("--epochs", type=int, default=1, help="updates per rollout group")
    rl.add_argument("--reward", choices=["sub_em", "em", "f1"], default="sub_em")
    rl.add_argument("--kl", type=float, default=0.0, help="weight of the KL to the frozen backbone")
    rl.add_argument("--clip", type=float, default=0.2, help="PPO clip of the policy ratio")
    rl.add_argument("--rank", type=int, default=8, help="LoRA rank (attention and MLP projections)")
    rl.add_argument("--eval-every", type=int, default=20)
    rl.add_argument("--eval-questions", type=int, default=24, help="held-out questions at each evaluation")
    rl.add_argument(
        "--compressor-weights", default=None, help="a learned compressor (lychee train compressor) the banks use"
    )
    rl.add_argument("--chunk-tokens", type=int, default=None, help="tokens per block (default: the model's)")
    rl.add_argument(
        "--train-reasoner", action=argparse.BooleanOptionalAction, default=True, help="train the reasoner's LoRA"
    )
    rl.add_argument(
        "--train-compressor",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also train the learned compressor through the KV of the blocks read (needs --compressor-weights)",
    )
    rl.add_argument("--seed", type=int, default=0)
    rl.add_argument("--device", default="auto")
    rl.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    rl.add_argument("--no-progress", action="store_true")
    rl.set_defaults(handler=_command_train_rl)
