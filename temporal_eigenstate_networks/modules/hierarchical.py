"""Hierarchical TEN (design section 3): one eigenstate core per temporal scale s, causal.

    z_j     = mean(u[j s], ..., u[j s + s - 1])          complete windows only
    y_j     = core_s(z)_j
    up_s(t) = y_{floor((t+1)/s) - 1}  for t >= s - 1, else 0
    y(t)    = sigmoid(W_g u(t) + b_g) * sum_s w_s up_s(t)

A window's output is used only from the position that completes it: pooling windows that reach
past t, or interpolating coarse outputs, would let position t see the future.

``forward`` runs the scales fused, as one scan (hierarchical_fused.py); ``reference_forward`` is the
loop over scales written as above, kept as the reference the fused pass is tested against.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from .block import MixerOutput, SequenceMixer, describe, no_weight_decay, tensor_mismatch
from .eigenstate import EigenstateCore, OutputGate, gated, mean_energy
from .hierarchical_fused import fused_scales


@dataclass
class ScaleState:
    """What scale s carries between calls: eigenstates, the open window, the last window's output."""

    eigenstates: Tensor | None  # (B, K_s) complex; None before the first complete window
    window_sum: Tensor  # (B, d): sum of the inputs of the window not yet complete
    # How many inputs that window holds, in [0, s). A (B,) tensor where rows are at different points
    # of their windows (prompts of different lengths decoded as one batch); such a state steps one token at a time.
    window_count: int | Tensor
    last_output: Tensor  # (B, d): core output of the last completed window (0 before the first)


def with_open_window(u: Tensor, state: ScaleState | None) -> tuple[Tensor, int]:
    """u with the open window's sum put in front as one input followed by zeros, so that windows start at
    multiples of s and pool with a reshape; and how many inputs that window held."""
    carried = state.window_count if state is not None else 0
    if carried:
        batch, _, d = u.shape
        lead = torch.cat([state.window_sum.unsqueeze(1).to(u.dtype), u.new_zeros(batch, carried - 1, d)], 1)
        u = torch.cat([lead, u], 1)
    return u, carried


def pool_windows(u: Tensor, s: int) -> Tensor:
    """z_j = mean(u[j s], ..., u[j s + s - 1]) over the complete windows: (B, T // s, d)."""
    n_windows = u.shape[1] // s
    if s == 1:
        return u  # a mean over one input is the input: spare the copy
    if n_windows * s != u.shape[1]:  # sliced only where needed: a slice's backward copies the whole gradient
        u = u[:, : n_windows * s]
    return u.unflatten(1, (n_windows, s)).mean(2)


def has_row_counts(state: list[ScaleState] | None) -> bool:
    """Whether the state's rows are at their own window positions (window counts as tensors)."""
    return state is not None and any(torch.is_tensor(scale_state.window_count) for scale_state in state)


