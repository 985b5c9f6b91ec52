"""The checkpoint format, read side: a folder of safetensors and JSON that `ten train` writes
(training/checkpoint.py) and every command reads. Nothing is ever unpickled.

    step-0000500/
        model.safetensors, config.json      the model (LanguageModel.from_pretrained reads these)
        optimizer.safetensors               optimiser tensors (AdamW moments, step counts)
        rng.safetensors                     torch random generator states (CPU, CUDA)
        trainer_state.json                  step, tokens, best loss, arguments, optimiser hyperparameters
        tokenizer_meta.json, ...            the tokenizer, so `ten generate` needs nothing else
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..jsontypes import field_type_problem
from ..lm import CONFIG_FILE, WEIGHTS_FILE, LanguageModel

FORMAT = "ten-checkpoint"
FORMAT_VERSION = 1
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE)


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated or not ours: told in one line."""


@dataclass
class TrainerState:
    step: int = 0  # optimiser steps taken
    tokens_seen: int = 0
    best_val_loss: float | None = None
    elapsed_s: float = 0.0  # wall time of the run so far, over all its sessions (a time budget counts it)
    args: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None  # what the run trains on (data/identity.py); None: saved before ten recorded it
    data_changes: list[dict[str, Any]] = field(default_factory=list)  # --allow_data_change: step, before, after


def read_state(path: Path) -> dict[str, Any]:
    """The JSON state of a checkpoint folder, after checking the folder is a complete checkpoint of ours.

    Its saved training arguments are checked by training's read_trainer_state, which knows their types."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{path} is not a complete ten checkpoint: missing {', '.join(missing)}")
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path / STATE_FILE} is corrupt: {err}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ten checkpoint ({STATE_FILE} has no format {FORMAT!r})")
    if state.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}, this ten reads {FORMAT_VERSION}")
    if problem := _state_type_problem(state):
        raise CheckpointError(f"{path / STATE_FILE} is damaged: {problem}")
    return state


DATA_ARGUMENTS = ("dataset", "tokenizer", "tokenized_dir")


def training_data(path: Path) -> dict[str, Any] | None:
    """What the run of this checkpoint trained on (its --dataset, --tokenizer and --tokenized_dir as saved, and
    "identity": the data's identity as recorded, data/identity.py), or None for a folder without a training state
    (a model saved with save_pretrained, an export)."""
    if not (Path(path) / STATE_FILE).is_file():
        return None
    state = read_state(path)
    return {**{name: state["args"].get(name) for name in DATA_ARGUMENTS}, "identity": state.get("data")}


def _state_type_problem(state: dict[str, Any]) -> str | None:
    """The first value of a trainer_state.json that is missing or of the wrong type (a hand edit), or None."""
    missing = [name for name in ("step", "args", "optimizer") if name not in state]
    if missing:
        return f"no {', '.join(missing)}"
    optimizer = state["optimizer"]
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if not (isinstance(groups, list) and all(isinstance(g, dict) for g in groups)
            and isinstance(optimizer.get("scalars"), dict)):  # fmt: skip
        return "optimizer must be an object of param_groups (a list of objects) and scalars (an object)"
    return field_type_problem(state, TrainerState)


def load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file} is truncated or corrupt: {err}") from None


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    """The names of the parameters holding a NaN or an infinity (what a diverged run leaves)."""
    with torch.no_grad():
        return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


def check_finite_weights(path: Path, model: torch.nn.Module) -> None:
    bad = non_finite_parameters(model)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{path} holds weights that are not finite numbers ({bad[0]}{more}): the run diverged before it was "
            "saved; use an earlier checkpoint"
        )


def load_model(path: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> LanguageModel:
    try:
        model = LanguageModel.from_pretrained(path, device=device)
    except (ValueError, FileNotFoundError) as err:
        raise CheckpointError(f"cannot load the model of {path}: {err}") from None
    check_finite_weights(path, model)  # as saved: a weight past float16's range is not a diverged run
    return model if dtype is None else model.cast(dtype)
