"""Training: the loop (trainer.py), its arguments, checkpoints, schedule, precision and data parallelism."""

from .arguments import TrainArguments
from .checkpoint import CheckpointError, latest_checkpoint, load_model
from .trainer import RunResult, Trainer, TrainingDiverged

__all__ = ["CheckpointError", "RunResult", "TrainArguments", "Trainer", "TrainingDiverged", "latest_checkpoint",
           "load_model"]  # fmt: skip
