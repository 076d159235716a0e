"""The gate index's stored format (``IndexSpec``): which heads' keys a block's index holds, in what layout.

Index (made at ingest, from the compressor's own forward, so it costs no extra forward): for each chosen
(layer, KV head) pair, the post-RoPE keys of the chunk's tokens after its first ``skip_tokens``, in float16:
``[pairs, tokens, head_dim]`` per block. Framed blocks begin after the shared opening, which is the attention
sink, so no sink is in the index. A bank's manifest records :meth:`IndexSpec.describe`; the store keeps the keys.

``dtype`` (``gate.index_dtype``) is how the keys are stored: ``float16`` as they are, or ``int8``: 8-bit codes with
a float32 scale and zero (minimum) per (pair, channel) over the block's tokens (keys carry outlier channels, so per
channel, as KIVI quantises keys), half the bytes. Decoded indexes are float16 either way, so scoring costs the same; an int8
spec's ``extract`` already returns the decoded keys, so a bank in memory scores exactly as it will once stored
(encoding decoded keys again decodes to the same keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..choices import INDEX_DTYPES as INDEX_DTYPES  # how an index may be stored (``IndexSpec.dtype``)

INDEX_DTYPE = torch.float16  # the dtype of decoded (and cached, and scored) index keys
INT8_LEVELS = 255.0


def quantize_index(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8-bit codes (uint8 [pairs, tokens, head_dim]), float32 scales and zeros ([pairs, 1, head_dim]) of an index:
    per (pair, channel), zero = min over the tokens and scale = (max - min) / 255, so each key is off by at most
    half its scale (asymmetric: measured to drift half as much as symmetric int8, benchmarks/index_codec.py)."""
    values = keys.detach().to(device="cpu", dtype=torch.float32)
    zeros = values.amin(dim=1, keepdim=True)
    spread = values.amax(dim=1, keepdim=True) - zeros
    scales = torch.where(spread > 0, spread / INT8_LEVELS, torch.ones_like(spread))
    codes = torch.round((values - zeros) / scales).clamp_(0, INT8_LEVELS).to(torch.uint8)
    return codes.contiguous(), scales.contiguous(), zeros.contiguous()


def dequantize_index(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """The float16 index keys of ``quantize_index`` output."""
    return (codes.to(torch.float32) * scales + zeros).to(INDEX_DTYPE)


@dataclass(frozen=True)
class IndexSpec:
    """Which attention heads the index serves, and how many leading chunk tokens it leaves out.

    ``heads`` are (layer, query head); the index stores the keys of the KV heads they read (query head h reads
    KV head h // group, group = query heads per KV head).
    """

    heads: tuple[tuple[int, int], ...]
    skip_tokens: int
    group: int
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if not self.heads:
            raise ValueError("a gate index needs at least one head")
        if self.dtype not in INDEX_DTYPES:
            raise ValueError(f"unknown gate index dtype {self.dtype!r}; choose one of {', '.join(INDEX_DTYPES)}")
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
            "dtype": self.dtype,
        }

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> IndexSpec:
        return cls(
            heads=tuple((int(layer), int(head)) for layer, head in description["heads"]),
            skip_tokens=int(description["skip_tokens"]),
            group=int(description["group"]),
            dtype=str(description.get("dtype", "float16")),
        )

    def extract(self, layer_keys: Sequence[torch.Tensor], row: int, start: int, length: int) -> torch.Tensor:
        """The index of one chunk from its forward's keys (per layer [B, H_kv, S, D]; the chunk at start..+length)."""
        skip = min(self.skip_tokens, max(0, length - 1))
        parts = [layer_keys[layer][row, kv_head, start + skip : start + length] for layer, kv_head in self.pairs]
        keys = torch.stack(parts).to(device="cpu", dtype=INDEX_DTYPE).contiguous()
        return keys if self.dtype == "float16" else dequantize_index(*quantize_index(keys))

    def encode(self, keys: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors a stored index holds: ``keys`` (float16), or 8-bit ``codes`` with float32 ``scales`` and
        ``zeros``."""
        keys = keys.detach().to(device="cpu", dtype=INDEX_DTYPE).contiguous()
        if self.dtype == "float16":
            return {"keys": keys}
        codes, scales, zeros = quantize_index(keys)
        return {"codes": codes, "scales": scales, "zeros": zeros}

    def decode(self, tensors: dict[str, torch.Tensor], head_dim: int) -> torch.Tensor:
        """The float16 keys of ``encode`` output; ValueError (saying what) when the tensors do not fit this spec."""
        if self.dtype == "float16":
            if "keys" not in tensors:
                raise ValueError("its payload lacks the index keys")
            keys = tensors["keys"]
        else:
            if any(name not in tensors for name in ("codes", "scales", "zeros")):
                raise ValueError("its payload lacks the int8 index codes, scales or zeros")
            codes, scales, zeros = tensors["codes"], tensors["scales"], tensors["zeros"]
            if codes.dtype != torch.uint8 or not self.check(codes, head_dim):
                raise ValueError(f"its codes {tuple(codes.shape)} ({codes.dtype}) do not match the bank's index spec")
            for name, tensor in (("scales", scales), ("zeros", zeros)):
                if tensor.dtype != torch.float32 or tensor.shape != (codes.shape[0], 1, codes.shape[2]):
                    raise ValueError(f"its {name} {tuple(tensor.shape)} ({tensor.dtype}) do not match its codes")
            if not bool(torch.isfinite(scales).all()) or bool((scales <= 0).any()):
                raise ValueError("its scales are not finite and positive")
            if not bool(torch.isfinite(zeros).all()):
                raise ValueError("its zeros are not finite")
            keys = dequantize_index(codes, scales, zeros)
        if keys.dtype != INDEX_DTYPE or not self.check(keys, head_dim):
            raise ValueError(f"its shape {tuple(keys.shape)} ({keys.dtype}) does not match the bank's index spec")
        return keys

    def check(self, keys: torch.Tensor, head_dim: int) -> bool:
        """Whether a stored index tensor has this spec's layout."""
        return keys.dim() == 3 and keys.shape[0] == len(self.pairs) and keys.shape[2] == head_dim and keys.shape[1] > 0
