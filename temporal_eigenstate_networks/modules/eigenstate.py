"""The eigenstate layer of the design's section 1.

    beta(t)  = W_in u(t)                                    K complex values
    lam_k(t) = |lam_k(t)| exp(i (w_k + dw_k(t)))
    (da, dw) = r tanh(W_sel u(t))                           selective only, else 0 (r: selective_range, 0.1)
    c(t)     = lam(t) c(t-1) + beta(t)                      temporal_eigenstate_networks.ops.scan
    h(t)     = W_out [Re R c(t); Im R c(t)]                 R = I + eps M, block-diagonal
    y(t)     = sigmoid(W_g u(t) + b_g) * h(t)

|lam| = MIN_DECAY + (1 - MIN_DECAY) sigmoid(min(a + da, 15)): the paper's sigmoid, lifted by the
floor that keeps the chunked scan exact (temporal_eigenstate_networks/ops/common.py).  MIN_DECAY <= |lam| < 1 always.

Initialisation: w_k = 2 pi k / K and R = I + 0.01 M as in the paper.  The paper's a_k ~ U(-3, 0)
would cap |lam| at 0.5, a memory of two tokens; instead the timescales 1 / (1 - |lam_k|) start
log-uniform from 1.5 tokens to max_seq_len, and every head gets the whole range.

The paper's ablations are settings of the same layer (all off by default): ``coupling=False`` is R = I,
``real_eigenvalues`` fixes w_k at 0 or pi (no dw), ``fixed_basis`` freezes a_k and w_k at their initial
values (buffers, not parameters), and the layers' ``output_gate=False`` is g = 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import MIN_DECAY, scan
from .block import MixerOutput, SequenceMixer, no_weight_decay, tensor_mismatch

# sigmoid rounds to exactly 1.0 in float32 past ~17; capping its argument keeps |lam| < 1
# (1 - 2.3e-7 at the cap, a memory of 4 million tokens).
MAX_DECAY_LOGIT = 15.0
MIN_TIMESCALE = 1.5  # tokens; the fastest initial memory (MIN_DECAY alone would give 1.33)


def complex_exp_parts(magnitude: Tensor, angle: Tensor) -> Tensor:
    """magnitude * exp(i angle) as a complex tensor (much faster on CPU than torch.polar)."""
    return torch.view_as_complex(torch.stack([magnitude * torch.cos(angle), magnitude * torch.sin(angle)], -1))


def orthogonal_like(weight: Tensor, gain: float = 1.0) -> Tensor:
    """A float32 orthogonal matrix of ``weight``'s shape, on its device: the QR it takes has no half-precision
    kernel on the CPU, so a model built under a half default dtype initialises in float32, then rounds."""
    return nn.init.orthogonal_(torch.empty(weight.shape, dtype=torch.float32, device=weight.device), gain=gain)


def initial_timescales(num: int, num_heads: int, longest: float) -> Tensor:
    """Memory timescales 1 / (1 - |lam|), log-uniform from MIN_TIMESCALE to ``longest``.

    Dealt round-robin so that every head spans the whole range.
    """
    longest = max(longest, 2 * MIN_TIMESCALE)
    sorted_scales = torch.logspace(math.log10(MIN_TIMESCALE), math.log10(longest), num, dtype=torch.float64)
    per_head = num // num_heads
    order = torch.arange(num).view(num_heads, per_head)  # eigenstate k = h * per_head + j
    dealt = (order % per_head) * num_heads + order // per_head  # gets sorted index j * H + h
    return sorted_scales[dealt.flatten()]


class EigenstateCore(nn.Module):
    """u (B, T, d) -> h (B, T, d) and the eigenstates c (B, T, K): everything but the gate."""

    def __init__(
        self,
        d_model: int,
        num_eigenstates: int,
        num_heads: int,
        longest_timescale: float,
        selective: bool = True,
        selective_range: float = 0.1,
        coupling_init: float = 0.01,
        residual_gain: float = 1.0,
        scan_backend: str = "auto",
        chunk_size: int = 32,
        coupling: bool = True,
        real_eigenvalues: bool = False,
        fixed_basis: bool = False,
    ) -> None:
        super().__init__()
        self.num_eigenstates = num_eigenstates
        self.num_heads = num_heads
        self.selective = selective
        self.selective_range = selective_range  # |da|, |dw| <= selective_range
        self.scan_backend = scan_backend
        self.chunk_size = chunk_size
        self.longest_timescale = longest_timescale
        self.coupling_init = coupling_init
        self.residual_gain = residual_gain
        self.real_eigenvalues = real_eigenvalues
        k, per_head = num_eigenstates, num_eigenstates // num_heads

        self.in_proj = nn.Linear(d_model, 2 * k, bias=False)  # beta, interleaved (re, im)
        # (da, dw) per eigenstate; da alone where the frequencies are fixed at 0 or pi.
        self.selection = nn.Linear(d_model, (1 if real_eigenvalues else 2) * k, bias=False) if selective else None
        learned_decay, learned_frequency = not fixed_basis, not (fixed_basis or real_eigenvalues)
        self._eigenvalue_tensor("decay_logit", k, learned_decay)  # a_k
        self._eigenvalue_tensor("frequency", k, learned_frequency)  # w_k
        # eps M_h. The tensors that set the dynamics are float32 under any default dtype (keep_float32 in model.py).
        self.coupling = (
            nn.Parameter(torch.empty(num_heads, per_head, per_head, dtype=torch.float32)) if coupling else None
        )
        # The eigenvalues and the coupling set the dynamics: decaying them would pull every
        # eigenvalue towards one fixed point.
        no_weight_decay(*(p for p in (self.decay_logit, self.frequency, self.coupling) if isinstance(p, nn.Parameter)))
        self.out_proj = nn.Linear(2 * k, d_model, bias=False)
        self.reset_parameters()

    def _eigenvalue_tensor(self, name: str, k: int, learned: bool) -> None:
        """A learned parameter, or a buffer kept at its initial value (saved with the weights all the same)."""
        if learned:
            self.register_parameter(name, nn.Parameter(torch.empty(k, dtype=torch.float32)))
        else:
            self.register_buffer(name, torch.empty(k, dtype=torch.float32))

    @classmethod
    def from_config(
        cls, config, num_eigenstates: int, longest_timescale: float, residual_gain: float
    ) -> EigenstateCore:
        """A core with the config's settings: K and the longest timescale differ between TEN and each HTEN scale."""
        return cls(
            config.d_model,
            num_eigenstates,
            config.num_heads,
            longest_timescale=longest_timescale,
            selective=config.selective,
            selective_range=config.selective_range,
            coupling_init=config.coupling_init,
            residual_gain=residual_gain,
            scan_backend=config.scan_backend,
            chunk_size=config.chunk_size,
            coupling=config.coupling,
            real_eigenvalues=config.real_eigenvalues,
            fixed_basis=config.fixed_basis,
        )

    @torch.no_grad()
    def reset_parameters(self) -> None:
        k = self.num_eigenstates
        timescales = initial_timescales(k, self.num_heads, self.longest_timescale)
        magnitude = 1 - 1 / timescales
        self.decay_logit.copy_(torch.logit((magnitude - MIN_DECAY) / (1 - MIN_DECAY)))
        if self.real_eigenvalues:  # alternately 0 and pi: every head gets both signs
            self.frequency.copy_(math.pi * (torch.arange(k) % 2))
        else:
            self.frequency.copy_(2 * math.pi * torch.arange(k) / k)
        if self.coupling is not None:
            self.coupling.normal_(0, self.coupling_init / math.sqrt(k))
        # Scale beta_k by sqrt(1 - |lam_k|^2) so every eigenstate starts with unit energy however
        # long its memory: otherwise slow eigenstates start ~timescale times louder.
        row_gain = torch.sqrt(1 - magnitude**2).float().repeat_interleave(2).unsqueeze(1)
        self.in_proj.weight.copy_(orthogonal_like(self.in_proj.weight) * row_gain)
        self.out_proj.weight.copy_(orthogonal_like(self.out_proj.weight, gain=self.residual_gain))
        if self.selection is not None:
            nn.init.normal_(self.selection.weight, std=0.02)

    def state_bytes(self) -> int:
        """The last eigenstates of one sequence: K complex64 values, whatever the context."""
        return self.num_eigenstates * torch.complex64.itemsize

    def eigenvalues(self, u: Tensor | None = None) -> Tensor:
        """lam, complex64: (K,) from the parameters alone, or (B, T, K) for input u if selective."""
        selection = self.selection(u) if self.selection is not None and u is not None else None
        return eigenvalues_of(self.decay_logit, self.frequency, selection, self.selective_range, self.real_eigenvalues)

    def coupling_matrix(self) -> Tensor:
        """R = I + eps M, block-diagonal over heads, (K, K); I where the coupling is off."""
        if self.coupling is None:
            return torch.eye(self.num_eigenstates, device=self.frequency.device)
        eye = torch.eye(self.coupling.shape[-1], device=self.coupling.device, dtype=self.coupling.dtype)
        return torch.block_diag(*(eye + self.coupling))

    def forward(self, u: Tensor, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lam = self.eigenvalues(u)
        # The state accumulates in float32 whatever the autocast dtype.
        beta = torch.view_as_complex(self.in_proj(u).float().unflatten(-1, (-1, 2)))
        if u.shape[1] == 1 and initial_state is not None:  # decoding: one step of the recurrence, no scan
            expected, got = tuple(beta[:, 0].shape), tuple(initial_state.shape)
            if got != expected:  # the scan's own check, which this step skips
                raise ValueError(f"initial_state must have shape (B, K) = {expected}, got {got}")
            states = lam * initial_state.unsqueeze(1) + beta
        else:
            states = scan(lam, beta, initial_state, self.scan_backend, self.chunk_size)
        return self.readout(states), states

    def readout(self, states: Tensor) -> Tensor:
        """h = W_out view_as_real(R c): see ``read_out``."""
        coupling = None if self.coupling is None else self.coupling_matrix()
        return read_out(states, coupling, self.out_proj.weight)


def eigenvalues_of(
    decay_logit: Tensor, frequency: Tensor, selection: Tensor | None, selective_range: float, real_eigenvalues: bool
) -> Tensor:
    """lam, complex64, from a_k, w_k (K,) and the selection projection W_sel u (..., K or 2K) or None:
    shared by a core and HTEN's fused pass, which stacks every scale's eigenstates into one K."""
    a, w = decay_logit.float(), frequency.float()
    if selection is not None:
        delta = selective_range * torch.tanh(selection.float())
        if real_eigenvalues:
            a = a + delta
        else:
            da, dw = delta.unflatten(-1, (-1, 2)).unbind(-1)
            a, w = a + da, w + dw
    magnitude = MIN_DECAY + (1 - MIN_DECAY) * torch.sigmoid(a.clamp(max=MAX_DECAY_LOGIT))
    return complex_exp_parts(magnitude, w)


def read_out(states: Tensor, coupling: Tensor | None, weight: Tensor) -> Tensor:
    """h = W view_as_real(R c) for states (..., K), R (K, K) or None (no coupling), W (d, 2K), applying R where
    it costs least. The states and R meet in float32; the result enters W in W's dtype (bf16 weights: a bf16
    matmul, as under autocast)."""
    pairs = torch.view_as_real(states)  # (..., K, 2) float32: R is real, so it acts on re and im alike
    dtype = weight.dtype
    if coupling is None:
        return F.linear(pairs.flatten(-2).to(dtype), weight)
    coupling = coupling.float()
    if states[..., 0].numel() < weight.shape[0]:
        # Few positions (generation): couple the states, B T (2K)^2 work.
        return F.linear(torch.einsum("jk,...kc->...jc", coupling, pairs).flatten(-2).to(dtype), weight)
    # Many positions: fold R into the weight, W (R (x) I_2), d (2K)^2 work once.
    coupled = torch.kron(coupling, torch.eye(2, device=states.device, dtype=torch.float32))
    return F.linear(pairs.flatten(-2).to(dtype), (weight.float() @ coupled).to(dtype))


def energy(states: Tensor) -> Tensor:
    """E(t) = sum_k |c_k(t)|^2, shape (B, T)."""
    return torch.view_as_real(states).square().sum((-1, -2))


def mean_energy(states: Tensor) -> Tensor:
    """E(t) averaged over batch and positions (a scalar)."""
    per_position = energy(states)
    return per_position.mean() if per_position.numel() else per_position.sum()  # 0 for no positions


class OutputGate(nn.Module):
    """sigmoid(W_g u + b_g), with b_g = -2 at start: the layer begins mostly closed."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.constant_(self.proj.bias, -2.0)

    def forward(self, u: Tensor) -> Tensor:
        return torch.sigmoid(self.proj(u))


def gated(gate: OutputGate | None, u: Tensor, h: Tensor) -> Tensor:
    """y = g(u) * h, or h itself where the layer has no gate (g = 1)."""
    return h if gate is None else gate(u) * h


class EigenstateLayer(SequenceMixer):
    """The TEN sequence mixer. State: the last eigenstates, (B, K) complex."""

    def __init__(self, config, residual_gain: float = 1.0) -> None:
        super().__init__()
        self.core = EigenstateCore.from_config(config, config.num_eigenstates, config.max_seq_len, residual_gain)
        self.gate = OutputGate(config.d_model) if config.output_gate else None

    def forward(self, u: Tensor, state: Tensor | None = None) -> MixerOutput:
        """y (B, T, d), the new state, and as aux loss E(t) averaged over batch and positions."""
        h, states = self.core(u, state)
        # The carried state is laid out alike after a prompt and after a step: a compiled decode step compiles once.
        return MixerOutput(gated(self.gate, u, h), states[:, -1].contiguous(), mean_energy(states))

    def state_bytes(self, context_length: int) -> int:
        return self.core.state_bytes()

    def state_mismatch(self, state: Any, batch: int) -> str | None:
        return tensor_mismatch(state, (batch, self.core.num_eigenstates), "a TEN layer's state (its eigenstates)")

    def cores(self) -> list[tuple[int, EigenstateCore]]:
        return [(1, self.core)]
