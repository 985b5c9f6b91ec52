"""The training side of the presets: batch size, tokens per step and peak learning rate (the model side is
config.PRESETS).

The learning rates are ours, not the design's: nano's measured on Shakespeare (docs/RESULTS.md), the larger ones
from GPT-3's table for models of their parameter counts (125M: 6e-4, 350M: 3e-4, 760M: 2.5e-4). The tokens per
step, the target of --batch_size auto: nano's and micro's are their batch x window (where nano's rate was
measured); small to xlarge (83M to 0.8B parameters) take GPT-3's 0.5M tokens, which its rates were tuned with.
"""

from __future__ import annotations

from dataclasses import dataclass

GPT3_TOKENS_PER_STEP = 2**19  # GPT-3's 0.5M-token batch for its 125M to 760M models


@dataclass(frozen=True)
class TrainingPreset:
    batch_size: int  # sequences per micro-batch (the design's section 6)
    learning_rate: float  # peak AdamW rate
    tokens_per_step: int  # per optimiser step, all processes together: the target of --batch_size auto


TRAINING_PRESETS: dict[str, TrainingPreset] = {
    "nano": TrainingPreset(8, 6e-4, 8 * 512),
    "micro": TrainingPreset(16, 6e-4, 16 * 1024),
    "small": TrainingPreset(16, 6e-4, GPT3_TOKENS_PER_STEP),
    "medium": TrainingPreset(16, 4e-4, GPT3_TOKENS_PER_STEP),
    "large": TrainingPreset(8, 3e-4, GPT3_TOKENS_PER_STEP),
    "xlarge": TrainingPreset(8, 2.5e-4, GPT3_TOKENS_PER_STEP),
}
