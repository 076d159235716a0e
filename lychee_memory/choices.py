"""The names users choose from: block storage formats, comparison baselines, evaluation tasks.

Kept in a module that imports nothing of the library, so the command line offers them as choices without loading
torch or transformers; the modules that implement each choice import their names from here.
"""

from __future__ import annotations

from typing import Literal, get_args

# "none": an index-only bank, its KV never stored but encoded from the stored text when read (codec.IndexOnlyCodec).
BlockDtype = Literal["float32", "bfloat16", "float16", "int8", "int4", "int2", "k4v2", "k4v3", "none"]
BLOCK_DTYPES: tuple[str, ...] = get_args(BlockDtype)

# How a bank's gate index is stored (``gate.index_dtype``, gate/index_format.py), narrowest last.
IndexDtype = Literal["float16", "int8"]
INDEX_DTYPES: tuple[str, ...] = get_args(IndexDtype)

# What a new bank is written with when the user does not say (MemoryStore, ingest --block-dtype, gate.index_dtype).
# Still bfloat16 blocks and a float16 index: the smallest candidate under 6 KB/token all-in, k4v2 blocks with an
# int8 index (~5.4 KB), lost answers bfloat16 kept on 28K needles (copying failures from its 2-bit values;
# BENCHMARKS.md, the answer ladder per codec, benchmarks/codec_answers.py), so it is not the default.
DEFAULT_BLOCK_DTYPE: BlockDtype = "bfloat16"
DEFAULT_INDEX_DTYPE: IndexDtype = "float16"

BASELINE_NAMES: tuple[str, ...] = ("memagent", "full_context")
"""The keys of ``baselines.BASELINES``: the comparison methods the CLI's ``--mode`` names (dashes for underscores)."""

TASKS: tuple[str, ...] = ("ruler-hqa", "needle", "needle-multikey", "needle-twohop")
"""The evaluation tasks ``eval.tasks.build_samples`` builds."""
