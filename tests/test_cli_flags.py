"""The compatibility net of the ``lychee`` command line: every command and flag it accepted when this list was written.

The lists below were printed by walking the parsers of ``cli``, ``training/commands.py`` (now ``cli/train.py``) and the server command
(issue 25). A refactor may add flags; each listed one must still parse with the same destination and default, and
each engine flag must still land in the same ``EngineConfig`` field. Regenerate nothing: edit a row only on purpose.
"""

from __future__ import annotations

import shlex
from functools import cache
from pathlib import Path

import pytest

from lychee_memory.cli import build_parser
from lychee_memory.config import EngineConfig

# (flag, destination, default, choices, sample arguments, parsed value[, (config field, value in EngineConfig)])
ENGINE_OPTIONS = [
    ("--model", "model", None, None, ["text"], "text", ("model.spec", "text")),
    ("--config", "config", None, None, ["some/path"], Path("some/path"), None),
    (
        "--compressor",
        "compressor",
        None,
        ("auto", "learned", "beacon", "attention", "key_norm", "none"),
        ["none"],
        "none",
        ("compressor.kind", "none"),
    ),
    ("--compressor-weights", "compressor_weights", None, None, ["text"], "text", ("model.compressor_weights", "text")),
    ("--ratio", "ratio", None, None, ["3"], 3, ("compressor.ratio", 3)),
    ("--chunk-tokens", "chunk_tokens", None, None, ["3"], 3, ("chunking.chunk_tokens", 3)),
    (
        "--gate",
        "gate",
        None,
        ("auto", "query_likelihood", "prompt", "trained", "all"),
        ["all"],
        "all",
        ("gate.rule", "all"),
    ),
    ("--gate-weights", "gate_weights", None, None, ["text"], "text", ("gate.weights", "text")),
    ("--threshold", "threshold", None, None, ["0.5"], 0.5, ("gate.threshold", 0.5)),
    ("--max-blocks", "max_blocks", None, None, ["3"], 3, ("gate.max_relevant_blocks", 3)),
    ("--prefilter", "prefilter", None, ("keys", "off"), ["off"], "off", ("gate.prefilter", "off")),
    ("--candidates", "candidates", None, None, ["3"], 3, ("gate.candidates", 3)),
    ("--prefilter-heads", "prefilter_heads", None, None, ["[[1, 2]]"], [(1, 2)], ("gate.prefilter_heads", [(1, 2)])),
    ("--read-mode", "read_mode", None, ("auto", "kv", "text"), ["text"], "text", ("reasoner.read_mode", "text")),
    ("--reasoner-weights", "reasoner_weights", None, None, ["text"], "text", ("reasoner.weights", "text")),
    ("--max-memory-tokens", "max_memory_tokens", None, None, ["3"], 3, ("reasoner.max_memory_tokens", 3)),
    ("--max-answer-tokens", "max_answer_tokens", None, None, ["3"], 3, ("reasoner.max_answer_tokens", 3)),
    ("--temperature", "temperature", None, None, ["0.5"], 0.5, ("reasoner.temperature", 0.5)),
    ("--seed", "seed", None, None, ["3"], 3, ("reasoner.seed", 3)),
    ("--device", "device", None, None, ["cpu"], "cpu", ("model.device", "cpu")),
    (
        "--dtype",
        "dtype",
        None,
        ("auto", "float32", "bfloat16", "float16"),
        ["float16"],
        "float16",
        ("model.dtype", "float16"),
    ),
    (
        "--attention",
        "attention",
        None,
        ("auto", "sdpa", "eager", "flash_attention_2", "triton"),
        ["triton"],
        "triton",
        ("model.attention", "triton"),
    ),
    ("--no-progress", "no_progress", False, None, [], True, ("show_progress", False)),
]
COMMANDS_WITH_ENGINE_OPTIONS = [
    ("ask",),
    ("ingest",),
    ("eval",),
    ("bench",),
    ("probe", "heads"),
    ("calibrate",),
    ("serve",),
    ("info",),
]
OPTIONS = {
    ("ask",): [
        ("--question", "question", None, None, ["text"], "text"),
        ("-q", "question", None, None, ["text"], "text"),
        ("--json", "json", False, None, [], True),
        ("--mode", "mode", "lychee", ("lychee", "memagent", "full-context"), ["full-context"], "full-context"),
        ("--scores", "scores", False, None, [], True),
        ("--show-text", "show_text", False, None, [], True),
        ("--show-memory", "show_memory", False, None, [], True),
        ("--store", "store", None, None, ["text"], "text"),
        ("--bank", "bank", None, None, ["text"], "text"),
        ("--recompress", "recompress", False, None, [], True),
    ],
    ("ingest",): [
        ("--json", "json", False, None, [], True),
        ("--store", "store", None, None, ["text"], "text"),
        ("--bank", "bank", None, None, ["text"], "text"),
        (
            "--block-dtype",
            "block_dtype",
            "k4v3",
            ("float32", "bfloat16", "float16", "int8", "int4", "int2", "k4v2", "k4v3", "none"),
            ["int8"],
            "int8",
        ),
        ("--recompress", "recompress", False, None, [], True),
        ("--ray", "ray", None, None, ["text"], "text"),
        ("--workers", "workers", 2, None, ["3"], 3),
        ("--cpus-per-worker", "cpus_per_worker", None, None, ["0.5"], 0.5),
        ("--gpus-per-worker", "gpus_per_worker", 0.0, None, ["0.5"], 0.5),
        ("--threads-per-worker", "threads_per_worker", 1, None, ["3"], 3),
    ],
    ("store", "ls"): [
        ("--store", "store", None, None, ["text"], "text"),
        ("--json", "json", False, None, [], True),
    ],
    ("store", "du"): [
        ("--store", "store", None, None, ["text"], "text"),
        ("--json", "json", False, None, [], True),
    ],
    ("store", "rm"): [
        ("--store", "store", None, None, ["text"], "text"),
        ("--json", "json", False, None, [], True),
    ],
    ("store", "mv"): [
        ("--store", "store", None, None, ["text"], "text"),
        ("--json", "json", False, None, [], True),
    ],
    ("store", "gc"): [
        ("--store", "store", None, None, ["text"], "text"),
        ("--json", "json", False, None, [], True),
    ],
    ("store", "verify"): [
        ("--store", "store", None, None, ["text"], "text"),
        ("--json", "json", False, None, [], True),
        ("--repair", "repair", False, None, [], True),
    ],
    ("eval",): [
        ("--lengths", "lengths", "7k", None, ["text"], "text"),
        ("--n", "n", 8, None, ["3"], 3),
        ("--methods", "methods", "lychee,memagent,full-context,rag", None, ["text"], "text"),
        ("--data", "data", None, None, ["text"], "text"),
        ("--out", "out", None, None, ["text"], "text"),
        ("--sample-seed", "sample_seed", 0, None, ["3"], 3),
    ],
    ("bench",): [
        ("--quick", "quick", False, None, [], True),
        ("--lengths", "lengths", None, None, ["text"], "text"),
        ("--methods", "methods", None, None, ["text"], "text"),
        (
            "--task",
            "task",
            "needle",
            ("needle", "needle-multikey", "needle-twohop", "ruler-hqa"),
            ["ruler-hqa"],
            "ruler-hqa",
        ),
        ("--n", "n", 1, None, ["3"], 3),
        ("--data", "data", None, None, ["text"], "text"),
        ("--json", "json", None, None, ["text"], "text"),
        ("--out", "out", None, None, ["text"], "text"),
        ("--sample-seed", "sample_seed", 0, None, ["3"], 3),
    ],
    ("probe", "heads"): [
        ("--lengths", "lengths", "14k", None, ["text"], "text"),
        ("--n", "n", 6, None, ["3"], 3),
        ("--heldout-lengths", "heldout_lengths", "28k", None, ["text"], "text"),
        ("--heldout-n", "heldout_n", 6, None, ["3"], 3),
        ("--count", "count", 8, None, ["3"], 3),
        ("--data", "data", None, None, ["text"], "text"),
        ("--sample-seed", "sample_seed", 0, None, ["3"], 3),
        ("--json", "json", None, None, ["text"], "text"),
    ],
    ("calibrate",): [
        ("--lengths", "lengths", "7k", None, ["text"], "text"),
        ("--n", "n", 6, None, ["3"], 3),
        ("--heldout-n", "heldout_n", 4, None, ["3"], 3),
        ("--families", "families", ["needle,needle-multikey"], None, ["text", "more"], ["text", "more"]),
        ("--rules", "rules", None, None, ["text", "more"], ["text", "more"]),
        ("--read-budget", "read_budget", 1.0, None, ["0.5"], 0.5),
        ("--target-recall", "target_recall", None, None, ["0.5"], 0.5),
        ("--head-count", "head_count", 8, None, ["3"], 3),
        ("--skip-heads", "skip_heads", False, None, [], True),
        ("--skip-read-mode", "skip_read_mode", False, None, [], True),
        ("--read-questions", "read_questions", 4, None, ["3"], 3),
        ("--out", "out", None, None, ["text"], "text"),
        ("--data", "data", None, None, ["text"], "text"),
        ("--sample-seed", "sample_seed", 0, None, ["3"], 3),
    ],
    ("train", "compressor"): [
        ("--out", "out", None, None, ["some/path"], Path("some/path")),
        ("--model", "model", "smollm2-135m", None, ["text"], "text"),
        ("--ratio", "ratio", [4], None, ["3", "5"], [3, 5]),
        ("--rank", "rank", 32, None, ["3"], 3),
        ("--chunk-tokens", "chunk_tokens", [1024], None, ["3", "5"], [3, 5]),
        ("--steps", "steps", 400, None, ["3"], 3),
        ("--learning-rate", "learning_rate", 0.002, None, ["0.5"], 0.5),
        ("--eval-every", "eval_every", 50, None, ["3"], 3),
        ("--eval-samples", "eval_samples", 12, None, ["3"], 3),
        ("--train-samples", "train_samples", 2000, None, ["3"], 3),
        ("--seed", "seed", 0, None, ["3"], 3),
        ("--init", "init", None, None, ["text"], "text"),
        ("--data", "data", None, None, ["text"], "text"),
        ("--device", "device", "auto", None, ["text"], "text"),
        ("--dtype", "dtype", "auto", ("auto", "float32", "bfloat16", "float16"), ["float16"], "float16"),
        ("--gradient-checkpointing", "gradient_checkpointing", None, None, [], True),
        ("--no-gradient-checkpointing", "gradient_checkpointing", None, None, [], False),
        ("--no-progress", "no_progress", False, None, [], True),
    ],
    ("train", "gate"): [
        ("--out", "out", None, None, ["some/path"], Path("some/path")),
        ("--model", "model", "smollm2-135m", None, ["text"], "text"),
        ("--data", "data", None, None, ["text"], "text"),
        ("--rank", "rank", 8, None, ["3"], 3),
        ("--steps", "steps", 300, None, ["3"], 3),
        ("--batch-size", "batch_size", 8, None, ["3"], 3),
        ("--learning-rate", "learning_rate", 0.0005, None, ["0.5"], 0.5),
        ("--loss", "loss", "bce", ("bce", "focal"), ["focal"], "focal"),
        ("--eval-every", "eval_every", 50, None, ["3"], 3),
        ("--eval-states", "eval_states", 240, None, ["3"], 3),
        ("--read-budget", "read_budget", 1.0, None, ["0.5"], 0.5),
        ("--document-tokens", "document_tokens", 1500, None, ["3"], 3),
        ("--per-family", "per_family", None, None, ["text"], "text"),
        ("--seed", "seed", 0, None, ["3"], 3),
        ("--device", "device", "auto", None, ["text"], "text"),
        ("--dtype", "dtype", "auto", ("auto", "float32", "bfloat16", "float16"), ["float16"], "float16"),
        ("--no-progress", "no_progress", False, None, [], True),
    ],
    ("train", "rl"): [
        ("--out", "out", None, None, ["some/path"], Path("some/path")),
        ("--model", "model", "smollm2-135m", None, ["text"], "text"),
        ("--data", "data", None, None, ["text"], "text"),
        ("--per-family", "per_family", None, None, ["text"], "text"),
        ("--document-tokens", "document_tokens", 1500, None, ["3"], 3),
        ("--max-memory-tokens", "max_memory_tokens", 160, None, ["3"], 3),
        ("--max-answer-tokens", "max_answer_tokens", 48, None, ["3"], 3),
        ("--steps", "steps", 120, None, ["3"], 3),
        ("--group", "group", 8, None, ["3"], 3),
        ("--learning-rate", "learning_rate", 3e-05, None, ["0.5"], 0.5),
        ("--temperature", "temperature", 0.8, None, ["0.5"], 0.5),
        ("--epochs", "epochs", 1, None, ["3"], 3),
        ("--reward", "reward", "sub_em", ("sub_em", "em", "f1"), ["f1"], "f1"),
        ("--kl", "kl", 0.0, None, ["0.5"], 0.5),
        ("--clip", "clip", 0.2, None, ["0.5"], 0.5),
        ("--rank", "rank", 8, None, ["3"], 3),
        ("--eval-every", "eval_every", 20, None, ["3"], 3),
        ("--eval-questions", "eval_questions", 24, None, ["3"], 3),
        ("--compressor-weights", "compressor_weights", None, None, ["text"], "text"),
        ("--chunk-tokens", "chunk_tokens", None, None, ["3"], 3),
        ("--train-reasoner", "train_reasoner", True, None, [], True),
        ("--no-train-reasoner", "train_reasoner", True, None, [], False),
        ("--train-compressor", "train_compressor", False, None, [], True),
        ("--no-train-compressor", "train_compressor", False, None, [], False),
        ("--seed", "seed", 0, None, ["3"], 3),
        ("--device", "device", "auto", None, ["text"], "text"),
        ("--dtype", "dtype", "auto", ("auto", "float32", "bfloat16", "float16"), ["float16"], "float16"),
        ("--no-progress", "no_progress", False, None, [], True),
    ],
    ("report",): [
        ("--out", "out", None, None, ["text"], "text"),
    ],
    ("serve",): [
        ("--store", "store", None, None, ["text"], "text"),
        ("--host", "host", "127.0.0.1", None, ["text"], "text"),
        ("--port", "port", 8000, None, ["3"], 3),
        ("--api-key", "api_key", None, None, ["text"], ["text"]),
        ("--keys-file", "keys_file", None, None, ["some/path"], Path("some/path")),
        ("--max-document-bytes", "max_document_bytes", 8388608, None, ["3"], 3),
        ("--max-request-bytes", "max_request_bytes", 67108864, None, ["3"], 3),
        ("--batch-window-ms", "batch_window_ms", 5.0, None, ["0.5"], 0.5),
        ("--max-batch", "max_batch", 16, None, ["3"], 3),
        ("--recompress", "recompress", False, None, [], True),
        ("--shutdown-timeout", "shutdown_timeout", 60.0, None, ["0.5"], 0.5),
        ("--log-level", "log_level", "info", ("debug", "info", "warning", "error"), ["error"], "error"),
    ],
    ("info",): [
        ("--json", "json", False, None, [], True),
        ("--no-load", "no_load", False, None, [], True),
    ],
}

