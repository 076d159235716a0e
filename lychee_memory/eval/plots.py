"""PNG plots of evaluation and benchmark rows; matplotlib comes with the ``[bench]`` extra."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or a clear error naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigurationError(
            'plots need matplotlib: pip install "lychee-memory[bench]" (scripts/setup.sh installs it)'
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rows(rows: Sequence[dict[str, Any]], key: str, ylabel: str, title: str, path: Path, log: bool = False) -> None:
    """One line per method of ``key`` against context length, saved as a PNG."""
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((r["context_tokens"], r[key]) for r in rows if r["method"] == method and r[key] is not None)
        if points:
            axis.plot(
                [x for x, _ in points],
                [100 * y if key in ("sub_em", "exact_match", "f1") else y for _, y in points],
                marker="o",
                label=method,
            )
    axis.set_xscale("log")
    if log:
        axis.set_yscale("log")
    axis.set_xlabel("context tokens (log scale)")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_bench(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Seconds per query against context length, one line per method and phase (log-log)."""
    plt = pyplot()

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(12, 4.2))
    for method in dict.fromkeys(r["method"] for r in rows):
        for phase, style in (("warm", "-"), ("cold", "--")):
            points = sorted(
                (r["context_tokens"], r["seconds"], r["peak_mb"])
                for r in rows
                if r["method"] == method and r["phase"] == phase and r.get("seconds") is not None
            )
            kind = next(r["kind"] for r in rows if r["method"] == method)
            if not points or (phase == "cold" and kind in ("memagent", "full-context")):
                continue
            label = method if kind in ("memagent", "full-context") else f"{method} ({phase})"
            line = time_axis.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=label)
            if phase == "warm":
                memory_axis.plot(
                    [p[0] for p in points], [p[2] for p in points], marker="o", color=line[0].get_color(), label=method
                )
    for axis, ylabel in ((time_axis, "seconds per query (log)"), (memory_axis, "peak memory, MB")):
        axis.set_xscale("log")
        axis.set_xlabel("context tokens (log scale)")
        axis.set_ylabel(ylabel)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    time_axis.set_yscale("log")
    time_axis.set_title("query time vs context length (model load excluded)")
    memory_axis.set_title("peak memory of the process")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
