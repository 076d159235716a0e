"""GPU kernels (Triton) with a pure-torch reference beside each; the torch path runs everywhere else.

Installed as ``lychee_memory.kernels``. Each public function picks the Triton kernel when the tensors
are on a CUDA device and Triton imports, and the torch reference otherwise (or when
``LYCHEE_DISABLE_TRITON=1``). Set ``TRITON_INTERPRET=1`` before import to run the kernels on a CPU.
"""

from .token_logprobs import token_logprobs, token_logprobs_reference

__all__ = ["token_logprobs", "token_logprobs_reference"]
