"""The transformer baseline's config: its sizes, checked when it is made (the model is in transformer.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigDict, check_parameter_count, check_shared_fields, default_attention_heads, is_integer
from ..modules.block import default_mlp_width


@dataclass
class TransformerConfig(ConfigDict):
    vocab_size: int = 256
    d_model: int = 512
    n_layers: int = 4
    num_heads: int | None = None  # None: d_model / 64
    max_seq_len: int = 512  # training window; rotary positions set no hard limit
    dropout: float = 0.0
    mlp_hidden: int | None = None
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.num_heads is None and is_integer(self.d_model):
            self.num_heads = default_attention_heads(self.d_model)
        check_shared_fields(self, ("vocab_size", "d_model", "n_layers", "num_heads", "max_seq_len"))
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        head_size = self.d_model // self.num_heads
        if head_size % 2:  # rotary positions turn pairs of numbers
            raise ValueError(f"the head size d_model / num_heads = {head_size} must be even for rotary positions")
        check_parameter_count(self.parameter_count(), "d_model, n_layers, vocab_size, mlp_hidden")

    def parameter_count(self) -> int:
        """The built model's parameters, from the config alone (tested equal to the model's count)."""
        d, width = self.d_model, self.mlp_width
        mlp = 2 * d + 3 * d * width if width else 0  # norm, SwiGLU
        return self.vocab_size * d + 2 * d + self.n_layers * (2 * d + 4 * d * d + mlp)  # attention: qkv, out

    @property
    def mlp_width(self) -> int:
        return self.mlp_hidden if self.mlp_hidden is not None else default_mlp_width(self.d_model)