# The arguments each command needs besides the flag under test, and the positionals they set.
REQUIRED = {
    ("ask",): (["doc.txt", "-q", "Why?"], {"paths": ["doc.txt"], "question": "Why?"}),
    ("ingest",): (["doc.txt", "more.txt"], {"paths": ["doc.txt", "more.txt"]}),
    ("store", "rm"): (["a", "b"], {"names": ["a", "b"], "store_command": "rm"}),
    ("store", "mv"): (["old", "new"], {"old": "old", "new": "new", "store_command": "mv"}),
    ("eval",): (["needle-twohop"], {"task": "needle-twohop"}),
    ("probe", "heads"): ([], {"probe_command": "heads"}),
    ("train", "compressor"): (["--out", "run"], {"out": Path("run"), "train_command": "compressor"}),
    ("train", "gate"): (["--out", "run"], {"out": Path("run"), "train_command": "gate"}),
    ("train", "rl"): (["--out", "run"], {"out": Path("run"), "train_command": "rl"}),
    ("report",): (["run-a", "run-b"], {"runs": ["run-a", "run-b"]}),
}


def _rows():
    for path, rows in OPTIONS.items():
        for row in rows:
            yield path, row
        if path in COMMANDS_WITH_ENGINE_OPTIONS:
            for row in ENGINE_OPTIONS:
                yield path, row[:6]


