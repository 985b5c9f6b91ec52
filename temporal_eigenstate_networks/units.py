"""How reports write counts, durations and spreads, so that a small run does not read as nothing
("0.0 M tokens in 0.0 min") and one seed does not read as a measured spread ("± 0.0000")."""

from __future__ import annotations

from collections.abc import Mapping


def tokens_text(tokens: float) -> str:
    """3 significant digits in millions (1.31 M, 0.273 M); under 10,000 the count itself."""
    return f"{tokens / 1e6:.3g} M" if tokens >= 10_000 else f"{int(tokens):,}"


def duration_text(seconds: float) -> str:
    """Minutes from one minute on (2.9 min), else seconds (42 s)."""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def spread_text(spread: Mapping[str, float], count: int) -> str:
    """mean ± std (min..max) over several runs; one run's value alone, having no spread."""
    if count < 2:
        return f"{spread['mean']:.4f}"
    return f"{spread['mean']:.4f} ± {spread['std']:.4f} ({spread['min']:.4f}..{spread['max']:.4f})"


def bytes_text(count: float) -> str:
    """GiB with two decimals from 1 GiB on (17.58 GiB), else whole MiB (820 MiB), never "0.00 GiB"."""
    return f"{count / 2**30:,.2f} GiB" if count >= 2**30 else f"{count / 2**20:,.0f} MiB"
