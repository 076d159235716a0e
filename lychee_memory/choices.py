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
# k4v3 blocks (4-bit keys in groups of 128 slots, 3-bit values) with an int8 index: 5,986 B/token all-in for
# SmolLM2, against 23,818 B for bfloat16 blocks with a float16 index. The evidence (BENCHMARKS.md, "The answer ladder
# per codec"; benchmarks/codec_answers.py, benchmarks/plots/codec_answers.md): 28K needle haystacks, 10 questions
# each; A chose, B confirmed, C (seed 2) was a fresh haystack run after k4v3 was chosen. k4v2 blocks with an int8
# index (~5.4 KB) lost 2 answers on A by copying a year from the read block (its 2-bit values); k4v3 with an int8
# index answered, ranked and passed stage 1 exactly as bfloat16 did on all 30 (A, B and C, the real codec).
DEFAULT_BLOCK_DTYPE: BlockDtype = "k4v3"
DEFAULT_INDEX_DTYPE: IndexDtype = "int8"

BASELINE_NAMES: tuple[str, ...] = ("memagent", "full_context")
"""The keys of ``baselines.BASELINES``: the comparison methods the CLI's ``--mode`` names (dashes for underscores)."""

TASKS: tuple[str, ...] = ("ruler-hqa", "needle", "needle-multikey", "needle-twohop")
"""The evaluation tasks ``eval.tasks.build_samples`` builds."""
