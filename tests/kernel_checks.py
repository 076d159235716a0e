"""Checks of the Triton kernels against independent torch formulas, on a CPU with the Triton interpreter.

TRITON_INTERPRET=1 must be set before triton is imported, so ``tests/test_kernels.py`` runs this file
in a subprocess: ``python tests/kernel_checks.py [--json PATH] [CHECK ...]``. Each check asserts its
tolerance and returns its max abs error; the script prints one line per check and exits 1 if any
fails. For low-precision inputs the log-prob kernel is also compared with the torch reference, since
the gate may run either. Importing this module (as the tests do, for the case lists and the naive
formulas) imports neither triton nor the kernels.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

# ---------------------------------------------------------------------------------------------------
# Independent formulas: full logits / explicit softmax, no streaming, nothing shared with the kernels.


def naive_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """log_softmax of the full float32 logits, gathered at the targets."""
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)


def exact_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """log_softmax of the full float64 logits, gathered at the targets, as float32: the value both paths aim at."""
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1).float()


def naive_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    is_causal: bool = True,
) -> torch.Tensor:
    """Repeat KV heads, scores = q @ k^T * scale + mask, explicit softmax, @ v; fully blocked rows -> 0."""
    query_heads, query_length = query.shape[1], query.shape[2]
    key_length = key.shape[2]
    repeats = query_heads // key.shape[1]
    keys = key.float().repeat_interleave(repeats, dim=1)
    values = value.float().repeat_interleave(repeats, dim=1)
    scores = query.float() @ keys.transpose(-1, -2) * scaling
    if mask is None:
        device = query.device
        allowed = torch.ones(query_length, key_length, dtype=torch.bool, device=device)
        if is_causal:  # query i is key K - Q + i
            query_index = torch.arange(key_length - query_length, key_length, device=device)
            allowed = torch.arange(key_length, device=device)[None, :] <= query_index[:, None]
        allowed = allowed[None, None]
    elif mask.dtype == torch.bool:
        allowed = mask
    else:
        scores = scores + mask.float()
        allowed = mask > torch.finfo(mask.dtype).min
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True).nan_to_num(neginf=0.0)
    exps = torch.exp(scores - row_max)
    sums = exps.sum(dim=-1, keepdim=True)
    weights = torch.where(sums > 0, exps / sums.clamp_min(1e-30), torch.zeros_like(exps))
    return weights @ values


def naive_key_logsumexp(
    queries: torch.Tensor, keys: torch.Tensor, key_valid: torch.Tensor, head_pairs: torch.Tensor, scale: float
) -> torch.Tensor:
    """Explicit loops over blocks and heads: full float64 score matrix, masked_fill -inf, torch.logsumexp."""
    blocks, selected_heads, query_count = keys.shape[0], queries.shape[0], queries.shape[1]
    out = torch.empty(blocks, selected_heads, query_count, dtype=torch.float64)
    for block in range(blocks):
        for head in range(selected_heads):
            block_keys = keys[block, int(head_pairs[head])].double().cpu()  # [T, D]
            scores = queries[head].double().cpu() @ block_keys.T * scale  # [Q, T]
            scores = scores.masked_fill(~key_valid[block].cpu()[None, :], float("-inf"))
            out[block, head] = torch.logsumexp(scores, dim=-1)
    return out.float().to(queries.device)


# ---------------------------------------------------------------------------------------------------
# Cases, shared with the in-process reference tests.


@dataclass
class LogprobCase:
    rows: int
    hidden_size: int
    vocab_size: int
    with_bias: bool
    dtype: torch.dtype = torch.float32
    vocab_splits: int | None = None
    logit_scale: float = 1.0  # large values stress the online log-sum-exp
    transposed_hidden: bool = False  # a non-contiguous hidden view

    def tensors(self, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        generator = torch.Generator().manual_seed(seed)
        if self.transposed_hidden:
            hidden = torch.randn(self.hidden_size, self.rows, generator=generator).T
        else:
            hidden = torch.randn(self.rows, self.hidden_size, generator=generator)
        weight = torch.randn(self.vocab_size, self.hidden_size, generator=generator) * (
            self.logit_scale / self.hidden_size**0.5
        )
        bias = torch.randn(self.vocab_size, generator=generator) if self.with_bias else None
        targets = torch.randint(0, self.vocab_size, (self.rows,), generator=generator)
        targets[0] = self.vocab_size - 1  # the last column of the last, ragged tile
        cast = (lambda tensor: tensor.to(self.dtype)) if self.dtype != torch.float32 else (lambda tensor: tensor)
        return cast(hidden), cast(weight), targets, None if bias is None else cast(bias)

    @property
    def tolerance(self) -> float:
        return 1e-4 if self.dtype == torch.float32 else 2e-3


LOGPROB_CASES: dict[str, LogprobCase] = {
    "fp32_bias_tiny": LogprobCase(rows=5, hidden_size=64, vocab_size=384, with_bias=True),
    "fp32_ragged_no_bias_one_split": LogprobCase(
        rows=70, hidden_size=40, vocab_size=300, with_bias=False, vocab_splits=1
    ),
    "fp32_ragged_bias_three_splits": LogprobCase(
        rows=33, hidden_size=72, vocab_size=383, with_bias=True, vocab_splits=3
    ),
    "fp32_large_logits": LogprobCase(rows=17, hidden_size=64, vocab_size=384, with_bias=True, logit_scale=60.0),
    "fp32_strided_hidden": LogprobCase(
        rows=20, hidden_size=64, vocab_size=257, with_bias=False, transposed_hidden=True
    ),
    "bf16_bias": LogprobCase(rows=20, hidden_size=64, vocab_size=384, with_bias=True, dtype=torch.bfloat16),
    "bf16_no_bias_ragged": LogprobCase(rows=9, hidden_size=48, vocab_size=200, with_bias=False, dtype=torch.bfloat16),
    "fp16_bias": LogprobCase(rows=12, hidden_size=64, vocab_size=384, with_bias=True, dtype=torch.float16),
}


@dataclass
class AttentionCase:
    batch: int
    query_heads: int
    kv_heads: int
    query_length: int
    key_length: int
    head_dim: int
    mask: str = "none"  # none | additive | bool | additive_per_head | additive_bias
    is_causal: bool = True
    middle_padding: bool = False  # keys K/4 .. K/2 blocked for batch row 1, like right-padded prefix blocks
    blocked_row: bool = False  # one query of batch row 0 sees no key
    dtype: torch.dtype = torch.float32
    strided_query: bool = False  # query as transformers hands it: [B, Q, H, D] memory, transposed

    def tensors(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        shape_q = (self.batch, self.query_heads, self.query_length, self.head_dim)
        if self.strided_query:
            query = torch.randn(self.batch, self.query_length, self.query_heads, self.head_dim, generator=generator)
            query = query.transpose(1, 2)
        else:
            query = torch.randn(*shape_q, generator=generator)
        shape_kv = (self.batch, self.kv_heads, self.key_length, self.head_dim)
        key = torch.randn(*shape_kv, generator=generator)
        value = torch.randn(*shape_kv, generator=generator)
        mask = self._mask(generator)
        query, key, value = (tensor.to(self.dtype) for tensor in (query, key, value))
        return query, key, value, mask, 1.3 / self.head_dim**0.5, self.is_causal

    def _mask(self, generator: torch.Generator) -> torch.Tensor | None:
        if self.mask == "none":
            return None
        heads = self.query_heads if self.mask == "additive_per_head" else 1
        shape = (self.batch, heads, self.query_length, self.key_length)
        query_index = torch.arange(self.key_length - self.query_length, self.key_length)
        allowed = torch.arange(self.key_length)[None, :] <= query_index[:, None]  # causal
        allowed = allowed.expand(shape) & (torch.rand(shape, generator=generator) > 0.2)
        allowed |= torch.arange(self.key_length)[None, :] == query_index[:, None]  # each query sees itself
        if self.middle_padding and self.batch > 1:
            allowed[1, :, :, self.key_length // 4 : self.key_length // 2] = False
        if self.blocked_row:
            allowed[0, :, self.query_length // 2, :] = False
        if self.mask == "bool":
            return allowed
        mask_dtype = self.dtype
        additive = torch.zeros(shape, dtype=mask_dtype)
        if self.mask == "additive_bias":  # attended keys carry a finite bias, blocked ones -inf
            additive = (torch.randn(shape, generator=generator) * 0.5).to(mask_dtype)
            return additive.masked_fill(~allowed, float("-inf"))
        return additive.masked_fill(~allowed, torch.finfo(mask_dtype).min)

    @property
    def tolerance(self) -> float:
        return 1e-4 if self.dtype == torch.float32 else 2e-2


ATTENTION_CASES: dict[str, AttentionCase] = {
    "causal_q_eq_k_gqa2_d16": AttentionCase(2, 4, 2, 7, 7, 16),
    "causal_prefix_gqa4_d64": AttentionCase(1, 4, 1, 5, 37, 64),
    "causal_two_row_blocks_gqa2": AttentionCase(1, 4, 2, 40, 100, 16),
    "decode_q1_gqa1_d16": AttentionCase(2, 2, 2, 1, 19, 16),
    "decode_q1_gqa4_d64": AttentionCase(1, 8, 2, 1, 70, 64),
    "no_mask_not_causal_gqa2": AttentionCase(1, 4, 2, 6, 21, 16, is_causal=False),
    "odd_head_dim_24": AttentionCase(1, 2, 1, 4, 11, 24),
    "strided_query_like_transformers": AttentionCase(2, 4, 2, 6, 30, 16, strided_query=True),
    "additive_middle_padding_gqa2": AttentionCase(2, 4, 2, 6, 40, 16, mask="additive", middle_padding=True),
    "additive_blocked_row_gqa4_d64": AttentionCase(2, 8, 2, 5, 33, 64, mask="additive", blocked_row=True),
    "additive_bias_neg_inf_blocked_row": AttentionCase(2, 4, 4, 4, 20, 16, mask="additive_bias", blocked_row=True),
    "additive_per_head_mask": AttentionCase(1, 4, 2, 3, 18, 16, mask="additive_per_head"),
    "bool_middle_padding_gqa1": AttentionCase(2, 2, 2, 5, 26, 16, mask="bool", middle_padding=True),
    "bool_blocked_row_gqa4": AttentionCase(2, 4, 1, 3, 20, 64, mask="bool", blocked_row=True),
    "bf16_additive_gqa2": AttentionCase(2, 4, 2, 6, 30, 16, mask="additive", dtype=torch.bfloat16),
    "fp16_causal_gqa2": AttentionCase(1, 4, 2, 5, 23, 16, dtype=torch.float16),
}


def blocked_rows_are_zero(case: AttentionCase, output: torch.Tensor) -> bool:
    """The fully blocked query of a ``blocked_row`` case is exactly zero (not NaN)."""
    return not case.blocked_row or bool((output[0, :, case.query_length // 2] == 0).all())


@dataclass
class KeyScoreCase:
    blocks: int  # N
    pairs: int  # P
    keys_per_block: int  # T
    head_dim: int  # D
    heads: int  # Hs
    queries: int  # Q
    key_dtype: torch.dtype = torch.float32
    query_dtype: torch.dtype = torch.float32
    head_pairs: tuple[int, ...] | None = None  # default: random pairs
    valid: str = "padded"  # padded (each block right-padded to a random length) | random | all
    empty_block: bool = False  # block 1 (or 0) has no valid key
    strided: bool = False  # keys stored [N, T, P, D] and queries [Q, Hs, D], handed over transposed
    score_scale: float = 1.0  # large values stress the online logsumexp

    def tensors(self, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
        generator = torch.Generator().manual_seed(seed)
        shape_n, shape_p, shape_t, shape_d = self.blocks, self.pairs, self.keys_per_block, self.head_dim
        if self.strided:
            queries = torch.randn(self.queries, self.heads, shape_d, generator=generator).transpose(0, 1)
            keys = torch.randn(shape_n, shape_t, shape_p, shape_d, generator=generator).transpose(1, 2)
        else:
            queries = torch.randn(self.heads, self.queries, shape_d, generator=generator)
            keys = torch.randn(shape_n, shape_p, shape_t, shape_d, generator=generator)
        if self.valid == "all":
            key_valid = torch.ones(shape_n, shape_t, dtype=torch.bool)
        elif self.valid == "random":
            key_valid = torch.rand(shape_n, shape_t, generator=generator) > 0.3
        else:
            lengths = torch.randint(1, shape_t + 1, (shape_n,), generator=generator)
            lengths[0] = shape_t  # one block fills the last, ragged tile
            key_valid = torch.arange(shape_t)[None, :] < lengths[:, None]
        if self.empty_block:
            key_valid[min(1, shape_n - 1)] = False
        if self.head_pairs is None:
            head_pairs = torch.randint(0, shape_p, (self.heads,), generator=generator)
        else:
            head_pairs = torch.tensor(self.head_pairs, dtype=torch.int64)
        scale = self.score_scale / shape_d**0.5
        return queries.to(self.query_dtype), keys.to(self.key_dtype), key_valid, head_pairs, scale

    @property
    def tolerance(self) -> float:
        return 1e-4 * max(1.0, self.score_scale)


KEY_SCORE_CASES: dict[str, KeyScoreCase] = {
    "fp32_n3_p2_t37_d64_hs3_q5": KeyScoreCase(3, 2, 37, 64, 3, 5),
    "fp16_keys": KeyScoreCase(3, 2, 37, 64, 3, 5, key_dtype=torch.float16),
    "fp16_keys_and_queries": KeyScoreCase(2, 3, 29, 64, 2, 7, key_dtype=torch.float16, query_dtype=torch.float16),
    "block_without_valid_keys": KeyScoreCase(3, 2, 37, 64, 3, 5, empty_block=True),
    "q70_two_query_tiles": KeyScoreCase(2, 2, 40, 64, 2, 70),
    "t300_several_key_tiles_random_holes": KeyScoreCase(2, 2, 300, 64, 2, 6, valid="random"),
    "two_heads_share_a_pair": KeyScoreCase(2, 3, 33, 64, 3, 4, head_pairs=(1, 0, 1)),
    "q1_odd_head_dim_24": KeyScoreCase(4, 2, 19, 24, 2, 1, valid="all"),
    "strided_keys_and_queries": KeyScoreCase(2, 3, 45, 64, 3, 9, strided=True),
    "large_scores": KeyScoreCase(2, 2, 150, 64, 2, 8, score_scale=30.0),
    "q1100_many_query_tiles": KeyScoreCase(1, 2, 40, 64, 2, 1100),
}


# ---------------------------------------------------------------------------------------------------
# Tiny Llama end to end: "sdpa" against "lychee_triton" on the same weights.


def tiny_llama_logits(model, attention: str) -> dict[str, torch.Tensor]:
    """Logits of several forwards (prefill, padding, cache continuation, decode, static cache, 4D mask)."""
    from transformers import DynamicCache, StaticCache

    model.set_attn_implementation(attention)
    generator = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    device = model.device
    ids = torch.randint(3, vocab, (2, 20), generator=generator).to(device)
    results: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        results["prefill"] = model(input_ids=ids[:, :9]).logits

        padding = torch.ones(2, 9, dtype=torch.long, device=device)
        padding[1, :3] = 0
        padded = model(input_ids=ids[:, :9], attention_mask=padding).logits
        results["left_padded_prefill_real_positions"] = torch.cat([padded[0], padded[1, 3:]])

        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :8], past_key_values=cache, use_cache=True)
        results["cache_continuation"] = model(input_ids=ids[:, 8:13], past_key_values=cache, use_cache=True).logits
        results["decode_one_token"] = model(input_ids=ids[:, 13:14], past_key_values=cache, use_cache=True).logits

        static = StaticCache(config=model.config, max_cache_len=24)
        results["static_cache_prefill"] = model(input_ids=ids[:, :6], past_key_values=static, use_cache=True).logits
        results["static_cache_decode"] = model(input_ids=ids[:, 6:7], past_key_values=static, use_cache=True).logits

        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :8], past_key_values=cache, use_cache=True)
        new = 4
        allowed = torch.arange(8 + new, device=device)[None, :] <= torch.arange(8, 8 + new, device=device)[:, None]
        allowed = allowed[None, None].repeat(2, 1, 1, 1)
        allowed[1, :, :, 2:5] = False  # padding in the middle of the keys, as for right-padded prefix blocks
        mask = torch.zeros(2, 1, new, 8 + new, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)
        positions = torch.arange(8, 8 + new, device=device)[None].repeat(2, 1)
        results["additive_4d_mask_after_prefix"] = model(
            input_ids=ids[:, 8 : 8 + new],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).logits
    return results


def compare_tiny_llama() -> float:
    """Max |logits(sdpa) - logits(lychee_triton)| over the scenarios of ``tiny_llama_logits``."""
    from lychee_memory.kernels import register_triton_attention

    from lychee_memory.testing import build_tiny_model

    model, _ = build_tiny_model("llama")
    model.to(DEVICE)
    expected = tiny_llama_logits(model, "sdpa")
    actual = tiny_llama_logits(model, register_triton_attention())
    worst = 0.0
    for name, logits in expected.items():
        error = (actual[name] - logits).abs().max().item()
        assert error <= 1e-4, f"{name}: max abs logit error {error:.3g}"
        worst = max(worst, error)
    return worst


# ---------------------------------------------------------------------------------------------------
# The checks that need the Triton interpreter.

CheckFunction = Callable[[], float]
DEVICE = torch.device("cpu")  # --device cuda checks the compiled kernels on a GPU


def _on_device(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if tensor is None else tensor.to(DEVICE) for tensor in tensors]


def _logprob_check(case: LogprobCase) -> CheckFunction:
    def run() -> float:
        from lychee_memory.kernels.token_logprobs_triton import token_logprobs_triton

        hidden, weight, targets, bias = _on_device(*case.tensors())
        actual = token_logprobs_triton(hidden, weight, targets, bias, vocab_splits=case.vocab_splits)
        expected = naive_token_logprobs(hidden, weight, targets, bias)
        assert actual.dtype == torch.float32 and actual.shape == expected.shape
        error = (actual - expected).abs().max().item()
        assert error <= case.tolerance, f"max abs error {error:.3g} > {case.tolerance}"
        return error

    return run


def _logprob_against_reference_check(case: LogprobCase) -> CheckFunction:
    """The kernel and the torch reference give the same scores, so the gate does not depend on which path ran."""

    def run() -> float:
        from lychee_memory.kernels.token_logprobs import token_logprobs_reference
        from lychee_memory.kernels.token_logprobs_triton import token_logprobs_triton

        hidden, weight, targets, bias = _on_device(*case.tensors(seed=1))
        actual = token_logprobs_triton(hidden, weight, targets, bias, vocab_splits=case.vocab_splits)
        expected = token_logprobs_reference(hidden, weight, targets, bias)
        error = (actual - expected).abs().max().item()
        assert error <= case.tolerance, f"kernel vs reference: max abs difference {error:.3g} > {case.tolerance}"
        return error

    return run


def _attention_check(case: AttentionCase) -> CheckFunction:
    def run() -> float:
        from lychee_memory.kernels.prefix_attention_triton import prefix_attention_triton

        query, key, value, mask, scaling, is_causal = case.tensors()
        query, key, value, mask = _on_device(query, key, value, mask)
        actual = prefix_attention_triton(query, key, value, mask, scaling, is_causal)
        expected = naive_attention(query, key, value, mask, scaling, is_causal)
        assert actual.dtype == query.dtype and actual.shape == query.shape
        assert not actual.isnan().any(), "NaN in the output"
        assert blocked_rows_are_zero(case, actual), "a fully blocked query row is not zero"
        error = (actual.float() - expected).abs().max().item()
        assert error <= case.tolerance, f"max abs error {error:.3g} > {case.tolerance}"
        return error

    return run


def _key_score_check(case: KeyScoreCase) -> CheckFunction:
    def run() -> float:
        from lychee_memory.kernels.key_scores_triton import key_logsumexp_triton

        queries, keys, key_valid, head_pairs, scale = case.tensors()
        queries, keys, key_valid = _on_device(queries, keys, key_valid)
        actual = key_logsumexp_triton(queries, keys, key_valid, head_pairs, scale)
        expected = naive_key_logsumexp(queries, keys, key_valid, head_pairs, scale)
        assert actual.dtype == torch.float32 and actual.shape == expected.shape
        empty = ~key_valid.any(dim=1)
        assert bool((actual[empty] == float("-inf")).all()), "a block without valid keys is not -inf"
        assert not actual.isnan().any(), "NaN in the output"
        finite = ~empty
        error = (actual[finite] - expected[finite]).abs().max().item()
        assert error <= case.tolerance, f"max abs error {error:.3g} > {case.tolerance}"
        return error

    return run


def _key_score_dispatcher_check() -> float:
    """The dispatcher with Triton forced on CPU tensors runs the kernel (lazy import) without falling back."""
    from lychee_memory.kernels import _triton_support

    key_scores = importlib.import_module("lychee_memory.kernels.key_scores")
    key_scores_triton = importlib.import_module("lychee_memory.kernels.key_scores_triton")
    launches = 0
    kernel = key_scores_triton.key_logsumexp_triton

    def counting_kernel(*args, **kwargs):
        nonlocal launches
        launches += 1
        return kernel(*args, **kwargs)

    key_scores_triton.key_logsumexp_triton = counting_kernel
    key_scores.use_triton = lambda tensor: True
    case = KEY_SCORE_CASES["block_without_valid_keys"]
    queries, keys, key_valid, head_pairs, scale = case.tensors(seed=1)
    queries, keys, key_valid = _on_device(queries, keys, key_valid)
    actual = key_scores.key_logsumexp(queries, keys, key_valid, head_pairs, scale)
    expected = naive_key_logsumexp(queries, keys, key_valid, head_pairs, scale)
    assert launches == 1, "the Triton kernel did not run exactly once"
    assert "key_logsumexp" not in _triton_support._failed_kernels, "the Triton path raised and fell back"
    assert torch.equal(actual.isinf(), expected.isinf())
    finite = ~expected.isinf()
    return (actual[finite] - expected[finite]).abs().max().item()


def _tiny_llama_check() -> float:
    """End to end with the Triton kernel forced on CPU tensors; fails if the dispatcher fell back."""
    from lychee_memory.kernels import _triton_support

    # The package re-exports functions under the module names, so fetch the modules themselves.
    prefix_attention = importlib.import_module("lychee_memory.kernels.prefix_attention")
    prefix_attention_triton = importlib.import_module("lychee_memory.kernels.prefix_attention_triton")
    launches = 0
    kernel = prefix_attention_triton.prefix_attention_triton

    def counting_kernel(*args, **kwargs):
        nonlocal launches
        launches += 1
        return kernel(*args, **kwargs)

    prefix_attention_triton.prefix_attention_triton = counting_kernel
    prefix_attention.use_triton = lambda tensor: True  # route CPU tensors to the interpreter
    error = compare_tiny_llama()
    assert launches > 0, "the Triton kernel never ran"
    assert "prefix_attention" not in _triton_support._failed_kernels, "the Triton path raised and fell back"
    return error


CHECKS: dict[str, CheckFunction] = {
    **{f"token_logprobs[{name}]": _logprob_check(case) for name, case in LOGPROB_CASES.items()},
    **{
        f"token_logprobs_vs_reference[{name}]": _logprob_against_reference_check(case)
        for name, case in LOGPROB_CASES.items()
        if case.dtype != torch.float32
    },
    **{f"prefix_attention[{name}]": _attention_check(case) for name, case in ATTENTION_CASES.items()},
    **{f"key_logsumexp[{name}]": _key_score_check(case) for name, case in KEY_SCORE_CASES.items()},
    "key_logsumexp_dispatcher_runs_the_kernel": _key_score_dispatcher_check,
    "tiny_llama_lychee_triton_vs_sdpa": _tiny_llama_check,
}


def run_checks(names: list[str]) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for name in names:
        started = time.perf_counter()
        try:
            error = CHECKS[name]()
            results[name] = {"ok": True, "max_error": error}
        except Exception as failure:
            results[name] = {"ok": False, "error": "".join(traceback.format_exception(failure))}
        results[name]["seconds"] = round(time.perf_counter() - started, 3)
        status = f"max_error={results[name]['max_error']:.3g}" if results[name]["ok"] else "FAILED"
        print(f"{name}: {status} ({results[name]['seconds']}s)", flush=True)
        if not results[name]["ok"]:
            print(results[name]["error"], file=sys.stderr, flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checks", nargs="*", help="names of checks to run (default: all)")
    parser.add_argument("--json", help="write {check: {ok, max_error | error, seconds}} here")
    parser.add_argument("--device", default="cpu", help="cpu (needs TRITON_INTERPRET=1) or cuda")
    arguments = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(arguments.device)
    if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("set TRITON_INTERPRET=1 (before import) to run the Triton kernels on a CPU", file=sys.stderr)
        return 2
    unknown = [name for name in arguments.checks if name not in CHECKS]
    if unknown:
        print(f"unknown checks: {unknown}", file=sys.stderr)
        return 2
    results = run_checks(arguments.checks or list(CHECKS))
    if arguments.json:
        with open(arguments.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0 if all(result["ok"] for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
