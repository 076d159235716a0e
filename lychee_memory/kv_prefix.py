"""Run the language model over prompts that continue after a memory block's KV.

A batch is a list of rows, each a prompt optionally preceded by an opening (the shared KV framed blocks were
encoded after) and a block. Rows are laid out as ``[opening slots, block slots, right-padded][prompt,
left-padded]`` so every prompt ends at the same index, masks keep padding invisible, and each prompt's
positions continue from its own block's ``next_position`` (after the opening alone: the opening's length). The
block's tensors are copied into a growable cache and never modified, so a stored block can serve any
number of questions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, CacheLayerMixin

from .blocks import BlockOpening, MemoryBlock
from .model_loading import LoadedModel


@dataclass
class PromptRow:
    """One sequence of a batch: a prompt, optionally after an opening and a memory block."""

    prompt_ids: list[int]
    block: MemoryBlock | None = None
    opening: BlockOpening | None = None

    @property
    def prefix_slots(self) -> int:
        return (self.opening.num_slots if self.opening is not None else 0) + (
            self.block.num_slots if self.block is not None else 0
        )

    @property
    def start_position(self) -> int:
        """Where the prompt's positions begin: after the block, else after the opening, else at 0."""
        if self.block is not None:
            return self.block.next_position
        return self.opening.num_slots if self.opening is not None else 0


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the half-split layout used by Llama/Qwen2; cos/sin broadcast over heads."""
    return x * cos + rotate_half(x) * sin


def _same_layout(states: torch.Tensor, buffer: torch.Tensor) -> bool:
    """Do [B, H, T, D] states have the batch, heads and head_dim of a [B, H, capacity, D] buffer?"""
    return states.shape[:2] == buffer.shape[:2] and states.shape[-1] == buffer.shape[-1]


class GrowableLayer(CacheLayerMixin):
    """A full-attention cache layer over a preallocated buffer: appending writes in place instead of re-concatenating.

    The buffers are [B, Hkv, capacity, D]; slots ``[0, length)`` hold the cache and ``keys``/``values`` are
    always the views ``buffer[:, :, :length]``. Every method of transformers' layer contract (that of
    ``DynamicLayer``, which this behaves like) works on the buffers and refreshes the views, so none can
    leave them out of step. It derives from ``CacheLayerMixin``, not ``DynamicLayer``, so that no method
    written for concatenated tensors is inherited; transformers tells attention layers apart by the mixin.
    """

    is_sliding = False
    is_croppable = True

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        if keys.dim() != 4 or keys.shape[:3] != values.shape[:3] or not 0 <= length <= keys.shape[-2]:
            raise ValueError(
                f"expected key/value buffers [B, Hkv, capacity, D] with 0 <= length <= capacity, got "
                f"{tuple(keys.shape)}, {tuple(values.shape)} and length {length}"
            )
        super().__init__()
        self._key_buffer, self._value_buffer, self._length = keys, values, length
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys = self._key_buffer[:, :, : self._length]
        self.values = self._value_buffer[:, :, : self._length]

    def _replace_buffers(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._key_buffer, self._value_buffer = keys, values
        self._refresh_views()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Empty buffers shaped like these states, keeping the capacity: ``update`` after ``reset`` may change B."""
        capacity = max(self._key_buffer.shape[-2], key_states.shape[-2])
        self._length = 0
        self._replace_buffers(
            key_states.new_empty((*key_states.shape[:2], capacity, key_states.shape[-1])),
            value_states.new_empty((*value_states.shape[:2], capacity, value_states.shape[-1])),
        )
        self.dtype, self.device = key_states.dtype, key_states.device

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append [B, Hkv, T, D] states after the filled slots; returns the whole cache (keys, values)."""
        if not (_same_layout(key_states, self._key_buffer) and _same_layout(value_states, self._value_buffer)):
            if self._length > 0:
                raise ValueError(
                    f"states {tuple(key_states.shape)} do not continue a cache of {self._length} slots laid out as "
                    f"[batch, heads, *, head_dim] = {tuple(self.keys.shape)}"
                )
            # An empty layer takes any layout, as a reset DynamicLayer does.
            self.lazy_initialization(key_states, value_states)
        if self._key_buffer.device != key_states.device:  # offloaded and not prefetched: bring it back first
            self._move_buffers(key_states.device)
        end = self._length + key_states.shape[-2]
        if end > self._key_buffer.shape[-2]:
            self._grow(end)
        self._key_buffer[:, :, self._length : end] = key_states
        self._value_buffer[:, :, self._length : end] = value_states
        self._length = end
        self._refresh_views()
        return self.keys, self.values

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self._key_buffer.shape[-2])
        keys = self._key_buffer.new_empty((*self._key_buffer.shape[:2], capacity, self._key_buffer.shape[-1]))
        values = self._value_buffer.new_empty((*self._value_buffer.shape[:2], capacity, self._value_buffer.shape[-1]))
        keys[:, :, : self._length] = self.keys
        values[:, :, : self._length] = self.values
        self._replace_buffers(keys, values)

    def _move_buffers(self, device: torch.device | str) -> None:
        self._replace_buffers(
            self._key_buffer.to(device, non_blocking=True), self._value_buffer.to(device, non_blocking=True)
        )

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """(kv_length, kv_offset) for a forward of ``query_length`` new tokens, as for a DynamicLayer."""
        return self._length + query_length, 0

    def get_seq_length(self) -> int:
        return self._length

    def get_max_length(self) -> int:
        """-1: the buffer grows on demand, so there is no maximum."""
        return -1

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` slots (a negative count, as transformers now requires)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of tokens to remove, got {tokens_to_remove}")
        self._length = max(0, self._length + tokens_to_remove)
        self._refresh_views()

    def reset(self) -> None:
        """Empty the cache, keeping the buffers for the next update."""
        self._length = 0
        self._refresh_views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows ``indices`` (index or bool mask) of the buffers."""
        if self._length > 0:
            self._replace_buffers(self._key_buffer[indices, ...], self._value_buffer[indices, ...])

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat each batch row of the buffers ``repeats`` times in place of the row."""
        if self._length > 0:
            self._replace_buffers(
                self._key_buffer.repeat_interleave(repeats, dim=0), self._value_buffer.repeat_interleave(repeats, dim=0)
            )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the batch rows of the buffers for beam search."""
        if self._length > 0:
            self._replace_buffers(
                self._key_buffer.index_select(0, beam_idx.to(self._key_buffer.device)),
                self._value_buffer.index_select(0, beam_idx.to(self._value_buffer.device)),
            )

    def offload(self) -> None:
        """Move the buffers (not only the views) to the CPU, as transformers' cache offloading expects."""
        self._move_buffers("cpu")

    def prefetch(self) -> None:
        """Move offloaded buffers back to the layer's device ahead of its next update."""
        if self._key_buffer.device != self.device:
            self._move_buffers(self.device)


