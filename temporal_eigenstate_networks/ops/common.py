"""Shared contract of the recurrence backends.

Every backend computes, for each batch row and eigenstate k,

    c_k(t) = lam_k(t) * c_k(t-1) + beta_k(t),     c(-1) = initial_state (or 0)

and returns all states c (B, T, K).  ``lam`` is complex and broadcastable to ``beta``'s
(B, T, K); a ``lam`` whose time dimension is 1 (or that is 1-D, shape (K,)) is time-invariant.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Floor on |lam|. The chunked backend divides by running products of lam inside a chunk, so
# MIN_DECAY ** -chunk_size times |beta| must stay a finite float32 number.
# 0.25 is a memory of 1 / (1 - 0.25) = 1.33 tokens: faster forgetting buys the model nothing
# that the residual path and the MLP do not already give it.
MIN_DECAY = 0.25
DEFAULT_CHUNK_SIZE = 32
# 0.25 ** -32 = 1.8e19: room for |beta| up to 1e18 below float32's 3.4e38.
MAX_CHUNK_SIZE = 32
# The torch operators' namespace (ten::chunked_scan ...). An exported model's copy of this code gets its own
# (hf/standalone.py), so that loading it beside this package never replaces the package's operators.
OP_NAMESPACE = "ten"


def check_scan_inputs(lam: Tensor, beta: Tensor, initial_state: Tensor | None) -> None:
    """Raise a clear error for inputs that no backend accepts."""
    if not (lam.is_complex() and beta.is_complex()):
        raise TypeError("scan: lam and beta must be complex tensors")
    if beta.dim() != 3:
        raise ValueError(f"scan: beta must have shape (B, T, K), got {tuple(beta.shape)}")
    try:
        torch.broadcast_shapes(lam.shape, beta.shape)
    except RuntimeError as err:
        raise ValueError(
            f"scan: lam of shape {tuple(lam.shape)} does not broadcast to beta {tuple(beta.shape)}"
        ) from err
    if initial_state is not None and initial_state.shape != (beta.shape[0], beta.shape[2]):
        raise ValueError(
            f"scan: initial_state must have shape (B, K) = {(beta.shape[0], beta.shape[2])}, "
            f"got {tuple(initial_state.shape)}"
        )


def needs_operator(*tensors: Tensor | None) -> bool:
    """Whether a scan goes through its torch custom operator: under torch.compile (one opaque op, no graph break)
    or when a gradient flows (the operator's registered backward). Otherwise the operator's own function computes
    the same states directly: torch's operator dispatch imports torch._dynamo on its first call (~1.1 s on a
    2-core CPU), which generation and evaluation, never compiled, need not pay."""
    if torch.compiler.is_compiling():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def is_time_invariant(lam: Tensor) -> bool:
    return lam.dim() < 2 or lam.shape[-2] == 1


def as_3d(lam: Tensor) -> Tensor:
    """View ``lam`` as (B or 1, T or 1, K)."""
    while lam.dim() < 3:
        lam = lam.unsqueeze(0)
    return lam


def scan_dtype(lam: Tensor, beta: Tensor) -> torch.dtype:
    """The states' dtype: lam and beta's common complex type."""
    return torch.promote_types(lam.dtype, beta.dtype)
