"""Progress bars for long work (compressing, scanning, MemAgent's reading), one style everywhere."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(total: int, description: str, enabled: bool, unit: str = "block") -> tqdm:
    """A transient tqdm bar (left out of the terminal when done); disabled bars cost nothing."""
    return tqdm(total=total, desc=description, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True)