ROWS = list(_rows())


@cache
def _parser():
    return build_parser()  # parsing does not change a parser: one serves every row


def _parse(path: tuple[str, ...], *extra: str):
    required, _ = REQUIRED.get(path, ([], {}))
    return _parser().parse_args([*path, *required, *extra])


@pytest.mark.parametrize("path", list(OPTIONS), ids=" ".join)
def test_every_command_parses_with_its_required_arguments(path):
    args = _parse(path)
    assert args.command == path[0] and callable(args.handler)
    for dest, value in REQUIRED.get(path, ([], {}))[1].items():
        assert getattr(args, dest) == value


@pytest.mark.parametrize("path,row", ROWS, ids=[f"{' '.join(p)} {r[0]}" for p, r in ROWS])
def test_every_flag_parses_to_its_destination_with_its_default(path, row):
    flag, dest, default, choices, sample, value = row
    if dest not in REQUIRED.get(path, ([], {}))[1]:  # a required argument of the command sets it already
        assert getattr(_parse(path), dest) == default
    assert getattr(_parse(path, flag, *sample), dest) == value
    if choices is not None:
        for choice in choices:
            assert getattr(_parse(path, flag, choice), dest) == choice
        with pytest.raises(SystemExit):
            _parse(path, flag, "no-such-choice")


