"""When the Triton kernels run: on CUDA tensors with Triton importable, unless LYCHEE_DISABLE_TRITON=1.

Tests call the kernels directly under ``TRITON_INTERPRET=1`` to check them on a CPU; the dispatchers
never route CPU tensors to the (slow) interpreter.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import TypeVar

import torch

_Result = TypeVar("_Result")

_logger = logging.getLogger("lychee_memory.kernels")
_failed_kernels: set[str] = set()


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


def run_triton_or_reference(
    kernel_name: str, triton_call: Callable[[], _Result], reference_call: Callable[[], _Result]
) -> _Result:
    """Run ``triton_call``; if it raises (import, compile or launch error), warn once and use the reference from then on.

    A kernel that fails to build on one GPU fails the same way on every call, so the fallback is
    permanent for the process (per kernel) and the warning is logged only once.
    """
    if kernel_name in _failed_kernels:
        return reference_call()
    try:
        return triton_call()
    except Exception as error:  # any failure of the optional fast path falls back to the reference
        _failed_kernels.add(kernel_name)
        _logger.warning(
            "Triton kernel %s failed (%s: %s); using the torch reference for the rest of this process.",
            kernel_name,
            type(error).__name__,
            error,
        )
        return reference_call()
