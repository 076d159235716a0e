"""Tiny random-init Llama and Qwen2 models with a small byte-level BPE tokenizer, built offline.

They make the whole pipeline (compress, gate, reason, store, adapters) testable on a CPU in seconds;
their answers are noise. Use them through the specs ``tiny-random-llama``, ``tiny-random-qwen2`` and
``tiny-random-llama-bos`` (a Llama whose tokenizer starts every sequence with a BOS token, as Llama 3's does,
so attention sinks, block-free baselines and sequence starts are exercised).
"""

from __future__ import annotations

import functools

import torch

_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_BOS_TOKEN = "<|startoftext|>"
TINY_FAMILIES = ("llama", "qwen2", "llama-bos")  # the tiny-random-* specs model_loading resolves
_TRAINING_TEXT = """
The lighthouse keeper wrote the code 58213 in the logbook before the storm reached the harbour.
A ship called the Silver Heron anchored in the bay; its captain asked who had built the old tower.
Document 1: The river flows north through the valley and joins the sea near the fishing village.
Question: What is the secret code? Answer: The answer is written in the memory of the reader.
Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ? ( ) " ' - appear in every long document.
Notes: No previous memory. Updated memory: the keeper, the code, the ship, the captain, the tower.
"""


@functools.lru_cache(maxsize=2)
def build_tiny_tokenizer(with_bos: bool = False):
    """A 384-token byte-level BPE tokenizer with a ChatML template; deterministic and offline.

    ``with_bos`` adds a BOS token that the tokenizer puts before every sequence it encodes.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=_SPECIAL_TOKENS + ([_BOS_TOKEN] if with_bos else []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_TRAINING_TEXT] * 4, trainer=trainer)
    if with_bos:
        bos_id = tokenizer.token_to_id(_BOS_TOKEN)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{_BOS_TOKEN} $A", pair=f"{_BOS_TOKEN} $A $B", special_tokens=[(_BOS_TOKEN, bos_id)]
        )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=_BOS_TOKEN if with_bos else None,
    )
    wrapped.chat_template = _CHAT_TEMPLATE
    return wrapped


def tiny_config(family: str, vocab_size: int, **overrides):
    """Config of a 2-layer model with grouped-query attention (4 query heads, 2 KV heads, head_dim 16)."""
    family = family.removesuffix("-bos")
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )
    common.update(overrides)
    if family == "llama":
        return LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common)
    if family == "qwen2":
        return Qwen2Config(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **common)
    raise ValueError(f"unknown tiny model family {family!r}")


def build_tiny_model(family: str, attention: str = "sdpa", seed: int = 0, **overrides):
    """A random-init tiny model (same weights for the same seed) and the tiny tokenizer."""
    from transformers import AutoModelForCausalLM

    tokenizer = build_tiny_tokenizer(with_bos=family.endswith("-bos"))
    config = tiny_config(family, vocab_size=len(tokenizer), **overrides)
    config._attn_implementation = attention
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attention)
        # Widen the random init a little so different inputs give clearly different scores.
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.data.normal_(0.0, 0.08)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
