"""Kernels: torch references and dispatchers in process, Triton kernels under the interpreter in a subprocess.

The Triton checks live in ``kernel_checks.py`` because TRITON_INTERPRET=1 must be set before triton is
imported; one subprocess runs them all and each check is reported as its own test here. Every
comparison is against an independent formula (full log_softmax, explicit-softmax attention, per-block
loops of full score matrices for the key scores).
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from lychee_memory.kernels import (
    ATTENTION_NAME,
    key_logsumexp,
    key_logsumexp_reference,
    lychee_triton_attention_forward,
    prefix_attention,
    prefix_attention_reference,
    register_triton_attention,
    token_logprobs,
    token_logprobs_reference,
)

from .kernel_checks import (
    ATTENTION_CASES,
    CHECKS,
    KEY_SCORE_CASES,
    LOGPROB_CASES,
    KeyScoreCase,
    LogprobCase,
    blocked_rows_are_zero,
    compare_tiny_llama,
    exact_token_logprobs,
    naive_attention,
    naive_key_logsumexp,
    naive_token_logprobs,
)

CHECK_SCRIPT = Path(__file__).with_name("kernel_checks.py")
# The package re-exports functions under their module names; these are the modules.
token_logprobs_module = importlib.import_module("lychee_memory.kernels.token_logprobs")
prefix_attention_module = importlib.import_module("lychee_memory.kernels.prefix_attention")
key_scores_module = importlib.import_module("lychee_memory.kernels.key_scores")
triton_support = importlib.import_module("lychee_memory.kernels._triton_support")
KERNELS_DIR = Path(importlib.import_module("lychee_memory.kernels").__file__).parent  # kernels/, installed

REFERENCE_LOGPROB_CASES = {
    **LOGPROB_CASES,
    "fp32_more_rows_than_a_reference_chunk": LogprobCase(rows=300, hidden_size=32, vocab_size=100, with_bias=True),
    "bf16_wide_logits": LogprobCase(
        rows=40, hidden_size=256, vocab_size=1000, with_bias=True, dtype=torch.bfloat16, logit_scale=8.0
    ),
}
# The reference accumulates in float32 for every input dtype, so bf16/fp16 inputs meet the float64
# log_softmax of the same (rounded) inputs as tightly as float32 ones do.
EXACT_TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------------
# Import structure


def _kernel_imports(path: Path) -> set[str]:
    """Sibling kernel modules that ``path`` imports at run time (module level or inside functions)."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                imported.add(node.module.split(".")[0])
            elif node.level == 1:
                imported.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("lychee_memory.kernels."):
                imported.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            imported.update(
                alias.name.split(".")[2] for alias in node.names if alias.name.startswith("lychee_memory.kernels.")
            )
    return imported


def test_kernel_modules_import_each_other_without_cycles() -> None:
    """Each Triton module shares its shape contract with its dispatcher through ``contracts``, not a cycle."""
    graph = {path.stem: _kernel_imports(path) for path in KERNELS_DIR.glob("*.py") if path.stem != "__init__"}
    cycles = []

    def visit(module: str, trail: list[str]) -> None:
        for imported in sorted(graph.get(module, ())):
            if imported in trail:
                cycles.append(" -> ".join([*trail[trail.index(imported) :], imported]))
            elif imported in graph:
                visit(imported, [*trail, imported])

    for module in sorted(graph):
        visit(module, [module])
    assert not cycles, f"import cycles among kernels/: {sorted(set(cycles))}"
    assert graph.get("contracts") == set(), "contracts must exist and import no other kernel module"


def test_shape_contracts_are_importable_where_they_always_were() -> None:
    contracts = importlib.import_module("lychee_memory.kernels.contracts")
    assert token_logprobs_module.check_logprob_shapes is contracts.check_logprob_shapes
    assert prefix_attention_module.check_attention_shapes is contracts.check_attention_shapes
    assert prefix_attention_module.blocked_threshold is contracts.blocked_threshold
    assert key_scores_module.check_key_score_shapes is contracts.check_key_score_shapes


# ---------------------------------------------------------------------------------------------------
# token_logprobs


