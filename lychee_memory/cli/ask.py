"""``lychee ask`` and ``lychee ingest``: answer questions over documents, and compress documents into a bank."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..choices import BASELINE_NAMES, BLOCK_DTYPES, DEFAULT_BLOCK_DTYPE
from ..errors import LycheeError, UnconvertibleDocumentError
from .options import add_engine_options, add_store_options, load_engine, open_store

EVIDENCE_SHOWN = 5  # excerpts the text output lists (the JSON output has every one)

EXIT_SKIPPED = 3  # lychee ingest: the readable files were ingested, some others could not be converted


def _paths(values: list[str]) -> list[Path]:
    return [Path(value) for value in values]


def _command_ask(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    from ..documents import load_documents

    if not args.paths and args.bank is None:
        raise LycheeError("give document paths to read, or --bank NAME (with --store DIR) to ask a stored bank")
    if args.store is not None and args.bank is None:
        raise LycheeError("--store needs --bank NAME: which bank of the store to ask")
    documents = load_documents(_paths(args.paths)) if args.paths else None  # fail on bad files before loading
    store = open_store(args, create=documents is not None) if args.bank is not None else None
    if store is not None and documents is None and not store.has_bank(args.bank):
        store.bank_info(args.bank)  # raises BankNotFoundError listing the banks, before loading a model
    engine = load_engine(args)
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
        from ..baselines import BASELINES

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
    if answer.evidence:  # the excerpt memory: the sentences the answer read, verbatim, most relevant first
        print("\nEvidence:", file=sys.stderr)
        for excerpt in sorted(answer.evidence, key=lambda e: -e.score)[:EVIDENCE_SHOWN]:
            text = " ".join(excerpt.text.split())
            text = text if len(text) <= 160 else text[:157] + "..."
            print(f"  {excerpt.document_id} chars {excerpt.char_start}-{excerpt.char_end}: {text}", file=sys.stderr)
        if len(answer.evidence) > EVIDENCE_SHOWN:
            print(f"  ... and {len(answer.evidence) - EVIDENCE_SHOWN} more (--json lists them all)", file=sys.stderr)
    phases = " | ".join(f"{name} {seconds:.2f}s" for name, seconds in answer.timings.items())
    print(f"Timings: {phases}", file=sys.stderr)
    return 0


def _command_ingest(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    from ..documents import load_documents

    if args.store is not None and args.bank is None:
        raise LycheeError("--store needs --bank NAME: the bank to add the documents to")
    skipped: list[UnconvertibleDocumentError] = []  # files a converter could not read: reported, the rest ingest
    documents = load_documents(_paths(args.paths), skipped=skipped)
    for error in skipped:
        print(f"lychee: skipped: {error}", file=sys.stderr)
    store = open_store(args, create=True, block_dtype=args.block_dtype) if args.bank is not None else None
    engine = load_engine(args)
    ingest_started = time.perf_counter()
    if store is not None:
        if args.recompress and store.has_bank(args.bank):
            engine.open_bank(args.bank, store, recompress=True)
        if args.ray is not None:
            from ..distributed import RaySettings, ingest_with_ray

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
    if store is not None:
        summary["bytes_by_part"] = store.bank_parts(args.bank).to_dict()  # bytes per document token by part
        summary["block_dtypes"] = list(store.bank_info(args.bank).block_dtypes)
    if skipped:
        summary["skipped"] = [str(error) for error in skipped]
    if args.json:
        print(json.dumps(summary, indent=2))
    elif store is not None:
        report = summary["stored"]
        print(
            f"bank {args.bank!r} in {store.location}: {summary['documents']} document(s), {summary['tokens']} tokens, "
            f"{summary['blocks']} blocks, {summary['stored_bytes'] / 2**20:.1f} MiB stored (gate index "
            f"{summary['index_bytes'] / 2**20:.1f} MiB); this ingest compressed "
            f"{report['compressed']} new block(s) and reused {report['reused']} in {summary['timings']['ingest']:.1f}s; "
            f"{summary['bytes_by_part']['per_token']['total']:.0f} bytes per token all-in"
        )
    else:
        print(
            f"{summary['documents']} document(s), {summary['tokens']} tokens -> {summary['blocks']} blocks, "
            f"{summary['slots']} memory slots ({summary['compression']}x), {summary['resident_bytes'] / 2**20:.1f} MiB "
            f"in {summary['timings']['ingest']:.1f}s"
        )
    return EXIT_SKIPPED if skipped else 0


def add_ask_command(commands: Any) -> None:
    """Register ``lychee ask``."""
    ask = commands.add_parser("ask", help="answer a question over documents")
    ask.add_argument(
        "paths",
        nargs="*",
        help="text files (UTF-8), PDF/DOCX/PPTX/HTML files or directories of them; optional with --bank (added to it)",
    )
    ask.add_argument("--question", "-q", required=True)
    ask.add_argument("--json", action="store_true", help="print one JSON object (answer, blocks, timings, memory)")
    ask.add_argument(
        "--mode",
        choices=["lychee", *(name.replace("_", "-") for name in BASELINE_NAMES)],
        default="lychee",
        help="lychee (default) or a baseline",
    )
    ask.add_argument("--scores", action="store_true", help="with --json: include every gate score of the scan")
    ask.add_argument("--show-text", action="store_true", help="with --json: include each block's source text")
    ask.add_argument("--show-memory", action="store_true", help="print the final working memory")
    add_store_options(ask)
    ask.add_argument(
        "--recompress", action="store_true", help="rebuild the bank if another model or compressor built it"
    )
    add_engine_options(ask)
    ask.set_defaults(handler=_command_ask)


def add_ingest_command(commands: Any) -> None:
    """Register ``lychee ingest``."""
    ingest = commands.add_parser("ingest", help="compress documents into memory blocks")
    ingest.add_argument(
        "paths",
        nargs="+",
        help="text files, PDF/DOCX/PPTX/HTML files (the documents extra), or directories of them; a file that "
        f"cannot be converted is reported and skipped (exit status {EXIT_SKIPPED})",
    )
    ingest.add_argument("--json", action="store_true")
    add_store_options(ingest)
    ingest.add_argument(
        "--block-dtype",
        choices=list(BLOCK_DTYPES),
        default=DEFAULT_BLOCK_DTYPE,
        help=f"how new blocks are stored (default {DEFAULT_BLOCK_DTYPE}; int8 with per-channel/per-slot scales; int4, "
        "k4v3, k4v2 and int2 group-quantised; none keeps only the gate index)",
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
    add_engine_options(ingest)
    ingest.set_defaults(handler=_command_ingest)