class PrefixCache(Cache):
    """A KV cache whose first slots are copies of memory blocks; new tokens append in place."""

    def __init__(self, layers: list[GrowableLayer]):
        super().__init__(layers=layers)


@dataclass
class PreparedBatch:
    """Tensors for one batched forward over prefixed prompts."""

    input_ids: torch.Tensor  # [B, Q] left-padded prompts
    positions: torch.Tensor  # [B, Q] RoPE positions of the prompt tokens
    kv_valid: torch.Tensor  # [B, S + Q] which cache entries are real
    prompt_lengths: list[int]
    prefix_length: int  # S, the padded slot count
    cache: PrefixCache
    next_positions: torch.Tensor  # [B] position of the next token after each prompt


def _model_geometry(loaded: LoadedModel) -> tuple[int, int, int]:
    config = loaded.model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, config.num_key_value_heads, head_dim


def prepare_batch(loaded: LoadedModel, rows: list[PromptRow], extra_capacity: int = 0) -> PreparedBatch:
    """Lay out rows as [slots | padding | padding | prompt] and build the cache holding the slots."""
    if not rows:
        raise ValueError("a batch needs at least one row")
    device, dtype = loaded.device, loaded.dtype
    num_layers, kv_heads, head_dim = _model_geometry(loaded)
    batch = len(rows)
    prefix_length = max(row.prefix_slots for row in rows)
    prompt_length = max(len(row.prompt_ids) for row in rows)
    if prompt_length == 0:
        raise ValueError("every batch needs at least one prompt token")
    capacity = prefix_length + prompt_length + extra_capacity
    # Uninitialised except the padded slots, which are zeroed: masked attention gives them weight 0, and
    # 0 * garbage could still be NaN. Capacity past the prefix is written before it is ever read.
    key_buffers = torch.empty(num_layers, batch, kv_heads, capacity, head_dim, device=device, dtype=dtype)
    value_buffers = torch.empty_like(key_buffers)
    kv_valid = torch.zeros(batch, prefix_length + prompt_length, dtype=torch.bool, device=device)
    input_ids = torch.full((batch, prompt_length), loaded.tokenizer.pad_token_id, dtype=torch.long)
    positions = torch.zeros(batch, prompt_length, dtype=torch.long)
    next_positions = torch.zeros(batch, dtype=torch.long)
    for index, row in enumerate(rows):
        filled = row.prefix_slots
        key_buffers[:, index, :, filled:prefix_length] = 0
        value_buffers[:, index, :, filled:prefix_length] = 0
        offset = 0
        for part in (row.opening, row.block):
            if part is None:
                continue
            if part.keys.shape[0] != num_layers or part.keys.shape[1] != kv_heads or part.keys.shape[3] != head_dim:
                raise ValueError(
                    f"block geometry {tuple(part.keys.shape)} does not match the model "
                    f"({num_layers} layers, {kv_heads} KV heads, head_dim {head_dim})"
                )
            slots = part.num_slots
            key_buffers[:, index, :, offset : offset + slots] = part.keys.to(device=device, dtype=dtype)
            value_buffers[:, index, :, offset : offset + slots] = part.values.to(device=device, dtype=dtype)
            if isinstance(part, MemoryBlock):
                kv_valid[index, offset : offset + slots] = part.valid.to(device)
            else:
                kv_valid[index, offset : offset + slots] = True
            offset += slots
        start = row.start_position
        length = len(row.prompt_ids)
        pad = prompt_length - length
        input_ids[index, pad:] = torch.tensor(row.prompt_ids, dtype=torch.long)
        kv_valid[index, prefix_length + pad :] = True
        positions[index, pad:] = torch.arange(start, start + length)
        positions[index, :pad] = start
        next_positions[index] = start + length
    cache = PrefixCache(
        [GrowableLayer(key_buffers[layer], value_buffers[layer], prefix_length) for layer in range(num_layers)]
    )
    return PreparedBatch(
        input_ids=input_ids.to(device),
        positions=positions.to(device),
        kv_valid=kv_valid,
        prompt_lengths=[len(row.prompt_ids) for row in rows],
        prefix_length=prefix_length,
        cache=cache,
        next_positions=next_positions.to(device),
    )


