"""Validated configuration for every stage: model, chunking, compressor, gate, reasoner, prompts.

Fields left at "auto" (or None) are resolved per model once it is loaded (see ``resolution.resolve_config``),
so one config file works for the embedded 135M default and for a 7B checkpoint on a GPU. The generic defaults
they resolve to when no preset says otherwise are defined once, below, and the field descriptions quote them.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .choices import DEFAULT_INDEX_DTYPE, IndexDtype
from .errors import ConfigurationError

CompressorKind = Literal["auto", "learned", "beacon", "attention", "key_norm", "none"]
GateRuleName = Literal["auto", "query_likelihood", "prompt", "trained", "all"]
PrefilterName = Literal["keys", "lexical", "hybrid", "hybrid_sum", "off"]
ReadMode = Literal["auto", "kv", "text"]
MemoryMode = Literal["auto", "notes", "excerpts"]  # "auto" -> the model's preset, else "notes" (working_memory.py)
ExcerptOrder = Literal["relevance", "reading"]  # the order the final answer reads an excerpt memory in
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
AttentionName = Literal["auto", "sdpa", "eager", "flash_attention_2", "triton"]

DEFAULT_MODEL = "smollm2-135m"  # the embedded default: what loads when no model is named
# What a setting left at None becomes when the model's preset (presets.py) does not say: each defined here only.
DEFAULT_RATIO = 4
DEFAULT_CHUNK_TOKENS = 4096
SMALL_MODEL_WINDOW = 16384  # models with a shorter context window default to SMALL_MODEL_CHUNK_TOKENS
SMALL_MODEL_CHUNK_TOKENS = 1024
DEFAULT_EXCERPT_READ_TOKENS = 96  # excerpt memory: tokens kept per block read, and in all (ReasonerSettings)
DEFAULT_EXCERPT_TOTAL_TOKENS = 384
# The gate's reading budget and stage 1 for models without a preset (GateSettings fields left at None).
DEFAULT_MAX_RELEVANT_BLOCKS = 8
DEFAULT_FALLBACK_BLOCKS = 1
DEFAULT_MIN_BLOCKS = 0
DEFAULT_PREFILTER: PrefilterName = "keys"
DEFAULT_MAX_NEAR_TIES = 4  # rows per stage-1 ranking stay at most 2 x candidates, whatever the bank
INGEST_BATCH_SIZE = {"cpu": 1, "cuda": 4}  # chunks per forward by device type (others: the CPU value)
# Scores this close to the gate threshold are scored again alone (see gate.py). Measured batch-vs-alone
# differences of gate gains on SmolLM2-135M (12K-token needle bank, batches of 8 vs 1, CPU): at most 4.3e-6 nats
# in float32 and 0.035 nats in bfloat16; the tolerances sit two orders (float32) and seven times (16-bit) above.
BOUNDARY_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25, "float16": 0.25}  # by dtype name; others: bfloat16's


def cache_root() -> Path:
    """Directory for lychee-memory's caches (converted models, default store, presets); LYCHEE_CACHE_DIR overrides."""
    override = os.environ.get("LYCHEE_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("lychee-memory"))


class _Settings(BaseModel):
    # NaN or infinity in a float setting (a threshold, a temperature) silently disables what it controls.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSettings(_Settings):
    """Which weights to load and where to run them."""

    spec: str = Field(DEFAULT_MODEL, min_length=1, description="alias, local HF dir, GGUF file, or cached hub id")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps; auto = cuda when available, else cpu")
    dtype: DtypeName = Field("auto", description="auto = bfloat16 on GPU, float32 on CPU")
    attention: AttentionName = Field(
        "auto",
        description="attention for the model's forwards; auto = sdpa; triton = lychee's GQA prefix kernel (torch "
        "fallback off GPU)",
    )
    cache_converted_gguf: bool = Field(
        True, description="keep a float copy of a GGUF model in the cache dir so later loads skip dequantisation"
    )
    compressor_weights: str | None = Field(
        None,
        description="trained memory weights (lychee train compressor) loaded beside the model; None = the file "
        "shipped for this model if any, 'none' = never",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"device must be auto, cpu, mps, cuda or cuda:N, got {value!r}")
        return value


class ChunkingSettings(_Settings):
    """How documents are cut into chunks before compression."""

    chunk_tokens: int | None = Field(
        None,
        ge=1,
        description=f"tokens per chunk; None = the model's default ({DEFAULT_CHUNK_TOKENS}, or "
        f"{SMALL_MODEL_CHUNK_TOKENS} for small models)",
    )
    boundary_lookback: float = Field(
        0.125,
        ge=0.0,
        lt=1.0,
        description="fraction of a chunk searched backwards for a paragraph or sentence end to cut at",
    )


class CompressorSettings(_Settings):
    """Which compressor turns a chunk into a memory block, and how hard it compresses."""

    kind: CompressorKind = Field(
        "auto",
        description="learned / beacon = trained memory tokens, attention / key_norm = keep the chunk's most attended "
        "/ lowest-key-norm KV slots (training-free), none = the raw KV; auto = the model's trained weights' kind "
        "when it has some, else its preset, else attention",
    )
    ratio: int | None = Field(
        None, ge=1, description=f"raw tokens per memory slot; None = {DEFAULT_RATIO} (1 for none)"
    )
    observation_window: int = Field(32, ge=1, description="attention compressor: tail tokens whose queries vote")
    pooling_kernel: int = Field(5, ge=1, description="attention compressor: smoothing width over positions (odd)")
    beacon_window: int = Field(2048, ge=1, description="beacon: raw tokens per compression window (= stride)")
    key_norm_keep: Literal["low", "high"] = Field("low", description="key_norm: keep the lowest or the highest norms")
    ingest_batch_size: int | None = Field(
        None,
        ge=1,
        description=f"chunks per forward; None = {INGEST_BATCH_SIZE['cpu']} on CPU, {INGEST_BATCH_SIZE['cuda']} on GPU",
    )
    block_cache_mb: float = Field(
        512.0,
        ge=0,
        description="MB of encoded blocks an engine keeps for index-only banks (stored with block dtype none: gate "
        "index and texts only, each block encoded from its text when read), shared by its banks; 0 = keep none",
    )

    @field_validator("pooling_kernel")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"pooling_kernel must be odd so it is centred on a position, got {value}")
        return value


