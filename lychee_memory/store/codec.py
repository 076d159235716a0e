"""Blocks and manifests as bytes: content keys, framing with a checksum, safetensors payloads, block codecs.

A framed record is ``magic | SHA-256 of the payload | payload``; every read checks the hash. A block payload is
safetensors (never a pickle): keys, values, valid slots and token ids, with metadata naming the storage format,
the dtype the block was computed in, the model fingerprint and the compressor settings.

How keys and values are stored is a ``BlockCodec`` chosen by its name (the storage format, ``block_dtype``) from
``CODECS``: one entry per format (float32, bfloat16, float16, int8 today). A new format is one more entry (and its
name in ``manifest.BlockDtype``); the payload around the tensors, and so every content key, stays as it is.
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
from ..errors import ConfigurationError
from .manifest import BLOCK_DTYPES, FORMAT_VERSION

BLOCK_MAGIC = b"LYCHEEB1"
MANIFEST_MAGIC = b"LYCHEEM1"
DIGEST_BYTES = 32
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


# Block codecs: one entry per storage format ---------------------------------------------------------------


@dataclass(frozen=True)
class BlockCodec(ABC):
    """How one storage format writes a block's keys and values as named tensors, and reads them back.

    ``name`` is the format's name in block metadata, content keys and ``block_dtype``; ``bytes_per_element`` what
    one key or value element costs stored (scales aside).
    """

    name: str
    bytes_per_element: float

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


register_codec(FloatCodec("float32", 4.0, torch.float32))
register_codec(FloatCodec("bfloat16", 2.0, torch.bfloat16))
register_codec(FloatCodec("float16", 2.0, torch.float16))
register_codec(Int8Codec())
