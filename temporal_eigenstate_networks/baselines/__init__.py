"""The models TEN is compared with: the transformer baseline, which shares everything with TEN but the sequence
mixer, and the Mamba-2 peer, transformers' own model (the `hf` extra)."""

from .transformer import TransformerLM
from .transformer_config import TransformerConfig

from .mamba2 import Mamba2LM  # isort: skip  (registered after the transformer: the order --model lists them)
from .mamba2_config import Mamba2LMConfig  # isort: skip

__all__ = ["Mamba2LM", "Mamba2LMConfig", "TransformerConfig", "TransformerLM"]
