"""Learning rate: linear warm-up, then cosine decay to min_lr_ratio * peak over the run's real length."""

from __future__ import annotations

import math


def learning_rate_at(step: int, peak: float, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """The rate for optimiser step `step` (0-based). A pure function of the step, so resuming is exact."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