def attention_mask_for(loaded: LoadedModel, kv_valid: torch.Tensor, query_length: int) -> torch.Tensor | None:
    """The mask for a forward of ``query_length`` new tokens whose cache entries are marked in kv_valid.

    None when nothing is padded (the kernels' causal fast path). Flash-attention takes the 2D padding
    mask; sdpa/eager take a 4D additive mask in which every padded query attends to itself, so no row is
    fully masked and no NaN can leak into real rows through padded values.
    """
    if bool(kv_valid.all()):
        return None
    if loaded.attention == "flash_attention_2":
        return kv_valid.long()
    batch, kv_length = kv_valid.shape
    device = kv_valid.device
    query_index = torch.arange(kv_length - query_length, kv_length, device=device)
    key_index = torch.arange(kv_length, device=device)
    causal = key_index[None, :] <= query_index[:, None]  # [Q, K]
    allowed = causal[None] & kv_valid[:, None, :]
    allowed |= key_index[None, None, :] == query_index[None, :, None]
    mask = torch.zeros(batch, 1, query_length, kv_length, dtype=loaded.dtype, device=device)
    mask.masked_fill_(~allowed[:, None], torch.finfo(loaded.dtype).min)
    return mask


def decoder_forward(
    loaded: LoadedModel, input_ids: torch.Tensor, positions: torch.Tensor, kv_valid: torch.Tensor, cache: Cache
) -> torch.Tensor:
    """Final hidden states [B, Q, H] of the decoder (no LM head) for new tokens appended to ``cache``."""
    mask = attention_mask_for(loaded, kv_valid, input_ids.shape[1])
    output = loaded.model.get_decoder()(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    )
    return output.last_hidden_state


