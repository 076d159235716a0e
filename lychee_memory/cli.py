"""The ``lychee`` command: ask questions over documents, ingest them, and show what is installed.

    lychee ask PATH... --question Q [--json]
    lychee ask --store DIR --bank NAME --question Q [--json]
    lychee ingest PATH... [--store DIR --bank NAME]
    lychee store ls|du|rm|mv|gc|verify [--repair] [--store DIR]
    lychee eval ruler-hqa|needle|needle-multikey|needle-twohop --lengths 7k,14k [--n N] [--methods ...]
    lychee bench [--quick] [--lengths 7k,28k] [--methods ...] [--json PATH]
    lychee report RUN_DIR... [--out DIR]
    lychee serve [--store DIR] [--host 127.0.0.1] [--port 8000] [--api-key KEY]... [engine options]
    lychee info

Errors the library raises on purpose are printed as one line and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .errors import LycheeError
from .integrations.server.command import add_serve_command
from .training.commands import add_train_commands

EXIT_USAGE = 2
EXIT_DAMAGED = 1  # `lychee store verify` found damage it did not repair


def _json_heads(text: str) -> list[tuple[int, int]]:
    """--prefilter-heads '[[17, 3], [18, 0]]': (layer, query head) pairs."""
    try:
        heads = json.loads(text)
        return [(int(layer), int(head)) for layer, head in heads]
    except (ValueError, TypeError) as error:
        raise argparse.ArgumentTypeError(
            f"expected a JSON list of [layer, head] pairs, got {text!r} ({error})"
        ) from None


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--model",
        default=None,
        help="model spec: smollm2-135m (default), a local HF dir, a .gguf file, or a cached hub id",
    )
    group.add_argument(
        "--config", type=Path, default=None, help="JSON file with an EngineConfig (options below override it)"
    )
    group.add_argument(
        "--compressor", choices=["auto", "learned", "beacon", "attention", "key_norm", "none"], default=None
    )
    group.add_argument(
        "--compressor-weights",
        default=None,
        help="trained memory weights (lychee train compressor) loaded beside the model; 'none' = no shipped file",
    )
    group.add_argument("--ratio", type=int, default=None, help="raw tokens per memory slot (default 4)")
    group.add_argument("--chunk-tokens", type=int, default=None, help="tokens per chunk (default: per model)")
    group.add_argument("--gate", choices=["auto", "query_likelihood", "prompt", "trained", "all"], default=None)
    group.add_argument(
        "--gate-weights", default=None, help="trained gate adapter (lychee train gate) for --gate trained"
    )
    group.add_argument("--threshold", type=float, default=None, help="gate threshold (default: per rule)")
    group.add_argument("--max-blocks", type=int, default=None, help="budget of relevant blocks per question")
    group.add_argument(
        "--prefilter", choices=["keys", "off"], default=None, help="gate stage 1 from the blocks' keys (default keys)"
    )
    group.add_argument("--candidates", type=int, default=None, help="blocks stage 1 passes on to the rule (default 4)")
    group.add_argument(
        "--prefilter-heads",
        type=_json_heads,
        default=None,
        help="JSON list of [layer, head] pairs for the gate index (default: the model's preset)",
    )
    group.add_argument(
        "--read-mode", choices=["auto", "kv", "text"], default=None, help="reasoner reads the block's KV or its text"
    )
    group.add_argument(
        "--reasoner-weights", default=None, help="reasoner adapter (lychee train rl); 'none' = the plain backbone"
    )
    group.add_argument("--max-memory-tokens", type=int, default=None)
    group.add_argument("--max-answer-tokens", type=int, default=None)
    group.add_argument("--temperature", type=float, default=None, help="0 = greedy (default)")
    group.add_argument("--seed", type=int, default=None)
    group.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    group.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None)
    group.add_argument(
        "--attention",
        choices=["auto", "sdpa", "eager", "flash_attention_2", "triton"],
        default=None,
        help="attention for the model's forwards (flash_attention_2 needs flash-attn; triton falls back to torch on CPU)",
    )
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


_OPTION_NAMES = {
    "model": "spec",
    "compressor": "compressor",
    "compressor_weights": "compressor_weights",
    "ratio": "ratio",
    "chunk_tokens": "chunk_tokens",
    "gate": "gate",
    "gate_weights": "gate_weights",
    "threshold": "threshold",
    "max_blocks": "max_relevant_blocks",
    "prefilter": "prefilter",
    "candidates": "candidates",
    "prefilter_heads": "prefilter_heads",
    "read_mode": "read_mode",
    "reasoner_weights": "reasoner_weights",
    "max_memory_tokens": "max_memory_tokens",
    "max_answer_tokens": "max_answer_tokens",
    "temperature": "temperature",
    "seed": "seed",
    "device": "device",
    "dtype": "dtype",
    "attention": "attention",
}


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {
        name: getattr(args, attribute)
        for attribute, name in _OPTION_NAMES.items()
        if getattr(args, attribute) is not None
    }
    if args.no_progress:
        options["show_progress"] = False
    return options


def _load_engine(args: argparse.Namespace):
    from .engine import LycheeMemory

    return LycheeMemory.from_pretrained(config=_base_config(args), **_engine_options(args))


def _base_config(args: argparse.Namespace):
    """The --config file's EngineConfig (None without one); engine options override it."""
    from .config import EngineConfig

    base = None
    if args.config is not None:
        try:
            base = EngineConfig.model_validate_json(args.config.read_text(encoding="utf-8"))
        except OSError as error:
            raise LycheeError(f"cannot read config file {str(args.config)!r}: {error.strerror or error}") from None
        except ValueError as error:
            raise LycheeError(f"config file {str(args.config)!r} is not a valid engine config: {error}") from None
    return base


