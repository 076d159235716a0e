"""``lychee store ls|du|rm|mv|gc|verify|recompress``: list, measure, delete, rename, collect, verify and
recompress stored banks."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ..choices import BLOCK_DTYPES, INDEX_DTYPES
from .options import open_store

if TYPE_CHECKING:
    from ..store import BlockRecipe
    from ..store.reports import BytesByPart

EXIT_DAMAGED = 1  # `lychee store verify` found damage it did not repair


def recipe_for_settings(settings: dict[str, Any]) -> BlockRecipe:
    """The block recipe of the engine a bank recorded, for ``store verify --repair``."""
    from ..config import EngineConfig
    from ..engine import LycheeMemory

    return LycheeMemory.from_pretrained(config=EngineConfig.from_recorded(settings)).block_recipe()


def _per_token(parts: BytesByPart) -> str:
    """Bytes per document token, all-in and by part, in one line."""
    from ..store.reports import PARTS

    each = ", ".join(f"{part} {parts.per_token[part]:.0f}" for part in PARTS)
    return f"{parts.per_token['total']:.0f} B/token all-in ({each}) over {parts.tokens} tokens"


def _command_store(args: argparse.Namespace) -> int:
    store = open_store(args, create=False)
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
            if usage.parts is not None:
                print(f"  all banks: {_per_token(usage.parts)}")
            for name, size in sorted(usage.bank_bytes.items()):
                parts = usage.bank_parts.get(name)
                print(f"  {name}: {size / 2**20:.1f} MiB" + (f"; {_per_token(parts)}" if parts is not None else ""))
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
    if action == "recompress":
        converted = store.recompress(args.bank, args.codec, index_dtype=args.index_dtype)
        if args.json:
            print(json.dumps(converted.to_dict(), indent=2))
        elif not converted.changed:
            print(f"bank {converted.bank!r} is already stored as {converted.codec}: nothing changed")
        else:
            index = f", gate index {args.index_dtype}" if args.index_dtype else ""
            print(
                f"recompressed bank {converted.bank!r} from {', '.join(converted.from_codecs)} to {converted.codec}"
                f"{index}: "
                f"{converted.converted} block(s), {converted.bytes_before / 2**20:.1f} MiB -> "
                f"{converted.bytes_after / 2**20:.1f} MiB; run `lychee store gc` to free the old blocks"
            )
        return 0
    report = store.verify(repair=args.repair, recipe_for_settings=recipe_for_settings)
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


def add_store_command(commands: Any) -> None:
    """Register ``lychee store``."""
    store = commands.add_parser(
        "store", help="list, measure, delete, rename, collect, verify and recompress stored banks"
    )
    actions = store.add_subparsers(dest="store_command", required=True)
    for action, description in (
        ("ls", "list the banks"),
        ("du", "disk use: total, per bank, and what gc would free"),
        ("rm", "delete banks (their blocks stay until gc)"),
        ("mv", "rename a bank"),
        ("gc", "delete blocks and texts no bank references"),
        ("verify", "check every checksum; --repair recompresses damaged blocks from the stored text"),
        ("recompress", "convert a bank's blocks in place to a narrower codec, without a model"),
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
        elif action == "recompress":
            sub.add_argument("bank", metavar="BANK")
            sub.add_argument(
                "--codec",
                default=None,
                choices=list(BLOCK_DTYPES),
                help="the codec to store the bank's blocks with; one that needs bits already thrown away is refused",
            )
            sub.add_argument(
                "--index-dtype",
                default=None,
                choices=list(INDEX_DTYPES),
                help="how to store the bank's gate index (int8: half the bytes); int8 to float16 is refused",
            )
    store.set_defaults(handler=_command_store)
