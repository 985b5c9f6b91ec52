"""Baselines that share everything with TEN but the sequence mixer."""

from .transformer import TransformerLM
from .transformer_config import TransformerConfig

__all__ = ["TransformerConfig", "TransformerLM"]
