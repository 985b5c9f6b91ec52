"""Temporal Eigenstate Networks: sequence models with a learned eigenstate recurrence."""

from .baselines import TransformerConfig, TransformerLM
from .config import PRESETS, Preset, TemporalEigenstateConfig
from .lm import LanguageModel, RecurrentState
from .model import TemporalEigenstateNetwork

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "LanguageModel",
    "Preset",
    "RecurrentState",
    "TemporalEigenstateConfig",
    "TemporalEigenstateNetwork",
    "TransformerConfig",
    "TransformerLM",
]