@pytest.mark.parametrize("row", ENGINE_OPTIONS, ids=[row[0] for row in ENGINE_OPTIONS])
def test_every_engine_flag_lands_in_the_same_config_field(row):
    from lychee_memory import cli

    flag, _, _, _, sample, _, target = row
    if target is None:  # --config names a base config file, not a field
        return
    field, value = target
    options = cli.engine_options(_parse(("ask",), flag, *sample))
    config = EngineConfig.from_kwargs(None, **options)
    found = config
    for name in field.split("."):
        found = getattr(found, name)
    assert found == value
    assert EngineConfig.from_kwargs(None, **cli.engine_options(_parse(("ask",)))) == EngineConfig()


@pytest.mark.parametrize("path", [(), *OPTIONS], ids=lambda path: " ".join(path) or "lychee")
def test_every_help_page_renders(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*path, "--help"])
    assert exit_.value.code == 0 and "usage: lychee" in capsys.readouterr().out


def test_the_recorded_calibrate_command_parses_back_to_the_same_settings():
    from lychee_memory.cli.options import command_line

    argv = ["calibrate", "--lengths", "1k,2k", "--rules", "prompt", "query_likelihood", "--skip-heads"]
    argv += ["--model", "tiny-random-llama", "--prefilter-heads", "[[1, 2]]", "--threshold", "0.25", "--out", "x.json"]
    parser = build_parser()
    args = parser.parse_args(argv)
    actions = [action for action in _calibrate_actions(parser) if action.dest != "help"]
    line = command_line(["lychee", "calibrate"], args, actions, skip=("out", "no_progress", "config"))
    assert line.startswith("lychee calibrate ") and "--out" not in line
    replayed = parser.parse_args(shlex.split(line)[1:])
    assert {**vars(replayed), "out": "x.json", "handler": None} == {**vars(args), "handler": None}


def _calibrate_actions(parser):
    """Every action of ``lychee calibrate`` (argparse keeps them in ``_actions``): what the handler replays."""
    (subparsers,) = [action for action in parser._actions if action.dest == "command"]
    return subparsers.choices["calibrate"]._actions
