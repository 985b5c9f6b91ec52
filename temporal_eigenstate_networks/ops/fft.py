"""FFT backend for the time-invariant case (selective=False): a causal convolution.

With a constant lam, c(t) = sum_{s<=t} lam^(t-s) beta(s) + lam^(t+1) c(-1), i.e. beta convolved
with the kernel lam^n.  The kernel is built in float64 because n * angle(lam) for n in the
thousands loses its phase in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import as_3d, check_scan_inputs, is_time_invariant


def decay_powers(lam: Tensor, length: int) -> Tensor:
    """lam^n for n = 0 .. length-1, shape (B or 1, length, K), in lam's dtype."""
    log_lam = torch.log(lam.to(torch.complex128))
    n = torch.arange(length, device=lam.device, dtype=torch.float64).view(1, -1, 1)
    return torch.exp(n * log_lam).to(lam.dtype)


def scan_fft(lam: Tensor, beta: Tensor, initial_state: Tensor | None = None) -> Tensor:
    check_scan_inputs(lam, beta, initial_state)
    if not is_time_invariant(lam):
        raise ValueError("the fft backend needs a time-invariant lam (selective=False)")
    lam = as_3d(lam)
    length = beta.shape[1]
    kernel = decay_powers(lam, length)
    n_fft = 1 << (2 * length - 1).bit_length()  # linear, not circular, convolution
    spectrum = torch.fft.fft(beta, n=n_fft, dim=1) * torch.fft.fft(kernel, n=n_fft, dim=1)
    states = torch.fft.ifft(spectrum, dim=1)[:, :length]
    if initial_state is not None:
        states = states + kernel * lam * initial_state.unsqueeze(1)
    return states
