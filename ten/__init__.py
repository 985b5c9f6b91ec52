"""Temporal Eigenstate Networks: sequence models with a learned eigenstate recurrence."""

from .config import PRESETS, Preset, TemporalEigenstateConfig
from .model import RecurrentState, TemporalEigenstateNetwork

__version__ = "0.1.0"

__all__ = ["PRESETS", "Preset", "RecurrentState", "TemporalEigenstateConfig", "TemporalEigenstateNetwork"]
