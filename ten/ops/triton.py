"""Triton backend: the recurrence fused into one pass over time, forward and backward.

One program owns one batch row and a block of eigenstates and walks the sequence:

    forward:   c(t) = lam(t) c(t-1) + beta(t)                    (reads lam, beta; writes c)
    backward:  G(t) = g(t) + conj(lam(t+1)) G(t+1)               (reads lam, g, c; writes the gradients)
               d beta(t) = G(t),  d lam(t) = G(t) conj(c(t-1)),  d c(-1) = conj(lam(0)) G(0)

Each tensor is read or written once, with no (B, T, K) temporary: the work is bound by memory
traffic, which is what a recurrence with O(1) arithmetic per element should be. The state is kept
in float32 registers whatever the input precision. Complex tensors travel as `view_as_real` pairs.

The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1,
set before this module is imported), which is how the tests check them against `sequential`.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .common import as_3d, check_scan_inputs

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _forward_kernel(
    lam_ptr, beta_ptr, initial_ptr, states_ptr,
    length, k_size, lam_stride_b, lam_stride_t,
    HAS_INITIAL: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = k < k_size
    pair = 2 * k  # offset of (re, im) of eigenstate k within one step
    c_re = tl.zeros([BLOCK_K], dtype=tl.float32)
    c_im = tl.zeros([BLOCK_K], dtype=tl.float32)
    if HAS_INITIAL:
        c_re = tl.load(initial_ptr + row * 2 * k_size + pair, mask=mask, other=0.0).to(tl.float32)
        c_im = tl.load(initial_ptr + row * 2 * k_size + pair + 1, mask=mask, other=0.0).to(tl.float32)
    step = row * length * 2 * k_size + pair  # beta and states are (B, T, K, 2), contiguous
    lam_step = row * lam_stride_b + pair  # lam may be shared over the batch or over time: stride 0
    for _ in range(length):
        l_re = tl.load(lam_ptr + lam_step, mask=mask, other=0.0).to(tl.float32)
        l_im = tl.load(lam_ptr + lam_step + 1, mask=mask, other=0.0).to(tl.float32)
        b_re = tl.load(beta_ptr + step, mask=mask, other=0.0).to(tl.float32)
        b_im = tl.load(beta_ptr + step + 1, mask=mask, other=0.0).to(tl.float32)
        c_re, c_im = l_re * c_re - l_im * c_im + b_re, l_re * c_im + l_im * c_re + b_im
        tl.store(states_ptr + step, c_re, mask=mask)
        tl.store(states_ptr + step + 1, c_im, mask=mask)
        step += 2 * k_size
        lam_step += lam_stride_t


@triton.jit
def _backward_kernel(
    lam_ptr, initial_ptr, states_ptr, grad_states_ptr, grad_beta_ptr, grad_lam_ptr, grad_initial_ptr,
    length, k_size, lam_stride_b, lam_stride_t,
    HAS_INITIAL: tl.constexpr, LAM_PER_STEP: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = k < k_size
    pair = 2 * k
    first_re = tl.zeros([BLOCK_K], dtype=tl.float32)  # c(-1): the initial state, or 0
    first_im = tl.zeros([BLOCK_K], dtype=tl.float32)
    if HAS_INITIAL:
        first_re = tl.load(initial_ptr + row * 2 * k_size + pair, mask=mask, other=0.0).to(tl.float32)
        first_im = tl.load(initial_ptr + row * 2 * k_size + pair + 1, mask=mask, other=0.0).to(tl.float32)
    g_re = tl.zeros([BLOCK_K], dtype=tl.float32)  # G(t+1); 0 past the end
    g_im = tl.zeros([BLOCK_K], dtype=tl.float32)
    next_re = tl.zeros([BLOCK_K], dtype=tl.float32)  # lam(t+1)
    next_im = tl.zeros([BLOCK_K], dtype=tl.float32)
    sum_re = tl.zeros([BLOCK_K], dtype=tl.float32)  # d lam summed over time, for a time-invariant lam
    sum_im = tl.zeros([BLOCK_K], dtype=tl.float32)
    row_start = row * length * 2 * k_size + pair
    for i in range(length):
        t = length - 1 - i
        step = row_start + t * 2 * k_size
        lam_step = row * lam_stride_b + t * lam_stride_t + pair
        d_re = tl.load(grad_states_ptr + step, mask=mask, other=0.0).to(tl.float32)
        d_im = tl.load(grad_states_ptr + step + 1, mask=mask, other=0.0).to(tl.float32)
        g_re, g_im = d_re + next_re * g_re + next_im * g_im, d_im + next_re * g_im - next_im * g_re
        tl.store(grad_beta_ptr + step, g_re, mask=mask)
        tl.store(grad_beta_ptr + step + 1, g_im, mask=mask)
        # c(t-1); at t = 0 the initial state. The condition is a vector: a scalar one would not mask a load.
        has_previous = (tl.zeros([BLOCK_K], dtype=tl.int32) + t) > 0
        previous = tl.maximum(step - 2 * k_size, row_start)
        p_re = tl.where(has_previous, tl.load(states_ptr + previous, mask=mask, other=0.0), first_re)
        p_im = tl.where(has_previous, tl.load(states_ptr + previous + 1, mask=mask, other=0.0), first_im)
        dl_re, dl_im = g_re * p_re + g_im * p_im, g_im * p_re - g_re * p_im  # G conj(c(t-1))
        if LAM_PER_STEP:
            tl.store(grad_lam_ptr + step, dl_re, mask=mask)
            tl.store(grad_lam_ptr + step + 1, dl_im, mask=mask)
        else:
            sum_re += dl_re
            sum_im += dl_im
        next_re = tl.load(lam_ptr + lam_step, mask=mask, other=0.0).to(tl.float32)
        next_im = tl.load(lam_ptr + lam_step + 1, mask=mask, other=0.0).to(tl.float32)
    if not LAM_PER_STEP:
        tl.store(grad_lam_ptr + row * 2 * k_size + pair, sum_re, mask=mask)
        tl.store(grad_lam_ptr + row * 2 * k_size + pair + 1, sum_im, mask=mask)
    if HAS_INITIAL:  # d c(-1) = conj(lam(0)) G(0); next_* now hold lam(0)
        tl.store(grad_initial_ptr + row * 2 * k_size + pair, next_re * g_re + next_im * g_im, mask=mask)
        tl.store(grad_initial_ptr + row * 2 * k_size + pair + 1, next_re * g_im - next_im * g_re, mask=mask)


def _launch_shape(batch: int, k_size: int) -> tuple[tuple[int, int], int]:
    # On a GPU, small blocks make more programs (B x K / BLOCK_K run in parallel); the interpreter
    # pays per program, so it takes one block for all of K.
    block = min(triton.next_power_of_2(k_size), 128 if INTERPRETED else 32)
    return (batch, triton.cdiv(k_size, block)), block


def _lam_strides(lam: Tensor, length: int) -> tuple[int, int]:
    """Strides, in floats, of a contiguous (B or 1, T or 1, K, 2) lam; 0 along a shared dimension."""
    _, steps, k_size = lam.shape
    stride_t = 2 * k_size if steps == length and length > 1 else 0
    stride_b = 0 if lam.shape[0] == 1 else steps * 2 * k_size
    return stride_b, stride_t


def _real(tensor: Tensor) -> Tensor:
    return torch.view_as_real(tensor.resolve_conj().contiguous())


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lam: Tensor, beta: Tensor, initial_state: Tensor | None) -> Tensor:
        batch, length, k_size = beta.shape
        lam, beta = lam.contiguous(), beta.contiguous()
        states = torch.empty(batch, length, k_size, dtype=torch.complex64, device=beta.device)
        grid, block = _launch_shape(batch, k_size)
        states_real = torch.view_as_real(states)
        initial = _real(initial_state) if initial_state is not None else states_real  # not read when absent
        _forward_kernel[grid](
            _real(lam), _real(beta), initial, states_real, length, k_size,
            *_lam_strides(lam, length), HAS_INITIAL=initial_state is not None, BLOCK_K=block,
        )  # fmt: skip
        ctx.save_for_backward(lam, initial_state, states)
        ctx.beta_dtype = beta.dtype
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states: Tensor):
        lam, initial_state, states = ctx.saved_tensors
        batch, length, k_size = states.shape
        per_step = lam.shape[1] == length and length > 1
        grad_beta = torch.empty_like(states)
        grad_lam = torch.empty(batch, length if per_step else 1, k_size, dtype=torch.complex64, device=states.device)
        grad_initial = None if initial_state is None else torch.empty_like(states[:, 0])
        grid, block = _launch_shape(batch, k_size)
        states_real = torch.view_as_real(states)
        initial = _real(initial_state) if initial_state is not None else states_real  # not read when absent
        _backward_kernel[grid](
            _real(lam), initial, states_real, _real(grad_states.to(torch.complex64)),
            torch.view_as_real(grad_beta), torch.view_as_real(grad_lam),
            torch.view_as_real(grad_initial) if grad_initial is not None else states_real,
            length, k_size, *_lam_strides(lam, length),
            HAS_INITIAL=initial_state is not None, LAM_PER_STEP=per_step, BLOCK_K=block,
        )  # fmt: skip
        grad_lam = grad_lam.sum_to_size(lam.shape).to(lam.dtype) if ctx.needs_input_grad[0] else None
        if grad_initial is not None:
            grad_initial = grad_initial.to(initial_state.dtype) if ctx.needs_input_grad[2] else None
        return grad_lam, grad_beta.to(ctx.beta_dtype), grad_initial


def scan_triton(lam: Tensor, beta: Tensor, initial_state: Tensor | None = None) -> Tensor:
    """Fused scan on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1); states are complex64."""
    check_scan_inputs(lam, beta, initial_state)
    if beta.device.type != "cuda" and not INTERPRETED:
        raise ValueError("scan backend 'triton' needs CUDA tensors (TRITON_INTERPRET=1 runs it on the CPU, slowly)")
    return _TritonScan.apply(as_3d(lam), beta, initial_state)