class GateSettings(_Settings):
    """Which blocks the reasoner reads: scoring rule, threshold and budget."""

    rule: GateRuleName = Field(
        "auto",
        description="how a block is scored: query_likelihood = how much it raises the question's likelihood, "
        "prompt = the model's yes to 'does this help?', trained = the gate adapter, all = every block is read; "
        "auto = trained when a gate file is given or the model ships one, else query_likelihood",
    )
    threshold: float | None = Field(
        None,
        description="a block is relevant when its score reaches this; None = the model's preset, else the "
        "rule's default (gate.RULES)",
    )
    weights: str | None = Field(
        None,
        description="trained rule: the gate adapter file written by `lychee train gate` (None = the model's shipped one)",
    )
    memory_weight: float = Field(0.5, ge=0.0, description="query likelihood: weight of the working-memory tokens")
    max_relevant_blocks: int | None = Field(
        None,
        ge=1,
        description="budget of blocks the reasoner reads per question; None = the model's preset, else "
        f"{DEFAULT_MAX_RELEVANT_BLOCKS}",
    )
    fallback_blocks: int | None = Field(
        None,
        ge=0,
        description="top-scoring blocks read when none passes the threshold; None = the model's preset, else "
        f"{DEFAULT_FALLBACK_BLOCKS}",
    )
    min_blocks: int | None = Field(
        None,
        ge=0,
        description="the fewest blocks a question reads: when the scan ends with fewer (one passed where two "
        "paragraphs are needed), the best-scoring judged blocks not read are read too, as fallback_blocks are when "
        f"none passes; None = the model's preset, else {DEFAULT_MIN_BLOCKS} (no floor)",
    )
    batch_size: int = Field(8, ge=1, description="blocks scored in one batched forward")
    boundary_tolerance: float | None = Field(
        None,
        ge=0.0,
        description="a score this close to the threshold is scored again on its own, so batching never changes a "
        f"decision; None = per dtype ({', '.join(f'{k} {v}' for k, v in BOUNDARY_TOLERANCE.items())}: far above the "
        "rounding batching causes)",
    )
    prefilter: PrefilterName | None = Field(
        None,
        description="stage 1 before the rule: keys = rank blocks from an index of their own keys (made at ingest) "
        "and let the rule judge only the candidates; lexical = BM25 of the question and the memory's notes over the "
        "blocks' text (document frequencies of the bank at query time); hybrid = keys and lexical fused by "
        "reciprocal rank; hybrid_sum = the mean of their z-scores; off = the rule judges every block; None = the model's "
        f"preset, else {DEFAULT_PREFILTER}",
    )
    candidates: int = Field(
        4, ge=1, description="blocks stage 1 passes on to the rule (and again after each memory update)"
    )
    candidate_margin: float = Field(
        0.5, ge=0.0, description="blocks whose stage-1 score is within this of the best also go on (near-ties)"
    )
    max_near_ties: int | None = Field(
        DEFAULT_MAX_NEAR_TIES,
        ge=0,
        description="the most blocks candidate_margin adds beyond the candidates (the best of them), so the rows stage 2 "
        "judges per ranking stay bounded however large the bank (when no unread block matches a term, every one "
        "ties: uncapped, a 1M-token bank judged all 1,035); None = no cap",
    )
    coarse_keep: int | None = Field(
        None,
        ge=1,
        description="key stage 1 on a large bank: a first pass over `coarse_heads` alone ranks every block and only "
        "this many of the best get the exact score, so a pass reads a fraction of the index (banks of up to this "
        "plus 32 blocks are scored exactly); None = every block exactly. At least `candidates`; needs coarse_heads",
    )
    coarse_heads: list[tuple[int, int]] | None = Field(
        None,
        description="(layer, query head) pairs of the gate index that the coarse pass reads (a subset of "
        "prefilter_heads); measured for SmolLM2 in BENCHMARKS: [[7, 7], [8, 0]]",
    )
    index_cache_mb: float = Field(
        1024.0,
        ge=0,
        description="MB of decoded gate indexes an engine keeps in memory (stacked as stage 1 scores them), shared by "
        "its banks and callers, so a stored bank's index is read and checksummed once, not on every stage-1 pass; "
        "0 = keep none (a million-token bank of SmolLM2 needs about 770 MB)",
    )
    index_dtype: IndexDtype = Field(
        DEFAULT_INDEX_DTYPE,
        description="how each block's gate index is stored: float16 keys, or int8 codes with one float32 scale per "
        "(head, channel) over the block's tokens (half the bytes; stage-1 scores drift slightly). Part of the "
        "index's identity: a bank's index is only read in the format it was written in "
        "(`lychee store recompress --index-dtype int8` converts a float16 one without a model)",
    )
    prefilter_heads: list[tuple[int, int]] | None = Field(
        None,
        description="(layer, query head) pairs whose keys form the gate index; None = the model's preset (measured "
        "by `lychee probe heads`), else a generic mid-depth choice",
    )
    prefilter_skip_tokens: int | None = Field(
        None, ge=0, description="leading chunk tokens left out of the index; None = 0 after an opening, else 4 (a sink)"
    )

    def with_generic_defaults(self) -> GateSettings:
        """A copy with the reading settings left at None (the model's preset) set to the generic defaults: for a
        scan built without a model's resolution (an engine always resolves them first)."""
        generic = {
            "prefilter": DEFAULT_PREFILTER,
            "max_relevant_blocks": DEFAULT_MAX_RELEVANT_BLOCKS,
            "fallback_blocks": DEFAULT_FALLBACK_BLOCKS,
            "min_blocks": DEFAULT_MIN_BLOCKS,
        }
        return self.model_copy(update={name: value for name, value in generic.items() if getattr(self, name) is None})

    @model_validator(mode="after")
    def _coarse_pass(self) -> GateSettings:
        if self.coarse_keep is not None and self.coarse_keep < self.candidates:
            raise ValueError(
                f"coarse_keep ({self.coarse_keep}) cannot be below candidates ({self.candidates}): stage 1 could "
                "not pass on that many blocks"
            )
        if self.coarse_keep is not None and not self.coarse_heads:
            raise ValueError("coarse_keep needs coarse_heads: the index heads its first pass reads")
        return self


