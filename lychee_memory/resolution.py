"""Settings resolution: every "auto"/None setting of an ``EngineConfig`` made concrete for one loaded model.

A trained checkpoint decides first, then the model's measured preset (``presets.py``), then the generic defaults
(``config.py``); the combination is validated against the model (window, ratios, trained files) before any block
is made, so a wrong setting fails at load time with a sentence saying what to change.
"""

from __future__ import annotations

from typing import Any

from .compressors.beacon import BeaconSettings
from .compressors.memory_weights import LearnedSettings, is_learned_layout
from .config import (
    BOUNDARY_TOLERANCE,
    DEFAULT_CHUNK_TOKENS,
    DEFAULT_RATIO,
    SMALL_MODEL_CHUNK_TOKENS,
    SMALL_MODEL_WINDOW,
    EngineConfig,
    PromptSettings,
)
from .errors import ConfigurationError, ContextTooLongError
from .gate import RULES
from .gate.adapter import read_gate_file
from .model_loading import LoadedModel
from .presets import ModelPreset, preset_for, trained_file


def resolve_config(config: EngineConfig, loaded: LoadedModel) -> EngineConfig:
    """Replace every "auto"/None setting by the value that works best for this model, and validate.

    Order: a trained checkpoint decides the compressor; a measured preset (``presets.py``) fills what the
    user left open; generic defaults fill the rest.
    """
    resolved = config.model_copy(deep=True)
    preset = preset_for(loaded.config, loaded.fingerprint()) if config.use_presets else None
    compressor = resolved.compressor
    learned_weights = loaded.has_trained_memory and is_learned_layout(loaded.memory_config)
    if compressor.kind == "auto":
        if loaded.has_trained_memory:
            compressor.kind = "learned" if learned_weights else "beacon"
        elif preset is not None and preset.compressor is not None and compressor.ratio is None:
            compressor.kind = preset.compressor
        else:
            compressor.kind = "attention"
    if compressor.kind == "none":
        compressor.ratio = 1
    elif compressor.kind == "learned":
        if not learned_weights:
            raise ConfigurationError(
                "compressor 'learned' needs trained memory weights in the learned layout: pass compressor_weights=PATH "
                "(--compressor-weights), or train them with `lychee train compressor`"
            )
        learned = LearnedSettings.from_checkpoint_config(loaded.memory_config)
        learned.check_base(loaded.config)
        compressor.ratio = learned.ratios[0] if compressor.ratio is None else compressor.ratio
        learned.check_ratio(compressor.ratio)
    elif compressor.kind == "beacon" and loaded.has_trained_memory and learned_weights:
        raise ConfigurationError(
            f"the memory weights of {loaded.memory_source} are in the learned layout, not the beacon one; "
            "use compressor 'learned'"
        )
    elif compressor.kind == "beacon" and loaded.has_trained_memory:
        checkpoint = BeaconSettings.from_checkpoint_config(loaded.memory_config)
        compressor.ratio, compressor.beacon_window = checkpoint.ratio, checkpoint.window
    elif compressor.ratio is None:
        compressor.ratio = DEFAULT_RATIO
    if resolved.chunking.chunk_tokens is None:
        if preset is not None and preset.chunk_tokens is not None:
            resolved.chunking.chunk_tokens = min(preset.chunk_tokens, loaded.context_window)
        elif loaded.context_window < SMALL_MODEL_WINDOW:
            resolved.chunking.chunk_tokens = SMALL_MODEL_CHUNK_TOKENS
        else:
            resolved.chunking.chunk_tokens = DEFAULT_CHUNK_TOKENS
    chunk_tokens = resolved.chunking.chunk_tokens
    if chunk_tokens > loaded.context_window:
        raise ContextTooLongError(
            f"chunk size {chunk_tokens} tokens exceeds the model's context window of {loaded.context_window} tokens; "
            "choose a smaller chunk_tokens"
        )
    if compressor.kind == "learned":
        window = learned.window
        if chunk_tokens > window:
            raise ConfigurationError(
                f"chunk size {chunk_tokens} tokens is longer than the {window} tokens the compressor weights "
                f"({loaded.memory_source}) were trained for; choose chunk_tokens <= {window}"
            )
    elif compressor.kind == "beacon":
        if compressor.beacon_window % compressor.ratio:
            raise ConfigurationError(
                f"compression ratio {compressor.ratio} does not divide the beacon window {compressor.beacon_window}; "
                "choose a ratio that divides it (e.g. 2, 4, 8)"
            )
    elif chunk_tokens % compressor.ratio:
        raise ConfigurationError(
            f"compression ratio {compressor.ratio} does not divide the chunk window of {chunk_tokens} tokens; "
            "choose a ratio that divides it (e.g. 2, 4, 8)"
        )
    gate_file = trained_file(preset.gate_weights) if preset is not None and preset.gate_weights else None
    if resolved.gate.rule == "auto":
        trained = resolved.gate.weights is not None or gate_file is not None
        resolved.gate.rule = "trained" if trained else "query_likelihood"
    elif resolved.gate.weights is not None and resolved.gate.rule != "trained":
        raise ConfigurationError(
            f"gate_weights is the trained gate's file, but the gate rule is {resolved.gate.rule!r}: "
            "choose gate='trained' (or leave it on auto), or drop gate_weights"
        )
    if resolved.gate.rule == "trained":
        if resolved.gate.weights is None:
            if gate_file is None:
                raise ConfigurationError(
                    "gate='trained' needs a trained gate file: set gate_weights=PATH (CLI --gate-weights, config "
                    "gate.weights) to a file written by `lychee train gate`; this model ships none"
                )
            resolved.gate.weights = str(gate_file)
        if resolved.gate.threshold is None:  # the threshold calibrated when the gate was trained
            resolved.gate.threshold = read_gate_file(resolved.gate.weights)[1].threshold
    if resolved.gate.threshold is None:
        measured = preset.thresholds.get((compressor.kind, resolved.gate.rule)) if preset else None
        resolved.gate.threshold = measured if measured is not None else RULES[resolved.gate.rule].default_threshold
    if resolved.gate.boundary_tolerance is None:
        resolved.gate.boundary_tolerance = BOUNDARY_TOLERANCE.get(
            str(loaded.dtype).removeprefix("torch."), BOUNDARY_TOLERANCE["bfloat16"]
        )
    if preset is not None:
        defaults = PromptSettings()
        for field_name, template in preset.prompts.items():
            if getattr(resolved.prompts, field_name) == getattr(defaults, field_name):
                setattr(resolved.prompts, field_name, template)
        if not resolved.reasoner.stop_strings and preset.stop_strings:
            resolved.reasoner.stop_strings = list(preset.stop_strings)
    if resolved.reasoner.read_mode == "auto":
        trained = compressor.kind == "learned" or (compressor.kind == "beacon" and loaded.has_trained_memory)
        if preset is not None and preset.read_mode is not None and compressor.kind == preset.compressor:
            resolved.reasoner.read_mode = preset.read_mode
        else:
            # A trained compressor's KV is what its reasoner learned to read. Anything else is re-read as
            # text inside the chat turn: compression loses exact names and numbers, and even raw KV sits
            # outside the chat turn of an instruct model (measured on SmolLM2, see presets.py).
            resolved.reasoner.read_mode = "kv" if trained else "text"
    if resolved.reasoner.memory == "auto":
        resolved.reasoner.memory = preset.memory if preset is not None and preset.memory is not None else "notes"
    if resolved.reasoner.weights is None and preset is not None and preset.reasoner_weights:
        # The shipped reasoner was trained answering from the preset's memory; another memory keeps the backbone.
        if preset.memory is None or resolved.reasoner.memory == preset.memory:
            resolved.reasoner.weights = str(trained_file(preset.reasoner_weights))
    _resolve_reading(resolved, preset)
    return resolved


