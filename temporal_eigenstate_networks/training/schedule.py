"""Learning rate: linear warm-up, then cosine decay to min_lr_ratio * peak at the run's end.

A run's end is a number of steps, or the end of its time budget. Both schedules are pure functions
of where the run is, so a resumed run continues them exactly.
"""

from __future__ import annotations

import math


def cosine_decay(progress: float, min_ratio: float) -> float:
    """1 at progress 0, min_ratio at progress 1 (and after)."""
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate_at(step: int, peak: float, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """The rate for optimiser step `step` (0-based) of a run of `total_steps` steps; the caller keeps the warm-up
    shorter than the run (the run plan caps it)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * cosine_decay((step - warmup_steps) / max(1, total_steps - warmup_steps), min_ratio)


def learning_rate_at_fraction(
    step: int, fraction: float, peak: float, warmup_steps: int, min_ratio: float, warmup_fraction: float
) -> float:
    """The rate for step `step` of a run whose length is its time budget, `fraction` of it used.

    The decay follows the fraction of the budget, not a step count fitted in advance, so the rate
    reaches its floor when the budget ends however the speed of the steps changes on the way. The
    warm-up ends after `warmup_steps` steps or `warmup_fraction` of the budget, whichever comes first.
    """
    warm = 1.0 if warmup_steps == 0 else min(1.0, max((step + 1) / warmup_steps, fraction / warmup_fraction))
    return peak * warm * cosine_decay(fraction, min_ratio)