class ReasonerSettings(_Settings):
    """How the reasoner reads a block and writes working memory and answers."""

    read_mode: ReadMode = Field("auto", description="kv = compressed KV prefix, text = re-read source text")
    weights: str | None = Field(
        None,
        description="a reasoner adapter written by `lychee train rl`, on for reasoner calls only; None = the model's "
        "shipped one if any, 'none' = the plain backbone",
    )
    max_memory_tokens: int = Field(1024, ge=1, description="cap on the working memory written per update")
    max_answer_tokens: int = Field(256, ge=1, description="cap on the tokens of a final answer")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy decoding")
    top_p: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="nucleus sampling: sample among the likeliest tokens holding this much probability; 1 = all "
        "(used when temperature > 0)",
    )
    seed: int | None = Field(
        None, description="seed of the sampling generator when temperature > 0; None = unseeded (varies per run)"
    )
    stop_strings: list[str] = Field(default_factory=list, description="memory and answers end before any of these")
    repeat_ngram: int = Field(
        16, ge=0, description="stop a generation whose last n tokens repeat an earlier n-gram (a loop); 0 = off"
    )
    memory: MemoryMode = Field(
        "auto",
        description="working memory: notes = the reasoner rewrites notes from each block read; excerpts = the block's "
        "most relevant sentences are kept verbatim with their spans (no decoding) and the answer reads them; "
        "auto = the model's preset, else notes",
    )
    excerpt_read_tokens: int | None = Field(
        None,
        ge=1,
        description=f"excerpts: at most this many tokens of sentences kept from one block read; None = "
        f"{DEFAULT_EXCERPT_READ_TOKENS} (or the total cap when smaller)",
    )
    excerpt_total_tokens: int | None = Field(
        None,
        ge=1,
        description=f"excerpts: the whole memory's cap; past it the least relevant sentences (re-scored against the "
        f"question and the other excerpts) are dropped whole, never cut; at most max_memory_tokens; None = "
        f"{DEFAULT_EXCERPT_TOTAL_TOKENS} (or max_memory_tokens when smaller)",
    )
    excerpt_query_tokens: int = Field(
        128,
        ge=1,
        description="excerpts: the most relevant excerpts up to this many tokens are stage-1 queries (its cost grows "
        "with them)",
    )
    excerpt_answer_share: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="excerpts: the final answer reads only the excerpts scoring at least this share of the best "
        "one's score (0 = all of them): sentences kept because they share a word with the question stay out of a "
        "small reader's way; the memory, the scan and stage 1 still use every excerpt; None = the model's preset, "
        "else 0",
    )
    excerpt_answer_order: ExcerptOrder = Field(
        "reading",
        description="excerpts: the order the final answer reads them in: reading = as they were read; relevance = "
        "most relevant first (with min_blocks, where several look-alike facts share the memory, the small reader "
        "then copies the right one more often; measured in BENCHMARKS); the gate always judges in reading order",
    )
    answer_with_note: bool = Field(
        False,
        description="notes: each note's batch also decodes the answer after that block, kept while no later read "
        "changes the memory (one decode pass in the common case instead of two; the answer then reads the last "
        "block too, so its text can differ; measured in BENCHMARKS)",
    )

    @model_validator(mode="after")
    def _excerpt_budgets(self) -> ReasonerSettings:
        if self.excerpt_total_tokens is not None and self.excerpt_total_tokens > self.max_memory_tokens:
            raise ValueError(
                f"excerpt_total_tokens ({self.excerpt_total_tokens}) cannot exceed max_memory_tokens "
                f"({self.max_memory_tokens}): the prompts are budgeted for that much memory"
            )
        if self.excerpt_read_tokens is not None and self.excerpt_read_tokens > self.excerpt_budgets[1]:
            raise ValueError(
                f"excerpt_read_tokens ({self.excerpt_read_tokens}) cannot exceed the excerpts' total cap "
                f"({self.excerpt_budgets[1]}): one read could never be kept"
            )
        return self

    @property
    def excerpt_budgets(self) -> tuple[int, int]:
        """(tokens kept per read, tokens kept in all) of the excerpt memory, defaults applied."""
        total = self.excerpt_total_tokens or min(DEFAULT_EXCERPT_TOTAL_TOKENS, self.max_memory_tokens)
        return self.excerpt_read_tokens or min(DEFAULT_EXCERPT_READ_TOKENS, total), total


