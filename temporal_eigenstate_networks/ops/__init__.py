"""The eigenstate recurrence c(t) = lam(t) c(t-1) + beta(t), with interchangeable exact backends.

All backends share one signature, ``(lam, beta, initial_state=None) -> states``; see
``common.py`` for the shapes.  ``sequential`` is the reference the others are tested against.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..distribution import install_hint
from .chunked import scan_chunked
from .common import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_DECAY, is_time_invariant
from .fft import scan_fft
from .sequential import scan_sequential


def scan_triton(lam: Tensor, beta: Tensor, initial_state: Tensor | None = None) -> Tensor:
    """The fused Triton backend (ops/triton.py), imported on first use: triton is an optional extra."""
    if not triton_available():
        raise ValueError(f"scan backend 'triton' needs the triton package: {install_hint('gpu')}")
    from .triton import scan_triton as fused

    return fused(lam, beta, initial_state)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


BACKENDS = {"sequential": scan_sequential, "chunked": scan_chunked, "fft": scan_fft, "triton": scan_triton}
SCAN_BACKENDS = (*BACKENDS, "auto")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that ``auto`` picks: the fused kernel on a GPU, else chunked (measured in
    benchmarks/bench_core.py: fft never wins on CPU)."""
    if backend != "auto":
        return backend
    return "triton" if device.type == "cuda" and triton_available() else "chunked"


def scan(
    lam: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    backend: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """All states of the recurrence, (B, T, K) complex. The fast backends are torch custom operators
    (torch.library), so torch.compile sees each as one op and compiles what surrounds it without a graph break."""
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"scan backend must be one of {SCAN_BACKENDS}, got {backend!r}")
    backend = resolve_backend(backend, beta.device)
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
    "scan_triton",
    "triton_available",
]
