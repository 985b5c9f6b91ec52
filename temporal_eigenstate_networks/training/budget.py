"""A run's wall time against its --time_budget.

The budget covers the whole run: steps, periodic evaluations and checkpoints, and the final
evaluation and checkpoint. The loop asks before each step whether one more step and the end
still fit; the schedule of a run whose length is its budget follows the fraction of the
training time used. Both read recent steps, so a machine that slows down or speeds up midway
moves the end of the schedule with it instead of breaking it. The end's cost is measured: the
trainer evaluates once before its first step, and every checkpoint write is timed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

RECENT_STEPS = 3  # the next step is assumed to be as slow as the slowest of the last few
# Until a checkpoint write has been timed: a slow disk's rate, and a floor for fsync and small files.
WRITE_BYTES_PER_S = 50e6
MIN_WRITE_S = 0.5
FORWARD_SHARE = 0.5  # an evaluation batch (forward only) against a training step, until one has been timed


class TimeBudget:
    def __init__(
        self,
        budget_s: float | None,
        spent_s: float,
        clock: Callable[[], float],
        eval_batches_per_step: float,
        checkpoint_bytes: int,
        started: float | None = None,
    ) -> None:
        """`spent_s`: the run's time before this session (a resumed run continues its clock); `started`:
        when this session began on `clock` (its set-up counts too), else now."""
        self.budget_s = budget_s
        self.clock = clock
        self.started = clock() if started is None else started
        self.spent_before = spent_s
        self.steps: deque[float] = deque(maxlen=RECENT_STEPS)
        self.eval_batches_per_step = eval_batches_per_step
        self.eval_s: float | None = None  # the last evaluation, timed
        self.save_s = max(checkpoint_bytes / WRITE_BYTES_PER_S, MIN_WRITE_S)  # until a write has been timed

    def elapsed(self) -> float:
        return self.spent_before + self.clock() - self.started

    def record_step(self, seconds: float) -> None:
        self.steps.append(seconds)

    def record_eval(self, seconds: float) -> None:
        self.eval_s = seconds

    def record_save(self, seconds: float) -> None:
        self.save_s = seconds

    def next_step_s(self) -> float:
        return max(self.steps) if self.steps else 0.0

    def evaluation_s(self) -> float:
        if self.eval_s is not None:
            return self.eval_s
        return self.eval_batches_per_step * FORWARD_SHARE * self.next_step_s()

    def end_s(self) -> float:
        """What the end costs: the final evaluation and two checkpoints (best, final)."""
        return self.evaluation_s() + 2 * self.save_s

    def training_s(self) -> float:
        """Time for training steps: the budget less the end's cost."""
        return math.inf if self.budget_s is None else max(self.budget_s - self.end_s(), 1e-9)

    def fraction(self) -> float:
        """Of the training time, the part used, in [0, 1]."""
        return min(1.0, self.elapsed() / self.training_s())

    def fits(self, seconds: float) -> bool:
        """Whether `seconds` more of work end before the training time does."""
        return self.elapsed() + seconds <= self.training_s()

    def exhausted(self) -> bool:
        """True when one more step would not end before the training time does."""
        return self.budget_s is not None and bool(self.steps) and not self.fits(self.next_step_s())

    def steps_left(self) -> int | None:
        """An estimate of the steps that still fit (for the progress bar); None before any step was timed."""
        if self.budget_s is None or not self.steps:
            return None
        return max(0, int((self.training_s() - self.elapsed()) / self.next_step_s()))
