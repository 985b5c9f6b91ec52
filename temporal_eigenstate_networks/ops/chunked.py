"""Chunked backend: exact, parallel within chunks of C steps, log-depth across chunks.

Inside a chunk, with P(t) = lam(0) ... lam(t) the running product (exp A(t) in the design),

    c(t) = P(t) c_in + sum_{s<=t} P(t) / P(s) * beta(s).

The sum is evaluated as ``P(t) * cumsum(beta(s) / P(s))``: linear work, and causal to the bit
(nothing at t depends on a later step).  |1 / P(s)| <= MIN_DECAY ** -C = 4 ** 32 = 1.8e19 because
|lam| >= MIN_DECAY (see ``common.py``), so the terms stay finite in float32 for any |beta| < 1e18.
Running products are taken with ``cumprod`` rather than as ``exp(cumsum(log lam))``: summed
phases of ~C * pi would lose 1e-5 of accuracy in float32.

Chunk-end states are then combined by a Hillis-Steele scan over the T / C chunks (log2 steps),
so there is no Python loop over time.  The backward pass is the same recurrence run backwards
(G(t) = g(t) + conj(lam(t+1)) G(t+1)), computed by the same function.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .common import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    OP_NAMESPACE,
    as_3d,
    check_scan_inputs,
    is_time_invariant,
    needs_operator,
    scan_dtype,
)

# Elements of one batch block on the CPU (complex64: 4 MiB per temporary); see batch_blocks.
CPU_BLOCK_ELEMENTS = 1 << 19


def _scan_across_chunks(decay: Tensor, x: Tensor) -> Tensor:
    """Inclusive scan of x_j = decay_j * x_{j-1} + x_j over dim 1, in log2(n) steps."""
    n = x.shape[1]
    decay = decay.expand_as(x)
    step = 1
    while step < n:
        x = torch.cat([x[:, :step], torch.addcmul(x[:, step:], decay[:, step:], x[:, :-step])], 1)
        decay = torch.cat([decay[:, :step], decay[:, step:] * decay[:, :-step]], 1)
        step *= 2
    return x


def chunked_scan_forward(lam: Tensor, beta: Tensor, initial_state: Tensor | None, chunk_size: int) -> Tensor:
    """The chunked algorithm without autograd. lam is (B or 1, T or 1, K)."""
    batch, length, k = beta.shape
    chunk = min(chunk_size, length)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:  # trailing steps with lam = 1, beta = 0 leave every earlier state unchanged
        beta = torch.cat([beta, beta.new_zeros(batch, pad, k)], 1)
        if not is_time_invariant(lam):
            lam = torch.cat([lam, lam.new_ones(lam.shape[0], pad, k)], 1)

    beta = beta.view(batch, n_chunks, chunk, k)
    if is_time_invariant(lam):  # every chunk has the same running products: compute them once
        lam = lam.view(lam.shape[0], 1, 1, k).expand(-1, -1, chunk, -1)
    else:
        lam = lam.view(lam.shape[0], n_chunks, chunk, k)

    prefix = torch.cumprod(lam, dim=2)  # P(t)
    total = prefix[:, :, -1:]  # P(end)
    local = prefix * torch.cumsum(beta * prefix.reciprocal(), dim=2)  # states for c_in = 0

    chunk_ends = local[:, :, -1]
    if initial_state is not None:
        chunk_ends = torch.cat([chunk_ends[:, :1] + total[:, :1, 0] * initial_state.unsqueeze(1), chunk_ends[:, 1:]], 1)
    chunk_ends = _scan_across_chunks(total[:, :, 0], chunk_ends)
    first = beta.new_zeros(batch, 1, k) if initial_state is None else initial_state.unsqueeze(1)
    chunk_starts = torch.cat([first, chunk_ends[:, :-1]], 1)

    states = torch.addcmul(local, prefix, chunk_starts.unsqueeze(2))
    return states.view(batch, n_chunks * chunk, k)[:, :length]


def _chunked_scan_backward(
    lam: Tensor, initial_state: Tensor | None, states: Tensor, grad_states: Tensor, chunk_size: int, need_lam: bool
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """Gradients for lam, beta and the initial state from those of the states."""
    # G(t) = g(t) + conj(lam(t+1)) G(t+1): the forward recurrence, reversed in time.
    if is_time_invariant(lam):
        lam_reversed = lam.conj_physical()
    else:  # step 0 of the reversed scan multiplies a zero state, so its lam is arbitrary
        lam_reversed = torch.cat([lam.new_ones(lam[:, :1].shape), lam[:, 1:].flip(1).conj()], 1)
    grad_beta = chunked_scan_forward(lam_reversed, grad_states.flip(1), None, chunk_size).flip(1)

    grad_lam = None
    if need_lam:
        first = states.new_zeros(states[:, :1].shape) if initial_state is None else initial_state.unsqueeze(1)
        previous = torch.cat([first, states[:, :-1]], 1)
        grad_lam = (grad_beta * previous.conj()).sum_to_size(lam.shape)
    grad_initial = None if initial_state is None else lam[:, 0].conj() * grad_beta[:, 0]
    return grad_lam, grad_beta, grad_initial


def batch_blocks(beta: Tensor) -> list[slice]:
    """Slices of the batch that the CPU path runs one at a time.

    Every step of the algorithm makes a temporary as large as beta.  Once those pass glibc's 32 MiB
    mmap threshold, each one is a fresh mapping and page-faulting it costs more than the arithmetic
    (measured: 10x slower at B=8, T=8192, K=64).  Blocks of about CPU_BLOCK_ELEMENTS stay in the
    malloc heap and in cache.  GPUs have a caching allocator and want one large launch instead.
    """
    batch, length, k = beta.shape
    if beta.device.type != "cpu":
        return [slice(0, batch)]
    rows = max(1, CPU_BLOCK_ELEMENTS // (length * k))
    return [slice(start, start + rows) for start in range(0, batch, rows)]


def _rows(tensor: Tensor | None, block: slice) -> Tensor | None:
    """The block's rows of a per-sequence tensor; a tensor shared by the batch (leading 1) is kept whole."""
    return tensor if tensor is None or tensor.shape[0] == 1 else tensor[block]


