"""The run loop every trainer shares (compressor, gate, RL): state, LR schedule, periodic evaluation, checkpoint and
resume, the training-curve PNG and the summary. Each trainer supplies only its step, evaluation and plot.

A run is resumable (a checkpoint at every evaluation holds the trainer's tensors, its optimizer and the state) and
a resumed run is the same run: a checkpoint written with other settings is refused, naming them, and a setting
added after the checkpoint was written counts as its default (what that run did).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..progress import progress_bar

logger = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"
CURVE_NAME = "training_curve.png"
SUMMARY_NAME = "summary.json"
RESUMABLE_CHANGES = ("steps", "eval_every")  # a resumed run may train longer or evaluate more often


@dataclass
class RunState:
    """What a checkpoint restores: the step reached, seconds trained, per-step records, evaluations, best score."""

    step: int = 0
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None  # the best evaluation score so far (what "best weights" were kept for)
    tokens_seen: int = 0

    @classmethod
    def from_checkpoint(cls, values: dict[str, Any]) -> RunState:
        """The state a checkpoint holds (one written by an older trainer holds a subset of these fields)."""
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def warmup_cosine(step: int, peak: float, warmup: int, total: int, floor: float = 0.0) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then a cosine down to ``floor * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def set_learning_rate(optimizer: Any, rate: float) -> None:
    """Set every parameter group of ``optimizer`` to ``rate`` (the schedule's value for this step)."""
    for group in optimizer.param_groups:
        group["lr"] = rate


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
    directory: Path, current: dict[str, Any], device: Any, defaults: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The run's checkpoint, if any, after checking it was written with the same settings (``check_resume``)."""
    import torch

    path = directory / CHECKPOINT_NAME
    if not path.is_file():
        return None
    payload = torch.load(path, map_location=device, weights_only=False)
    check_resume(payload["config"], current, path, defaults)
    return payload


def config_defaults(config: Any) -> dict[str, Any]:
    """Each setting's default in a pydantic settings model (what a checkpoint written before it existed did)."""
    return {
        name: info.get_default(call_default_factory=True)
        for name, info in type(config).model_fields.items()
        if not info.is_required()
    }


class TrainingRun:
    """The loop: evaluate at step 0, train to ``config.steps``, evaluate and checkpoint every ``config.eval_every``.

    A trainer sets ``config`` (a pydantic model with ``steps`` and ``eval_every``), ``out``, ``loaded`` (its model,
    for the checkpoint's device) and ``show_progress``, and supplies :meth:`train_step`, :meth:`evaluate`,
    :meth:`keep` (files written after an evaluation), :meth:`plot`, :meth:`checkpoint` and :meth:`restore`.
    """

    label = "training"  # the progress bar's text
    config: Any
    out: Path
    loaded: Any
    show_progress: bool = True
    state: RunState

    # The pieces each trainer supplies ----------------------------------------------------------------------

    def train_step(self, step: int) -> dict[str, Any]:
        """One optimisation step; returns its record (``step`` and what the curve and the progress bar show)."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        """Held-out metrics of the current weights."""
        raise NotImplementedError

    def keep(self, evaluation: dict[str, Any]) -> None:
        """Write the weights files an evaluation calls for (best so far, last)."""

    def plot(self, path: Path) -> None:
        """Draw the training curve of ``self.state`` into ``path``."""

    def checkpoint(self) -> dict[str, Any]:
        """The trainer's tensors and optimizer state for the checkpoint (the loop adds the state and settings)."""
        raise NotImplementedError

    def restore(self, payload: dict[str, Any], source: str) -> None:
        """Load what :meth:`checkpoint` returned from a checkpoint ``source``."""
        raise NotImplementedError

    def progress(self, record: dict[str, Any]) -> dict[str, str]:
        """What the progress bar shows after a step."""
        return {"loss": f"{record['loss']:.3f}"}

    def printed(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        """What an evaluation prints (one JSON line on stdout)."""
        return evaluation

    # The loop ----------------------------------------------------------------------------------------------

    def run(self, stop_at: int | None = None, *, show_progress: bool | None = None) -> RunState:
        """Train to ``config.steps`` (resuming a checkpoint in ``out``); ``stop_at`` ends early, as an interruption
        would, with that step's checkpoint saved."""
        if show_progress is not None:
            self.show_progress = show_progress
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(self.config.model_dump_json(indent=2))
        self.resume()
        steps = self.config.steps
        bar = progress_bar(steps, self.label, self.show_progress, unit="step")
        bar.update(self.state.step)
        if self.state.step == 0 and not self.state.evaluations:
            self.record_evaluation()
        started = time.perf_counter() - self.state.seconds
        end = steps if stop_at is None else min(stop_at, steps)
        while self.state.step < end:
            record = self.train_step(self.state.step)
            self.state.history.append(record)
            self.state.step += 1
            self.state.seconds = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(**self.progress(record))
            if self.state.step % self.config.eval_every == 0 or self.state.step == steps:
                self.record_evaluation()
                self.save_checkpoint()
                self.state.seconds = time.perf_counter() - started
        bar.close()
        self.save_checkpoint()
        return self.state

    def record_evaluation(self) -> None:
        """Evaluate, keep the record, print it, write the weights it calls for and redraw the curve."""
        evaluation = {"step": self.state.step, "seconds": round(self.state.seconds, 1), **self.evaluate()}
        self.state.evaluations.append(evaluation)
        logger.info("held-out evaluation: %s", evaluation)
        print(json.dumps(self.printed(evaluation)), flush=True)
        self.keep(evaluation)
        self.plot(self.out / CURVE_NAME)

    def improves(self, score: float, higher_is_better: bool) -> bool:
        """Whether ``score`` is the best so far (a tie counts when higher is better); records it if so."""
        best = self.state.best
        if best is None or (score >= best if higher_is_better else score < best):
            self.state.best = score
            return True
        return False

    def save_checkpoint(self) -> None:
        payload = {**self.checkpoint(), "state": asdict(self.state), "config": self.config.model_dump()}
        save_checkpoint(self.out, payload)

    def resume(self) -> bool:
        """Restore the checkpoint in ``out`` if there is one (refusing other settings); whether there was."""
        current = self.config.model_dump()
        payload = load_checkpoint(self.out, current, self.loaded.device, config_defaults(self.config))
        if payload is None:
            return False
        path = self.out / CHECKPOINT_NAME
        self.restore(payload, str(path))
        self.state = RunState.from_checkpoint(payload["state"])
        logger.info("resumed %s at step %d", path, self.state.step)
        return True


def write_summary(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write a run's summary beside its outputs (``summary.json``) and return it."""
    (Path(out) / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    return summary


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


def save_curves(path: Path, panels: int, draw: Callable[[Sequence[Any]], None], width: float = 11) -> None:
    """One PNG of ``panels`` side-by-side axes that ``draw`` fills; nothing when matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return
    figure, axes = plt.subplots(1, panels, figsize=(width, 4))
    draw(list(axes))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def moving_mean(values: Sequence[float], window: int = 20) -> list[float]:
    """Each value averaged with the ``window - 1`` before it (fewer at the start): a readable loss curve."""
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]
