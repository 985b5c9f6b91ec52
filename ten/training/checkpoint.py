"""Training checkpoints: a folder of safetensors and JSON, written whole or not at all.

    step-000500/
        model.safetensors, config.json      the model (LanguageModel.from_pretrained reads these)
        optimizer.safetensors               optimiser tensors (AdamW moments, step counts)
        rng.safetensors                     torch random generator states (CPU, CUDA)
        trainer_state.json                  step, tokens, best loss, arguments, optimiser hyperparameters
        tokenizer_meta.json, ...            the tokenizer, so `ten generate` needs nothing else

A checkpoint is written into a hidden temporary folder and renamed into place, so a crash leaves
either the previous checkpoint or the new one. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data import load_tokenizer, save_tokenizer
from ..lm import LanguageModel

FORMAT = "ten-checkpoint"
FORMAT_VERSION = 1
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
REQUIRED_FILES = ("config.json", "model.safetensors", OPTIMIZER_FILE, RNG_FILE, STATE_FILE)


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated or not ours: told in one line."""


@dataclass
class TrainerState:
    step: int = 0  # optimiser steps taken
    total_steps: int | None = None  # the schedule's length, once fitted to a time budget
    tokens_seen: int = 0
    best_val_loss: float | None = None
    elapsed_s: float = 0.0
    args: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- optimiser state <-> tensors + JSON


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------- writing


def save_checkpoint(
    path: Path,
    model: LanguageModel,
    optimizer: torch.optim.Optimizer,
    trainer_state: TrainerState,
    tokenizer: Any,
) -> Path:
    """Write the checkpoint folder `path` atomically (replacing an older one of that name)."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        tensors, optimizer_meta = _split_optimizer_state(optimizer.state_dict())
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / RNG_FILE))
        save_tokenizer(tokenizer, tmp)
        state = {"format": FORMAT, "version": FORMAT_VERSION, **trainer_state.__dict__, "optimizer": optimizer_meta}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")  # written last: marks it complete
        _fsync_folder(tmp)
        old = path.parent / f".old-{path.name}-{os.getpid()}"
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _fsync_folder(folder: Path) -> None:
    for file in folder.iterdir():
        with file.open("rb") as handle:
            os.fsync(handle.fileno())


# ---------------------------------------------------------------- reading


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The JSON state of a checkpoint folder, after checking the folder is a complete checkpoint of ours."""
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
    return state


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file} is truncated or corrupt: {err}") from None


def load_model(path: Path, device: torch.device | str = "cpu") -> LanguageModel:
    try:
        return LanguageModel.from_pretrained(path, device=device)
    except (ValueError, FileNotFoundError) as err:
        raise CheckpointError(f"cannot load the model of {path}: {err}") from None


def load_checkpoint(path: Path, model: LanguageModel, optimizer: torch.optim.Optimizer) -> TrainerState:
    """Restore weights, optimiser and random generators in place; return the trainer state."""
    path = Path(path)
    state = read_trainer_state(path)
    weights = _load_tensors(path / "model.safetensors")
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        reason = first[1] if len(first) > 1 else first[0]
        raise CheckpointError(f"{path}: the weights do not fit this model: {reason.strip()}") from None
    optimizer_state = _join_optimizer_state(_load_tensors(path / OPTIMIZER_FILE), state["optimizer"])
    try:
        optimizer.load_state_dict(optimizer_state)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: the optimiser state does not fit this model: {err}") from None
    rng = _load_tensors(path / RNG_FILE)
    torch.set_rng_state(rng["cpu"])
    cuda_states = [rng[f"cuda{i}"] for i in range(len(rng)) if f"cuda{i}" in rng]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    fields = TrainerState.__dataclass_fields__
    return TrainerState(**{k: v for k, v in state.items() if k in fields})


def load_checkpoint_tokenizer(path: Path) -> Any:
    return load_tokenizer(Path(path))


# ---------------------------------------------------------------- finding and pruning


def step_checkpoints(folder: Path) -> list[Path]:
    """The step-N checkpoints of a run, oldest first."""
    return sorted(Path(folder).glob("step-*"), key=lambda p: p.name)


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the most steps among step-N and final (the one to resume).

    A damaged checkpoint is passed over when a readable one exists; when none does, its error is raised.
    """
    found, errors = [], []
    for path in [*step_checkpoints(folder), Path(folder) / "final"]:
        if path.is_dir():
            try:
                found.append((read_trainer_state(path).get("step", -1), path))
            except CheckpointError as err:
                errors.append(err)
    if found:
        return max(found)[1]
    if errors:
        raise errors[-1]
    return None


def prune_step_checkpoints(folder: Path, keep: int) -> None:
    for old in step_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"
