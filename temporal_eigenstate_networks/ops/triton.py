"""Triton backend: the recurrence fused into passes over chunks of time, forward and backward.

    forward:   c(t) = lam(t) c(t-1) + beta(t)
    backward:  G(t) = g(t) + conj(lam(t+1)) G(t+1)            the same recurrence, reversed in time
               d beta(t) = G(t),  d lam(t) = G(t) conj(c(t-1)),  d c(-1) = conj(lam(0)) G(0)

One kernel, `_chunk_kernel`, walks a chunk of CHUNK steps of one batch row for a block of
eigenstates, forwards or backwards in time. Every recurrence here runs in three launches, so that
B x K/BLOCK_K x T/CHUNK programs work in parallel instead of B x K/BLOCK_K:

    1. each chunk from a zero state: its end value and the product of its multipliers (tiny outputs)
    2. the chunk ends combined in order: the same kernel over the (B, T/CHUNK, K) summaries
    3. each chunk again from its true incoming state, writing the outputs

Inputs are read twice and outputs written once, with no (B, T, K) temporary; where rows x eigenstate
blocks alone fill the GPU, one pass over the whole sequence reads them once. The state is kept in
float32 registers whatever the input precision. Complex tensors travel as `view_as_real` pairs.
The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1,
set before this module is imported), which is how the tests check them against `sequential`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from .common import OP_NAMESPACE, as_3d, check_scan_inputs, needs_operator

# This module is imported only where triton is installed (ops.triton_available). The try changes nothing here; it
# keeps transformers' check of an exported model's code (which skips imports inside a try) from requiring triton
# of every machine that loads the model.
try:
    import triton
    import triton.language as tl
except ModuleNotFoundError:
    raise

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# Steps per chunk: long enough that the summaries are small, short enough for many programs. The
# interpreter pays per program step whatever the size; a short chunk there tests many chunks.
CHUNK = 32 if INTERPRETED else 256
PROGRAMS_PER_SM = 4  # enough rows x eigenstate blocks to fill a GPU without chunking


def chunk_length(batch: int, k_size: int, length: int, device: torch.device) -> int:
    """CHUNK; or the whole sequence (one pass, inputs read once) when rows x blocks already fill the GPU."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        if batch * triton.cdiv(k_size, _block(k_size)) >= PROGRAMS_PER_SM * sms:
            return length
    return CHUNK


