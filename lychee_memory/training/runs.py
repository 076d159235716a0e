"""What every trainer's run shares: the resume check of a checkpoint's settings, and the training-curve plot tools."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

logger = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"
RESUMABLE_CHANGES = ("steps", "eval_every")  # a resumed run may train longer or evaluate more often


def check_resume(
    saved: dict[str, Any], current: dict[str, Any], path: Path, defaults: dict[str, Any] | None = None
) -> None:
    """Refuse to resume a checkpoint written with other settings (naming them), so a resumed run is the same run.

    A setting added after the checkpoint was written counts as its ``defaults`` value (what that run did)."""
    saved = {**(defaults or {}), **saved}
    saved = {key: value for key, value in saved.items() if key not in RESUMABLE_CHANGES}
    current = {key: value for key, value in current.items() if key not in RESUMABLE_CHANGES}
    if saved != current:
        changed = sorted(key for key in current if saved.get(key) != current[key])
        raise ConfigurationError(
            f"{path} was written by a run with other settings ({', '.join(changed)}); use another output "
            "directory or the same settings to resume"
        )


def save_checkpoint(directory: Path, payload: dict[str, Any]) -> None:
    """Write the run's checkpoint atomically (temporary file, then rename): an interruption never leaves half."""
    import torch

    staging = directory / f".{CHECKPOINT_NAME}.partial"
    torch.save(payload, staging)
    staging.replace(directory / CHECKPOINT_NAME)


def load_checkpoint(
    directory: Path, current: dict[str, Any], device, defaults: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The run's checkpoint, if any, after checking it was written with the same settings (``check_resume``)."""
    import torch

    path = directory / CHECKPOINT_NAME
    if not path.is_file():
        return None
    payload = torch.load(path, map_location=device, weights_only=False)
    check_resume(payload["config"], current, path, defaults)
    return payload


def pyplot():
    """matplotlib's pyplot on the file-only backend, or None (logged) when the [bench] extra is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed (the [bench] extra): no training curve")
        return None
    return plt


def moving_mean(values: Sequence[float], window: int = 20) -> list[float]:
    """Each value averaged with the ``window - 1`` before it (fewer at the start): a readable loss curve."""
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]
