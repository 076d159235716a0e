"""Blocks and manifests as bytes: content keys, framing with a checksum, safetensors payloads, block codecs.

A framed record is ``magic | SHA-256 of the payload | payload``; every read checks the hash. A block payload is
safetensors (never a pickle): keys, values, valid slots and token ids, with metadata naming the storage format,
the dtype the block was computed in, the model fingerprint and the compressor settings.

How keys and values are stored is a ``BlockCodec`` chosen by its name (the storage format, ``block_dtype``) from
``CODECS``: one entry per format (float32, bfloat16, float16, int8, the group-quantised int4, int2, k4v2 and
k4v3, and ``none``, the index-only tier that stores no payload at all).
A new format is one more entry (and its name in ``manifest.BlockDtype``); the payload around the tensors, and so
every content key, stays as it is.
"""

from __future__ import annotations

import hashlib
import json
import struct
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch

from ..blocks import BankIdentity, MemoryBlock
from ..errors import ConfigurationError, NonFiniteScalesError
from .manifest import BLOCK_DTYPES, FORMAT_VERSION

BLOCK_MAGIC = b"LYCHEEB1"
MANIFEST_MAGIC = b"LYCHEEM1"
DIGEST_BYTES = 32
# Elements per group of the quantised codecs (int4, int2, k4v2; k4v3's keys use twice as many), chosen by
# benchmarks/codec_fidelity.py (BENCHMARKS.md, "Unreleased: quantised block codecs"). Part of what a codec's name
# means: a new group size is a new name.
QUANTISATION_GROUP = 64
CODE_WIDTHS = (2, 3, 4)  # bits per code the group codecs pack
HEADER_BYTES = len(BLOCK_MAGIC) + DIGEST_BYTES + 8  # magic, digest, safetensors header length


class Damaged(Exception):
    """A stored item failed a check; the store turns it into a specific StoreError naming the item."""


def block_key(
    model_fingerprint: str,
    compressor: Mapping[str, Any],
    storage: str,
    token_ids: torch.Tensor,
    opening: Sequence[int] | None,
) -> str:
    """Content address of a block: model fingerprint, compressor settings, storage format, the opening a framed
    block was encoded after (its KV depends on it), and the chunk's token ids.

    ``opening`` None (a bank written before framed blocks) gives the keys such banks were written under, so their
    blocks still verify; ``()`` (an unframed compressor) is a current key of its own.
    """
    fields: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "model": model_fingerprint,
        "compressor": dict(compressor),
        "storage": storage,
    }
    if opening is not None:
        fields["opening"] = [int(token) for token in opening]
    identity = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(identity.encode("utf-8"))
    digest.update(b"\0")
    digest.update(token_ids.detach().to(device="cpu", dtype=torch.int32).contiguous().numpy().astype("<i4").tobytes())
    return digest.hexdigest()


def frame(magic: bytes, payload: bytes) -> bytes:
    return magic + hashlib.sha256(payload).digest() + payload


def unframe(magic: bytes, data: bytes) -> bytes:
    header = len(magic) + DIGEST_BYTES
    if len(data) < header or data[: len(magic)] != magic:
        raise Damaged("its header is not a lychee-memory record")
    view = memoryview(data)
    if hashlib.sha256(view[header:]).digest() != data[len(magic) : header]:
        raise Damaged("its checksum does not match its content")
    return data[header:]


def encode_block(block: MemoryBlock, storage: str, identity: BankIdentity) -> bytes:
    """A block as framed safetensors bytes, its keys and values stored by the codec named ``storage``."""
    codec = codec_for(storage)
    tensors: dict[str, torch.Tensor] = {
        "valid": block.valid.detach().to(device="cpu", dtype=torch.bool).contiguous(),
        "token_ids": block.token_ids.detach().to(device="cpu", dtype=torch.int32).contiguous(),
        **codec.encode(block.keys, block.values, block.valid),
    }
    metadata = {
        "format": str(FORMAT_VERSION),
        "storage": storage,
        "source_dtype": str(block.keys.dtype).removeprefix("torch."),
        "next_position": str(int(block.next_position)),
        "compressor_name": block.compressor,
        "model_fingerprint": identity.model_fingerprint,
        "compressor": json.dumps(dict(identity.compressor), sort_keys=True),
    }
    payload = safetensors.torch.save({name: tensor.contiguous() for name, tensor in tensors.items()}, metadata)
    return frame(BLOCK_MAGIC, canonical_safetensors(payload))


