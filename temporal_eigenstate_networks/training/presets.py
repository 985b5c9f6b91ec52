"""The training side of the presets: batch size and peak learning rate (the model side is config.PRESETS).

The learning rates are ours, not the design's: nano's measured on Shakespeare (docs/RESULTS.md), the larger ones
from GPT-3's table for models of their parameter counts (125M: 6e-4, 350M: 3e-4, 760M: 2.5e-4).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingPreset:
    batch_size: int  # sequences per micro-batch (the design's section 6)
    learning_rate: float  # peak AdamW rate


TRAINING_PRESETS: dict[str, TrainingPreset] = {
    "nano": TrainingPreset(8, 6e-4),
    "micro": TrainingPreset(16, 6e-4),
    "small": TrainingPreset(16, 6e-4),
    "medium": TrainingPreset(16, 4e-4),
    "large": TrainingPreset(8, 3e-4),
    "xlarge": TrainingPreset(8, 2.5e-4),
}
