"""HTEN's scales as one recurrence: the fast path of HierarchicalEigenstateLayer (design section 3).

The reference (``HierarchicalEigenstateLayer.reference_forward``) runs one core per scale on that scale's
pooled sequence, then repeats each window's output until the scale's next window completes. Here every scale
runs at the input's length, stacked along the eigenstate axis (scale i owns eigenstates i K_s .. (i + 1) K_s):

    lam_k(t), beta_k(t) = the core's values for the window j    where t completes window j of scale s(k)
                        = 1, 0                                  at every other t
    c(t)                = lam(t) c(t-1) + beta(t)               one scan over all K

A step with lam = 1 and beta = 0 holds the state, so c_k(t) is the state after the last window of s(k)
completed at or before t: the reference's upsampled state, exactly as causal (t sees no window that ends
after t). The readout is linear, so sum_s w_s W_s R_s c_s(t) is one readout: the scales' W_s side by side,
each times w_s, and R block-diagonal over the scales.

Cost: TEN's scan, eigenvalues and readout at the same total K (and their activations: the coarse scales are
held at full length), and one projection per scale of its pooled inputs (T / s rows each), in place of a scan,
an eigenvalue computation, a readout and an upsampling gather per scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import scan
from .eigenstate import EigenstateCore, eigenvalues_of, read_out


def completes_window(
    scales: list[int], carried: list[int], length: int, per_scale: int, device: torch.device
) -> Tensor:
    """(T, K) bool: position t completes a window of eigenstate k's scale. A scale whose open window already
    holds c inputs completes its first window at t = s - 1 - c."""
    t = torch.arange(length, device=device).unsqueeze(1)
    s = torch.tensor(scales, device=device)
    held = torch.tensor(carried, device=device)
    return ((t + held + 1) % s == 0).repeat_interleave(per_scale, dim=1)


def at_completions(x: Tensor, s: int, held: int, length: int) -> Tensor:
    """(B, T, C): window j's x_j (B, n, C) at the position that completes it, zeros elsewhere. Built out of
    place (padding, not writes into a zero tensor, whose backward would copy the whole tensor once per scale)."""
    if s == 1:
        return x  # every position completes a window
    if not x.shape[1]:  # no window completes here
        return x.new_zeros(x.shape[0], length, x.shape[2])
    spread = F.pad(x.unsqueeze(2), (0, 0, s - 1, 0)).flatten(1, 2)  # frame position j s + s - 1 holds x_j
    # The frame starts `held` inputs before position 0, and its incomplete last window is left as zeros.
    return F.pad(spread, (0, 0, -held, length + held - spread.shape[1]))


def fused_scales(
    cores: list[EigenstateCore],
    scale_weights: Tensor,
    scales: list[int],
    windows: list[Tensor],
    carried: list[int],
    length: int,
    initial_state: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """sum_s w_s up_s(t) (B, T, d) in the readout's dtype, the held states (B, T, K), and the energy: each
    scale's E averaged over its windows' states, summed over the scales.

    ``windows[i]``: scale i's pooled inputs z (B, n_i, d), in the frame that starts ``carried[i]`` inputs before
    position 0 (``with_open_window``); ``initial_state``: every scale's eigenstates side by side, (B, K), or None.
    Before a scale's first window here, its held carried eigenstates read out as the carried state's last_output:
    that output is the readout of those eigenstates.
    """
    first = cores[0]  # the scales share every setting but their eigenstates and longest timescale
    per_scale, batch, device = first.num_eigenstates, windows[0].shape[0], windows[0].device
    # Each scale's projections of its windows at the positions that complete them, zero elsewhere; float32, as a
    # core's beta and selection (the state accumulates in float32 under autocast).
    beta_pairs = torch.cat([
        at_completions(core.in_proj(z).float(), s, held, length)
        for s, core, z, held in zip(scales, cores, windows, carried, strict=True)
    ], -1)  # fmt: skip
    selection = None
    if first.selection is not None:
        selection = torch.cat([
            at_completions(core.selection(z).float(), s, held, length)
            for s, core, z, held in zip(scales, cores, windows, carried, strict=True)
        ], -1)  # fmt: skip

    completes = completes_window(scales, carried, length, per_scale, device)
    lam = eigenvalues_of(
        torch.cat([core.decay_logit for core in cores]),
        torch.cat([core.frequency for core in cores]),
        selection,
        first.selective_range,
        first.real_eigenvalues,
    )
    lam = torch.where(completes, lam, lam.new_ones(()))  # hold the state between a scale's windows
    beta = torch.view_as_complex(beta_pairs.unflatten(-1, (-1, 2)))
    states = scan(lam, beta, initial_state, first.scan_backend, first.chunk_size)

    coupling = None
    if first.coupling is not None:
        coupling = torch.block_diag(*(core.coupling_matrix() for core in cores))
    weight = torch.cat([core.out_proj.weight for core in cores], 1)
    weight = weight * scale_weights.repeat_interleave(2 * per_scale).to(weight.dtype)
    mixed = read_out(states, coupling, weight)

    # Each window's state once, in its scale's mean: weight 1 / (B n_s) where a window completes.
    windows_per_eigenstate = completes.sum(0).clamp(min=1)
    per_state = (completes.float() / (batch * windows_per_eigenstate)).repeat_interleave(2, -1)  # (T, 2K): re, im
    total_energy = (torch.view_as_real(states).square().flatten(1) @ per_state.flatten()).sum()  # one contiguous pass
    return mixed, states, total_energy
