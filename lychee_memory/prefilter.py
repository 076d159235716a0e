"""Stage 1 of the gate: rank every block from a small index of its own keys, so that stage 2 (the likelihood
rules of ``gate.py``) judges a few candidates instead of the whole bank.

Index (made at ingest, from the compressor's own forward, so it costs no extra forward): for each chosen
(layer, KV head) pair, the post-RoPE keys of the chunk's tokens after its first ``skip_tokens``, in float16:
``[pairs, tokens, head_dim]`` per block. Framed blocks begin after the shared opening, which is the attention
sink, so no sink is in the index.

Query: one forward of the gate prompt alone (after the opening, at the positions the prompt takes after a full
block); at each chosen (layer, query head) the query vectors of the question's tokens (and of the memory's once it
holds notes), RoPE applied. A null question ("N/A") is run the same way once per engine, for calibration.

Score of block b at head h for a group of query tokens: the mean over the group of
``logsumexp_t(q . k_t / sqrt(head_dim))`` over the block's index keys, minus the same for the null question (some
blocks draw every query); z-scored across the bank's blocks per head; averaged over heads. Once the memory holds
notes its tokens add ``memory_weight`` times their own z-score, so the block of hop 2 can enter once hop 1 is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lychee_memory.kernels import key_logsumexp

from .blocks import BlockOpening
from .errors import ConfigurationError
from .kv_prefix import apply_rope, opening_cache
from .model_loading import LoadedModel
from .prompts import PromptBuilder

logger = logging.getLogger(__name__)

NULL_QUESTION = "N/A"
INDEX_DTYPE = torch.float16
BLOCKS_PER_BATCH = 64  # blocks whose index keys are scored in one kernel call (bounds memory, not results)
_warned_generic: set[str] = set()


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
        """The index of one chunk from its forward's keys (per layer [B, H_kv, S, D]; the chunk at start..start+length)."""
        skip = min(self.skip_tokens, max(0, length - 1))
        parts = [layer_keys[layer][row, kv_head, start + skip : start + length] for layer, kv_head in self.pairs]
        return torch.stack(parts).to(device="cpu", dtype=INDEX_DTYPE).contiguous()

    def check(self, keys: torch.Tensor, head_dim: int) -> bool:
        """Whether a stored index tensor has this spec's layout."""
        return keys.dim() == 3 and keys.shape[0] == len(self.pairs) and keys.shape[2] == head_dim and keys.shape[1] > 0


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


def resolve_heads(config, chosen: Sequence[Sequence[int]] | None, preset_heads, model_name: str):
    """The heads to index: the user's, else the model's preset, else the generic choice (warned once per model)."""
    layers, query_heads, _, _ = model_geometry(config)
    if chosen:
        heads = tuple((int(layer), int(head)) for layer, head in chosen)
    elif preset_heads:
        heads = tuple(tuple(head) for head in preset_heads)
    else:
        heads = generic_heads(config)
        if model_name not in _warned_generic:
            _warned_generic.add(model_name)
            logger.warning(
                "no measured prefilter heads for %s: using the query heads of the layers nearest 58%% depth %s; "
                "run `lychee probe heads` on this model and set gate.prefilter_heads to the heads it reports",
                model_name,
                [list(head) for head in heads],
            )
    for layer, head in heads:
        if not (0 <= layer < layers and 0 <= head < query_heads):
            raise ConfigurationError(
                f"prefilter head (layer {layer}, head {head}) does not exist in a model of {layers} layers and "
                f"{query_heads} query heads"
            )
    return heads


class _Stop(Exception):
    """Raised by the query capture once the deepest chosen layer ran: the rest of the forward is not needed."""


@torch.inference_mode()
def capture_queries(
    loaded: LoadedModel,
    opening: BlockOpening | None,
    prompt_ids: list[int],
    start_position: int,
    heads: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """Query vectors [len(heads), Q, head_dim] (float32, RoPE applied) of a prompt run after the opening alone.

    The prompt takes positions ``start_position ..``, where it would sit after a full block, so q . k over a
    block's stored keys sees the relative distances the real prompt sees.
    """
    decoder = loaded.model.get_decoder()
    wanted = sorted({layer for layer, _ in heads})
    captured: dict[int, torch.Tensor] = {}

    def capture(layer_index: int):
        def hook(module, args, kwargs, output=None):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            cos, sin = kwargs["position_embeddings"]
            query = module.q_proj(hidden).view(hidden.shape[0], hidden.shape[1], -1, module.head_dim)
            if hasattr(module, "q_norm"):
                query = module.q_norm(query)
            captured[layer_index] = apply_rope(query.transpose(1, 2), cos[:, None], sin[:, None])[0].float()
            if layer_index == wanted[-1]:
                raise _Stop

        return hook

    hooks = [
        decoder.layers[layer].self_attn.register_forward_pre_hook(capture(layer), with_kwargs=True) for layer in wanted
    ]
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=loaded.device)
    positions = torch.arange(start_position, start_position + len(prompt_ids), device=loaded.device)[None]
    cache = opening_cache(loaded, opening, 1) if opening is not None and opening.num_slots else None
    try:
        decoder(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=cache is not None)
    except _Stop:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack([captured[layer][head] for layer, head in heads])


@dataclass
class StageOneQuery:
    """Query vectors of one (question, memory) and, per group of its tokens, their weights (rows sum to 1).

    Groups: 0 the question, 1 the memory (empty while it is the initial placeholder), 2 the null question.
    """

    vectors: torch.Tensor  # [heads, Q, head_dim]
    weights: torch.Tensor  # [3, Q]
    has_memory: bool


