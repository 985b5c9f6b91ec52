"""The transformer baseline: TEN's embedding, blocks, MLP, head, loss and generation, with causal
attention as the mixer. Generation goes through a KV cache, the standard way to sample from one."""

from __future__ import annotations

from ..modules.attention import CausalSelfAttention
from ..modules.block import SequenceMixer
from ..stack import MixerStack
from .transformer_config import TransformerConfig


class TransformerLM(MixerStack):
    """Rotary positions live inside attention, so the model is TEN's except for the mixer, and no
    position table caps the context at max_seq_len."""

    architecture = "transformer"
    config_class = TransformerConfig
    config: TransformerConfig

    def make_mixer(self, config: TransformerConfig, layer: int, residual_gain: float) -> SequenceMixer:
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
