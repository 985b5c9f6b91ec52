"""The Mamba-2 peer's config, and the rule that sizes it like the TEN it is compared with (the model is in
mamba2.py). Importable without transformers: plans and checkpoints read it before anything is built."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from math import gcd
from typing import Any

from ..config import ConfigDict, check_parameter_count, is_finite_number, is_integer
from ..distribution import install_hint

# Mamba-2's own choices (mamba_ssm's Mamba2 defaults), kept where the rule lets them be.
DEFAULT_STATE_SIZE = 128
MAX_HEAD_DIM = 64
CONV_KERNEL = 4
N_GROUPS = 1  # B and C shared by all heads
EXPANDS = range(1, 9)
STATE_SIZES = (16, 32, 64, 128, 256)
TOLERANCE = 0.10
SIZING_RULE = (
    "same d_model, layers and vocabulary as TEN; expand (1-8) the closest to TEN's parameter count with Mamba-2's "
    "state size 128, else the (expand, state size 16-256) pair closest to it; head size 64 (or what divides "
    "expand * d_model); one group"
)


@dataclass
class Mamba2LMConfig(ConfigDict):
    vocab_size: int = 256
    d_model: int = 512
    n_layers: int = 4
    max_seq_len: int = 512  # the training window; the recurrence sets no limit
    expand: int = 2  # the mixer's inner width is expand * d_model
    state_size: int = DEFAULT_STATE_SIZE  # N: the state of each head is head_dim x N
    head_dim: int | None = None  # None: 64, or the largest power-of-two divisor of expand * d_model below it
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "max_seq_len", "expand", "state_size"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.head_dim is None:
            self.head_dim = gcd(self.inner_width, MAX_HEAD_DIM)
        if not is_integer(self.head_dim) or self.head_dim < 1 or self.inner_width % self.head_dim:
            raise ValueError(f"head_dim must divide expand * d_model ({self.inner_width}), got {self.head_dim!r}")
        if not (is_finite_number(self.norm_eps) and self.norm_eps > 0):
            raise ValueError(f"norm_eps must be a finite number > 0, got {self.norm_eps!r}")
        check_parameter_count(self.parameter_count(), "d_model, n_layers, vocab_size, expand, state_size")

    @property
    def inner_width(self) -> int:
        return self.expand * self.d_model

    @property
    def num_heads(self) -> int:
        return self.inner_width // self.head_dim

    def parameter_count(self) -> int:
        """The built model's parameters, from the config alone (tested equal to the model's count)."""
        d, inner, heads = self.d_model, self.inner_width, self.num_heads
        conv_width = inner + 2 * N_GROUPS * self.state_size  # x, B and C go through the convolution
        in_proj = d * (inner + conv_width + heads)  # z (the gate), x, B, C and dt
        mixer = in_proj + conv_width * (CONV_KERNEL + 1) + 3 * heads + inner + inner * d  # + dt_bias, A, D, norm, out
        return self.vocab_size * d + d + self.n_layers * (d + mixer)  # tied head; final norm; each block's norm

    def state_bytes(self) -> int:
        """Bytes of state one sequence carries at any context: each layer's convolution window and SSM state."""
        conv = (self.inner_width + 2 * N_GROUPS * self.state_size) * CONV_KERNEL
        return 4 * self.n_layers * (conv + self.inner_width * self.state_size)

    def transformers_config(self) -> Any:
        """transformers' Mamba2Config of this model: its defaults but for the sizes, and the head tied to the
        embedding, as TEN's."""
        from transformers import Mamba2Config

        return Mamba2Config(
            vocab_size=self.vocab_size, hidden_size=self.d_model, num_hidden_layers=self.n_layers,
            expand=self.expand, state_size=self.state_size, head_dim=self.head_dim, num_heads=self.num_heads,
            n_groups=N_GROUPS, conv_kernel=CONV_KERNEL, layer_norm_epsilon=self.norm_eps, tie_word_embeddings=True,
            pad_token_id=None, bos_token_id=None, eos_token_id=None, chunk_size=chunk_size(),
        )  # fmt: skip


def chunk_size() -> int:
    """The SSD algorithm's chunk: Mamba-2's 256 for mamba_ssm's kernels; 64 for transformers' PyTorch path, which
    pads every sequence to a whole chunk and is faster with smaller ones on a CPU (the result is the same)."""
    return 256 if find_spec("mamba_ssm") is not None else 64


def matched_sizes(target_parameters: int, vocab_size: int, d_model: int, n_layers: int) -> dict[str, int]:
    """expand and state_size by SIZING_RULE: a Mamba-2 of about ``target_parameters`` parameters."""

    def gap(expand: int, state_size: int) -> float:
        config = Mamba2LMConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, expand=expand,
                              state_size=state_size)  # fmt: skip
        return abs(config.parameter_count() / target_parameters - 1)

    expand = min(EXPANDS, key=lambda e: gap(e, DEFAULT_STATE_SIZE))
    if gap(expand, DEFAULT_STATE_SIZE) <= TOLERANCE:
        return {"expand": expand, "state_size": DEFAULT_STATE_SIZE}
    expand, state_size = min(((e, n) for e in EXPANDS for n in STATE_SIZES), key=lambda pair: gap(*pair))
    return {"expand": expand, "state_size": state_size}


def require_transformers_mamba2() -> None:
    """ValueError, one line, where transformers or its Mamba-2 is missing."""
    if find_spec("transformers") is None:
        raise ValueError(f"--model mamba2 is transformers' Mamba2ForCausalLM: {install_hint('hf')}")
    import transformers

    if not hasattr(transformers, "Mamba2ForCausalLM"):
        raise ValueError(f"transformers {transformers.__version__} has no Mamba2ForCausalLM: {install_hint('hf')}")
