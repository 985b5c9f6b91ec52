"""Checks that a speed figure does not contradict the yardstick it is read against, for `ten bench` and
`benchmarks/bench_core.py`.

A share of a peak is only as good as the peak: on a shared machine another job can take the CPU while
the large matmul (or the plain read, or the copy) is timed, and a training step then "reaches" 163% of
it. Such a figure is impossible, so it is never reported; and a peak measured low makes every share
of it too high, so a peak is measured until two measurements agree (a peak is the best the machine
does, so the best counts). Where they do not settle it, the figures read against it are marked
unreliable with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

TRIES = 3  # measurements of a yardstick at most
# Two measurements of one peak further apart than this: at least one was taken on a busy machine (a job sharing
# the core halves a rate; a quiet shared VM's single timings of a matmul spread by up to ~30%).
AGREE = 1.5
BUSY = "something else likely had the machine while one of them was measured"


@dataclass(frozen=True)
class Yardstick:
    """A peak figures are read against: its best measurement, the measurements in the order taken and, where they
    did not settle it, why the figures read against it are unreliable."""

    value: float
    measured: tuple[float, ...] = ()
    unreliable: str | None = None

    @property
    def tries(self) -> int:
        return len(self.measured)

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


def agreeing(values: Sequence[float], agree: float = AGREE) -> bool:
    """Whether the best of several measurements of a peak is confirmed: another is within `agree` of it."""
    best, *others = sorted(values, reverse=True)
    return bool(others) and best <= agree * others[0]


def above(figure: str, value: float, what: str, peak: float, tries: int, text: Callable[[float], str]) -> str:
    """Why figures read against a peak are unreliable: one of them is above it."""
    measurements = "one measurement" if tries == 1 else f"{tries} measurements"
    return f"{figure} {text(value)}, above {what} (at best {text(peak)} in {measurements}): {BUSY}"


def settle(
    measure: Callable[[], float],
    achieved: Sequence[float],
    figure: str,
    what: str,
    text: Callable[[float], str],
    first: float | None = None,
    margin: float = 1.0,
    tries: int = TRIES,
) -> Yardstick:
    """The peak that `measure` returns (`first` where it was measured already, best at another moment of the run):
    measured until two measurements agree (see agreeing) and no figure in `achieved` exceeds `margin` times the
    best, up to `tries` measurements in all. The best counts: a busy machine only ever slows a measurement.

    Where they did not settle it, the Yardstick is unreliable, saying why in words: `figure` names the achieved
    figures ("a training step counted"), `what` the peak ("the float32 matmul peak"), `text` writes a value.
    """
    values = [measure() if first is None else first]
    while len(values) < tries and not (agreeing(values) and excess(max(values), achieved, margin) is None):
        values.append(measure())
    best = max(values)
    if (worst := excess(best, achieved, margin)) is not None:
        reason: str | None = above(figure, worst, what, best, len(values), text)
    elif not agreeing(values):
        reason = f"{what} measured {text(min(values))} to {text(best)} in {len(values)} measurements: {BUSY}"
    else:
        reason = None
    return Yardstick(best, tuple(values), reason)


def overhead_bound(call_s: float, empty_call_s: float, share: float = 0.25) -> bool:
    """Whether a quarter or more of a call's time is what any call of the op costs (`empty_call_s`, on a tensor
    of one element, a lower bound of it): a rate from it then measures dispatch as much as the work its size asks
    for (a 16 KiB matrix at d_model 32: half its time)."""
    return empty_call_s >= share * call_s
