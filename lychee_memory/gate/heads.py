"""Which attention heads the gate index serves: the user's, the model's measured preset, else a generic choice."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from ..blocks import BlockOpening
from ..config import GateSettings
from ..errors import ConfigurationError
from ..model_loading import LoadedModel
from ..presets import preset_for
from .index_format import IndexSpec


class GenericHeadsWarning(UserWarning):
    """A model has no measured prefilter heads, so the gate index uses the generic mid-depth choice."""


# Shown once per model (the message names it), wherever engines for that model are built.
warnings.filterwarnings("once", category=GenericHeadsWarning)


def model_geometry(config) -> tuple[int, int, int, int]:
    """(layers, query heads, KV heads, head_dim) of a model config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads, head_dim


def generic_heads(config, count: int = 8) -> tuple[tuple[int, int], ...]:
    """The documented choice for a model without a measured preset: every query head of the layers nearest 58 %
    depth (where retrieval heads cluster: mid-depth, cf. Wu et al. 2024), up to ``count`` heads."""
    layers, query_heads, _, _ = model_geometry(config)
    by_depth = sorted(range(layers), key=lambda layer: (abs(layer - 0.58 * (layers - 1)), layer))
    heads: list[tuple[int, int]] = []
    for layer in by_depth:
        for head in range(query_heads):
            if len(heads) < count:
                heads.append((layer, head))
    return tuple(sorted(heads))


def resolve_heads(
    config, chosen: Sequence[Sequence[int]] | None, preset_heads, model_name: str
) -> tuple[tuple[int, int], ...]:
    """The heads to index: the user's, else the model's preset, else the generic choice (a
    :class:`GenericHeadsWarning`, once per model)."""
    layers, query_heads, _, _ = model_geometry(config)
    if chosen:
        heads = tuple((int(layer), int(head)) for layer, head in chosen)
    elif preset_heads:
        heads = tuple(tuple(head) for head in preset_heads)
    else:
        heads = generic_heads(config)
        warnings.warn(
            f"no measured prefilter heads for {model_name}: using the query heads of the layers nearest 58% depth "
            f"{[list(head) for head in heads]}; run `lychee probe heads` on this model and set gate.prefilter_heads "
            "to the heads it reports",
            GenericHeadsWarning,
            stacklevel=2,
        )
    for layer, head in heads:
        if not (0 <= layer < layers and 0 <= head < query_heads):
            raise ConfigurationError(
                f"prefilter head (layer {layer}, head {head}) does not exist in a model of {layers} layers and "
                f"{query_heads} query heads"
            )
    return heads


def index_spec_for(
    loaded: LoadedModel, gate: GateSettings, opening: BlockOpening | None, use_presets: bool
) -> IndexSpec:
    """The gate index an engine writes at ingest: its heads, and the leading tokens left out (0 after an opening,
    which is the attention sink, else 4)."""
    preset = preset_for(loaded.config, loaded.fingerprint()) if use_presets else None
    heads = resolve_heads(
        loaded.config, gate.prefilter_heads, preset.prefilter_heads if preset is not None else (), loaded.resolved.spec
    )
    _, query_heads, kv_heads, _ = model_geometry(loaded.config)
    skip = gate.prefilter_skip_tokens
    if skip is None:
        skip = 0 if opening is not None and opening.num_slots else 4
    return IndexSpec(heads=heads, skip_tokens=skip, group=query_heads // kv_heads, dtype=gate.index_dtype)