def logits_of(loaded: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits (float32) for a few hidden states, e.g. the last position of each row."""
    return loaded.model.get_output_embeddings()(hidden).float()


def prefill(loaded: LoadedModel, rows: list[PromptRow], extra_capacity: int = 0) -> tuple[PreparedBatch, torch.Tensor]:
    """Prepare rows and run their prompts; returns the batch (cache filled) and hidden states [B, Q, H]."""
    batch = prepare_batch(loaded, rows, extra_capacity=extra_capacity)
    hidden = decoder_forward(loaded, batch.input_ids, batch.positions, batch.kv_valid, batch.cache)
    return batch, hidden


def prefill_with_gradients(loaded: LoadedModel, rows: list[PromptRow]) -> tuple[PreparedBatch, torch.Tensor]:
    """``prefill`` for training: the prefix sits in a cache that concatenates instead of writing in place, so
    autograd never sees a saved tensor modified (the growable buffers are shared by every layer)."""
    batch = prepare_batch(loaded, rows)
    prefix = [(layer.keys, layer.values) for layer in batch.cache.layers]
    cache = DynamicCache(ddp_cache_data=prefix, config=loaded.model.config)
    hidden = decoder_forward(loaded, batch.input_ids, batch.positions, batch.kv_valid, cache)
    return batch, hidden


@torch.inference_mode()
def encode_opening(loaded: LoadedModel, token_ids: list[int]) -> BlockOpening:
    """The KV of the opening every framed block is encoded after (one forward; empty when there are no tokens)."""
    num_layers, kv_heads, head_dim = _model_geometry(loaded)
    if not token_ids:
        empty = torch.zeros(num_layers, kv_heads, 0, head_dim, device=loaded.device, dtype=loaded.dtype)
        return BlockOpening((), empty, empty.clone())
    cache = DynamicCache(config=loaded.model.config)
    ids = torch.tensor([token_ids], dtype=torch.long, device=loaded.device)
    loaded.model.get_decoder()(input_ids=ids, past_key_values=cache, use_cache=True)
    keys = torch.stack([layer.keys[0] for layer in cache.layers])
    values = torch.stack([layer.values[0] for layer in cache.layers])
    return BlockOpening(tuple(int(token) for token in token_ids), keys, values)


def opening_cache(loaded: LoadedModel, opening: BlockOpening, batch: int) -> DynamicCache:
    """A fresh cache holding the opening's KV for ``batch`` rows, for a forward that continues after it."""
    layers = [
        (
            opening.keys[layer][None].expand(batch, -1, -1, -1).to(device=loaded.device, dtype=loaded.dtype),
            opening.values[layer][None].expand(batch, -1, -1, -1).to(device=loaded.device, dtype=loaded.dtype),
        )
        for layer in range(opening.keys.shape[0])
    ]
    return DynamicCache(ddp_cache_data=layers, config=loaded.model.config)
