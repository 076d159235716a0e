"""Measured per-model defaults: what "auto" resolves to for a model we have measured.

A preset applies only to settings left at "auto"/None. Each one records the measurement behind it, so a
default is never a guess dressed up as a fact. Models without a preset get the generic defaults of
``config.py`` through ``resolution.resolve_config`` (the beacon compressor for trained checkpoints, else
attention-guided selection at the default ratio read back as text).

Besides the shipped ``PRESETS``, user preset files (JSON, written by ``lychee calibrate``) are read from
``$LYCHEE_PRESETS`` (a file, or a directory of ``*.json``) and then from ``<cache dir>/presets/*.json``. A user
preset applies to a model with the same architecture and, when the file records one, the same fingerprint; it is
layered over the shipped preset of that model: what the file sets wins, what it leaves out stays shipped.
``ModelPreset`` is a pydantic dataclass: the same validation checks a shipped preset, a calibrated one and a file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
import tempfile
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass

from .config import CompressorKind, GateRuleName, MemoryMode, PrefilterName, PromptSettings, ReadMode
from .errors import ConfigurationError

PRESET_FORMAT = "lychee-preset/1"
PRESETS_ENV = "LYCHEE_PRESETS"
# The model config fields a user preset records and matches on.
ARCHITECTURE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)
SHIPPED = "shipped"
_COMPRESSORS = tuple(kind for kind in typing.get_args(CompressorKind) if kind != "auto")
_RULES = tuple(rule for rule in typing.get_args(GateRuleName) if rule != "auto")
_READ_MODES = tuple(mode for mode in typing.get_args(ReadMode) if mode != "auto")
_MEMORY_MODES = tuple(mode for mode in typing.get_args(MemoryMode) if mode != "auto")
_PREFILTERS = typing.get_args(PrefilterName)


# What each preset field accepts (the messages end up after "field 'NAME'") -----------------------------------


def _one_of(choices: tuple[str, ...]) -> BeforeValidator:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return BeforeValidator(check)


def _whole(minimum: int, what: str) -> BeforeValidator:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"must be {what}, got {value!r}")
        return int(value)

    return BeforeValidator(check)


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return float(value)


def threshold_key(compressor: str, rule: str) -> str:
    """How a (compressor, rule) threshold key is written in a preset file: "none/query_likelihood"."""
    return f"{compressor}/{rule}"


def _threshold_keys(value: Any) -> Any:
    """A file's "COMPRESSOR/RULE" keys as (compressor, rule) pairs, each checked."""
    if not isinstance(value, dict):
        raise ValueError(f'must be an object like {{"none/query_likelihood": 2.0}}, got {value!r}')
    parsed = {}
    for key, threshold in value.items():
        compressor, rule = key if isinstance(key, tuple) and len(key) == 2 else (str(key).partition("/")[::2])
        if compressor not in _COMPRESSORS or rule not in _RULES:
            raise ValueError(
                f"key {key!r} must be COMPRESSOR/RULE with a compressor among {', '.join(_COMPRESSORS)} "
                f"and a rule among {', '.join(_RULES)}"
            )
        try:
            parsed[(compressor, rule)] = _finite(threshold)
        except ValueError:
            raise ValueError(f"value of {key!r} must be a finite number, got {threshold!r}") from None
    return parsed


def _heads(value: Any) -> Any:
    def is_index(item: Any) -> bool:
        return isinstance(item, numbers.Integral) and not isinstance(item, bool) and item >= 0

    if not isinstance(value, (list, tuple)) or not all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 and all(is_index(item) for item in pair) for pair in value
    ):
        raise ValueError(f"must be a list of [layer, head] pairs of non-negative integers, got {value!r}")
    return value


def _stop_strings(value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"must be a list of non-empty strings, got {value!r}")
    return value


