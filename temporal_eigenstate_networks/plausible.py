"""Checks that a speed figure does not contradict the yardstick it is read against, for `ten bench` and
`benchmarks/bench_core.py`.

A share of a peak is only as good as the peak: on a shared machine another job can take the CPU while
the large matmul (or the plain read, or the copy) is timed, and a training step then "reaches" 163% of
it. Such a figure is impossible, so it is never reported: the yardstick is measured again (a peak is
the best the machine does, so the best measurement counts), and where the contradiction stays, the
figures read against it are marked unreliable with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

TRIES = 3  # measurements of a yardstick at most: the first and two more where a figure contradicts it
BUSY = "something else likely had the machine while one of them was measured"


@dataclass(frozen=True)
class Yardstick:
    """A peak figures are read against: its best measurement, how many were taken and, where a figure read against
    it still exceeds it, why those figures are unreliable."""

    value: float
    tries: int = 1
    unreliable: str | None = None

    def share(self, achieved: float, margin: float = 1.0) -> float | None:
        """`achieved` as a fraction of the peak; None where it cannot be trusted (the yardstick is unreliable, or
        this figure is above it by more than `margin`: an impossible share is never given)."""
        if self.unreliable or self.value <= 0 or achieved > margin * self.value:
            return None
        return achieved / self.value


def excess(peak: float, achieved: Sequence[float], margin: float = 1.0) -> float | None:
    """The highest of `achieved` above `margin` times `peak` (a figure the peak contradicts), or None."""
    above = [value for value in achieved if value > margin * peak]
    return max(above) if above else None


def settle(
    measure: Callable[[], float],
    achieved: Sequence[float],
    describe: Callable[[float, float, int], str],
    first: float | None = None,
    margin: float = 1.0,
    tries: int = TRIES,
) -> Yardstick:
    """The peak that `measure` returns (`first` where it was measured already), measured again while a figure in
    `achieved` exceeds `margin` times the best measurement so far, up to `tries` measurements in all.

    describe(figure, peak, tries) says why, where a figure still exceeds it: the Yardstick is then unreliable.
    """
    best = measure() if first is None else first
    count = 1
    while excess(best, achieved, margin) is not None and count < tries:
        best = max(best, measure())
        count += 1
    worst = excess(best, achieved, margin)
    return Yardstick(best, count, None if worst is None else describe(worst, best, count))


def overhead_bound(call_s: float, empty_call_s: float, share: float = 0.25) -> bool:
    """Whether a quarter or more of a call's time is what any call of the op costs (`empty_call_s`, on a tensor
    of one element, a lower bound of it): a rate from it then measures dispatch as much as the work its size asks
    for (a 16 KiB matrix at d_model 32: half its time)."""
    return empty_call_s >= share * call_s
