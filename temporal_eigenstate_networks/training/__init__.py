"""Training: the run plan (plan.py), the loop (trainer.py), saving and restoring its state (checkpoint.py),
schedule, time budget, precision and data parallelism. Run folders and finding checkpoints: runs/."""

from .arguments import TrainArguments
from .plan import RunPlan, resolve_run
from .trainer import RunResult, Trainer, TrainingDiverged

__all__ = ["RunPlan", "RunResult", "TrainArguments", "Trainer", "TrainingDiverged", "resolve_run"]