class HierarchicalEigenstateLayer(SequenceMixer):
    """The HTEN sequence mixer. State: one ScaleState per scale."""

    # False: run reference_forward, whose cores run as modules (forward hooks on a core then see its inputs).
    fused = True

    def __init__(self, config, residual_gain: float = 1.0) -> None:
        super().__init__()
        self.scales = list(config.hten_scales)
        self.d_model = config.d_model
        self.scale_cores = nn.ModuleList(  # scale s steps once per s tokens: its longest timescale is T / s steps
            EigenstateCore.from_config(config, config.eigenstates_per_scale, config.max_seq_len / s, residual_gain)
            for s in self.scales
        )
        # float32 under any default dtype, as the eigenvalues (keep_float32 in model.py)
        self.scale_weights = nn.Parameter(torch.full((len(self.scales),), 1.0 / len(self.scales), dtype=torch.float32))
        no_weight_decay(self.scale_weights)  # the mix of timescales is dynamics, like the eigenvalues
        self.gate = OutputGate(config.d_model) if config.output_gate else None

    def forward(self, u: Tensor, state: list[ScaleState] | None = None) -> MixerOutput:
        """y (B, T, d), the new state, and as aux loss the energy averaged over each scale's positions, summed.

        The scales run fused, as one scan (hierarchical_fused.py), except where that cannot apply: the fft
        backend (the fused eigenvalues vary in time), an empty input, and rows at different window positions
        (one token per call: ``_scale_step``). Those take ``reference_forward``, the loop over scales."""
        if not self.fused or self.scale_cores[0].scan_backend == "fft" or u.shape[1] == 0 or has_row_counts(state):
            return self.reference_forward(u, state)
        scale_states = state if state is not None else [None] * len(self.scales)
        framed = [with_open_window(u, scale_state) for scale_state in scale_states]
        windows = [pool_windows(frame, s) for (frame, _), s in zip(framed, self.scales, strict=True)]
        mixed, states, total_energy = fused_scales(
            list(self.scale_cores), self.scale_weights, self.scales, windows, [held for _, held in framed],
            u.shape[1], self._initial_eigenstates(state),
        )  # fmt: skip
        new_state = [
            self._state_after(i, u, frame, z.shape[1], states, scale_state)
            for i, ((frame, _), z, scale_state) in enumerate(zip(framed, windows, scale_states, strict=True))
        ]
        return MixerOutput(gated(self.gate, u, mixed.to(u.dtype)), new_state, total_energy)

    def _initial_eigenstates(self, state: list[ScaleState] | None) -> Tensor | None:
        """Every scale's carried eigenstates side by side (B, K); zeros for a scale with none yet."""
        if state is None or all(scale_state.eigenstates is None for scale_state in state):
            return None
        rows, device = state[0].window_sum.shape[0], state[0].window_sum.device
        return torch.cat([
            torch.zeros(rows, core.num_eigenstates, dtype=torch.complex64, device=device)
            if scale_state.eigenstates is None else scale_state.eigenstates
            for core, scale_state in zip(self.scale_cores, state, strict=True)
        ], 1)  # fmt: skip

    def _state_after(
        self, i: int, u: Tensor, frame: Tensor, n_windows: int, states: Tensor, previous: ScaleState | None
    ) -> ScaleState:
        """Scale i's state after the fused pass: what the reference's ``_scale_forward`` leaves."""
        s, core = self.scales[i], self.scale_cores[i]
        if n_windows:  # the held states end on the last window's; its output is the core's readout of it
            eigenstates = states[:, -1, i * core.num_eigenstates : (i + 1) * core.num_eigenstates].contiguous()
            last_output = core.readout(eigenstates.unsqueeze(1))[:, 0].to(u.dtype)
        elif previous is not None:
            eigenstates, last_output = previous.eigenstates, previous.last_output.to(u.dtype)
        else:
            eigenstates, last_output = None, u.new_zeros(u.shape[0], u.shape[2])
        complete = n_windows * s
        return ScaleState(
            eigenstates=eigenstates,
            window_sum=frame[:, complete:].sum(1).float(),
            window_count=frame.shape[1] - complete,
            last_output=last_output,
        )

    def reference_forward(self, u: Tensor, state: list[ScaleState] | None = None) -> MixerOutput:
        """The design's section 3 as written, scale by scale: the reference the fused pass is tested against."""
        mixed = torch.zeros_like(u)
        new_state, total_energy = [], u.new_zeros((), dtype=torch.float32)
        for i, (s, core) in enumerate(zip(self.scales, self.scale_cores, strict=True)):
            up, scale_state, scale_energy = self._scale_forward(s, core, u, None if state is None else state[i])
            mixed = mixed + self.scale_weights[i].to(u.dtype) * up
            new_state.append(scale_state)
            total_energy = total_energy + scale_energy
        return MixerOutput(gated(self.gate, u, mixed), new_state, total_energy)

    def state_bytes(self, context_length: int) -> int:
        """Per scale: its eigenstates, and the open window's sum and the last window's output in float32."""
        window = 2 * self.d_model * torch.float32.itemsize
        return sum(core.state_bytes() + window for core in self.scale_cores)

    def state_mismatch(self, state: Any, batch: int) -> str | None:
        if not (isinstance(state, list) and len(state) == len(self.scales)):
            return f"an HTEN layer's state must be a list of {len(self.scales)} ScaleState, got {describe(state)}"
        for s, core, scale_state in zip(self.scales, self.scale_cores, state, strict=True):
            if not isinstance(scale_state, ScaleState):
                return f"an HTEN layer's state must be a list of ScaleState, got {describe(scale_state)} in it"
            checks = [(scale_state.window_sum, (batch, self.d_model), "window_sum"),
                      (scale_state.last_output, (batch, self.d_model), "last_output")]  # fmt: skip
            if scale_state.eigenstates is not None:
                checks.append((scale_state.eigenstates, (batch, core.num_eigenstates), "eigenstates"))
            if torch.is_tensor(scale_state.window_count):
                checks.append((scale_state.window_count, (batch,), "window_count"))
            for value, shape, name in checks:
                problem = tensor_mismatch(value, shape, f"scale {s}'s {name}")
                if problem:
                    return problem
        return None

    def decoding_state(self, state: list[ScaleState]) -> list[ScaleState]:
        """Window counts as per-row tensors and no eigenstates as zeros: an int count would be a constant of
        the compiled graph, one graph per window position (lcm of the scales), and None another."""
        decoding = []
        for core, scale_state in zip(self.scale_cores, state, strict=True):
            rows, device = scale_state.window_sum.shape[0], scale_state.window_sum.device
            count = scale_state.window_count
            eigenstates = scale_state.eigenstates
            if eigenstates is None:
                eigenstates = torch.zeros(rows, core.num_eigenstates, dtype=torch.complex64, device=device)
            decoding.append(replace(
                scale_state, eigenstates=eigenstates,
                window_count=count if torch.is_tensor(count) else torch.full((rows,), count, device=device),
            ))  # fmt: skip
        return decoding

    @staticmethod
    def _scale_forward(
        s: int, core: EigenstateCore, u: Tensor, state: ScaleState | None
    ) -> tuple[Tensor, ScaleState, Tensor]:
        batch, length, d = u.shape
        if state is not None and torch.is_tensor(state.window_count):
            if length != 1:
                raise ValueError("a state whose rows are at different window positions takes one token per call")
            return HierarchicalEigenstateLayer._scale_step(s, core, u, state)
        u, carried = with_open_window(u, state)
        pooled = pool_windows(u, s)
        n_windows = pooled.shape[1]
        complete = n_windows * s
        eigenstates = None if state is None else state.eigenstates
        outputs = u.new_zeros(batch, 0, d)
        scale_energy = u.new_zeros((), dtype=torch.float32)
        if n_windows:
            outputs, states = core(pooled, eigenstates)
            eigenstates, scale_energy = states[:, -1].contiguous(), mean_energy(states)

        last_output = u.new_zeros(batch, d) if state is None else state.last_output.to(u.dtype)
        outputs = torch.cat([last_output.unsqueeze(1), outputs.to(u.dtype)], 1)
        # Position t (t + carried in the padded frame) sees the windows completed at or before it.
        completed = torch.div(torch.arange(length, device=u.device) + carried + 1, s, rounding_mode="floor")
        up = outputs.index_select(1, completed)

        new_state = ScaleState(
            eigenstates=eigenstates,
            window_sum=u[:, complete:].sum(1).float(),
            window_count=u.shape[1] - complete,
            last_output=outputs[:, -1].contiguous(),  # the same layout after a prompt or a step
        )
        return up, new_state, scale_energy

    @staticmethod
    def _scale_step(s: int, core: EigenstateCore, u: Tensor, state: ScaleState) -> tuple[Tensor, ScaleState, Tensor]:
        """One token for rows each at its own point of its window: the core steps where a window completes."""
        window_sum = state.window_sum + u[:, 0].float()
        count = state.window_count + 1
        complete = (count == s).unsqueeze(1)  # (B, 1)
        eigenstates = state.eigenstates
        if eigenstates is None:  # no row has completed a window yet: the zero state is the empty one
            eigenstates = window_sum.new_zeros(u.shape[0], core.num_eigenstates, dtype=torch.complex64)
        output, states = core((window_sum / s).to(u.dtype).unsqueeze(1), eigenstates)
        last_output = torch.where(complete, output[:, 0].to(u.dtype), state.last_output.to(u.dtype))
        new_state = ScaleState(
            eigenstates=torch.where(complete, states[:, -1], eigenstates),
            window_sum=torch.where(complete, 0.0, window_sum),
            window_count=torch.where(complete.squeeze(1), 0, count),
            last_output=last_output,
        )
        return last_output.unsqueeze(1), new_state, u.new_zeros((), dtype=torch.float32)

    def cores(self) -> list[tuple[int, EigenstateCore]]:
        return list(zip(self.scales, self.scale_cores, strict=True))


@contextmanager
def scales_one_by_one(model: nn.Module) -> Iterator[None]:
    """Within: every HTEN layer of ``model`` runs its loop over scales (``fused = False``)."""
    layers = [m for m in model.modules() if isinstance(m, HierarchicalEigenstateLayer)]
    before = [layer.fused for layer in layers]
    try:
        for layer in layers:
            layer.fused = False
        yield
    finally:
        for layer, fused in zip(layers, before, strict=True):
            layer.fused = fused
