"""The gate index's stored format (``IndexSpec``): which heads' keys a block's index holds, in what layout.

Index (made at ingest, from the compressor's own forward, so it costs no extra forward): for each chosen
(layer, KV head) pair, the post-RoPE keys of the chunk's tokens after its first ``skip_tokens``, in float16:
``[pairs, tokens, head_dim]`` per block. Framed blocks begin after the shared opening, which is the attention
sink, so no sink is in the index. A bank's manifest records :meth:`IndexSpec.describe`; the store keeps the keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

INDEX_DTYPE = torch.float16


@dataclass(frozen=True)
class IndexSpec:
    """Which attention heads the index serves, and how many leading chunk tokens it leaves out.

    ``heads`` are (layer, query head); the index stores the keys of the KV heads they read (query head h reads
    KV head h // group, group = query heads per KV head).
    """

    heads: tuple[tuple[int, int], ...]
    skip_tokens: int
    group: int

    def __post_init__(self) -> None:
        if not self.heads:
            raise ValueError("a gate index needs at least one head")
        if self.group < 1 or self.skip_tokens < 0:
            raise ValueError(f"bad index spec: group {self.group}, skip_tokens {self.skip_tokens}")

    @property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        """The (layer, KV head) pairs whose keys are stored, sorted."""
        return tuple(sorted({(layer, head // self.group) for layer, head in self.heads}))

    @property
    def head_pairs(self) -> list[int]:
        """For each head, the position of its (layer, KV head) pair in ``pairs``."""
        position = {pair: index for index, pair in enumerate(self.pairs)}
        return [position[(layer, head // self.group)] for layer, head in self.heads]

    @property
    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.heads})

    def describe(self) -> dict[str, Any]:
        """What determines a stored index (recorded in a bank's manifest, part of its items' keys)."""
        return {
            "heads": [list(head) for head in self.heads],
            "skip_tokens": self.skip_tokens,
            "group": self.group,
            "dtype": str(INDEX_DTYPE).removeprefix("torch."),
        }

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> IndexSpec:
        return cls(
            heads=tuple((int(layer), int(head)) for layer, head in description["heads"]),
            skip_tokens=int(description["skip_tokens"]),
            group=int(description["group"]),
        )

    def extract(self, layer_keys: Sequence[torch.Tensor], row: int, start: int, length: int) -> torch.Tensor:
        """The index of one chunk from its forward's keys (per layer [B, H_kv, S, D]; the chunk at start..+length)."""
        skip = min(self.skip_tokens, max(0, length - 1))
        parts = [layer_keys[layer][row, kv_head, start + skip : start + length] for layer, kv_head in self.pairs]
        return torch.stack(parts).to(device="cpu", dtype=INDEX_DTYPE).contiguous()

    def check(self, keys: torch.Tensor, head_dim: int) -> bool:
        """Whether a stored index tensor has this spec's layout."""
        return keys.dim() == 3 and keys.shape[0] == len(self.pairs) and keys.shape[2] == head_dim and keys.shape[1] > 0