def _mean_weights(length: int, spans: list[tuple[int, int] | None], offset_by: list[int]) -> torch.Tensor:
    weights = torch.zeros(len(spans), length)
    for group, (span, offset) in enumerate(zip(spans, offset_by)):
        if span is not None and span[1] > span[0]:
            weights[group, offset + span[0] : offset + span[1]] = 1.0 / (span[1] - span[0])
    return weights


class Prefilter:
    """Scores blocks from their index keys and picks the candidates stage 2 judges."""

    def __init__(
        self,
        loaded: LoadedModel,
        prompts: PromptBuilder,
        opening: BlockOpening | None,
        spec: IndexSpec,
        start_position: int,
        memory_weight: float,
        initial_memory: str,
        template: str,
        memory_template: str,
    ):
        self.loaded, self.prompts, self.opening, self.spec = loaded, prompts, opening, spec
        self.start_position = start_position
        self.memory_weight, self.initial_memory = memory_weight, initial_memory
        self.template, self.memory_template = template, memory_template
        self.scale = model_geometry(loaded.model.config)[3] ** -0.5
        self._null: tuple[torch.Tensor, tuple[int, int]] | None = None

    def _vectors(self, prompt_ids: list[int]) -> torch.Tensor:
        return capture_queries(self.loaded, self.opening, prompt_ids, self.start_position, self.spec.heads)

    def _null_vectors(self) -> tuple[torch.Tensor, tuple[int, int]]:
        if self._null is None:
            segmented = self.prompts.segments(self.template, question=NULL_QUESTION)
            self._null = (self._vectors(segmented.token_ids), segmented.spans["question"])
        return self._null

    def query(self, question: str, memory: str) -> StageOneQuery:
        """The stage-1 query of a question under a memory (its notes count once it is not the placeholder)."""
        has_memory = memory != self.initial_memory
        if has_memory:
            segmented = self.prompts.segments(self.memory_template, question=question, memory=memory)
        else:
            segmented = self.prompts.segments(self.template, question=question)
        vectors = self._vectors(segmented.token_ids)
        null_vectors, null_span = self._null_vectors()
        own = vectors.shape[1]
        weights = _mean_weights(
            own + null_vectors.shape[1],
            [segmented.spans["question"], segmented.spans.get("memory") if has_memory else None, null_span],
            [0, 0, own],
        )
        return StageOneQuery(torch.cat([vectors, null_vectors], dim=1), weights, has_memory)

    def raw_scores(
        self, query: StageOneQuery, index_keys: Callable[[int], torch.Tensor | None], indices: Sequence[int]
    ) -> tuple[list[int], torch.Tensor, list[int]]:
        """(scored indices, their group means [n, heads, 3], indices without a usable index)."""
        head_dim = model_geometry(self.loaded.model.config)[3]
        device = self.loaded.device
        used = query.weights.sum(dim=0) > 0  # template tokens ("Question:") carry no weight: not scored at all
        vectors = query.vectors[:, used].to(device)
        weights = query.weights[:, used].to(device)
        head_pairs = torch.tensor(self.spec.head_pairs, dtype=torch.long, device=device)
        scored, missing, results = [], [], []
        for start in range(0, len(indices), BLOCKS_PER_BATCH):
            group = []
            for index in indices[start : start + BLOCKS_PER_BATCH]:
                keys = index_keys(index)
                if keys is None or not self.spec.check(keys, head_dim):
                    missing.append(index)
                else:
                    group.append((index, keys))
            if not group:
                continue
            longest = max(keys.shape[1] for _, keys in group)
            stacked = torch.zeros(len(group), len(self.spec.pairs), longest, head_dim, dtype=INDEX_DTYPE)
            valid = torch.zeros(len(group), longest, dtype=torch.bool)
            for row, (_, keys) in enumerate(group):
                stacked[row, :, : keys.shape[1]] = keys
                valid[row, : keys.shape[1]] = True
            lse = key_logsumexp(vectors, stacked.to(device), valid.to(device), head_pairs, self.scale)
            results.append(torch.einsum("nhq,gq->nhg", lse, weights).cpu())
            scored.extend(index for index, _ in group)
        means = torch.cat(results) if results else torch.zeros(0, len(self.spec.heads), 3)
        return scored, means, missing

    def scores(
        self, query: StageOneQuery, index_keys: Callable[[int], torch.Tensor | None], indices: Sequence[int]
    ) -> tuple[dict[int, float], list[int]]:
        """Calibrated stage-1 score per block of ``indices`` (higher = more likely relevant), and blocks with no index."""
        scored, means, missing = self.raw_scores(query, index_keys, indices)
        if not scored:
            return {}, missing
        combined = zscore(means[:, :, 0] - means[:, :, 2]).mean(dim=1)
        if query.has_memory:
            combined = combined + self.memory_weight * zscore(means[:, :, 1] - means[:, :, 2]).mean(dim=1)
        return dict(zip(scored, combined.tolist())), missing


def zscore(values: torch.Tensor) -> torch.Tensor:
    """Standardise [blocks, heads] per head across blocks (a constant column stays 0)."""
    if values.shape[0] < 2:
        return torch.zeros_like(values)
    std = values.std(dim=0, keepdim=True)
    return (values - values.mean(dim=0, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std))


def choose_candidates(scores: dict[int, float], count: int, margin: float) -> list[int]:
    """The ``count`` best blocks plus any within ``margin`` of the best, in document order (ties by position)."""
    if not scores:
        return []
    ranked = sorted(scores, key=lambda index: (-scores[index], index))
    best = scores[ranked[0]]
    chosen = set(ranked[:count]) | {index for index in ranked if scores[index] >= best - margin}
    return sorted(chosen)
