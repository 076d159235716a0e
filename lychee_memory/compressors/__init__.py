"""Compressors: one interface (``Compressor``), chosen by ``CompressorSettings.kind``."""

from __future__ import annotations

from ..config import CompressorSettings
from ..errors import ConfigurationError
from ..model_loading import LoadedModel
from .base import Compressor, slots_for
from .beacon import BeaconCompressor
from .learned import LearnedCompressor
from .selection import AttentionCompressor, KeyNormCompressor, NoCompression


def build_compressor(settings: CompressorSettings, loaded: LoadedModel) -> Compressor:
    """The compressor named by ``settings.kind`` (kind and ratio must already be resolved)."""
    if settings.kind != "none" and settings.ratio is None:
        raise ConfigurationError("the compression ratio must be resolved before building a compressor")
    if settings.kind == "none":
        return NoCompression()
    if settings.kind == "key_norm":
        return KeyNormCompressor(ratio=settings.ratio, keep=settings.key_norm_keep)
    if settings.kind == "attention":
        return AttentionCompressor(
            ratio=settings.ratio,
            observation_window=settings.observation_window,
            pooling_kernel=settings.pooling_kernel,
        )
    if settings.kind == "learned":
        return LearnedCompressor.for_model(loaded, ratio=settings.ratio)
    if settings.kind == "beacon":
        return BeaconCompressor.for_model(loaded, ratio=settings.ratio, window=settings.beacon_window)
    raise ConfigurationError(f"compressor kind {settings.kind!r} must be resolved before building")


__all__ = [
    "AttentionCompressor",
    "BeaconCompressor",
    "Compressor",
    "KeyNormCompressor",
    "LearnedCompressor",
    "NoCompression",
    "build_compressor",
    "slots_for",
]
