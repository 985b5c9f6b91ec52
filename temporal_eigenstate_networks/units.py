"""How reports write counts, durations, spreads, sizes and rates, so that a small run does not read as nothing
("0.0 M tokens in 0.0 min", "0 MiB", "0.00 TFLOP/s"), rounding does not read as a sign ("p = -0.00") and one seed
does not read as a measured spread ("± 0.0000")."""

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
    """In the largest binary unit that keeps it at 1 or more, 3 significant digits (41 MiB, 1.5 MiB, 16 KiB)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{significant_text(count / size)} {unit}"
    return f"{count:.0f} B"


def flop_rate_text(flops_per_s: float) -> str:
    """TFLOP/s from 1 TFLOP/s on, else GFLOP/s, 3 significant digits (50.1 TFLOP/s, 421 GFLOP/s, 2.52 GFLOP/s)."""
    if flops_per_s >= 1e12:
        return f"{significant_text(flops_per_s / 1e12)} TFLOP/s"
    return f"{significant_text(flops_per_s / 1e9)} GFLOP/s"


def significant_text(value: float) -> str:
    """3 significant digits, trailing zeros kept (4.00 beside 4.14), whole numbers from 100 on (no "1e+03")."""
    return f"{value:,.0f}" if value >= 99.95 else f"{value:#.3g}"


def signed_text(value: float, decimals: int = 2) -> str:
    """Rounded to `decimals`, without the minus sign of a value that rounds to zero ("0.00", never "-0.00")."""
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text
