"""Training-free compressors for any causal LM: keep a scored subset of a chunk's own KV.

One forward over the chunk, after the engine's opening (``BlockOpening``: sequence start and chat user-turn
opening, its KV computed once), gives every layer's keys and values (post-RoPE, at the chunk's positions); a
scoring rule ranks the chunk's positions per layer and KV head, and the top ceil(L / ratio) are kept in position
order. The opening's slots are not kept (readers put the shared opening before the block). Prompts read the block
continuing at position P + L (P = opening length), as if opening and chunk had been there. When the compressor has
an ``index_spec``, the same forward's keys give each block its gate index (``gate/index_format.py``).

- ``none``: keep everything (ratio 1), the reference and ablation.
- ``key_norm``: keep the keys with the smallest L2 norm (low-norm keys draw the most attention).
- ``attention``: keep what the chunk's last ``observation_window`` queries attend to most, averaged
  over the window and the query heads sharing a KV head, smoothed over neighbouring positions.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from ..blocks import BlockOpening, MemoryBlock
from ..chunking import Chunk
from ..gate.index_format import IndexSpec
from ..kv_prefix import apply_rope
from ..model_loading import LoadedModel
from .base import Compressor, slots_for, span_of


@dataclass
class _ChunkForward:
    """Per-layer KV of a batch of chunks plus, when asked, the queries of each chunk's tail."""

    keys: list[torch.Tensor]  # per layer [B, H_kv, T, D]
    values: list[torch.Tensor]
    window_queries: list[torch.Tensor] | None  # per layer [B, H_q, W, D], post-RoPE
    window_index: torch.Tensor | None  # [B, W] positions of the window queries
    window_valid: torch.Tensor | None  # [B, W] False where a short row has fewer than W tokens
    prefix: int = 0  # opening slots before every row's tokens in keys/values


@torch.inference_mode()
def run_chunks(loaded: LoadedModel, sequences: list[list[int]], window: int | None, prefix: int = 0) -> _ChunkForward:
    """One batched forward over right-padded sequences (each the opening's ``prefix`` tokens, then a chunk),
    returning KV and (optionally) the tail queries of each sequence.

    The opening is recomputed in every forward rather than read from a cache: a cache-free forward takes the
    causal fast path of the attention kernels, which costs less than the opening's few dozen extra tokens.
    """
    device = loaded.device
    lengths = torch.tensor([len(seq) for seq in sequences], device=device)
    total = int(lengths.max())
    input_ids = torch.full((len(sequences), total), loaded.tokenizer.pad_token_id, dtype=torch.long, device=device)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long, device=device)
    padded = bool((lengths < total).any())
    attention_mask = (torch.arange(total, device=device)[None, :] < lengths[:, None]).long() if padded else None

    captured: list[torch.Tensor] = []
    window_index = window_valid = None
    hooks = []
    if window is not None:
        # Each row's window is its own last min(window, length) tokens; shorter rows mark the rest invalid.
        width = min(window, total)
        window_index = lengths[:, None] - width + torch.arange(width, device=device)[None, :]  # [B, W]
        window_valid = window_index >= 0
        window_index = window_index.clamp(min=0)

        def capture(module, args, kwargs, output):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            cos, sin = kwargs["position_embeddings"]
            gather = window_index[:, :, None].expand(-1, -1, hidden.shape[-1])
            tail = hidden.gather(1, gather)
            query = module.q_proj(tail).view(tail.shape[0], tail.shape[1], -1, module.head_dim)
            if hasattr(module, "q_norm"):
                query = module.q_norm(query)
            query = query.transpose(1, 2)
            index = window_index[:, :, None].expand(-1, -1, cos.shape[-1])
            cos_tail = cos.expand(len(sequences), -1, -1).gather(1, index)[:, None]
            sin_tail = sin.expand(len(sequences), -1, -1).gather(1, index)[:, None]
            captured.append(apply_rope(query, cos_tail, sin_tail))

        for layer in loaded.model.get_decoder().layers:
            hooks.append(layer.self_attn.register_forward_hook(capture, with_kwargs=True))
    cache = DynamicCache(config=loaded.model.config)
    try:
        loaded.model.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True
        )
    finally:
        for hook in hooks:
            hook.remove()
    keys = [layer.keys for layer in cache.layers]
    values = [layer.values for layer in cache.layers]
    return _ChunkForward(keys, values, captured if window is not None else None, window_index, window_valid, prefix)