@triton.jit
def _chunk_kernel(
    lam_ptr, x_ptr, carry_ptr, out_ptr, end_ptr, prod_ptr, prev_ptr, first_ptr, grad_lam_ptr,
    length, k_size, chunk_len, lam_stride_b, lam_stride_t,
    REVERSE: tl.constexpr, HAS_CARRY: tl.constexpr, WRITE_OUT: tl.constexpr, WRITE_SUMMARY: tl.constexpr,
    GRAD_LAM: tl.constexpr, HAS_FIRST: tl.constexpr, LAM_PER_STEP: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y(t) = a(t) y(t -+ 1) + x(t) over one chunk; a(t) = lam(t) forwards, conj(lam(t+1)) in REVERSE.

    carry: (B, n_chunks, K) incoming states; end, prod: (B, n_chunks, K) summaries; out: (B, T, K).
    GRAD_LAM (reverse only): also d lam(t) = y(t) conj(prev(t-1)), prev(-1) = first; per step, or
    summed over the chunk into grad_lam (B, n_chunks, K) for a lam without a time axis.
    """
    row = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    chunk = tl.program_id(2)
    n_chunks = tl.num_programs(2)
    mask = k < k_size
    pair = 2 * k
    zeros = tl.zeros([BLOCK_K], dtype=tl.float32)
    start = chunk * chunk_len
    steps = tl.minimum(chunk_len, length - start)
    summary = (row * n_chunks + chunk) * 2 * k_size + pair
    y_re, y_im = zeros, zeros
    if HAS_CARRY:
        y_re = tl.load(carry_ptr + summary, mask=mask, other=0.0).to(tl.float32)
        y_im = tl.load(carry_ptr + summary + 1, mask=mask, other=0.0).to(tl.float32)
    p_re, p_im = zeros + 1.0, zeros
    s_re, s_im = zeros, zeros  # d lam summed over the chunk
    if HAS_FIRST:
        f_re = tl.load(first_ptr + row * 2 * k_size + pair, mask=mask, other=0.0).to(tl.float32)
        f_im = tl.load(first_ptr + row * 2 * k_size + pair + 1, mask=mask, other=0.0).to(tl.float32)
    else:
        f_re, f_im = zeros, zeros
    for i in range(steps):
        t = start + steps - 1 - i if REVERSE else start + i
        step = (row * length + t) * 2 * k_size + pair
        if REVERSE:  # a(t) = conj(lam(t+1)); past the end it multiplies a zero state, so 0 will do
            inside = (tl.zeros([BLOCK_K], dtype=tl.int32) + t + 1) < length  # a vector: masks a load
            lam_at = row * lam_stride_b + (t + 1) * lam_stride_t + pair
            a_re = tl.load(lam_ptr + lam_at, mask=mask & inside, other=0.0).to(tl.float32)
            a_im = -tl.load(lam_ptr + lam_at + 1, mask=mask & inside, other=0.0).to(tl.float32)
        else:
            lam_at = row * lam_stride_b + t * lam_stride_t + pair
            a_re = tl.load(lam_ptr + lam_at, mask=mask, other=0.0).to(tl.float32)
            a_im = tl.load(lam_ptr + lam_at + 1, mask=mask, other=0.0).to(tl.float32)
        x_re = tl.load(x_ptr + step, mask=mask, other=0.0).to(tl.float32)
        x_im = tl.load(x_ptr + step + 1, mask=mask, other=0.0).to(tl.float32)
        y_re, y_im = a_re * y_re - a_im * y_im + x_re, a_re * y_im + a_im * y_re + x_im
        if WRITE_SUMMARY:
            p_re, p_im = a_re * p_re - a_im * p_im, a_re * p_im + a_im * p_re
        if WRITE_OUT:
            tl.store(out_ptr + step, y_re, mask=mask)
            tl.store(out_ptr + step + 1, y_im, mask=mask)
        if GRAD_LAM:  # d lam(t) = G(t) conj(c(t-1)), with c(-1) the first state
            has_previous = (tl.zeros([BLOCK_K], dtype=tl.int32) + t) > 0
            previous = tl.maximum(step - 2 * k_size, row * length * 2 * k_size + pair)
            c_re = tl.where(has_previous, tl.load(prev_ptr + previous, mask=mask, other=0.0), f_re)
            c_im = tl.where(has_previous, tl.load(prev_ptr + previous + 1, mask=mask, other=0.0), f_im)
            d_re, d_im = y_re * c_re + y_im * c_im, y_im * c_re - y_re * c_im
            if LAM_PER_STEP:
                tl.store(grad_lam_ptr + step, d_re, mask=mask)
                tl.store(grad_lam_ptr + step + 1, d_im, mask=mask)
            else:
                s_re += d_re
                s_im += d_im
    if WRITE_SUMMARY:
        tl.store(end_ptr + summary, y_re, mask=mask)
        tl.store(end_ptr + summary + 1, y_im, mask=mask)
        tl.store(prod_ptr + summary, p_re, mask=mask)
        tl.store(prod_ptr + summary + 1, p_im, mask=mask)
    if GRAD_LAM and not LAM_PER_STEP:
        tl.store(grad_lam_ptr + summary, s_re, mask=mask)
        tl.store(grad_lam_ptr + summary + 1, s_im, mask=mask)


def _real(tensor: Tensor) -> Tensor:
    return torch.view_as_real(tensor.resolve_conj().contiguous())


def _block(k_size: int) -> int:
    # The interpreter pays per program: one block for all of K there; small blocks on a GPU.
    return min(triton.next_power_of_2(k_size), 128 if INTERPRETED else 32)


def _lam_strides(lam: Tensor, length: int) -> tuple[int, int]:
    """Strides, in floats, of a contiguous (B or 1, T or 1, K, 2) lam; 0 along a shared dimension."""
    _, steps, k_size = lam.shape
    stride_t = 2 * k_size if steps == length and length > 1 else 0
    stride_b = 0 if lam.shape[0] == 1 else steps * 2 * k_size
    return stride_b, stride_t


def _run(
    lam: Tensor,
    x: Tensor,
    reverse: bool,
    carry_in: Tensor | None = None,
    chunk_len: int | None = None,
    prev: Tensor | None = None,
    first: Tensor | None = None,
    grad_lam: Tensor | None = None,
    lam_per_step: bool = False,
) -> Tensor:
    """One launch of _chunk_kernel over (B, K blocks, chunks): the outputs, and d lam into `grad_lam`."""
    batch, length, k_size = x.shape
    chunk_len = chunk_len or length
    n_chunks = triton.cdiv(length, chunk_len)
    block = _block(k_size)
    out = torch.empty(batch, length, k_size, dtype=torch.complex64, device=x.device)
    dummy = torch.view_as_real(out)
    _chunk_kernel[(batch, triton.cdiv(k_size, block), n_chunks)](
        _real(lam), _real(x), _real(carry_in) if carry_in is not None else dummy, dummy, dummy, dummy,
        _real(prev) if prev is not None else dummy, _real(first) if first is not None else dummy,
        torch.view_as_real(grad_lam) if grad_lam is not None else dummy,
        length, k_size, chunk_len, *_lam_strides(lam, length),
        REVERSE=reverse, HAS_CARRY=carry_in is not None, WRITE_OUT=True, WRITE_SUMMARY=False,
        GRAD_LAM=grad_lam is not None, HAS_FIRST=first is not None,
        LAM_PER_STEP=lam_per_step, BLOCK_K=block,
    )  # fmt: skip
    return out


def _summaries(lam: Tensor, x: Tensor, reverse: bool, chunk_len: int) -> tuple[Tensor, Tensor]:
    """Per chunk, from a zero state: the value at its end (its start in reverse) and the product of a(t)."""
    batch, length, k_size = x.shape
    n_chunks = triton.cdiv(length, chunk_len)
    block = _block(k_size)
    end = torch.empty(batch, n_chunks, k_size, dtype=torch.complex64, device=x.device)
    prod = torch.empty_like(end)
    dummy = torch.view_as_real(end)
    _chunk_kernel[(batch, triton.cdiv(k_size, block), n_chunks)](
        _real(lam), _real(x), dummy, dummy, torch.view_as_real(end), torch.view_as_real(prod), dummy, dummy, dummy,
        length, k_size, chunk_len, *_lam_strides(lam, length),
        REVERSE=reverse, HAS_CARRY=False, WRITE_OUT=False, WRITE_SUMMARY=True, GRAD_LAM=False, HAS_FIRST=False,
        LAM_PER_STEP=False, BLOCK_K=block,
    )  # fmt: skip
    return end, prod


def _incoming(lam: Tensor, x: Tensor, reverse: bool, initial: Tensor | None, chunk_len: int) -> Tensor | None:
    """The state each chunk starts from, (B, n_chunks, K); None when one chunk holds the whole sequence."""
    batch, length, k_size = x.shape
    if length <= chunk_len:
        return None if initial is None else initial.unsqueeze(1)
    end, prod = _summaries(lam, x, reverse, chunk_len)
    if reverse:  # chunks are combined last to first
        end, prod = end.flip(1), prod.flip(1)
    # The chunk ends in order: the same recurrence over the summaries, from the initial state.
    ends = _run(prod, end, reverse=False, carry_in=None if initial is None else initial.unsqueeze(1))
    first = torch.zeros_like(ends[:, :1]) if initial is None else initial.unsqueeze(1).to(ends.dtype)
    incoming = torch.cat([first, ends[:, :-1]], 1)
    return incoming.flip(1) if reverse else incoming


# ---------------------------------------------------------------- the operator torch sees
# Registered with torch.library, as the chunked backend's: one opaque op for torch.compile, no graph break.


def triton_states(lam: Tensor, beta: Tensor, initial_state: Tensor | None) -> Tensor:
    """All states, (B, T, K) complex64: the operator's computation, also called without it (common.needs_operator)."""
    lam, beta = lam.contiguous(), beta.contiguous()
    batch, length, k_size = beta.shape
    chunk = chunk_length(batch, k_size, length, beta.device)
    carry = _incoming(lam, beta, False, initial_state, chunk)
    return _run(lam, beta, reverse=False, carry_in=carry, chunk_len=chunk)


@torch.library.custom_op(f"{OP_NAMESPACE}::triton_scan", mutates_args=())
def triton_scan_op(lam: Tensor, beta: Tensor, initial_state: Tensor | None) -> Tensor:
    """All states, (B, T, K) complex64."""
    return triton_states(lam, beta, initial_state)


@triton_scan_op.register_fake
def _(lam: Tensor, beta: Tensor, initial_state: Tensor | None) -> Tensor:
    return beta.new_empty(beta.shape, dtype=torch.complex64)


@torch.library.custom_op(f"{OP_NAMESPACE}::triton_scan_backward", mutates_args=())
def triton_scan_backward_op(
    lam: Tensor, initial_state: Tensor | None, states: Tensor, grad_states: Tensor, need_lam: bool, need_initial: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad lam, grad beta (complex64), grad initial state); an unneeded one is an empty tensor."""
    lam = lam.contiguous()
    batch, length, k_size = states.shape
    chunk = chunk_length(batch, k_size, length, states.device)
    grad_states = grad_states.to(torch.complex64).contiguous()
    per_step = lam.shape[1] == length and length > 1
    n_chunks = triton.cdiv(length, chunk)
    grad_lam = torch.empty(batch, length if per_step else n_chunks, k_size, dtype=torch.complex64,
                           device=states.device)  # fmt: skip
    carry = _incoming(lam, grad_states, True, None, chunk)
    grad_beta = _run(lam, grad_states, reverse=True, carry_in=carry, chunk_len=chunk, prev=states,
                     first=initial_state, grad_lam=grad_lam, lam_per_step=per_step)  # fmt: skip
    grad_initial = states.new_empty(0)
    if initial_state is not None and need_initial:  # d c(-1) = conj(lam(0)) G(0)
        grad_initial = (lam[:, 0].conj() * grad_beta[:, 0]).to(initial_state.dtype)
    grad_lam = grad_lam.sum_to_size(lam.shape).to(lam.dtype) if need_lam else lam.new_empty(0)
    return grad_lam, grad_beta, grad_initial


@triton_scan_backward_op.register_fake
def _(
    lam: Tensor, initial_state: Tensor | None, states: Tensor, grad_states: Tensor, need_lam: bool, need_initial: bool
) -> tuple[Tensor, Tensor, Tensor]:
    grad_lam = torch.empty_like(lam) if need_lam else lam.new_empty(0)
    needed = initial_state is not None and need_initial
    return grad_lam, torch.empty_like(states), torch.empty_like(initial_state) if needed else states.new_empty(0)


def _save(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    lam, beta, initial_state = inputs
    ctx.save_for_backward(lam, initial_state, output)
    ctx.beta_dtype = beta.dtype


def _backward(ctx: Any, grad_states: Tensor) -> tuple[Tensor | None, Tensor, Tensor | None]:
    lam, initial_state, states = ctx.saved_tensors
    need_lam, _, need_initial = ctx.needs_input_grad
    grad_lam, grad_beta, grad_initial = triton_scan_backward_op(
        lam, initial_state, states, grad_states, need_lam, need_initial and initial_state is not None
    )
    return grad_lam if need_lam else None, grad_beta.to(ctx.beta_dtype), grad_initial if need_initial else None


triton_scan_op.register_autograd(_backward, setup_context=_save)


def scan_triton(lam: Tensor, beta: Tensor, initial_state: Tensor | None = None) -> Tensor:
    """Fused scan on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1); states are complex64."""
    check_scan_inputs(lam, beta, initial_state)
    if beta.device.type != "cuda" and not INTERPRETED:
        raise ValueError("scan backend 'triton' needs CUDA tensors (TRITON_INTERPRET=1 runs it on the CPU, slowly)")
    if needs_operator(lam, beta, initial_state):
        return triton_scan_op(as_3d(lam), beta, initial_state)
    return triton_states(as_3d(lam), beta, initial_state)