def _architecture(value: dict[str, Any]) -> dict[str, Any]:
    for key, item in value.items():
        if key == "model_type" and not (isinstance(item, str) and item):
            raise ValueError(f"entry 'model_type' must be a non-empty string, got {item!r}")
        if key != "model_type" and item is not None and (isinstance(item, bool) or not isinstance(item, (int, str))):
            raise ValueError(f"entry {key!r} must be an integer, a string or null, got {item!r}")
    return value


def _prompts(value: dict[str, str]) -> dict[str, str]:
    names = [name for name, info in PromptSettings.model_fields.items() if info.annotation is str]
    for key in value:
        if key not in names:
            raise ValueError(f"key {key!r} is not a prompt template; known: {', '.join(names)}")
    try:
        PromptSettings(**value)
    except ValueError as error:
        raise ValueError(f"holds an invalid template: {error}") from None
    return value


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


_Text = Annotated[str, Strict()]
_NonEmpty = Annotated[str, Strict(), AfterValidator(_non_empty)]
_NonBlank = Annotated[str, Strict(), AfterValidator(_non_blank)]
_Thresholds = Annotated[
    dict[tuple[str, str], float],
    BeforeValidator(_threshold_keys),
    PlainSerializer(lambda value: {threshold_key(*key): t for key, t in value.items()}, when_used="json"),
]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ModelPreset:
    """Defaults for one model, recognised by its architecture (and, for a user file, its fingerprint)."""

    name: _NonBlank
    architecture: Annotated[dict[str, Any], AfterValidator(_architecture)]
    compressor: Annotated[str, _one_of(_COMPRESSORS)] | None = None
    chunk_tokens: Annotated[int, _whole(1, "a positive integer")] | None = None
    read_mode: Annotated[str, _one_of(_READ_MODES)] | None = None
    memory: Annotated[str, _one_of(_MEMORY_MODES)] | None = None  # the reasoner's memory strategy (notes, excerpts)
    # The gate's stage 1 and reading budget, and the excerpt memory's budgets, measured together with ``memory``
    prefilter: Annotated[str, _one_of(_PREFILTERS)] | None = None
    max_relevant_blocks: Annotated[int, _whole(1, "a positive integer")] | None = None
    fallback_blocks: Annotated[int, _whole(0, "an integer >= 0")] | None = None
    min_blocks: Annotated[int, _whole(0, "an integer >= 0")] | None = None
    excerpt_read_tokens: Annotated[int, _whole(1, "a positive integer")] | None = None
    excerpt_total_tokens: Annotated[int, _whole(1, "a positive integer")] | None = None
    excerpt_answer_share: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    thresholds: _Thresholds = dataclasses.field(default_factory=dict)  # (compressor, gate rule) -> threshold
    # PromptSettings fields replacing untouched defaults
    prompts: Annotated[dict[str, _Text], AfterValidator(_prompts)] = dataclasses.field(default_factory=dict)
    stop_strings: Annotated[tuple[str, ...], BeforeValidator(_stop_strings)] = ()
    # (layer, query head) of the gate index, from `lychee probe heads`
    prefilter_heads: Annotated[tuple[tuple[int, int], ...], BeforeValidator(_heads)] = ()
    compressor_weights: str | None = None  # a trained file in lychee_memory/trained/, loaded beside the model
    gate_weights: str | None = None  # a trained gate adapter in lychee_memory/trained/ (gate "auto" -> "trained")
    reasoner_weights: str | None = None  # an RL-trained reasoner adapter in lychee_memory/trained/
    evidence: _Text = ""
    source: str = SHIPPED  # "shipped", or the path of the user preset file it came from
    fingerprint: _NonEmpty | None = None  # the model fingerprint a user file was measured on (None: any checkpoint)
    created: _Text = ""  # when a user file was written (ISO 8601)

    def matches(self, config: Any, fingerprint: str | None = None) -> bool:
        """Same architecture, and the same fingerprint when both this preset and the caller know one."""
        return architecture_matches(self.architecture, self.fingerprint, config, fingerprint)


