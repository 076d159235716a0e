"""Measured per-model defaults: what "auto" resolves to for a model we have measured.

A preset applies only to settings left at "auto"/None. Each one records the measurement behind it, so a
default is never a guess dressed up as a fact. Models without a preset get the generic defaults of
``engine.resolve_config`` (the beacon compressor for trained checkpoints, else attention-guided
selection at ratio 4 read back as text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelPreset:
    """Defaults for one model, recognised by its architecture."""

    name: str
    architecture: dict[str, Any]
    compressor: str | None = None
    chunk_tokens: int | None = None
    read_mode: str | None = None
    thresholds: dict[tuple[str, str], float] = field(default_factory=dict)  # (compressor, gate rule) -> threshold
    prompts: dict[str, str] = field(default_factory=dict)  # PromptSettings fields replacing untouched defaults
    stop_strings: tuple[str, ...] = ()
    prefilter_heads: tuple[
        tuple[int, int], ...
    ] = ()  # (layer, query head) of the gate index, from `lychee probe heads`
    compressor_weights: str | None = None  # a trained file in lychee_memory/trained/, loaded beside the model
    evidence: str = ""

    def matches(self, config) -> bool:
        return all(getattr(config, key, None) == value for key, value in self.architecture.items())


PRESETS = [
    ModelPreset(
        name="smollm2-135m",
        architecture={"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "vocab_size": 49152},
        compressor="none",
        chunk_tokens=1024,
        read_mode="kv",
        thresholds={("none", "query_likelihood"): 2.0},
        prompts={
            "update": (
                "Question: {question}\nPrevious notes: {memory}\n"
                "Copy the sentence from the text above that answers the question. "
                "Add the previous notes if they still help.\nNotes:"
            ),
            "final": "Notes: {memory}\n\nQuestion: {question}\nAnswer the question in a few words, using the notes.\nAnswer:",
        },
        stop_strings=("\n\n",),
        prefilter_heads=((2, 2), (2, 4), (7, 7), (8, 0), (17, 3), (18, 6), (18, 7), (18, 8)),
        evidence=(
            "Prefilter heads: `lychee probe heads` (6 single-needle samples at 14K tokens, generated haystack, seed 0): "
            "each of the 270 heads ranked by the mean reciprocal rank of the fact's block; best 8 heads (MRR 0.92 "
            "for layer 8 head 0 down to 0.58 for layer 2 head 4) put the fact's block first in 6/6 probe samples and "
            "in 6/6 held-out samples at 28K (29-30 blocks, seed 1). "
            "Read mode: blocks are encoded inside the chat user turn, so reading one as KV feeds exactly the tokens of "
            "a text read (tests/test_reading.py: same tokens, logits within 2e-3) without re-encoding the chunk. "
            "Gate: needle placements in ~27K-token SQuAD haystacks (8 placements, 1024-token chunks, "
            "query-likelihood gate): raw KV ranked the needle's block first 8/8, needle gain 2.69-4.13 nats over "
            "the block-free baseline vs at most 1.33 for any other block; attention-guided 4x 4/8, key-norm 4x "
            "(low or high norms) 4/8, key-norm 8x 2/8; threshold 2.0 sits in the gap (benchmarks/gate_calibration.py). "
            "Reasoner on the example document's six facts: text read mode wrote a correct memory 5/6 and answered "
            "5/6 with these prompts, raw KV encoded alone (before 0.3: the chunk sat outside the chat turn) read as prefix 0/6; the "
            "release-style prompts answered 2/6 and looped to the 1024-token memory cap. Focus: in a ~120K-token "
            "haystack the gate found the needle's block (69 of 124) but re-reading all 1024 tokens the model copied "
            "the block's first heading and answered '1973' for the code 58213; re-reading the 256-token window "
            "where the question is most likely (query likelihood over the block's windows) answered 58213 when cut at "
            "exactly 256 tokens, but the focus option (with its margins) still failed there, and on 8 generated needles "
            "at 4K (seed 100) the whole block answered 8/8 vs 7/8 with 128- or 256-token focus: focus stays off."
        ),
    ),
]


def preset_for(model_config) -> ModelPreset | None:
    for preset in PRESETS:
        if preset.matches(model_config):
            return preset
    return None


TRAINED_DIR = Path(__file__).parent / "trained"


def shipped_compressor_weights(model_config) -> Path | None:
    """The trained compressor weights shipped with the package for this model, if its preset names one."""
    preset = preset_for(model_config)
    if preset is None or preset.compressor_weights is None:
        return None
    return TRAINED_DIR / preset.compressor_weights