DEFAULT_UPDATE_TEMPLATE = (
    "The above is a newly provided section of a long document. You are reading the document section by "
    "section to solve the problem below, and you keep notes in a memory.\n"
    "<problem> {question} </problem>\n"
    "<previous_memory> {memory} </previous_memory>\n"
    "Rewrite the memory: keep what still helps with the problem and add the facts from this section that "
    "help, quoting names, numbers and codes exactly. Be brief.\n"
    "Updated memory:"
)
DEFAULT_FINAL_TEMPLATE = (
    "You have read a long document section by section and kept notes in a memory. "
    "Solve the problem using the memory.\n"
    "<problem> {question} </problem>\n"
    "<memory> {memory} </memory>\n"
    "Answer with the answer only, quoting names, numbers and codes exactly.\n"
    "Your answer:"
)
DEFAULT_RELEVANCE_TEMPLATE = (
    "The above is a section of a long document.\n"
    "<problem> {question} </problem>\n"
    "<memory> {memory} </memory>\n"
    "Does the section above contain information that helps solve the problem, given the memory? "
    "Answer yes or no.\nAnswer:"
)
DEFAULT_QUERY_LIKELIHOOD_TEMPLATE = "\n\nQuestion: {question}"
DEFAULT_QUERY_LIKELIHOOD_MEMORY_TEMPLATE = "\n\nNotes: {memory}\nQuestion: {question}"
DEFAULT_FULL_CONTEXT_TEMPLATE = (
    "{document}\n\nAnswer the question using the document above.\n"
    "Question: {question}\n"
    "Answer with the answer only, quoting names, numbers and codes exactly.\nAnswer:"
)


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


