"""Pre-norm residual block: x = x + mixer(LN(x)); x = x + MLP(LN(x))."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .eigenstate import EigenstateLayer
from .hierarchical import HierarchicalEigenstateLayer


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int, residual_gain: float = 1.0) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, 2 * hidden, bias=False)  # value and gate in one matmul
        self.down = nn.Linear(hidden, d_model, bias=False)
        self.residual_gain = residual_gain
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.up.weight, std=0.02)
        nn.init.normal_(self.down.weight, std=0.02 * self.residual_gain)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.up(x).chunk(2, dim=-1)
        return self.down(value * F.silu(gate))


class Block(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        # GPT-2's scaling of the layers that write into the residual stream: 1 / sqrt(2 n_layers).
        gain = 1 / math.sqrt(2 * config.n_layers)
        mixer = HierarchicalEigenstateLayer if config.use_hten else EigenstateLayer
        self.mixer_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mixer = mixer(config, residual_gain=gain)
        self.mlp_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.mlp_width, residual_gain=gain)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, state=None):
        """Returns the new residual stream, the mixer's state and its mean energy."""
        mixed, state, energy = self.mixer(self.mixer_norm(x), state)
        x = x + self.dropout(mixed)
        x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x, state, energy