class SelectionCompressor(Compressor):
    """Shared machinery: forward, score positions per layer/head, keep the top ceil(L/ratio)."""

    needs_window_queries: ClassVar[bool] = False
    framed: ClassVar[bool] = True
    builds_gate_index: ClassVar[bool] = True
    observation_window: int = 0
    opening: BlockOpening | None = None  # set by the engine; None = the sequence start alone
    index_spec: IndexSpec | None = None  # set by the engine when the gate's prefilter is on

    @abstractmethod
    def score(
        self, keys: torch.Tensor, queries: torch.Tensor | None, length: int, row: int, forward: _ChunkForward
    ) -> torch.Tensor:
        """Scores [H_kv, length] of the chunk's positions for one row and layer; higher is kept first.

        ``keys`` [H_kv, prefix + length, D] include the opening's (``forward.prefix``), which queries attend to too.
        """

    def compress(self, loaded: LoadedModel, chunks: list[Chunk]) -> list[MemoryBlock]:
        opening = self.opening_for(loaded)
        prefix = opening.num_slots
        sequences = [list(opening.token_ids) + list(chunk.token_ids) for chunk in chunks]
        forward = run_chunks(loaded, sequences, self.observation_window if self.needs_window_queries else None, prefix)
        blocks = []
        for row, chunk in enumerate(chunks):
            length = len(chunk.token_ids)
            budget = slots_for(length, self.ratio)
            layer_keys, layer_values = [], []
            for layer in range(len(forward.keys)):
                keys = forward.keys[layer][row, :, prefix : prefix + length]
                values = forward.values[layer][row, :, prefix : prefix + length]
                if budget >= length:
                    kept = torch.arange(length, device=keys.device).expand(keys.shape[0], -1)
                else:
                    queries = forward.window_queries[layer][row] if forward.window_queries is not None else None
                    with_opening = forward.keys[layer][row, :, : prefix + length]
                    scores = self.score(with_opening, queries, length, row, forward).float()
                    kept = scores.topk(budget, dim=-1).indices.sort(dim=-1).values
                index = kept[:, :, None].expand(-1, -1, keys.shape[-1])
                layer_keys.append(keys.gather(1, index))
                layer_values.append(values.gather(1, index))
            stacked_keys = torch.stack(layer_keys)
            gate_keys = None
            if self.index_spec is not None:
                gate_keys = self.index_spec.extract(forward.keys, row, prefix, length)
            blocks.append(
                MemoryBlock(
                    keys=stacked_keys,
                    values=torch.stack(layer_values),
                    valid=torch.ones(stacked_keys.shape[2], dtype=torch.bool),
                    next_position=prefix + length,
                    token_ids=torch.tensor(chunk.token_ids, dtype=torch.int32),
                    span=span_of(chunk),
                    compressor=self.name,
                    gate_keys=gate_keys,
                )
            )
        return blocks


@dataclass
class NoCompression(SelectionCompressor):
    """Raw KV of the chunk (ratio 1): the reference every compressor is compared against."""

    name: ClassVar[str] = "none"
    ratio: int = 1

    def __post_init__(self) -> None:
        self.ratio = 1

    def score(self, keys, queries, length, row, forward):
        return keys.new_zeros(keys.shape[0], length)  # never consulted: ratio 1 keeps every position

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "ratio": 1}


@dataclass
class KeyNormCompressor(SelectionCompressor):
    """Keep the lowest-norm keys per layer and KV head (or the highest, with keep="high")."""

    name: ClassVar[str] = "key_norm"
    ratio: int = 4
    keep: str = "low"

    def __post_init__(self) -> None:
        if self.keep not in ("low", "high"):
            raise ValueError(f"key_norm keep must be 'low' or 'high', got {self.keep!r}")

    def score(self, keys, queries, length, row, forward):
        norms = keys[:, forward.prefix :].float().norm(dim=-1)
        return norms if self.keep == "high" else -norms

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "ratio": self.ratio, "keep": self.keep}


@dataclass
class AttentionCompressor(SelectionCompressor):
    """Keep the positions the chunk's tail queries attend to most (SnapKV-style observation window)."""

    name: ClassVar[str] = "attention"
    needs_window_queries: ClassVar[bool] = True
    ratio: int = 4
    observation_window: int = 32
    pooling_kernel: int = 5

    def score(self, keys, queries, length, row, forward):
        assert queries is not None and forward.window_index is not None
        kv_heads, head_dim = keys.shape[0], keys.shape[-1]
        group = queries.shape[0] // kv_heads
        grouped = queries.float().view(kv_heads, group, -1, head_dim)  # [H_kv, G, W, D]
        logits = torch.einsum("hgwd,htd->hgwt", grouped, keys.float()) * head_dim**-0.5
        valid = forward.window_valid[row]
        query_positions = forward.window_index[row][valid]  # positions in the whole sequence (opening first)
        logits = logits[:, :, valid]
        causal = torch.arange(keys.shape[1], device=keys.device)[None, :] <= query_positions[:, None]  # [W, P + T]
        logits = logits.masked_fill(~causal, float("-inf"))
        # Softmax over every key the queries see (the opening too), then the chunk's positions only.
        weights = logits.softmax(dim=-1).mean(dim=(1, 2))[:, forward.prefix :]  # [H_kv, T]
        if self.pooling_kernel > 1:
            weights = F.avg_pool1d(weights[:, None], self.pooling_kernel, stride=1, padding=self.pooling_kernel // 2)[
                :, 0
            ]
        return weights

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "ratio": self.ratio,
            "observation_window": self.observation_window,
            "pooling_kernel": self.pooling_kernel,
        }
