"""The names users choose from: block storage formats, comparison baselines, evaluation tasks.

Kept in a module that imports nothing of the library, so the command line offers them as choices without loading
torch or transformers; the modules that implement each choice import their names from here.
"""

from __future__ import annotations

from typing import Literal, get_args

# "none": an index-only bank, its KV never stored but encoded from the stored text when read (codec.IndexOnlyCodec).
BlockDtype = Literal["float32", "bfloat16", "float16", "int8", "int4", "int2", "k4v2", "none"]
BLOCK_DTYPES: tuple[str, ...] = get_args(BlockDtype)

# How a bank's gate index is stored (``gate.index_dtype``, gate/index_format.py), narrowest last.
IndexDtype = Literal["float16", "int8"]
INDEX_DTYPES: tuple[str, ...] = get_args(IndexDtype)

BASELINE_NAMES: tuple[str, ...] = ("memagent", "full_context")
"""The keys of ``baselines.BASELINES``: the comparison methods the CLI's ``--mode`` names (dashes for underscores)."""

TASKS: tuple[str, ...] = ("ruler-hqa", "needle", "needle-multikey", "needle-twohop")
"""The evaluation tasks ``eval.tasks.build_samples`` builds."""