class PromptSettings(_Settings):
    """Prompt templates; the defaults follow the released checkpoint's update and answer prompts."""

    initial_memory: str = Field("No previous memory", description="the working memory before the first block is read")
    update: str = Field(
        DEFAULT_UPDATE_TEMPLATE,
        description="after a block: rewrite the memory ({question}, {memory}); left at the default, the model's "
        "preset may replace it",
    )
    final: str = Field(
        DEFAULT_FINAL_TEMPLATE,
        description="the answer from the memory ({question}, {memory}); left at the default, the model's preset "
        "may replace it",
    )
    relevance: str = Field(
        DEFAULT_RELEVANCE_TEMPLATE,
        description="the prompt rule's yes/no question after a block ({question}, {memory})",
    )
    query_likelihood: str = Field(
        DEFAULT_QUERY_LIKELIHOOD_TEMPLATE, description="text scored after a block while the memory is still empty"
    )
    query_likelihood_memory: str = Field(
        DEFAULT_QUERY_LIKELIHOOD_MEMORY_TEMPLATE, description="text scored after a block once the memory holds notes"
    )
    full_context: str = Field(
        DEFAULT_FULL_CONTEXT_TEMPLATE,
        description="the full-context baseline and RAG evaluation: answer with the text in the prompt "
        "({document}, {question})",
    )
    use_chat_template: bool = Field(True, description="wrap prompts in the tokenizer's chat template when it has one")

    @model_validator(mode="after")
    def _check_placeholders(self) -> PromptSettings:
        required = {
            "update": {"question", "memory"},
            "final": {"question", "memory"},
            "relevance": {"question", "memory"},
            "query_likelihood": {"question"},
            "query_likelihood_memory": {"question", "memory"},
            "full_context": {"document", "question"},
        }
        for field, names in required.items():
            found = _placeholders(getattr(self, field))
            if found != names:
                raise ValueError(
                    f"prompt template {field!r} must use exactly the placeholders "
                    f"{sorted('{' + n + '}' for n in names)}, found {sorted('{' + n + '}' for n in found)}"
                )
        return self


class BaselineSettings(_Settings):
    """Settings of the comparison modes that run in the same engine."""

    memagent_chunk_tokens: int = Field(5000, ge=1, description="raw-text chunk per MemAgent memory update")


