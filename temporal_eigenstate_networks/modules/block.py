"""The sequence-mixer contract and the pre-norm residual block: x = x + mixer(LN(x)); x = x + MLP(LN(x))."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def no_weight_decay(*params: nn.Parameter) -> None:
    """Tag parameters the optimizer must not decay, where they are created (as mamba_ssm does)."""
    for param in params:
        param._no_weight_decay = True


def is_no_weight_decay(param: nn.Parameter) -> bool:
    return getattr(param, "_no_weight_decay", False)


class MixerOutput(NamedTuple):
    """What a sequence mixer returns for the positions it was given."""

    y: Tensor  # (B, T, d)
    state: Any  # what the next call continues from
    aux_loss: Tensor | None  # a scalar the model may weight into its loss; None: the mixer has none


class SequenceMixer(nn.Module, ABC):
    """What a Block needs of its mixer: u (B, T, d) and the previous state -> MixerOutput."""

    @abstractmethod
    def forward(self, u: Tensor, state: Any = None) -> MixerOutput: ...

    @abstractmethod
    def state_bytes(self, context_length: int) -> int:
        """Bytes of state one sequence carries after ``context_length`` tokens, in this layer."""

    @abstractmethod
    def state_mismatch(self, state: Any, batch: int) -> str | None:
        """Why ``state`` is not one this layer carries for ``batch`` rows, or None if it is. Shapes and types
        only: no wait for the device."""

    def cores(self) -> list[tuple[int, Any]]:
        """(scale, eigenstate core) of each recurrence this mixer runs, for the analyses: none for attention."""
        return []

    def decoding_state(self, state: Any) -> Any:
        """``state`` in the form a compiled one-token step takes: the same types at every step, so that one
        graph serves them all (the default: the state as it is)."""
        return state


def describe(value: Any) -> str:
    """A state's kind and shape, for error messages."""
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "None" if value is None else f"a {type(value).__name__}"


def tensor_mismatch(value: Any, shape: tuple[int, ...], what: str) -> str | None:
    """None if ``value`` is a tensor of ``shape``, else the message that it should be."""
    if torch.is_tensor(value) and tuple(value.shape) == shape:
        return None
    return f"{what} must be a tensor of shape {shape}, got {describe(value)}"


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


def default_mlp_width(d_model: int) -> int:
    """SwiGLU hidden width: 8/3 d (the parameters of a 4d GELU MLP), rounded up to a multiple of 64."""
    return 64 * math.ceil(8 * d_model / 3 / 64)


class Block(nn.Module):
    """x = x + mixer(LN(x)); x = x + MLP(LN(x)).

    ``gradient_checkpointing``: recompute the block in the backward pass instead of keeping its activations (in
    training, with gradients on). MixerStack.gradient_checkpointing switches every block's; transformers' activation
    checkpointing switches them in hf/modeling.py's subclass, which checkpoints `mix` its own way.
    """

    gradient_checkpointing = False

    def __init__(self, config, mixer: SequenceMixer, residual_gain: float) -> None:
        super().__init__()
        self.mixer_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mixer = mixer
        self.mlp_norm = self.mlp = None
        if config.mlp_width:  # 0: mixers only, as the 2-layer models of the recall papers
            self.mlp_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
            self.mlp = SwiGLU(config.d_model, config.mlp_width, residual_gain=residual_gain)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any, Tensor | None]:
        """`mix`, recomputed in the backward pass where gradient_checkpointing is on."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self.mix, x, state, use_reentrant=False)
        return self.mix(x, state)

    def mix(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any, Tensor | None]:
        """Returns the new residual stream, the mixer's state and its aux loss (None if it has none)."""
        mixed, state, aux_loss = self.mixer(self.mixer_norm(x), state)
        x = x + self.dropout(mixed)
        if self.mlp is not None:
            x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x, state, aux_loss