def _paths(values: list[str]) -> list[Path]:
    return [Path(value) for value in values]


def _open_store(args: argparse.Namespace, *, create: bool, block_dtype: str = "bfloat16"):
    """The store named by --store (default store without it); commands that only read never create one."""
    from .store import MemoryStore

    return MemoryStore(args.store, block_dtype=block_dtype, create=create)


def _recipe_for_settings(settings: dict[str, Any]):
    """The block recipe of the engine a bank recorded, for ``store verify --repair``."""
    from .config import EngineConfig
    from .engine import LycheeMemory

    return LycheeMemory.from_pretrained(config=EngineConfig.from_recorded(settings)).block_recipe()


def _command_ask(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    from .documents import load_documents

    if not args.paths and args.bank is None:
        raise LycheeError("give document paths to read, or --bank NAME (with --store DIR) to ask a stored bank")
    if args.store is not None and args.bank is None:
        raise LycheeError("--store needs --bank NAME: which bank of the store to ask")
    documents = load_documents(_paths(args.paths)) if args.paths else None  # fail on bad files before loading
    store = _open_store(args, create=documents is not None) if args.bank is not None else None
    if store is not None and documents is None and not store.has_bank(args.bank):
        store.bank_info(args.bank)  # raises BankNotFoundError listing the banks, before loading a model
    engine = _load_engine(args)
    if store is not None:
        ingest_started = time.perf_counter()
        if documents is not None:
            if store.has_bank(args.bank) and args.recompress:
                engine.open_bank(args.bank, store, recompress=True)
            documents = engine.ingest(documents, store=store, bank=args.bank)
        else:
            documents = engine.open_bank(args.bank, store, recompress=args.recompress)
        ingest_seconds = time.perf_counter() - ingest_started
    mode = args.mode.replace("-", "_")
    if mode != "lychee":
        from .baselines import BASELINES

        answer = BASELINES[mode](engine).ask(args.question, documents)
        if not args.json:
            print(answer.text)
    elif args.json:
        answer = engine.ask(args.question, documents)
    else:
        stream = engine.stream(args.question, documents)
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        answer = stream.answer
    if store is not None:
        answer.timings["ingest"] = ingest_seconds  # opening (or adding to) the stored bank
    answer.timings["total"] = time.perf_counter() - started
    if args.json:
        data = answer.to_dict(include_scores=args.scores)
        if not args.show_text:
            for block in data["blocks"]:
                block.pop("text", None)
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    if args.show_memory:
        print("\nWorking memory:\n" + answer.memory, file=sys.stderr)
    if answer.blocks:
        print("\nSources:", file=sys.stderr)
        for block in answer.blocks[:10]:
            note = " (fallback: nothing passed the gate)" if block.fallback else ""
            print(
                f"  block {block.index}: {block.document_id} chars {block.char_start}-{block.char_end}, score {block.score:.3f}{note}",
                file=sys.stderr,
            )
        if len(answer.blocks) > 10:
            print(f"  ... and {len(answer.blocks) - 10} more", file=sys.stderr)
    phases = " | ".join(f"{name} {seconds:.2f}s" for name, seconds in answer.timings.items())
    print(f"Timings: {phases}", file=sys.stderr)
    return 0


def _command_ingest(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    from .documents import load_documents

    if args.store is not None and args.bank is None:
        raise LycheeError("--store needs --bank NAME: the bank to add the documents to")
    documents = load_documents(_paths(args.paths))
    store = _open_store(args, create=True, block_dtype=args.block_dtype) if args.bank is not None else None
    engine = _load_engine(args)
    ingest_started = time.perf_counter()
    if store is not None:
        if args.recompress and store.has_bank(args.bank):
            engine.open_bank(args.bank, store, recompress=True)
        if args.ray is not None:
            from .distributed import RaySettings, ingest_with_ray

            options = {"cpus_per_worker": args.cpus_per_worker, "threads_per_worker": args.threads_per_worker}
            settings = RaySettings(args.ray, args.workers, gpus_per_worker=args.gpus_per_worker, **options)
            ingest_with_ray(engine, documents, store=store, bank=args.bank, ray=settings, show_progress=not args.json)
            bank = engine.open_bank(args.bank, store)
        else:
            bank = engine.ingest(documents, store=store, bank=args.bank)
    elif args.ray is not None:
        raise LycheeError("--ray needs --bank NAME (and --store): Ray workers write their blocks into a store")
    else:
        bank = engine.ingest(documents)
    summary = bank.summary()
    summary["timings"] = {
        "load_model": round(engine.loaded.load_seconds, 4),
        "ingest": round(time.perf_counter() - ingest_started, 4),
        "total": round(time.perf_counter() - started, 4),
    }
    if store is not None and store.last_ingest is not None:
        summary["stored"] = store.last_ingest.to_dict()
        info = store.bank_info(args.bank)
        summary["stored_bytes"], summary["index_bytes"] = info.stored_bytes, info.index_bytes
    if args.json:
        print(json.dumps(summary, indent=2))
    elif store is not None:
        report = summary["stored"]
        print(
            f"bank {args.bank!r} in {store.location}: {summary['documents']} document(s), {summary['tokens']} tokens, "
            f"{summary['blocks']} blocks, {summary['stored_bytes'] / 2**20:.1f} MiB stored (gate index "
            f"{summary['index_bytes'] / 2**20:.1f} MiB); this ingest compressed "
            f"{report['compressed']} new block(s) and reused {report['reused']} in {summary['timings']['ingest']:.1f}s"
        )
    else:
        print(
            f"{summary['documents']} document(s), {summary['tokens']} tokens -> {summary['blocks']} blocks, "
            f"{summary['slots']} memory slots ({summary['compression']}x), {summary['resident_bytes'] / 2**20:.1f} MiB "
            f"in {summary['timings']['ingest']:.1f}s"
        )
    return 0


def _command_store(args: argparse.Namespace) -> int:
    store = _open_store(args, create=False)
    action = args.store_command
    if action == "ls":
        banks = store.list_banks()
        if args.json:
            print(json.dumps({"store": store.location, "banks": [bank.to_dict() for bank in banks]}, indent=2))
        elif not banks:
            print(f"no banks in {store.location}")
        else:
            for bank in banks:
                print(
                    f"{bank.name}\t{len(bank.documents)} document(s)\t{bank.tokens} tokens\t{bank.blocks} blocks\t"
                    f"{bank.stored_bytes / 2**20:.1f} MiB\t{bank.compressor.get('kind')}\t"
                    f"{bank.model_spec or bank.model_fingerprint}\t{bank.created:%Y-%m-%d %H:%M}"
                )
        return 0
    if action == "du":
        usage = store.usage()
        if args.json:
            print(json.dumps(usage.to_dict(), indent=2))
        else:
            print(
                f"{usage.path}: {usage.bytes / 2**20:.1f} MiB in {usage.blocks} blocks and {usage.indexes} gate "
                f"indexes ({usage.index_bytes / 2**20:.1f} MiB), {usage.banks} bank(s)"
            )
            for name, size in sorted(usage.bank_bytes.items()):
                print(f"  {name}: {size / 2**20:.1f} MiB")
            print(
                f"  unreferenced: {usage.unreferenced_blocks} block(s), {usage.unreferenced_indexes} index(es), "
                f"{usage.unreferenced_bytes / 2**20:.1f} MiB "
                "(freed by `lychee store gc`)"
            )
        return 0
    if action == "rm":
        for name in args.names:
            store.bank_info(name)  # every name must exist before anything is deleted
        for name in args.names:
            store.delete_bank(name)
        if not args.json:
            print(f"deleted {len(args.names)} bank(s); run `lychee store gc` to free their blocks")
        else:
            print(json.dumps({"deleted": args.names}))
        return 0
    if action == "mv":
        store.rename_bank(args.old, args.new)
        print(json.dumps({"renamed": [args.old, args.new]}) if args.json else f"renamed {args.old!r} to {args.new!r}")
        return 0
    if action == "gc":
        report = store.gc()
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            print(
                f"removed {report.removed_blocks} block(s), {report.removed_indexes} gate index(es) and "
                f"{report.removed_texts} text(s), "
                f"freed {report.freed_bytes / 2**20:.1f} MiB"
            )
        return 0
    report = store.verify(repair=args.repair, recipe_for_settings=_recipe_for_settings)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            status = "repaired" if problem.repaired else "DAMAGED"
            where = f"block {problem.block_index}" if problem.block_index is not None else problem.kind
            print(f"{status}: bank {problem.bank!r} {where} (document {problem.document_id!r}): {problem.reason}")
        print(
            f"checked {report.banks} bank(s), {report.documents_checked} document(s), {report.blocks_checked} "
            f"block(s), {report.indexes_checked} gate index(es): {'ok' if report.ok else f'{len(report.unrepaired)} problem(s) remain'}"
        )
    return 0 if report.ok else EXIT_DAMAGED


def _command_info(args: argparse.Namespace) -> int:
    import importlib.metadata

    import torch

    from .config import cache_root
    from .kernels._triton_support import triton_importable
    from .model_loading import known_aliases, resolve_spec

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        import flash_attn  # noqa: F401

        flash = True
    except ImportError:
        flash = False
    info: dict[str, Any] = {
        "versions": {
            name: version(name)
            for name in ("lychee-memory", "torch", "transformers", "llama-index-core", "langchain-core")
        },
        "hardware": {
            "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_threads": torch.get_num_threads(),
            "triton": triton_importable(),
            "flash_attn": flash,
        },
        "cache_dir": str(cache_root()),
        "aliases": known_aliases(),
    }
    spec = args.model or "smollm2-135m"
    resolved = resolve_spec(spec)
    info["model_spec"] = {
        "spec": spec,
        "kind": resolved.kind,
        "path": str(resolved.path / resolved.gguf_file) if resolved.gguf_file else str(resolved.path),
    }
    if not args.no_load:
        info["engine"] = _load_engine(args).info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_tree(info)
    return 0


def _evaluation_options(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    if args.config is not None:
        raise LycheeError("--config is not read by eval and bench; give engine options as flags or per method")
    options = _engine_options(args)
    options["show_progress"] = False
    return options.pop("spec", None), options


def _command_eval(args: argparse.Namespace) -> int:
    from .eval.runner import run_eval
    from .eval.tasks import parse_lengths

    model, options = _evaluation_options(args)
    run = run_eval(
        args.task,
        parse_lengths(args.lengths),
        n=args.n,
        methods=args.methods,
        model=model,
        data=args.data,
        out=args.out,
        seed=args.sample_seed,
        engine_options=options,
        show_progress=not args.no_progress,
    )
    print(run.files["summary_md"].read_text(encoding="utf-8"))
    for name, path in run.files.items():
        print(f"{name:>14}: {path}")
    return 0


def _command_bench(args: argparse.Namespace) -> int:
    from .eval.bench import QUICK_LENGTHS, QUICK_METHODS, run_bench
    from .eval.tasks import parse_lengths

    model, options = _evaluation_options(args)
    if args.quick:
        lengths = parse_lengths(args.lengths) if args.lengths else QUICK_LENGTHS
        methods = args.methods or QUICK_METHODS
    else:
        lengths = parse_lengths(args.lengths or "7k,14k,28k")
        methods = args.methods or QUICK_METHODS
    run = run_bench(
        lengths,
        methods=methods,
        model=model,
        task=args.task,
        n=args.n,
        data=args.data,
        seed=args.sample_seed,
        engine_options=options,
        out=args.out,
        json_path=args.json,
        show_progress=not args.no_progress,
    )
    print("model loading excluded; peak memory is each run's process (RSS on CPU, allocated on CUDA)\n")
    print(run.table)
    print(f"\nrows: {run.files['json']}\nplot: {run.files['plot']}")
    return 0


def _command_probe(args: argparse.Namespace) -> int:
    from .eval.head_probe import probe_heads
    from .eval.tasks import build_samples, parse_lengths

    model, options = _evaluation_options(args)
    options["compressor"] = "none"  # the probe reads every layer's keys
    from .engine import LycheeMemory

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


def _command_calibrate(args: argparse.Namespace) -> int:
    import shlex

    from .calibration import CalibrationSettings, calibrate, format_table, merge_earlier
    from .engine import LycheeMemory
    from .eval.tasks import parse_lengths
    from .presets import check_preset_path, default_preset_path, where_preset_applies, write_preset_file

    model, options = _evaluation_options(args)
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
        read_questions=args.read_questions,
        show_progress=not args.no_progress,
    )
    out = check_preset_path(args.out) if args.out else None  # before the model loads and anything is measured
    engine = LycheeMemory.from_pretrained(model, **options)
    target = out or check_preset_path(default_preset_path(engine.loaded.resolved.spec, engine.loaded.fingerprint()))
    words = ["lychee", "calibrate", "--lengths", args.lengths, "--n", str(args.n), "--heldout-n", str(args.heldout_n)]
    words += ["--families", ",".join(families), "--sample-seed", str(args.sample_seed)]
    words += ["--rules", *args.rules] if args.rules else []
    words += ["--target-recall", str(args.target_recall)] if args.target_recall is not None else []
    words += ["--read-budget", str(args.read_budget)] if args.target_recall is None else []
    words += ["--skip-heads"] if args.skip_heads else ["--head-count", str(args.head_count)]
    words += ["--skip-read-mode"] if args.skip_read_mode else []
    words += ["--data", args.data] if args.data else []
    for attribute in _OPTION_NAMES:
        value = getattr(args, attribute)
        if value is not None:
            words += [f"--{attribute.replace('_', '-')}", json.dumps(value) if isinstance(value, list) else str(value)]
    calibration = calibrate(engine, settings, command=shlex.join(words))
    preset, kept = merge_earlier(calibration.preset, target)
    written = write_preset_file(preset, target)
    print(format_table(calibration))
    print(f"\npreset written to {written}" + (f" (kept its earlier {', '.join(kept)})" if kept else ""))
    print(where_preset_applies(preset, written))
    return 0


def _command_report(args: argparse.Namespace) -> int:
    from .eval.report import format_report, merge_runs

    out = args.out or str(Path("reports") / time.strftime("%Y%m%d-%H%M%S"))
    report = merge_runs(args.runs, out)
    print(format_report(report))
    for name, path in report.files.items():
        print(f"{name:>26}: {path}")
    return 0


def _print_tree(data: dict[str, Any], indent: int = 0) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            print(" " * indent + f"{key}:")
            _print_tree(value, indent + 2)
        else:
            print(" " * indent + f"{key}: {value}")


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("persistent bank")
    group.add_argument("--store", default=None, help="store directory or URL (default: the user cache's store)")
    group.add_argument("--bank", default=None, help="bank name in the store: reused, and created or extended")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lychee", description="Question answering over long documents with compressed KV memory."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="answer a question over documents")
    ask.add_argument(
        "paths", nargs="*", help="text files (UTF-8) or directories of them; optional with --bank (added to it)"
    )
    ask.add_argument("--question", "-q", required=True)
    ask.add_argument("--json", action="store_true", help="print one JSON object (answer, blocks, timings, memory)")
    ask.add_argument(
        "--mode",
        choices=["lychee", "memagent", "full-context"],
        default="lychee",
        help="lychee (default) or a baseline",
    )
    ask.add_argument("--scores", action="store_true", help="with --json: include every gate score of the scan")
    ask.add_argument("--show-text", action="store_true", help="with --json: include each block's source text")
    ask.add_argument("--show-memory", action="store_true", help="print the final working memory")
    _add_store_options(ask)
    ask.add_argument(
        "--recompress", action="store_true", help="rebuild the bank if another model or compressor built it"
    )
    _add_engine_options(ask)
    ask.set_defaults(handler=_command_ask)

    ingest = commands.add_parser("ingest", help="compress documents into memory blocks")
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument("--json", action="store_true")
    _add_store_options(ingest)
    ingest.add_argument(
        "--block-dtype",
        choices=["float32", "bfloat16", "float16", "int8"],
        default="bfloat16",
        help="how new blocks are stored (default bfloat16; int8 with per-channel/per-slot scales)",
    )
    ingest.add_argument(
        "--recompress", action="store_true", help="rebuild the bank first if another model or compressor built it"
    )
    ray = ingest.add_argument_group("distributed ingest on Ray (pip install 'lychee-memory[ray]')")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS", help="compress on Ray actors")
    ray.add_argument("--workers", type=int, default=2, help="Ray actors, one engine each (default 2)")
    ray.add_argument("--cpus-per-worker", type=float, default=None, help="default: 1 with GPUs, else a fair share")
    ray.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor on a GPU cluster (e.g. 1)")
    ray.add_argument("--threads-per-worker", type=int, default=1, help="torch threads in each actor (default 1)")
    _add_engine_options(ingest)
    ingest.set_defaults(handler=_command_ingest)

    store = commands.add_parser("store", help="list, measure, delete, rename, collect and verify stored banks")
    actions = store.add_subparsers(dest="store_command", required=True)
    for action, description in (
        ("ls", "list the banks"),
        ("du", "disk use: total, per bank, and what gc would free"),
        ("rm", "delete banks (their blocks stay until gc)"),
        ("mv", "rename a bank"),
        ("gc", "delete blocks and texts no bank references"),
        ("verify", "check every checksum; --repair recompresses damaged blocks from the stored text"),
    ):
        sub = actions.add_parser(action, help=description)
        sub.add_argument("--store", default=None, help="store directory or URL (default: the user cache's store)")
        sub.add_argument("--json", action="store_true")
        if action == "rm":
            sub.add_argument("names", nargs="+", metavar="NAME")
        elif action == "mv":
            sub.add_argument("old", metavar="OLD")
            sub.add_argument("new", metavar="NEW")
        elif action == "verify":
            sub.add_argument(
                "--repair", action="store_true", help="recompress damaged blocks with the settings the bank recorded"
            )
    store.set_defaults(handler=_command_store)

    evaluate = commands.add_parser("eval", help="accuracy of every method on RULER-HQA-style or needle tasks")
    evaluate.add_argument("task", choices=["ruler-hqa", "needle", "needle-multikey", "needle-twohop"])
    evaluate.add_argument("--lengths", default="7k", help="context lengths in tokens, e.g. 7k,14k,28k (default 7k)")
    evaluate.add_argument("--n", type=int, default=8, help="samples per length (default 8)")
    evaluate.add_argument(
        "--methods",
        default="lychee,memagent,full-context,rag",
        help="comma list: lychee, lychee:KEY=VALUE;..., lychee-variants, memagent, full-context, rag[:top_k=K]",
    )
    evaluate.add_argument(
        "--data",
        default=None,
        help="dataset dir (hotpotqa/, squad/) or a RULER-HQA file; default $LYCHEE_DATA_DIR "
        "or shared/data found above the working directory",
    )
    evaluate.add_argument("--out", default=None, help="output directory (default eval-results/TASK-TIME)")
    evaluate.add_argument("--sample-seed", type=int, default=0, help="seed of the sample construction")
    _add_engine_options(evaluate)
    evaluate.set_defaults(handler=_command_eval)

    bench = commands.add_parser("bench", help="cost vs context length of every method, side by side")
    bench.add_argument("--quick", action="store_true", help="one short length, every method: minutes on a CPU")
    bench.add_argument("--lengths", default=None, help="context lengths (default 7k,14k,28k; --quick: 7k)")
    bench.add_argument("--methods", default=None, help="as for eval (default lychee,memagent,full-context,rag)")
    bench.add_argument("--task", choices=["needle", "needle-multikey", "needle-twohop", "ruler-hqa"], default="needle")
    bench.add_argument("--n", type=int, default=1, help="questions per length (default 1)")
    bench.add_argument("--data", default=None, help="dataset dir, as for eval")
    bench.add_argument("--json", default=None, help="write the JSON rows here (default OUT/bench.json)")
    bench.add_argument("--out", default=None, help="output directory (default bench-results/TIME)")
    bench.add_argument("--sample-seed", type=int, default=0)
    _add_engine_options(bench)
    bench.set_defaults(handler=_command_bench)

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
    _add_engine_options(heads)
    heads.set_defaults(handler=_command_probe)

    calibrate = commands.add_parser(
        "calibrate", help="measure a model's gate thresholds, prefilter heads and read mode; write them as its preset"
    )
    calibrate.add_argument("--lengths", default="7k", help="haystack lengths of the samples (default 7k)")
    calibrate.add_argument("--n", type=int, default=6, help="probe samples per family and length (default 6)")
    calibrate.add_argument(
        "--heldout-n", type=int, default=4, help="held-out samples (next seed) per family and length (default 4)"
    )
    calibrate.add_argument(
        "--families",
        nargs="+",
        default=["needle,needle-multikey"],
        help="needle families (default needle,needle-multikey)",
    )
    calibrate.add_argument(
        "--rules", nargs="+", default=None, metavar="RULE", help="gate rules to calibrate (default: the engine's rule)"
    )
    calibrate.add_argument(
        "--read-budget",
        type=float,
        default=1.0,
        help="mean other blocks per question a threshold may let through (default 1.0)",
    )
    calibrate.add_argument(
        "--target-recall", type=float, default=None, help="instead: the fewest false reads reaching this fact recall"
    )
    calibrate.add_argument("--head-count", type=int, default=8, help="prefilter heads to choose (default 8)")
    calibrate.add_argument("--skip-heads", action="store_true", help="do not probe the prefilter heads")
    calibrate.add_argument("--skip-read-mode", action="store_true", help="do not compare the kv and text read modes")
    calibrate.add_argument(
        "--read-questions", type=int, default=4, help="questions answered in each read mode (default 4)"
    )
    calibrate.add_argument(
        "--out", default=None, help="preset file to write (default: the user presets dir, which the engine reads)"
    )
    calibrate.add_argument("--data", default=None, help="dataset dir for a SQuAD haystack (default: the generated one)")
    calibrate.add_argument("--sample-seed", type=int, default=0, help="seed of the probe samples (held out: +1)")
    _add_engine_options(calibrate)
    calibrate.set_defaults(handler=_command_calibrate)

    add_train_commands(commands)

    report = commands.add_parser(
        "report", help="merge several eval and bench runs (a ladder run in pieces) into one set of tables and plots"
    )
    report.add_argument("runs", nargs="+", help="eval or bench output directories, samples.jsonl or bench JSON files")
    report.add_argument("--out", default=None, help="a new output directory (default reports/TIME)")
    report.set_defaults(handler=_command_report)

    add_serve_command(commands, _add_engine_options, _engine_options, _base_config)

    info = commands.add_parser("info", help="show versions, hardware, the resolved model and its defaults")
    info.add_argument("--json", action="store_true")
    info.add_argument("--no-load", action="store_true", help="do not load the model (skip the resolved defaults)")
    _add_engine_options(info)
    info.set_defaults(handler=_command_info)
    return parser


def main(argv: list[str] | None = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
