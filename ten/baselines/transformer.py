"""The transformer baseline: TEN's embedding, blocks, MLP, head, loss and generation, with causal
attention as the mixer. Generation goes through a KV cache, the standard way to sample from one."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigDict
from ..lm import LanguageModel
from ..modules.attention import CausalSelfAttention
from ..modules.block import SequenceMixer, default_mlp_width

HEAD_DIM = 64


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
        if self.num_heads is None:
            self.num_heads = max(1, self.d_model // HEAD_DIM)
        for name in ("vocab_size", "d_model", "n_layers", "num_heads", "max_seq_len"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def mlp_width(self) -> int:
        return self.mlp_hidden if self.mlp_hidden is not None else default_mlp_width(self.d_model)


class TransformerLM(LanguageModel):
    """Rotary positions live inside attention, so the model is TEN's except for the mixer, and no
    position table caps the context at max_seq_len."""

    architecture = "transformer"
    config_class = TransformerConfig
    config: TransformerConfig

    def make_mixer(self, config: TransformerConfig, residual_gain: float) -> SequenceMixer:
        return CausalSelfAttention(config.d_model, config.num_heads, config.dropout, residual_gain)

    def summary(self) -> str:
        cfg, total = self.config, self.num_parameters()
        return "\n".join([
            f"TransformerLM (baseline): {total:,} parameters ({total / 1e6:.2f} M)",
            f"  d_model={cfg.d_model}  n_layers={cfg.n_layers}  num_heads={cfg.num_heads}  "
            f"max_seq_len={cfg.max_seq_len}  vocab_size={cfg.vocab_size}",
            "  mixer: causal softmax attention (scaled_dot_product_attention) with rotary positions",
            f"  KV cache per sequence: {self.state_bytes(1) / 1024:,.1f} KiB per token of context",
        ])  # fmt: skip
