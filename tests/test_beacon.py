"""The learned compressor: a synthetic checkpoint in the released format is recognised, loaded, and
reproduces a forward computed by hand from the raw weights (explicit RMSNorm, RoPE, softmax, MLP)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from lychee_memory import LycheeMemory
from lychee_memory.errors import UnsupportedModelError
from lychee_memory.testing import build_tiny_model

WINDOW, RATIO = 16, 4


def write_checkpoint(directory, family: str, with_bias: bool, extra_config: dict | None = None, seed: int = 7):
    """A tiny model saved as a HF directory plus lychee_memory_* tensors and config keys."""
    model, tokenizer = build_tiny_model(family)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(model.config.num_hidden_layers):
        attention = model.model.layers[layer].self_attn
        for name in "qkv":
            base = getattr(attention, f"{name}_proj").weight
            prefix = f"model.layers.{layer}.self_attn.lychee_memory_{name}_proj"
            tensors[f"{prefix}.weight"] = torch.randn(base.shape, generator=generator) * 0.08
            if with_bias:
                tensors[f"{prefix}.bias"] = torch.randn(base.shape[0], generator=generator) * 0.05
    tensors["model.lychee_memory_embed_tokens.weight"] = (
        torch.randn(1, model.config.hidden_size, generator=generator) * 0.5
    )
    save_file(tensors, str(directory / "lychee_memory.safetensors"))
    config = json.loads((directory / "config.json").read_text())
    config.update(
        {
            "lychee_memory_window": WINDOW,
            "lychee_memory_stride": WINDOW,
            "lychee_memory_ratio": [RATIO],
            "lychee_memory_attn": "full-coverage",
            "lychee_memory_pos": "interleave",
            "lychee_memory_param": ["q", "k", "v"],
            "lychee_memory_embed_init": "eos",
            "lychee_memory_sink_size": 0,
            "lychee_memory_attend_prev": True,
            "beacon_window": WINDOW,
        }
    )
    config.update(extra_config or {})
    (directory / "config.json").write_text(json.dumps(config))
    return model, tensors


# An independent forward, written from the weights alone ----------------------------------------------


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x, positions, theta):
    """x: [tokens, dim]; rotate pairs (i, i + dim/2) by position * theta^(-2i/dim)."""
    dim = x.shape[-1]
    inverse = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = positions[:, None].double() * inverse[None, :]
    cos, sin = torch.cos(angles).float(), torch.sin(angles).float()
    first, second = x[..., : dim // 2], x[..., dim // 2 :]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def linear(state, name, x):
    out = x @ state[f"{name}.weight"].T
    if f"{name}.bias" in state:
        out = out + state[f"{name}.bias"]
    return out


def hand_beacon(model, memory_tensors, tokens, window, ratio):
    """Memory keys (pre-RoPE) and values per layer, computed token by token and head by head."""
    config = model.config
    state = {k: v.float() for k, v in model.state_dict().items()}
    state.update({k: v.float() for k, v in memory_tensors.items()})
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    theta, eps = config.rope_parameters["rope_theta"], config.rms_norm_eps
    memory_keys = [[] for _ in range(config.num_hidden_layers)]
    memory_values = [[] for _ in range(config.num_hidden_layers)]
    previous = 0
    for start in range(0, len(tokens), window):
        raw = tokens[start : start + window]
        sequence = []
        for index, token in enumerate(raw):
            sequence.append(token)
            if (index + 1) % ratio == 0 or index == len(raw) - 1:
                sequence.append(None)  # a memory token
        is_memory = [item is None for item in sequence]
        hidden = torch.stack(
            [
                state["model.lychee_memory_embed_tokens.weight"][0]
                if item is None
                else state["model.embed_tokens.weight"][item]
                for item in sequence
            ]
        )
        positions = torch.arange(previous, previous + len(sequence))
        for layer in range(config.num_hidden_layers):
            prefix = f"model.layers.{layer}"
            normed = rms_norm(hidden, state[f"{prefix}.input_layernorm.weight"], eps)
            rows = {"q": [], "k": [], "v": []}
            for position, x in enumerate(normed):
                for name in "qkv":
                    source = (
                        f"{prefix}.self_attn.lychee_memory_{name}_proj"
                        if is_memory[position]
                        else f"{prefix}.self_attn.{name}_proj"
                    )
                    rows[name].append(linear(state, source, x))
            query = torch.stack(rows["q"]).view(len(sequence), heads, head_dim)
            key = torch.stack(rows["k"]).view(len(sequence), kv_heads, head_dim)
            value = torch.stack(rows["v"]).view(len(sequence), kv_heads, head_dim)
            all_keys = torch.cat([*memory_keys[layer], key]) if memory_keys[layer] else key
            all_values = torch.cat([*memory_values[layer], value]) if memory_values[layer] else value
            key_positions = torch.arange(all_keys.shape[0])
            outputs = []
            for head in range(heads):
                kv_head = head // (heads // kv_heads)
                q = rope(query[:, head], positions, theta)
                k = rope(all_keys[:, kv_head], key_positions, theta)
                scores = q @ k.T / math.sqrt(head_dim)
                blocked = key_positions[None, :] > positions[:, None]
                scores = scores.masked_fill(blocked, float("-inf"))
                outputs.append(torch.softmax(scores, dim=-1) @ all_values[:, kv_head])
            attended = torch.stack(outputs, dim=1).reshape(len(sequence), heads * head_dim)
            hidden = hidden + linear(state, f"{prefix}.self_attn.o_proj", attended)
            normed = rms_norm(hidden, state[f"{prefix}.post_attention_layernorm.weight"], eps)
            gate = linear(state, f"{prefix}.mlp.gate_proj", normed)
            up = linear(state, f"{prefix}.mlp.up_proj", normed)
            hidden = hidden + linear(state, f"{prefix}.mlp.down_proj", torch.nn.functional.silu(gate) * up)
            keep = torch.tensor(is_memory)
            memory_keys[layer].append(key[keep])
            memory_values[layer].append(value[keep])
        previous += sum(is_memory)
    keys = torch.stack([torch.cat(per_layer).transpose(0, 1) for per_layer in memory_keys])
    values = torch.stack([torch.cat(per_layer).transpose(0, 1) for per_layer in memory_values])
    return keys, values


@pytest.mark.parametrize("family,with_bias", [("qwen2", True), ("llama", False), ("llama", True)])
def test_checkpoint_with_memory_weights_reproduces_the_hand_computed_forward(tmp_path, family, with_bias):
    model, tensors = write_checkpoint(tmp_path, family, with_bias)
    engine = LycheeMemory.from_pretrained(str(tmp_path), chunk_tokens=40, max_memory_tokens=8, show_progress=False)
    assert engine.loaded.has_trained_memory
    assert engine.compressor.name == "beacon" and engine.compressor.trained
    assert engine.compressor.window == WINDOW and engine.compressor.ratio == RATIO
    assert engine.config.reasoner.read_mode == "kv", "a trained compressor is read as KV"
    tokens = torch.randint(3, 300, (37,), generator=torch.Generator().manual_seed(1)).tolist()
    from tests.test_compressors import make_chunk

    block = engine.compressor.compress(engine.loaded, [make_chunk(tokens)])[0]
    expected_keys, expected_values = hand_beacon(model, tensors, tokens, WINDOW, RATIO)
    assert block.num_slots == math.ceil(37 / RATIO) == expected_keys.shape[2]
    torch.testing.assert_close(block.keys, expected_keys, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(block.values, expected_values, rtol=1e-4, atol=1e-4)
    assert block.next_position == block.num_slots


def test_beacon_prefers_the_beacon_prefix_too(tmp_path):
    """Checkpoints in the Activation Beacon naming (beacon_*) load the same way."""
    model, tensors = write_checkpoint(tmp_path, "qwen2", True)
    renamed = {name.replace("lychee_memory_", "beacon_"): tensor for name, tensor in tensors.items()}
    (tmp_path / "lychee_memory.safetensors").unlink()
    save_file(renamed, str(tmp_path / "beacon.safetensors"))
    engine = LycheeMemory.from_pretrained(str(tmp_path), chunk_tokens=40, max_memory_tokens=8, show_progress=False)
    assert engine.compressor.trained


@pytest.mark.parametrize(
    "setting,value,message",
    [
        ("lychee_memory_pos", "append", "pos"),
        ("lychee_memory_attn", "segmentation", "attn"),
        ("lychee_memory_param", ["q", "k", "v", "o"], "projections"),
    ],
)
def test_unsupported_checkpoint_settings_are_refused(tmp_path, setting, value, message):
    write_checkpoint(tmp_path, "qwen2", True, {setting: value})
    with pytest.raises(UnsupportedModelError, match=message):
        LycheeMemory.from_pretrained(str(tmp_path), chunk_tokens=40, max_memory_tokens=8, show_progress=False)


def test_model_without_memory_weights_warns_that_beacon_is_untrained():
    with pytest.warns(UserWarning, match="untrained"):
        engine = LycheeMemory.from_pretrained(
            "tiny-random-qwen2",
            compressor="beacon",
            beacon_window=16,
            chunk_tokens=32,
            max_memory_tokens=8,
            show_progress=False,
        )
    assert not engine.compressor.trained
    assert engine.config.reasoner.read_mode == "text", "an untrained compressor re-reads the text"