@pytest.mark.parametrize("name", list(REFERENCE_LOGPROB_CASES))
def test_token_logprobs_reference_matches_float64_log_softmax(name: str) -> None:
    """bf16/fp16 included: the reference must not round logits to the input dtype, as the kernel does not."""
    case = REFERENCE_LOGPROB_CASES[name]
    hidden, weight, targets, bias = case.tensors()
    actual = token_logprobs_reference(hidden, weight, targets, bias)
    expected = exact_token_logprobs(hidden, weight, targets, bias)
    assert actual.dtype == torch.float32
    error = (actual - expected).abs().max().item()
    assert error <= EXACT_TOLERANCE, f"max abs error {error:.3g} against float64"


@pytest.mark.parametrize("name", ["bf16_no_bias_ragged", "bf16_bias", "fp32_ragged_bias_three_splits"])
def test_token_logprobs_reference_streams_over_vocabulary_slices_and_row_chunks(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slices of 32 vocabulary rows and chunks of a few rows: the merge over slices changes nothing."""
    case = LOGPROB_CASES[name]
    hidden, weight, targets, bias = case.tensors(seed=2)
    targets[1] = 0  # the first column of the first slice, besides the last of the last (targets[0])
    monkeypatch.setattr(token_logprobs_module, "_REFERENCE_WEIGHT_PER_SLICE", 40 * case.hidden_size)
    monkeypatch.setattr(token_logprobs_module, "_REFERENCE_LOGITS_PER_CHUNK", 32 * 7)
    assert token_logprobs_module._vocab_slice_width(case.hidden_size) == 32
    actual = token_logprobs_reference(hidden, weight, targets, bias)
    expected = exact_token_logprobs(hidden, weight, targets, bias)
    assert (actual - expected).abs().max().item() <= EXACT_TOLERANCE


def test_token_logprobs_reference_rejects_targets_outside_the_vocabulary() -> None:
    hidden, weight = torch.randn(3, 8), torch.randn(10, 8)
    for bad in (10, -1):
        with pytest.raises(ValueError, match="targets"):
            token_logprobs_reference(hidden, weight, torch.tensor([0, bad, 9]))


def test_token_logprobs_of_no_rows_is_empty() -> None:
    out = token_logprobs(torch.zeros(0, 8), torch.randn(10, 8), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,) and out.dtype == torch.float32


def test_token_logprobs_dispatcher_takes_the_reference_for_cpu_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    reference = token_logprobs_module.token_logprobs_reference
    monkeypatch.setattr(
        token_logprobs_module, "token_logprobs_reference", lambda *args: calls.append(1) or reference(*args)
    )
    hidden, weight, targets, bias = LOGPROB_CASES["fp32_bias_tiny"].tensors()
    actual = token_logprobs(hidden, weight, targets, bias)
    assert calls == [1]
    assert (actual - naive_token_logprobs(hidden, weight, targets, bias)).abs().max().item() <= 1e-4


def _failing_triton_module(name: str, function: str, calls: list[int]) -> types.ModuleType:
    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("simulated Triton compile error")

    module = types.ModuleType(name)
    setattr(module, function, broken)
    return module


def test_token_logprobs_falls_back_for_good_after_a_triton_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []
    name = "lychee_memory.kernels.token_logprobs_triton"
    monkeypatch.setitem(sys.modules, name, _failing_triton_module(name, "token_logprobs_triton", calls))
    monkeypatch.setattr(token_logprobs_module, "use_triton", lambda tensor: True)
    monkeypatch.setattr(triton_support, "_failed_kernels", set())
    hidden, weight, targets, bias = LOGPROB_CASES["fp32_bias_tiny"].tensors()
    expected = naive_token_logprobs(hidden, weight, targets, bias)
    with caplog.at_level(logging.WARNING, logger="lychee_memory.kernels"):
        first = token_logprobs(hidden, weight, targets, bias)
        second = token_logprobs(hidden, weight, targets, bias)
    assert calls == [1], "the failed kernel must not be tried again"
    assert len([record for record in caplog.records if "token_logprobs" in record.getMessage()]) == 1
    assert "token_logprobs" in triton_support._failed_kernels
    for result in (first, second):
        assert (result - expected).abs().max().item() <= 1e-4


# ---------------------------------------------------------------------------------------------------
# prefix_attention


@pytest.mark.parametrize("name", list(ATTENTION_CASES))
def test_prefix_attention_reference_matches_naive_attention(name: str) -> None:
    case = ATTENTION_CASES[name]
    query, key, value, mask, scaling, is_causal = case.tensors()
    actual = prefix_attention_reference(query, key, value, mask, scaling, is_causal)
    expected = naive_attention(query, key, value, mask, scaling, is_causal)
    assert actual.dtype == query.dtype and actual.shape == query.shape
    assert not actual.isnan().any()
    assert blocked_rows_are_zero(case, actual)
    assert (actual.float() - expected).abs().max().item() <= case.tolerance


def test_prefix_attention_dispatcher_takes_the_reference_for_cpu_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    reference = prefix_attention_module.prefix_attention_reference
    monkeypatch.setattr(
        prefix_attention_module, "prefix_attention_reference", lambda *args: calls.append(1) or reference(*args)
    )
    query, key, value, mask, scaling, is_causal = ATTENTION_CASES["additive_middle_padding_gqa2"].tensors()
    actual = prefix_attention(query, key, value, mask, scaling, is_causal)
    assert calls == [1]
    assert (actual - naive_attention(query, key, value, mask, scaling)).abs().max().item() <= 1e-4


def test_prefix_attention_falls_back_for_good_after_a_triton_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []
    name = "lychee_memory.kernels.prefix_attention_triton"
    monkeypatch.setitem(sys.modules, name, _failing_triton_module(name, "prefix_attention_triton", calls))
    monkeypatch.setattr(prefix_attention_module, "use_triton", lambda tensor: True)
    monkeypatch.setattr(triton_support, "_failed_kernels", set())
    query, key, value, mask, scaling, is_causal = ATTENTION_CASES["causal_prefix_gqa4_d64"].tensors()
    expected = naive_attention(query, key, value, mask, scaling, is_causal)
    with caplog.at_level(logging.WARNING, logger="lychee_memory.kernels"):
        results = [prefix_attention(query, key, value, mask, scaling, is_causal) for _ in range(2)]
    assert calls == [1]
    assert len([record for record in caplog.records if "prefix_attention" in record.getMessage()]) == 1
    for result in results:
        assert (result - expected).abs().max().item() <= 1e-4


def test_bad_shapes_raise_without_disabling_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefix_attention_module, "use_triton", lambda tensor: True)
    monkeypatch.setattr(token_logprobs_module, "use_triton", lambda tensor: True)
    monkeypatch.setattr(triton_support, "_failed_kernels", set())
    query, key, value = torch.randn(1, 3, 4, 16), torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16)
    with pytest.raises(ValueError, match="multiple"):
        prefix_attention(query, key, value)
    with pytest.raises(ValueError, match="mask"):
        prefix_attention(torch.randn(1, 4, 4, 16), key, value, torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="targets"):
        token_logprobs(torch.randn(3, 8), torch.randn(10, 8), torch.zeros(2, dtype=torch.long))
    assert "prefix_attention" not in triton_support._failed_kernels
    assert "token_logprobs" not in triton_support._failed_kernels


# ---------------------------------------------------------------------------------------------------
# key_logsumexp

REFERENCE_KEY_SCORE_CASES = {
    **KEY_SCORE_CASES,
    "bf16_keys_and_queries": KeyScoreCase(
        3, 2, 37, 64, 3, 5, key_dtype=torch.bfloat16, query_dtype=torch.bfloat16, empty_block=True
    ),
    "bf16_keys_fp32_queries": KeyScoreCase(2, 2, 70, 32, 2, 3, key_dtype=torch.bfloat16, valid="random"),
}


def _assert_key_scores_match(actual: torch.Tensor, expected: torch.Tensor, key_valid: torch.Tensor, tolerance: float):
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    empty = ~key_valid.any(dim=1)
    assert bool((actual[empty] == float("-inf")).all()), "a block without valid keys must score -inf"
    assert not actual.isnan().any()
    assert torch.isfinite(actual[~empty]).all()
    error = (actual[~empty] - expected[~empty]).abs().max().item()
    assert error <= tolerance, f"max abs error {error:.3g} > {tolerance}"


@pytest.mark.parametrize("name", list(REFERENCE_KEY_SCORE_CASES))
def test_key_logsumexp_reference_matches_naive_loops(name: str) -> None:
    case = REFERENCE_KEY_SCORE_CASES[name]
    queries, keys, key_valid, head_pairs, scale = case.tensors()
    actual = key_logsumexp_reference(queries, keys, key_valid, head_pairs, scale)
    expected = naive_key_logsumexp(queries, keys, key_valid, head_pairs, scale)
    _assert_key_scores_match(actual, expected, key_valid, case.tolerance)


@pytest.mark.parametrize(
    ("name", "blocks_per_chunk"),
    [
        ("block_without_valid_keys", 1),
        ("block_without_valid_keys", 2),
        ("fp16_keys", 2),
        ("t300_several_key_tiles_random_holes", 1),
        ("q70_two_query_tiles", 1),
    ],
)
def test_key_logsumexp_reference_works_in_chunks_of_blocks(
    name: str, blocks_per_chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A score budget of a few blocks: the blocks go through in chunks (the last one ragged), results unchanged."""
    case = KEY_SCORE_CASES[name]
    queries, keys, key_valid, head_pairs, scale = case.tensors(seed=3)
    expected = naive_key_logsumexp(queries, keys, key_valid, head_pairs, scale)
    # Per block: its upcast keys of every pair plus the scores of every head and query.
    per_block = keys.shape[1] * case.keys_per_block * case.head_dim + case.heads * case.queries * case.keys_per_block
    monkeypatch.setattr(key_scores_module, "_REFERENCE_SCORES_PER_CHUNK", blocks_per_chunk * per_block)
    chunk_sizes: list[int] = []
    logsumexp = torch.logsumexp
    monkeypatch.setattr(
        torch, "logsumexp", lambda scores, dim: chunk_sizes.append(scores.shape[1]) or logsumexp(scores, dim)
    )
    actual = key_logsumexp_reference(queries, keys, key_valid, head_pairs, scale)
    full, rest = divmod(case.blocks, blocks_per_chunk)
    pairs_read = len(head_pairs.unique())  # one scoring call per stored pair the heads read, per chunk
    expected_sizes = [size for size in [blocks_per_chunk] * full + ([rest] if rest else []) for _ in range(pairs_read)]
    assert chunk_sizes == expected_sizes
    _assert_key_scores_match(actual, expected, key_valid, case.tolerance)


def test_key_logsumexp_degenerate_shapes() -> None:
    queries, head_pairs = torch.randn(2, 3, 8), torch.tensor([0, 1])
    no_blocks = key_logsumexp(queries, torch.randn(0, 2, 5, 8), torch.zeros(0, 5, dtype=torch.bool), head_pairs, 1.0)
    assert no_blocks.shape == (0, 2, 3) and no_blocks.dtype == torch.float32
    no_keys = key_logsumexp(queries, torch.randn(4, 2, 0, 8), torch.zeros(4, 0, dtype=torch.bool), head_pairs, 1.0)
    assert no_keys.shape == (4, 2, 3) and bool((no_keys == float("-inf")).all())
    no_heads = key_logsumexp(
        torch.randn(0, 3, 8),
        torch.randn(4, 2, 5, 8),
        torch.ones(4, 5, dtype=torch.bool),
        torch.zeros(0, dtype=torch.long),
        1.0,
    )
    assert no_heads.shape == (4, 0, 3)


def _good_key_score_arguments() -> dict[str, torch.Tensor]:
    return {
        "queries": torch.randn(3, 5, 16),
        "keys": torch.randn(4, 2, 7, 16),
        "key_valid": torch.ones(4, 7, dtype=torch.bool),
        "head_pairs": torch.tensor([0, 1, 1]),
    }


@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        ("queries", torch.randn(5, 16), "queries must be 3D"),
        ("keys", torch.randn(4, 7, 16), "keys must be 4D"),
        ("keys", torch.randn(4, 2, 7, 8), "head_dim"),
        ("queries", torch.randint(0, 3, (3, 5, 16)), "float32, float16 or bfloat16"),
        ("keys", torch.randn(4, 2, 7, 16, dtype=torch.float64), "float32, float16 or bfloat16"),
        ("key_valid", torch.ones(4, 7), "key_valid must be a bool"),
        ("key_valid", torch.ones(4, 6, dtype=torch.bool), r"key_valid must be \[N, T\] = \[4, 7\]"),
        ("key_valid", torch.ones(3, 7, dtype=torch.bool), r"key_valid must be \[N, T\]"),
        ("head_pairs", torch.tensor([0, 1, 1], dtype=torch.int32), "head_pairs must be int64"),
        ("head_pairs", torch.tensor([0, 1]), r"head_pairs must be \[Hs\] = \[3\]"),
        ("head_pairs", torch.tensor([0, 2, 1]), r"head_pairs must lie in \[0, P\) = \[0, 2\)"),
        ("head_pairs", torch.tensor([0, -1, 1]), r"head_pairs must lie in"),
        ("key_valid", torch.ones(4, 7, dtype=torch.bool, device="meta"), "share a device"),
    ],
    ids=[
        "queries_2d",
        "keys_3d",
        "head_dim_mismatch",
        "integer_queries",
        "float64_keys",
        "float_key_valid",
        "key_valid_wrong_T",
        "key_valid_wrong_N",
        "int32_head_pairs",
        "head_pairs_wrong_length",
        "head_pair_too_large",
        "head_pair_negative",
        "key_valid_other_device",
    ],
)
def test_key_logsumexp_rejects_bad_shapes(
    name: str, bad: torch.Tensor, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both the reference and the dispatcher (even with Triton forced) raise ValueError, and nothing falls back."""
    monkeypatch.setattr(key_scores_module, "use_triton", lambda tensor: True)
    monkeypatch.setattr(triton_support, "_failed_kernels", set())
    arguments = {**_good_key_score_arguments(), name: bad}
    for function in (key_logsumexp_reference, key_logsumexp):
        with pytest.raises(ValueError, match=message):
            function(**arguments, scale=0.25)
    assert "key_logsumexp" not in triton_support._failed_kernels


def test_key_logsumexp_dispatcher_takes_the_reference_for_cpu_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    reference = key_scores_module.key_logsumexp_reference
    monkeypatch.setattr(key_scores_module, "key_logsumexp_reference", lambda *args: calls.append(1) or reference(*args))
    case = KEY_SCORE_CASES["block_without_valid_keys"]
    queries, keys, key_valid, head_pairs, scale = case.tensors()
    actual = key_logsumexp(queries, keys, key_valid, head_pairs, scale)
    assert calls == [1]
    expected = naive_key_logsumexp(queries, keys, key_valid, head_pairs, scale)
    _assert_key_scores_match(actual, expected, key_valid, case.tolerance)


def test_key_logsumexp_falls_back_for_good_after_a_triton_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []
    name = "lychee_memory.kernels.key_scores_triton"
    monkeypatch.setitem(sys.modules, name, _failing_triton_module(name, "key_logsumexp_triton", calls))
    monkeypatch.setattr(key_scores_module, "use_triton", lambda tensor: True)
    monkeypatch.setattr(triton_support, "_failed_kernels", set())
    case = KEY_SCORE_CASES["two_heads_share_a_pair"]
    queries, keys, key_valid, head_pairs, scale = case.tensors()
    expected = naive_key_logsumexp(queries, keys, key_valid, head_pairs, scale)
    with caplog.at_level(logging.WARNING, logger="lychee_memory.kernels"):
        results = [key_logsumexp(queries, keys, key_valid, head_pairs, scale) for _ in range(2)]
    assert calls == [1], "the failed kernel must not be tried again"
    assert len([record for record in caplog.records if "key_logsumexp" in record.getMessage()]) == 1
    assert "key_logsumexp" in triton_support._failed_kernels
    for result in results:
        _assert_key_scores_match(result, expected, key_valid, case.tolerance)


def test_key_logsumexp_checks_cover_every_case() -> None:
    """Each shared case also runs against the Triton kernel under the interpreter."""
    assert {f"key_logsumexp[{name}]" for name in KEY_SCORE_CASES} <= set(CHECKS)
    assert "key_logsumexp_dispatcher_runs_the_kernel" in CHECKS


# ---------------------------------------------------------------------------------------------------
# transformers integration


def test_register_triton_attention_is_idempotent() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    assert register_triton_attention() == ATTENTION_NAME == "lychee_triton"
    assert register_triton_attention() == ATTENTION_NAME
    assert AttentionInterface._global_mapping[ATTENTION_NAME] is lychee_triton_attention_forward
    assert AttentionMaskInterface._global_mapping[ATTENTION_NAME] is sdpa_mask


def test_importing_the_kernels_registers_nothing() -> None:
    code = (
        "import lychee_memory.kernels\n"
        "from transformers import AttentionInterface\n"
        "assert 'lychee_triton' not in AttentionInterface._global_mapping\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    ("query_length", "key_length", "mask_kind"),
    [(6, 6, None), (1, 9, None), (4, 12, None), (4, 12, "bool"), (4, 12, "additive")],
    ids=["prefill", "decode", "empty_static_cache_prefill", "bool_mask", "additive_mask"],
)
def test_attention_forward_reads_masks_like_transformers_sdpa(
    query_length: int, key_length: int, mask_kind: str | None
) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    generator = torch.Generator().manual_seed(3)
    # transformers hands over [B, H, L, D] views of [B, L, H, D] projections
    query = torch.randn(2, query_length, 4, 16, generator=generator).transpose(1, 2)
    key = torch.randn(2, key_length, 2, 16, generator=generator).transpose(1, 2)
    value = torch.randn(2, key_length, 2, 16, generator=generator).transpose(1, 2)
    mask = None
    if mask_kind is not None:
        allowed = torch.rand(2, 1, query_length, key_length, generator=generator) > 0.3
        allowed[..., -1] = True
        mask = allowed if mask_kind == "bool" else torch.zeros(allowed.shape).masked_fill(~allowed, -1e30)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    actual, weights = lychee_triton_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert weights is None and actual.shape == expected.shape == (2, query_length, 4, 16)
    assert (actual - expected).abs().max().item() <= 1e-5


def test_attention_features_beyond_the_kernel_go_to_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    sdpa_module = importlib.import_module("transformers.integrations.sdpa_attention")
    calls: list[dict] = []
    monkeypatch.setattr(sdpa_module, "sdpa_attention_forward", lambda *args, **kwargs: (calls.append(kwargs), None))
    module = torch.nn.Module()
    query, key = torch.randn(1, 4, 3, 16), torch.randn(1, 2, 3, 16)
    lychee_triton_attention_forward(module, query, key, key, None, dropout=0.1)
    lychee_triton_attention_forward(module, query, key, key, None, softcap=30.0)
    lychee_triton_attention_forward(module, query, key, key, None, position_bias=torch.zeros(1, 4, 3, 3))
    assert len(calls) == 3
    output, weights = lychee_triton_attention_forward(module, query, key, key, None)
    assert len(calls) == 3 and weights is None and output.shape == (1, 3, 4, 16)


def test_tiny_llama_lychee_triton_on_cpu_matches_sdpa() -> None:
    """On CPU tensors "lychee_triton" runs the torch reference; logits equal those of "sdpa"."""
    assert compare_tiny_llama() <= 1e-4


# ---------------------------------------------------------------------------------------------------
# Triton kernels under the interpreter


@pytest.fixture(scope="module")
def triton_check_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    pytest.importorskip("triton")
    results_path = tmp_path_factory.mktemp("kernel_checks") / "results.json"
    completed = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT), "--json", str(results_path)],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if not results_path.exists():
        pytest.fail(f"kernel checks crashed (rc {completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    return json.loads(results_path.read_text())


@pytest.mark.parametrize("check", list(CHECKS))
def test_triton_kernel_under_interpreter(check: str, triton_check_results: dict[str, dict]) -> None:
    result = triton_check_results[check]
    assert result["ok"], result.get("error")