def architecture_matches(
    architecture: Mapping[str, Any], recorded: str | None, config: Any, fingerprint: str | None = None
) -> bool:
    """Whether a model ``config`` (and ``fingerprint``) is the one a preset recorded."""
    if not all(getattr(config, key, None) == value for key, value in architecture.items()):
        return False
    return recorded is None or fingerprint is None or recorded == fingerprint


PRESETS = [
    ModelPreset(
        name="smollm2-135m",
        architecture={"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "vocab_size": 49152},
        compressor="none",
        chunk_tokens=1024,
        read_mode="kv",
        memory="excerpts",
        prefilter="lexical",
        max_relevant_blocks=4,
        fallback_blocks=4,
        excerpt_read_tokens=192,
        excerpt_total_tokens=768,
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
        reasoner_weights="smollm2-135m-reasoner-v1.safetensors",
        evidence=(
            "Reasoner: the RL-trained adapter answers from the excerpt memory (`lychee train rl`, 40 GRPO steps on one "
            "CPU thread, sub_em reward, rank-8 LoRA, 4.9 MB bfloat16; trained on HotpotQA tuning questions and "
            "SQuAD). On samples that did not choose it: HotpotQA 28K held-out questions, the default's excerpts "
            "answered again, sub_em 7/28 vs 4/28 (+4/-1), at 56K 9/28 vs 4/28 (+5/-0); single needles at 28K "
            "28/30 = 28/30, no copying failure; multi-key needles at 7K 7/10 = 7/10; two-hop needles 8/10 vs 7/10 at "
            "7K, 9/10 vs 6/10 at 28K, 10/10 vs 7/10 at 112K; answers are longer and the warm query 12-41 % slower "
            "(BENCHMARKS.md, the reasoner trained on excerpt memories; the shipped reasoner at 112K). "
            "Reading (memory excerpts, lexical stage 1, up to 4 blocks, 4 read when none passes; excerpts of 192 "
            "tokens per read, 768 in all): chosen on 32 HotpotQA tuning questions and 7K needle families (n = 6), "
            "it replaced notes + key stage 1 + up to 8 blocks + 1 fallback after samples that chose nothing "
            "(benchmarks/default_reading.py, stored many-needle haystacks, both settings on the same banks in one "
            "process): single needles right 28/30 vs 22/30 at 28K and 9/10 vs 8/10 at 112K (8 wins, 1 loss), no copying "
            "failure, "
            "one decode pass instead of two, warm query 0.67-0.75x; HotpotQA 28K held-out questions, both gold "
            "paragraphs reached the answer 19/28 vs 2/27; two-hop needles at 7K 7/10 vs 0/10 (BENCHMARKS.md). "
            "Gate: a trained gate (`lychee train gate`, 120 steps on 2 CPU cores, rank-8 LoRA, 3.7 MB) ranked held-out "
            "states better than query likelihood (AUC 0.981 vs 0.936; hop 2 after hop 1's note 29/29 vs 21/29) but does "
            "not ship: at its calibrated threshold (0.103) it read a wrong block of the README's example document first, "
            "and the reasoner's wrong note there survived the right block (answer 123456 instead of 58213); query "
            "likelihood stays the default (BENCHMARKS.md, multi-hop recall). "
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


def shipped_preset_for(model_config) -> ModelPreset | None:
    """The shipped preset of this architecture, ignoring user files."""
    for preset in PRESETS:
        if preset.matches(model_config):
            return preset
    return None


def preset_for(model_config, fingerprint: str | None = None) -> ModelPreset | None:
    """The preset for a model: a matching user file layered over the shipped preset, else the shipped one.

    User files are looked for in ``$LYCHEE_PRESETS`` and then in the user presets directory; among matching
    files one recorded for this very ``fingerprint`` wins over one that records none, else the first in order.
    """
    shipped = shipped_preset_for(model_config)
    matching = [
        fields
        for fields in _user_preset_fields()
        if architecture_matches(fields["architecture"], fields.get("fingerprint"), model_config, fingerprint)
    ]
    if not matching:
        return shipped
    exact = [fields for fields in matching if fingerprint is not None and fields.get("fingerprint") == fingerprint]
    chosen = (exact or matching)[0]
    if shipped is None:
        return ModelPreset(**chosen)
    return layer_preset(shipped, chosen)


def layer_preset(base: ModelPreset, fields: Mapping[str, Any]) -> ModelPreset:
    """``base`` with the fields a user file set; thresholds and prompts merge key by key (the file's win)."""
    updates = dict(fields)
    for merged in ("thresholds", "prompts"):
        if merged in updates:
            updates[merged] = {**getattr(base, merged), **updates[merged]}
    return dataclasses.replace(base, **updates)


def user_presets_dir() -> Path:
    """Where ``lychee calibrate`` writes presets by default: ``<cache dir>/presets`` (LYCHEE_CACHE_DIR moves it)."""
    from .config import cache_root

    return cache_root() / "presets"


def user_preset_files() -> list[Path]:
    """Every user preset file, in the order they are consulted: $LYCHEE_PRESETS, then the presets directory."""
    files: list[Path] = []
    configured = os.environ.get(PRESETS_ENV)
    if configured:
        path = Path(configured).expanduser()
        if path.is_dir():
            files.extend(sorted(path.glob("*.json")))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigurationError(
                f"{PRESETS_ENV}={configured!r} is neither a preset file nor a directory; "
                "point it at a .json file written by `lychee calibrate` or a directory of them, or unset it"
            )
    directory = user_presets_dir()
    if directory.is_dir():
        files.extend(path for path in sorted(directory.glob("*.json")) if path not in files)
    return files


def _user_preset_fields() -> Iterator[dict[str, Any]]:
    for path in user_preset_files():
        yield read_preset_fields(path)


def default_preset_path(name: str, fingerprint: str | None) -> Path:
    """``<user presets dir>/<model name>-<fingerprint start>.json``, for a model spec and its fingerprint."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).name or name).strip("-.") or "model"
    suffix = f"-{fingerprint[:12]}" if fingerprint else ""
    return user_presets_dir() / f"{stem}{suffix}.json"


def check_preset_path(path: str | Path) -> Path:
    """``path`` if a preset file can be written there (its folder is created); else a ConfigurationError."""
    target = Path(path).expanduser()
    if target.suffix != ".json":
        raise ConfigurationError(f"preset file {str(target)!r} must end in .json (preset directories read *.json)")
    if target.is_dir():
        raise ConfigurationError(f"preset file {str(target)!r} is a directory; give the path of a .json file")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = target.parent / f".{target.name}.check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigurationError(f"cannot write the preset file {str(target)!r}: {error.strerror or error}") from None
    return target


def where_preset_applies(preset: ModelPreset, path: Path) -> str:
    """Whether the engine now resolves this model's preset from the file at ``path``, said in a sentence."""
    architecture = type("ModelConfig", (), dict(preset.architecture))()
    found = preset_for(architecture, preset.fingerprint)
    if found is not None and Path(found.source).resolve() == path.resolve():
        return f"the engine now picks it up for {preset.name} (use_presets=False turns presets off)"
    if any(candidate.resolve() == path.resolve() for candidate in user_preset_files()) and found is not None:
        return f"another preset file comes first for this model ({found.source}); set {PRESETS_ENV}={path}"
    return f"the engine does not read it there: set {PRESETS_ENV}={path}, or write it to {user_presets_dir()}"


# The preset file format ---------------------------------------------------------------------------------

_WRITTEN = (  # in the order a file has them
    "name",
    "architecture",
    "fingerprint",
    "created",
    "compressor",
    "chunk_tokens",
    "read_mode",
    "memory",
    "prefilter",
    "max_relevant_blocks",
    "fallback_blocks",
    "min_blocks",
    "excerpt_read_tokens",
    "excerpt_total_tokens",
    "excerpt_answer_share",
    "thresholds",
    "prompts",
    "stop_strings",
    "prefilter_heads",
    "evidence",
)
_FILE_FIELDS = ("format", *_WRITTEN)  # the trained files' names are shipped-only


def preset_to_json(preset: ModelPreset) -> dict[str, Any]:
    """The JSON object of a preset file (a trained compressor file name is a shipped-only field, left out)."""
    dumped = _ADAPTER.dump_python(preset, mode="json")
    data: dict[str, Any] = {"format": PRESET_FORMAT}
    for name in _WRITTEN:
        if name in ("name", "architecture") or dumped[name] not in (None, "", [], {}):
            data[name] = dumped[name]
    return data


def write_preset_file(preset: ModelPreset, path: str | os.PathLike[str]) -> Path:
    """Write ``preset`` as JSON to ``path`` atomically (a temporary file renamed over it): never half-written."""
    target = Path(path).expanduser()
    text = json.dumps(preset_to_json(preset), indent=2, ensure_ascii=False) + "\n"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise ConfigurationError(f"cannot write the preset file {str(target)!r}: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, target)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write the preset file {str(target)!r}: {error.strerror or error}") from None
    return target


def read_preset_file(path: str | os.PathLike[str]) -> ModelPreset:
    """The preset in a JSON preset file, on its own (not layered); ``source`` is the file's path."""
    return ModelPreset(**read_preset_fields(path))


def read_preset_fields(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ModelPreset fields a preset file sets (only those, so it can be layered), validated.

    Raises ConfigurationError naming the file and the field on anything malformed.
    """
    source = Path(path).expanduser()
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigurationError(f"cannot read the preset file {str(source)!r}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"preset file {str(source)!r} is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ConfigurationError(
            f"preset file {str(source)!r} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None
    return _preset_fields(data, str(source))


def _preset_fields(data: Any, source: str) -> dict[str, Any]:
    """Checks only a file has (its format, no shipped-only field, a complete architecture), then the model's."""

    def fail(field_name: str, problem: str) -> ConfigurationError:
        return ConfigurationError(f"preset file {source!r}: field {field_name!r} {problem}")

    if not isinstance(data, dict):
        raise ConfigurationError(f"preset file {source!r} must hold a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FILE_FIELDS))
    if unknown:
        raise fail(unknown[0], f"is not a preset field; known fields: {', '.join(_FILE_FIELDS)}")
    if data.get("format") != PRESET_FORMAT:
        raise fail("format", f"must be {PRESET_FORMAT!r}, got {data.get('format')!r}")
    architecture = data.get("architecture")
    if not isinstance(architecture, dict):
        raise fail("architecture", f"must be an object of model config fields, got {architecture!r}")
    missing = [key for key in ARCHITECTURE_KEYS if key not in architecture]
    if missing:
        raise fail(
            "architecture", f"lacks {', '.join(missing)} (a preset records all of {', '.join(ARCHITECTURE_KEYS)})"
        )
    given = {key: value for key, value in data.items() if key != "format" and (value is not None or key == "name")}
    try:
        preset = ModelPreset(**given, source=source)
    except ValidationError as error:
        problem = error.errors()[0]
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] != "value_error":
            message = f"is invalid: {message[:1].lower()}{message[1:]}, got {problem['input']!r}"
        if len(problem["loc"]) > 1:  # an entry of an object: which one
            message = f"entry {problem['loc'][1]!r} {message}"
        raise fail(str(problem["loc"][0]) if problem["loc"] else "name", message) from None
    return {"source": source, **{key: getattr(preset, key) for key in given}}


_ADAPTER: TypeAdapter[ModelPreset] = TypeAdapter(ModelPreset)


TRAINED_DIR = Path(__file__).parent / "trained"


def trained_file(name: str) -> Path:
    """Where a trained file a preset names (compressor weights, a gate adapter) ships in the package."""
    return TRAINED_DIR / name


def shipped_compressor_weights(model_config) -> Path | None:
    """The trained compressor weights shipped with the package for this model, if its shipped preset names one."""
    preset = shipped_preset_for(model_config)
    if preset is None or preset.compressor_weights is None:
        return None
    return trained_file(preset.compressor_weights)
