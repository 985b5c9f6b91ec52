"""The experiments' figures as files: matplotlib without a display, each PNG written whole or not at all."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..atomic import atomic_write


@contextmanager
def png(path: Path, *grid: int, dpi: int = 120, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """`plt.subplots(*grid, **subplots)` to draw on; on leaving, laid out and saved to `path` through the atomic
    writer (a killed run leaves the old figure or none, never half a PNG), and closed either way."""
    import matplotlib  # noqa: PLC0415  (only where a figure is drawn: importing it costs a second)

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(*grid, **subplots)
    try:
        yield figure, axes
        figure.tight_layout()
        atomic_write(Path(path), lambda tmp: figure.savefig(tmp, dpi=dpi, format="png"))  # tmp names no format
    finally:
        plt.close(figure)
