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
    """Seconds per query against context length, one line per method and phase (log-log; warm solid, cold dashed,
    a fresh ``lychee ask`` process dotted), the warm time to the first answer token where answers were streamed
    (p50, bars to p95), and each process's peak memory."""
    plt = pyplot()

    figure, (time_axis, first_axis, memory_axis) = plt.subplots(1, 3, figsize=(17, 4.4))
    for method in dict.fromkeys(r["method"] for r in rows):
        kind = next(r["kind"] for r in rows if r["method"] == method)
        color = None
        for phase, style in (("warm", "-"), ("cold", "--"), ("cli", ":")):
            points = sorted(
                (r["context_tokens"], r["seconds"], r["peak_mb"], r.get("first_token_p50"), r.get("first_token_p95"))
                for r in rows
                if r["method"] == method and r["phase"] == phase and r.get("seconds") is not None
            )
            if not points or (phase == "cold" and kind in ("memagent", "full-context")):
                continue
            label = method if kind in ("memagent", "full-context") else f"{method} ({phase})"
            line = time_axis.plot(
                [p[0] for p in points], [p[1] for p in points], style, marker="o", label=label, color=color
            )
            color = line[0].get_color()  # one colour per method across its phases
            if phase == "warm":
                memory_axis.plot([p[0] for p in points], [p[2] for p in points], marker="o", color=color, label=method)
                streamed = [p for p in points if p[3] is not None]
                if streamed:
                    first_axis.errorbar(
                        [p[0] for p in streamed],
                        [p[3] for p in streamed],
                        yerr=[[0.0] * len(streamed), [p[4] - p[3] for p in streamed]],
                        marker="o",
                        color=color,
                        capsize=3,
                        label=method,
                    )
    axes = (
        (time_axis, "seconds per query (log)", "query time vs context length (cold/warm: model load excluded)"),
        (first_axis, "seconds to first answer token (log)", "warm time to first token (p50, bar to p95)"),
        (memory_axis, "peak memory, MB", "peak memory of the process"),
    )
    for axis, ylabel, title in axes:
        axis.set_xscale("log")
        axis.set_xlabel("context tokens (log scale)")
        axis.set_ylabel(ylabel)
        axis.set_title(title, fontsize=10)
        axis.grid(True, alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    time_axis.set_yscale("log")
    if first_axis.has_data():
        first_axis.set_yscale("log")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