# ---------------------------------------------------------------- the operator torch sees
# Registered with torch.library: torch.compile then treats the scan as one opaque op (shapes from the fake
# implementation, gradients from the registered backward) and compiles the layer around it without a graph break.


def chunked_states(lam: Tensor, beta: Tensor, initial_state: Tensor | None, chunk_size: int) -> Tensor:
    """All states, (B, T, K); lam is (B or 1, T or 1, K): the operator's computation, also called without it
    (common.needs_operator)."""
    states = beta.new_empty(beta.shape, dtype=scan_dtype(lam, beta))
    for block in batch_blocks(beta):
        initial_rows = _rows(initial_state, block)
        states[block] = chunked_scan_forward(_rows(lam, block), beta[block], initial_rows, chunk_size)
    return states


@torch.library.custom_op(f"{OP_NAMESPACE}::chunked_scan", mutates_args=())
def chunked_scan_op(lam: Tensor, beta: Tensor, initial_state: Tensor | None, chunk_size: int) -> Tensor:
    """All states, (B, T, K); lam is (B or 1, T or 1, K)."""
    return chunked_states(lam, beta, initial_state, chunk_size)


@chunked_scan_op.register_fake
def _(lam: Tensor, beta: Tensor, initial_state: Tensor | None, chunk_size: int) -> Tensor:
    return beta.new_empty(beta.shape, dtype=scan_dtype(lam, beta))


@torch.library.custom_op(f"{OP_NAMESPACE}::chunked_scan_backward", mutates_args=())
def chunked_scan_backward_op(
    lam: Tensor, initial_state: Tensor | None, states: Tensor, grad_states: Tensor, chunk_size: int, need_lam: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad lam, grad beta, grad initial state); an unneeded or absent one is an empty tensor (an op returns
    tensors, never None)."""
    grad_beta = torch.empty_like(states)
    grad_lam = torch.zeros_like(lam) if need_lam else lam.new_empty(0)
    grad_initial = states.new_empty(0) if initial_state is None else torch.empty_like(initial_state)
    for block in batch_blocks(states):
        lam_rows = _rows(lam, block)
        g_lam, grad_beta[block], g_initial = _chunked_scan_backward(
            lam_rows, _rows(initial_state, block), states[block], grad_states[block], chunk_size, need_lam
        )
        if g_lam is not None:
            if lam.shape[0] == 1:
                grad_lam += g_lam  # lam shared across the batch: its gradient sums over blocks
            else:
                grad_lam[block] = g_lam
        if g_initial is not None:
            grad_initial[block] = g_initial
    return grad_lam, grad_beta, grad_initial


@chunked_scan_backward_op.register_fake
def _(
    lam: Tensor, initial_state: Tensor | None, states: Tensor, grad_states: Tensor, chunk_size: int, need_lam: bool
) -> tuple[Tensor, Tensor, Tensor]:
    grad_lam = torch.empty_like(lam) if need_lam else lam.new_empty(0)
    grad_initial = states.new_empty(0) if initial_state is None else torch.empty_like(initial_state)
    return grad_lam, torch.empty_like(states), grad_initial


def _save(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    lam, _, initial_state, chunk_size = inputs
    ctx.save_for_backward(lam, initial_state, output)
    ctx.chunk_size = chunk_size


def _backward(ctx: Any, grad_states: Tensor) -> tuple[Tensor | None, Tensor, Tensor | None, None]:
    lam, initial_state, states = ctx.saved_tensors
    need_lam, _, need_initial, _ = ctx.needs_input_grad
    grad_lam, grad_beta, grad_initial = chunked_scan_backward_op(
        lam, initial_state, states, grad_states, ctx.chunk_size, need_lam
    )
    return grad_lam if need_lam else None, grad_beta, grad_initial if need_initial else None, None


chunked_scan_op.register_autograd(_backward, setup_context=_save)


def scan_chunked(
    lam: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Exact chunked scan; requires |lam| >= MIN_DECAY (the model's parameterisation ensures it)."""
    check_scan_inputs(lam, beta, initial_state)
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be in [1, {MAX_CHUNK_SIZE}], got {chunk_size}")
    if needs_operator(lam, beta, initial_state):
        return chunked_scan_op(as_3d(lam), beta, initial_state, chunk_size)
    return chunked_states(as_3d(lam), beta, initial_state, chunk_size)
