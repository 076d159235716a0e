"""``lychee info``: versions, hardware, the resolved model and its defaults."""

from __future__ import annotations

import argparse
import json
from typing import Any

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
    if not args.no_load:
        info["engine"] = load_engine(args).info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_tree(info)
    return 0


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
    add_engine_options(info)
    info.set_defaults(handler=_command_info)
