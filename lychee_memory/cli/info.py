"""``lychee info``: versions, hardware, the resolved model and its defaults."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..choices import DEFAULT_BLOCK_DTYPE, DEFAULT_INDEX_DTYPE
from ..config import DEFAULT_MODEL
from .options import add_engine_options, load_engine


def _command_info(args: argparse.Namespace) -> int:
    import importlib.metadata

    import torch

    from ..config import cache_root
    from ..kernels import triton_importable
    from ..model_loading import known_aliases, resolve_spec

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
    spec = args.model or DEFAULT_MODEL
    resolved = resolve_spec(spec)
    info["model_spec"] = {
        "spec": spec,
        "kind": resolved.kind,
        "path": str(resolved.path / resolved.gguf_file) if resolved.gguf_file else str(resolved.path),
    }
    banks = _banks(args.store)
    if banks is not None:
        info["banks"] = banks
    # What a new bank is written with unless told otherwise (ingest --block-dtype, gate.index_dtype).
    info["storage"] = {"block_dtype": DEFAULT_BLOCK_DTYPE, "index_dtype": DEFAULT_INDEX_DTYPE}
    if not args.no_load:
        info["engine"] = load_engine(args).info()
        info["storage"]["index_dtype"] = info["engine"]["gate"]["index_dtype"]
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_tree(info)
    return 0


def _banks(store_path: str | None) -> dict[str, Any] | None:
    """Each bank of the store (``--store``, else the default store when there is one): its codec(s) and size."""
    from ..errors import StoreError
    from ..store import MemoryStore

    try:
        store = MemoryStore(store_path, create=False)
    except StoreError:
        if store_path is not None:
            raise
        return None  # no default store yet: nothing to list
    with store:
        return {
            bank.name: {
                "block_dtypes": list(bank.block_dtypes),
                "documents": len(bank.documents),
                "tokens": bank.tokens,
                "stored_bytes": bank.stored_bytes,
            }
            for bank in store.list_banks()
        }


def _print_tree(data: dict[str, Any], indent: int = 0) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            print(" " * indent + f"{key}:")
            _print_tree(value, indent + 2)
        else:
            print(" " * indent + f"{key}: {value}")


def add_info_command(commands: Any) -> None:
    """Register ``lychee info``."""
    info = commands.add_parser("info", help="show versions, hardware, the resolved model and its defaults")
    info.add_argument("--json", action="store_true")
    info.add_argument("--no-load", action="store_true", help="do not load the model (skip the resolved defaults)")
    info.add_argument("--store", default=None, help="list this store's banks and their codecs (default store: if any)")
    add_engine_options(info)
    info.set_defaults(handler=_command_info)