def _resolve_reading(resolved: EngineConfig, preset: ModelPreset | None) -> None:
    """Stage 1, the reading budget and the excerpt budgets: the user's value, else the preset's, else the generic
    default. A preset's excerpt budgets are its measurement at its memory cap, so they shrink to fit a smaller
    ``max_memory_tokens`` (and the per-read cap to the total), never making a user's setting invalid."""
    reasoner = resolved.reasoner

    def preset_value(name: str) -> Any:
        return getattr(preset, name) if preset is not None else None

    for name in ("prefilter", "max_relevant_blocks", "fallback_blocks", "min_blocks"):
        if getattr(resolved.gate, name) is None:
            setattr(resolved.gate, name, preset_value(name))
    resolved.gate = resolved.gate.with_generic_defaults()  # what neither the user nor the preset set
    total, per_read = preset_value("excerpt_total_tokens"), preset_value("excerpt_read_tokens")
    if reasoner.excerpt_total_tokens is None and total is not None:
        least = reasoner.excerpt_read_tokens or 1
        reasoner.excerpt_total_tokens = min(max(total, least), reasoner.max_memory_tokens)
    if reasoner.excerpt_read_tokens is None and per_read is not None:
        reasoner.excerpt_read_tokens = min(per_read, reasoner.excerpt_budgets[1])
    if reasoner.excerpt_answer_share is None:
        reasoner.excerpt_answer_share = preset_value("excerpt_answer_share") or 0.0
