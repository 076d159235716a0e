"""GPU kernels (Triton) with a pure-torch reference beside each; the torch path runs everywhere else.

Installed as ``lychee_memory.kernels``. Each public function picks the Triton kernel when the tensors
are on a CUDA device and Triton imports, and the torch reference otherwise (or when
``LYCHEE_DISABLE_TRITON=1``). Set ``TRITON_INTERPRET=1`` before import to run the kernels on a CPU.
``register_triton_attention()`` makes the attention kernel available to transformers as "lychee_triton".
"""

from ._triton_support import triton_importable
from .hf_attention import ATTENTION_NAME, lychee_triton_attention_forward, register_triton_attention
from .key_scores import key_logsumexp, key_logsumexp_reference
from .prefix_attention import prefix_attention, prefix_attention_reference
from .token_logprobs import token_logprobs, token_logprobs_reference

__all__ = [
    "ATTENTION_NAME",
    "key_logsumexp",
    "key_logsumexp_reference",
    "lychee_triton_attention_forward",
    "prefix_attention",
    "prefix_attention_reference",
    "register_triton_attention",
    "token_logprobs",
    "token_logprobs_reference",
    "triton_importable",
]
