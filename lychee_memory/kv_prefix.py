"""Run the language model over prompts that continue after a memory block's KV.

A batch is a list of rows, each a prompt optionally preceded by a block. Rows are laid out as
``[block slots, right-padded][prompt, left-padded]`` so every prompt ends at the same index, masks keep
padding invisible, and each prompt's positions continue from its own block's ``next_position``. The
block's tensors are copied into a growable cache and never modified, so a stored block can serve any
number of questions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .blocks import MemoryBlock
from .model_loading import LoadedModel


@dataclass
class PromptRow:
    """One sequence of a batch: a prompt, optionally after a memory block."""

    prompt_ids: list[int]
    block: MemoryBlock | None = None


class GrowableLayer(DynamicLayer):
    """A cache layer over a preallocated buffer: appending writes in place instead of re-concatenating."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self._key_buffer, self._value_buffer, self._length = keys, values, length
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys = self._key_buffer[:, :, : self._length]
        self.values = self._value_buffer[:, :, : self._length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None  # the buffer exists from construction

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
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
        shape = (*self._key_buffer.shape[:2], capacity, self._key_buffer.shape[-1])
        keys = self._key_buffer.new_empty(shape)
        values = self._value_buffer.new_empty(shape)
        keys[:, :, : self._length] = self._key_buffer[:, :, : self._length]
        values[:, :, : self._length] = self._value_buffer[:, :, : self._length]
        self._key_buffer, self._value_buffer = keys, values

    def get_seq_length(self) -> int:
        return self._length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to remove")
        self._length = max(0, self._length + tokens_to_remove)
        self._refresh_views()

    def reset(self) -> None:
        self._length = 0
        self._refresh_views()


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

    @property
    def has_padding(self) -> bool:
        return not bool(self.kv_valid.all())


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
    prefix_length = max((row.block.num_slots for row in rows if row.block is not None), default=0)
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
        start = 0
        filled = row.block.num_slots if row.block is not None else 0
        key_buffers[:, index, :, filled:prefix_length] = 0
        value_buffers[:, index, :, filled:prefix_length] = 0
        if row.block is not None:
            block = row.block
            if block.num_layers != num_layers or block.keys.shape[1] != kv_heads or block.keys.shape[3] != head_dim:
                raise ValueError(
                    f"block geometry {tuple(block.keys.shape)} does not match the model "
                    f"({num_layers} layers, {kv_heads} KV heads, head_dim {head_dim})"
                )
            slots = block.num_slots
            key_buffers[:, index, :, :slots] = block.keys.to(device=device, dtype=dtype)
            value_buffers[:, index, :, :slots] = block.values.to(device=device, dtype=dtype)
            kv_valid[index, :slots] = block.valid.to(device)
            start = block.next_position
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
