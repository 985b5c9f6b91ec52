"""The eigenstate recurrence c(t) = lam(t) c(t-1) + beta(t), with interchangeable exact backends.

All backends share one signature, ``(lam, beta, initial_state=None) -> states``; see
``common.py`` for the shapes.  ``sequential`` is the reference the others are tested against.
"""

from __future__ import annotations

from torch import Tensor

from .chunked import scan_chunked
from .common import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_DECAY, is_time_invariant
from .fft import scan_fft
from .sequential import scan_sequential

BACKENDS = {"sequential": scan_sequential, "chunked": scan_chunked, "fft": scan_fft}
SCAN_BACKENDS = (*BACKENDS, "auto")


def resolve_backend(backend: str) -> str:
    """The backend that ``auto`` picks: measured in benchmarks/bench_core.py (fft never wins on CPU)."""
    if backend != "auto":
        return backend
    return "chunked"


def scan(
    lam: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    backend: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """All states of the recurrence, (B, T, K) complex."""
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"scan backend must be one of {SCAN_BACKENDS}, got {backend!r}")
    if backend == "auto" and beta.shape[1] == 1 and initial_state is not None:
        return lam.reshape(-1, 1, beta.shape[-1]) * initial_state.unsqueeze(1) + beta  # one step
    backend = resolve_backend(backend)
    if backend == "chunked":
        return scan_chunked(lam, beta, initial_state, chunk_size)
    return BACKENDS[backend](lam, beta, initial_state)


__all__ = [
    "BACKENDS",
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MIN_DECAY",
    "SCAN_BACKENDS",
    "is_time_invariant",
    "scan",
    "scan_chunked",
    "scan_fft",
    "scan_sequential",
]