def canonical_safetensors(payload: bytes) -> bytes:
    """The same safetensors payload with its JSON header's keys sorted, so equal tensors and metadata give equal bytes.

    safetensors writes the metadata in hash-map order, which varies between calls and processes; a block written
    by a distributed worker must be byte-for-byte the block a single process writes. The tensor data is untouched.
    """
    (length,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes with spaces
    return struct.pack("<Q", len(text)) + text + payload[8 + length :]


def safetensors_header(payload: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors payload (shapes, dtypes, metadata) without reading the tensors."""
    if len(payload) < 8:
        raise Damaged("its payload is truncated")
    (length,) = struct.unpack("<Q", payload[:8])
    if length > len(payload) - 8:
        raise Damaged("its payload header is truncated")
    try:
        return json.loads(payload[8 : 8 + length])
    except ValueError:
        raise Damaged("its payload header is not valid JSON") from None


def header_length(head: bytes) -> int | None:
    """Bytes of a framed block's safetensors header, from its first HEADER_BYTES; None when not a block."""
    if len(head) < HEADER_BYTES or not head.startswith(BLOCK_MAGIC):
        return None
    (length,) = struct.unpack("<Q", head[HEADER_BYTES - 8 : HEADER_BYTES])
    return length


@dataclass
class DecodedBlock:
    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    token_ids: torch.Tensor
    metadata: dict[str, str]


def decode_payload(payload: bytes, dtype: torch.dtype | None = None) -> DecodedBlock:
    """Tensors and metadata of an unframed block payload; keys/values in ``dtype`` (default: as computed).

    Tensors that earlier versions stored and nothing reads (slot positions) are ignored.
    """
    metadata = safetensors_header(payload).get("__metadata__") or {}
    try:
        tensors = safetensors.torch.load(payload)
    except Exception as error:  # safetensors raises its own error types for malformed payloads
        raise Damaged(f"its payload cannot be read ({error})") from None
    storage = metadata.get("storage")
    codec = CODECS.get(storage) if isinstance(storage, str) else None
    if codec is None or "source_dtype" not in metadata:
        raise Damaged(f"its metadata names an unknown storage format {storage!r}")
    target = dtype or getattr(torch, metadata["source_dtype"])
    try:
        keys, values = codec.decode(tensors, target)
        return DecodedBlock(keys, values, tensors["valid"], tensors["token_ids"], dict(metadata))
    except KeyError as missing:
        raise Damaged(f"its payload lacks the tensor {missing}") from None
    except (RuntimeError, ValueError) as error:  # tensors that are not what the codec it names writes
        raise Damaged(f"its tensors do not fit its {storage} codec ({str(error)[:120]})") from None


# Block codecs: one entry per storage format ---------------------------------------------------------------


@dataclass(frozen=True)
class BlockCodec(ABC):
    """How one storage format writes a block's keys and values as named tensors, and reads them back.

    ``name`` is the format's name in block metadata, content keys and ``block_dtype``; ``bytes_per_element`` what
    one key or value element costs stored (scales aside).
    """

    name: str
    bytes_per_element: float

    @property
    def widths(self) -> tuple[int, int]:
        """Bits each stored key and value element keeps (scales aside): what a conversion may not ask back."""
        bits = round(self.bytes_per_element * 8)
        return bits, bits

    @abstractmethod
    def encode(self, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stored tensors (CPU, contiguous) of a block's keys and values; ``valid`` marks its real slots."""

    @abstractmethod
    def decode(self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values in ``dtype`` from the stored tensors; KeyError when one is missing."""


@dataclass(frozen=True)
class FloatCodec(BlockCodec):
    """Keys and values as they are, cast to one floating-point dtype."""

    dtype: torch.dtype

    def encode(self, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "keys": keys.detach().to(device="cpu", dtype=self.dtype).contiguous(),
            "values": values.detach().to(device="cpu", dtype=self.dtype).contiguous(),
        }

    def decode(self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return tensors["keys"].to(dtype), tensors["values"].to(dtype)


@dataclass(frozen=True)
class Int8Codec(BlockCodec):
    """Symmetric int8 with float32 scales: keys per channel, values per slot (keys carry outlier channels, values
    vary by token), the common layout of KV-cache quantisation."""

    name: str = "int8"
    bytes_per_element: float = 1.0

    def encode(self, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        stored: dict[str, torch.Tensor] = {}
        stored["keys"], stored["key_scales"] = quantize_int8(keys, dim=2, valid=valid)
        stored["values"], stored["value_scales"] = quantize_int8(values, dim=3)
        return stored

    def decode(self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            dequantize_int8(tensors["keys"], tensors["key_scales"], dtype),
            dequantize_int8(tensors["values"], tensors["value_scales"], dtype),
        )


CODECS: dict[str, BlockCodec] = {}
"""Every block codec, by name: what ``encode_block`` writes with and ``decode_payload`` reads with."""


def register_codec(codec: BlockCodec) -> BlockCodec:
    """Add a codec to ``CODECS`` under its name (a name already taken is refused: stored blocks name it)."""
    if not codec.name or codec.name in CODECS:
        raise ConfigurationError(f"a block codec needs a new name, got {codec.name!r}")
    CODECS[codec.name] = codec
    return codec


def codec_for(storage: str) -> BlockCodec:
    """The codec of storage format ``storage``; ConfigurationError naming the formats there are when unknown."""
    codec = CODECS.get(storage) if storage in BLOCK_DTYPES else None
    if codec is None:
        raise ConfigurationError(f"unknown block dtype {storage!r}; choose one of {', '.join(BLOCK_DTYPES)}")
    return codec


def quantize_int8(
    tensor: torch.Tensor, dim: int, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one float32 scale per slice along ``dim`` (scale = max |x| / 127).

    Each element is off by at most half its scale after ``dequantize_int8``. ``valid`` ([slots]) keeps
    padding slots out of the scales; their values are clamped to the range of the real ones.
    """
    values = tensor.detach().to(device="cpu", dtype=torch.float32)
    magnitudes = values.abs()
    if valid is not None:
        magnitudes = magnitudes * valid.to(torch.float32)[None, None, :, None]
    peak = magnitudes.amax(dim=dim, keepdim=True)
    scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))
    quantized = torch.round(values / scale).clamp_(-127, 127).to(torch.int8)
    return quantized, scale


def dequantize_int8(quantized: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (quantized.to(torch.float32) * scale).to(dtype)


@dataclass(frozen=True)
class GroupCodec(BlockCodec):
    """Asymmetric group quantisation (KIVI): a float16 scale and zero (the group's minimum) per ``group`` elements,
    keys grouped per channel along slots (keys carry outlier channels), values per slot along channels; codes of
    ``key_bits``/``value_bits`` (2, 3 or 4) packed into uint8 along the channels. Keys and values have their own
    group sizes (``key_group`` slots, ``value_group`` channels). Padding slots stay out of key groups' ranges. Each
    element is off by at most half its group's step, (max - min) / (2**bits - 1), plus float16 rounding of the zero.

    Stored tensors: ``keys``/``values`` uint8 [layers, heads, slots, ceil(head_dim * bits / 8)];
    ``key_scales``/``key_zeros`` float16 [layers, heads, ceil(slots / key_group), head_dim];
    ``value_scales``/``value_zeros`` float16 [layers, heads, slots, ceil(head_dim / value_group)].
    """

    key_bits: int = 4
    value_bits: int = 4
    key_group: int = 64
    value_group: int = 64

    def __post_init__(self) -> None:
        if (
            self.key_bits not in CODE_WIDTHS
            or self.value_bits not in CODE_WIDTHS
            or min(self.key_group, self.value_group) < 1
        ):
            raise ConfigurationError(f"codec {self.name}: codes of 2, 3 or 4 bits and positive groups, got {self}")
        if self.bytes_per_element != (self.key_bits + self.value_bits) / 16:
            raise ConfigurationError(f"codec {self.name}: bytes_per_element must be the mean code width in bytes")

    @property
    def widths(self) -> tuple[int, int]:
        return self.key_bits, self.value_bits

    def stored_bytes_per_element(self) -> float:
        """Bytes per key or value element with full groups: the codes plus a float16 scale and zero per group (the
        mean of keys' and values')."""
        return self.bytes_per_element + 2 / self.key_group + 2 / self.value_group

    def encode(self, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        if keys.shape != values.shape:
            raise ConfigurationError(f"codec {self.name}: keys {tuple(keys.shape)} and values differ in shape")
        key_codes, key_scales, key_zeros = quantize_groups(keys, self.key_bits, self.key_group, dim=2, valid=valid)
        value_codes, value_scales, value_zeros = quantize_groups(values, self.value_bits, self.value_group, dim=3)
        return {
            "keys": pack_codes(key_codes, self.key_bits),
            "key_scales": key_scales,
            "key_zeros": key_zeros,
            "values": pack_codes(value_codes, self.value_bits),
            "value_scales": value_scales,
            "value_zeros": value_zeros,
        }

    def decode(self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key_scales, key_zeros = tensors["key_scales"], tensors["key_zeros"]
        value_scales, value_zeros = tensors["value_scales"], tensors["value_zeros"]
        packed_keys, packed_values = tensors["keys"], tensors["values"]
        if (
            key_scales.dim() != 4
            or packed_keys.dim() != 4
            or packed_values.shape != packed_keys.shape[:3] + (-(-key_scales.shape[3] * self.value_bits // 8),)
        ):
            raise Damaged(f"its {self.name} tensors do not have the codec's shapes")
        head_dim, slots = key_scales.shape[3], packed_keys.shape[2]
        keys = unpack_codes(packed_keys, self.key_bits, head_dim)
        values = unpack_codes(packed_values, self.value_bits, head_dim)
        return (
            dequantize_groups(keys, key_scales, key_zeros, self.key_group, dim=2, size=slots).to(dtype),
            dequantize_groups(values, value_scales, value_zeros, self.value_group, dim=3, size=head_dim).to(dtype),
        )


def quantize_groups(
    tensor: torch.Tensor, bits: int, group: int, dim: int, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (uint8, 0 .. 2**bits - 1, ``tensor``'s shape) and float16 scales and zeros, one per ``group`` elements
    along ``dim`` (the last group may be short); ``valid`` ([slots], with ``dim`` the slots) keeps padding slots out
    of the ranges. Codes are computed against the float16 scale and zero, so decoding reproduces them exactly.
    NonFiniteScalesError when a scale or zero is not finite."""
    levels = 2**bits - 1
    moved = tensor.detach().to(device="cpu", dtype=torch.float32).movedim(dim, -1)
    size = moved.shape[-1]
    pad = -size % group
    counted = torch.ones(size, dtype=torch.bool) if valid is None else valid.to(device="cpu", dtype=torch.bool)
    counted = torch.nn.functional.pad(counted, (0, pad)).view(-1, group)
    grouped = torch.nn.functional.pad(moved, (0, pad)).reshape(*moved.shape[:-1], -1, group)
    low = torch.where(counted, grouped, torch.inf).amin(dim=-1)
    high = torch.where(counted, grouped, -torch.inf).amax(dim=-1)
    empty = ~counted.any(dim=-1)  # a group of padding slots only
    low, high = torch.where(empty, 0.0, low), torch.where(empty, 0.0, high)
    zero = low.to(torch.float16)
    scale = ((high - low) / levels).to(torch.float16)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # a constant group (or one below float16)
    if not (torch.isfinite(scale).all() and torch.isfinite(zero).all()):
        raise NonFiniteScalesError(
            f"a block's {'keys' if dim == 2 else 'values'} give non-finite {bits}-bit scales (inf or NaN in the KV, or "
            "a range beyond float16): it cannot be stored quantised; store it as bfloat16 or float32"
        )
    codes = torch.round((grouped - zero.float()[..., None]) / scale.float()[..., None]).clamp_(0, levels)
    codes = codes.reshape(*moved.shape[:-1], -1)[..., :size].to(torch.uint8).movedim(-1, dim).contiguous()
    return codes, scale.movedim(-1, dim).contiguous(), zero.movedim(-1, dim).contiguous()


def dequantize_groups(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int, dim: int, size: int
) -> torch.Tensor:
    """Float32 values of ``codes`` from their groups' scales and zeros along ``dim`` (``size`` elements there);
    Damaged when the scales do not fit the codes or are not finite."""
    if scale.shape != zero.shape or scale.shape[dim] != -(-size // group) or codes.shape[dim] != size:
        raise Damaged("its quantisation scales do not fit its codes")
    scale, zero = scale.to(torch.float32), zero.to(torch.float32)
    if not (torch.isfinite(scale).all() and torch.isfinite(zero).all()):
        raise Damaged("its quantisation scales are not finite")
    # Broadcast each group's scale and zero over its elements (no full-size copies of them: this runs per block read).
    moved = codes.movedim(dim, -1)
    grouped = torch.nn.functional.pad(moved, (0, -size % group)).reshape(*moved.shape[:-1], -1, group)
    values = grouped.to(torch.float32) * scale.movedim(dim, -1)[..., None] + zero.movedim(dim, -1)[..., None]
    return values.reshape(*moved.shape[:-1], -1)[..., :size].movedim(-1, dim).contiguous()


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``bits``-wide codes (uint8) packed along the last dimension: every 8 codes make one little-endian word of
    ``bits`` bytes, the first code in the low bits (so 4-bit codes go two to a byte, low nibble first, and 2-bit codes
    four to a byte); ceil(size * bits / 8) bytes, the last one padded with zero codes."""
    size = codes.shape[-1]
    padded = torch.nn.functional.pad(codes.to(torch.int64), (0, -size % 8))
    words = (padded.reshape(*codes.shape[:-1], -1, 8) << (torch.arange(8, dtype=torch.int64) * bits)).sum(dim=-1)
    octets = (words[..., None] >> (torch.arange(bits, dtype=torch.int64) * 8)) & 0xFF
    return octets.reshape(*codes.shape[:-1], -1)[..., : -(-size * bits // 8)].to(torch.uint8).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, size: int) -> torch.Tensor:
    """The first ``size`` codes along the last dimension of ``pack_codes`` output (uint8)."""
    if packed.dtype != torch.uint8 or packed.shape[-1] != -(-size * bits // 8):
        raise Damaged(f"its packed {bits}-bit codes do not have the expected shape")
    if 8 % bits == 0:  # whole codes per byte: shift the bytes themselves (the common, cheaper case)
        codes = (packed[..., None] >> torch.arange(0, 8, bits, dtype=torch.uint8)) & (2**bits - 1)
        return codes.reshape(*packed.shape[:-1], -1)[..., :size]
    octets = torch.nn.functional.pad(packed, (0, -packed.shape[-1] % bits)).to(torch.int32)
    shifts = torch.arange(bits, dtype=torch.int32) * 8
    words = (octets.reshape(*packed.shape[:-1], -1, bits) << shifts).sum(dim=-1, dtype=torch.int32)
    codes = (words[..., None] >> (torch.arange(8, dtype=torch.int32) * bits)) & (2**bits - 1)
    return codes.to(torch.uint8).reshape(*packed.shape[:-1], -1)[..., :size]


INDEX_ONLY = "none"


@dataclass(frozen=True)
class IndexOnlyCodec(BlockCodec):
    """The ``none`` tier: no payload is ever written (a bank keeps its gate index items and texts only); its blocks
    are encoded from the stored text when read (``reading.BlockLoader``), so there is nothing to decode here."""

    name: str = INDEX_ONLY
    bytes_per_element: float = 0.0

    def encode(self, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        raise ConfigurationError("block dtype 'none' stores no payload: an index-only block is never encoded")

    def decode(self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        raise Damaged("it names the index-only format 'none', which stores no payload")


register_codec(FloatCodec("float32", 4.0, torch.float32))
register_codec(FloatCodec("bfloat16", 2.0, torch.bfloat16))
register_codec(FloatCodec("float16", 2.0, torch.float16))
register_codec(Int8Codec())
register_codec(GroupCodec("int4", 0.5, 4, 4, QUANTISATION_GROUP, QUANTISATION_GROUP))
register_codec(GroupCodec("int2", 0.25, 2, 2, QUANTISATION_GROUP, QUANTISATION_GROUP))
register_codec(GroupCodec("k4v2", 0.375, 4, 2, QUANTISATION_GROUP, QUANTISATION_GROUP))
# 4-bit keys in groups of 128 slots, 3-bit values in groups of 64 channels: the simulated row that kept every answer
# of the 28K needle ladder at ~5.97 KB/token with an int8 index (benchmarks/codec_answers.py).
register_codec(GroupCodec("k4v3", 0.4375, 4, 3, 2 * QUANTISATION_GROUP, QUANTISATION_GROUP))
register_codec(IndexOnlyCodec())
