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

Cost: TEN's scan and readout at the same total K, and one projection per scale of its pooled inputs (T / s
rows each), in place of a scan, an eigenvalue computation, a readout and an upsampling gather per scale.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops import scan
from .eigenstate import EigenstateCore, eigenvalues_of, read_out


def completes_window(scales: list[int], carried: list[int], length: int, per_scale: int, device) -> Tensor:
    """(T, K) bool: position t completes a window of eigenstate k's scale. A scale whose open window already
    holds c inputs completes its first window at t = s - 1 - c."""
    t = torch.arange(length, device=device).unsqueeze(1)
    s = torch.tensor(scales, device=device)
    held = torch.tensor(carried, device=device)
    return ((t + held + 1) % s == 0).repeat_interleave(per_scale, dim=1)


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
    """
    first = cores[0]  # the scales share every setting but their eigenstates and longest timescale
    per_scale, batch, device = first.num_eigenstates, windows[0].shape[0], windows[0].device
    # Each scale's projections of its windows, placed at the positions that complete them; zero elsewhere.
    # float32, as a core's beta and selection (the state accumulates in float32 under autocast).
    beta_pairs = torch.zeros(batch, length, 2 * per_scale * len(cores), device=device, dtype=torch.float32)
    selection = None
    if first.selection is not None:
        width = first.selection.out_features
        selection = torch.zeros(batch, length, width * len(cores), device=device, dtype=torch.float32)
    for i, (s, core, z, held) in enumerate(zip(scales, cores, windows, carried, strict=True)):
        if not z.shape[1]:
            continue
        rows = slice(s - 1 - held, None, s)  # the n_i positions completing a window
        beta_pairs[:, rows, 2 * i * per_scale : 2 * (i + 1) * per_scale] = core.in_proj(z)
        if selection is not None:
            selection[:, rows, i * width : (i + 1) * width] = core.selection(z)

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
    power = torch.view_as_real(states).square().sum((0, -1))  # (T, K)
    total_energy = (power * completes / (batch * windows_per_eigenstate)).sum()
    return mixed, states, total_energy
