"""Training: the run plan (plan.py), the loop (trainer.py), checkpoints, run folders, schedule, time
budget, precision and data parallelism."""

from .arguments import TrainArguments
from .checkpoint import CheckpointError, find_checkpoint, latest_checkpoint, load_model
from .plan import RunPlan, resolve_run
from .trainer import RunResult, Trainer, TrainingDiverged

__all__ = ["CheckpointError", "RunPlan", "RunResult", "TrainArguments", "Trainer", "TrainingDiverged",
           "find_checkpoint", "latest_checkpoint", "load_model", "resolve_run"]  # fmt: skip
