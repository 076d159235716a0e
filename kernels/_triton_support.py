"""When the Triton kernels run: on CUDA tensors with Triton importable, unless LYCHEE_DISABLE_TRITON=1.

Tests call the kernels directly under ``TRITON_INTERPRET=1`` to check them on a CPU; the dispatchers
never route CPU tensors to the (slow) interpreter.
"""

from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    if os.environ.get("LYCHEE_DISABLE_TRITON") == "1":
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def use_triton(tensor: torch.Tensor) -> bool:
    """Run the Triton kernel for this tensor? Only for CUDA tensors with Triton installed."""
    return tensor.is_cuda and triton_importable()
