"""Baselines that share everything with TEN but the sequence mixer."""

from .transformer import TransformerConfig, TransformerLM

__all__ = ["TransformerConfig", "TransformerLM"]
