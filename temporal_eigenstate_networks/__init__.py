"""Temporal Eigenstate Networks: sequence models with a learned eigenstate recurrence."""

from importlib.util import find_spec

from .baselines import TransformerConfig, TransformerLM
from .config import PRESETS, Preset, TemporalEigenstateConfig
from .lm import LanguageModel, RecurrentState
from .model import TemporalEigenstateNetwork

__version__ = "0.1.0"

if find_spec("transformers") is not None:  # model_type "ten" for transformers' Auto classes (hf)
    from .hf import register_when_imported

    register_when_imported()

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
