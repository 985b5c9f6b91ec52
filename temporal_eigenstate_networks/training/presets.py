"""What a training run takes from its --config preset besides the model: the batch and the peak learning rate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingPreset:
    batch_size: int  # sequences per micro-batch (the design's section 6)
    learning_rate: float  # peak AdamW rate: ours, not the design's (see docs/RESULTS.md)


# The learning rates are ours: nano's measured on Shakespeare (docs/RESULTS.md), the larger ones from GPT-3's
# table for models of their parameter counts (125M: 6e-4, 350M: 3e-4, 760M: 2.5e-4). The names are those of
# the model presets (config.PRESETS).
TRAINING_PRESETS: dict[str, TrainingPreset] = {
    "nano": TrainingPreset(8, 6e-4),
    "micro": TrainingPreset(16, 6e-4),
    "small": TrainingPreset(16, 6e-4),
    "medium": TrainingPreset(16, 4e-4),
    "large": TrainingPreset(8, 3e-4),
    "xlarge": TrainingPreset(8, 2.5e-4),
}
