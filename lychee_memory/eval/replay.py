"""Recorded HotpotQA answers made ready to be answered again: the chosen methods' records at one length, the engine,
and the shared haystack they were asked in, rebuilt from the same data and seed. The replay benchmarks
(``answer_order_replay.py``, ``answer_reader_replay.py``) change one thing about the answer and hold the rest."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every replay takes: where the questions and records are, the model, the length and seed."""
    parser.add_argument("--data", default=None, help="dataset directory holding hotpotqa/ (else $LYCHEE_DATA_DIR)")
    parser.add_argument("--hotpot-file", type=Path, default=None, help="a HotpotQA JSON file instead of --data's")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", required=True, help="the length the records were made at (one)")
    parser.add_argument("--records", type=Path, required=True, help="hotpot_shared.py records.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="the haystack seed the records were made with")
    parser.add_argument(
        "--engine-option", action="append", default=[], help="key=value for the engine (e.g. reasoner_weights=F)"
    )


def recorded_answers(path: Path, methods: Sequence[str], length: int, first: int = 0) -> list[dict[str, Any]]:
    """The records of ``methods`` at ``length`` tokens, in file order (``first``: each method's first N only);
    ConfigurationError when a method has none."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [record for record in records if record["method"] in methods and record["length"] == length]
    if first:
        records = [record for method in methods for record in [r for r in records if r["method"] == method][:first]]
    missing = [method for method in methods if all(record["method"] != method for record in records)]
    if missing:
        raise ConfigurationError(f"{path} holds no answer of method(s) {missing} at {length} tokens")
    return records


@dataclass
class ReplayInputs:
    """What a replay answers with: the engine, the rebuilt haystack and the records to answer again."""

    engine: Any
    haystack: Any
    records: list[dict[str, Any]]


def replay_inputs(args: argparse.Namespace, methods: Sequence[str], first: int = 0) -> ReplayInputs:
    """The records of ``methods`` named by ``args`` (``add_replay_arguments``), an engine built with its options,
    and the shared haystack of the records' length rebuilt with that engine's tokenizer."""
    from ..engine import LycheeMemory
    from .shared_bench import parse_method
    from .shared_haystack import DEFAULT_GOLD_SHARE, build_shared_haystack
    from .tasks import TokenCounter, data_dir, load_hotpot, parse_lengths

    lengths = parse_lengths(args.lengths)
    if len(lengths) != 1:
        raise ConfigurationError(f"--lengths names the one length the records were made at, got {args.lengths!r}")
    records = recorded_answers(args.records, methods, lengths[0], first)
    rows = json.loads(args.hotpot_file.read_text()) if args.hotpot_file else load_hotpot(data_dir(args.data))
    options = parse_method("all:" + ";".join(args.engine_option)).options
    engine = LycheeMemory.from_pretrained(args.model, show_progress=False, **options)
    counter = TokenCounter(engine.loaded.tokenizer)
    haystack = build_shared_haystack(rows, counter, lengths[0], args.seed, DEFAULT_GOLD_SHARE)
    return ReplayInputs(engine, haystack, records)