class EngineConfig(_Settings):
    """Everything the engine needs; build it with ``EngineConfig.from_kwargs`` for flat options."""

    model: ModelSettings = Field(default_factory=ModelSettings, description=ModelSettings.__doc__)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings, description=ChunkingSettings.__doc__)
    compressor: CompressorSettings = Field(default_factory=CompressorSettings, description=CompressorSettings.__doc__)
    gate: GateSettings = Field(default_factory=GateSettings, description=GateSettings.__doc__)
    reasoner: ReasonerSettings = Field(default_factory=ReasonerSettings, description=ReasonerSettings.__doc__)
    prompts: PromptSettings = Field(default_factory=PromptSettings, description=PromptSettings.__doc__)
    baselines: BaselineSettings = Field(default_factory=BaselineSettings, description=BaselineSettings.__doc__)
    show_progress: bool = Field(True, description="draw progress bars (a call's show_progress= overrides it)")
    use_presets: bool = Field(
        True,
        description="fill settings left open from the model's measured preset (presets.py); False keeps the "
        "generic defaults (release-style prompts), e.g. for a MemAgent baseline as released",
    )

    @classmethod
    def from_recorded(cls, data: dict[str, Any]) -> EngineConfig:
        """A config recorded by an earlier version (a bank manifest's settings), without the settings since retired.

        Retired settings were measured to give nothing and removed; a recorded value for one is dropped, so a bank
        built before can still be repaired with the engine that built it.
        """
        recorded = {name: dict(value) if isinstance(value, dict) else value for name, value in data.items()}
        for section, field in RETIRED_SETTINGS:
            if isinstance(recorded.get(section), dict):
                recorded[section].pop(field, None)
        try:
            return cls.model_validate(recorded)
        except ValidationError as error:
            raise ConfigurationError(_describe_validation_error(error)) from None

    @classmethod
    def from_kwargs(cls, base: EngineConfig | None = None, **options: Any) -> EngineConfig:
        """Build a config from flat options (``ratio=8, gate="prompt"``) or section dicts (``gate={...}``)."""
        data = (base or cls()).model_dump()
        for name, value in options.items():
            if name in NAME_SHORTCUTS and isinstance(value, str):
                value = {NAME_SHORTCUTS[name]: value}
            if name in FLAT_OPTIONS:
                section, field = FLAT_OPTIONS[name]
                data[section][field] = value
            elif name in data and isinstance(data[name], dict):
                if isinstance(value, BaseModel):
                    value = value.model_dump()
                if not isinstance(value, dict):
                    raise ConfigurationError(
                        f"option {name!r} expects a mapping of settings, got {type(value).__name__}"
                    )
                data[name].update(value)
            elif name in data:
                data[name] = value
            else:
                known = sorted(set(FLAT_OPTIONS) | set(data))
                raise ConfigurationError(f"unknown option {name!r}; known options: {', '.join(known)}")
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ConfigurationError(_describe_validation_error(error)) from None


FLAT_OPTIONS: dict[str, tuple[str, str]] = {
    "spec": ("model", "spec"),
    "device": ("model", "device"),
    "dtype": ("model", "dtype"),
    "attention": ("model", "attention"),
    "compressor_weights": ("model", "compressor_weights"),
    "chunk_tokens": ("chunking", "chunk_tokens"),
    "ratio": ("compressor", "ratio"),
    "observation_window": ("compressor", "observation_window"),
    "beacon_window": ("compressor", "beacon_window"),
    "ingest_batch_size": ("compressor", "ingest_batch_size"),
    "block_cache_mb": ("compressor", "block_cache_mb"),
    "threshold": ("gate", "threshold"),
    "gate_weights": ("gate", "weights"),
    "max_relevant_blocks": ("gate", "max_relevant_blocks"),
    "fallback_blocks": ("gate", "fallback_blocks"),
    "min_blocks": ("gate", "min_blocks"),
    "gate_batch_size": ("gate", "batch_size"),
    "prefilter": ("gate", "prefilter"),
    "candidates": ("gate", "candidates"),
    "prefilter_heads": ("gate", "prefilter_heads"),
    "read_mode": ("reasoner", "read_mode"),
    "reasoner_weights": ("reasoner", "weights"),
    "memory": ("reasoner", "memory"),
    "excerpt_read_tokens": ("reasoner", "excerpt_read_tokens"),
    "excerpt_total_tokens": ("reasoner", "excerpt_total_tokens"),
    "excerpt_query_tokens": ("reasoner", "excerpt_query_tokens"),
    "excerpt_answer_order": ("reasoner", "excerpt_answer_order"),
    "excerpt_answer_share": ("reasoner", "excerpt_answer_share"),
    "answer_with_note": ("reasoner", "answer_with_note"),
    "max_memory_tokens": ("reasoner", "max_memory_tokens"),
    "max_answer_tokens": ("reasoner", "max_answer_tokens"),
    "temperature": ("reasoner", "temperature"),
    "top_p": ("reasoner", "top_p"),
    "seed": ("reasoner", "seed"),
    "stop_strings": ("reasoner", "stop_strings"),
    "memagent_chunk_tokens": ("baselines", "memagent_chunk_tokens"),
}
# Settings that existed once and were retired after measurement (see presets.py): (section, field).
RETIRED_SETTINGS: tuple[tuple[str, str], ...] = (("reasoner", "focus_tokens"), ("gate", "baseline"))
# "compressor" and "gate" also accept a plain name: compressor="key_norm", gate="prompt".
NAME_SHORTCUTS = {"compressor": "kind", "gate": "rule"}


def _describe_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(piece) for piece in item["loc"]) or "config"
        parts.append(f"{location}: {item['msg']}")
    return "invalid configuration: " + "; ".join(parts)
