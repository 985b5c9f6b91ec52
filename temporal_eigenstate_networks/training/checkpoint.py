"""Training checkpoints: a folder of safetensors and JSON, written whole or not at all.

    step-000500/
        model.safetensors, config.json      the model (LanguageModel.from_pretrained reads these)
        optimizer.safetensors               optimiser tensors (AdamW moments, step counts)
        rng.safetensors                     torch random generator states (CPU, CUDA)
        trainer_state.json                  step, tokens, best loss, arguments, optimiser hyperparameters
        tokenizer_meta.json, ...            the tokenizer, so `ten generate` needs nothing else

A checkpoint is written whole or not at all (atomic_folder), so a crash or a full disk leaves either the
previous checkpoint or the new one; the next --resume puts back or removes what a killed save left behind.
A checkpoint is only written from weights that give a finite loss. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import WriteError, atomic_folder, recover_interrupted_swaps, set_aside_folders, write_failure
from ..data import save_tokenizer
from ..jsontypes import field_type_problem
from ..lm import CONFIG_FILE, WEIGHTS_FILE, LanguageModel
from .arguments import TrainArguments
from .run_dirs import CHECKPOINTS

FORMAT = "ten-checkpoint"
FORMAT_VERSION = 1
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE)
BEST, FINAL = "best", "final"


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
    """Write the checkpoint folder `path` atomically (replacing an older one of that name).

    A failed write leaves no trace of the new checkpoint and raises WriteError.
    """
    path = Path(path)
    try:
        with atomic_folder(path) as folder:
            _write_files(folder, model, optimizer, trainer_state, tokenizer)
    except (OSError, SafetensorError) as err:
        raise WriteError(f"cannot write checkpoint {path.name} in {path.parent}: {write_failure(err)}") from err
    return path


def _write_files(
    folder: Path, model: LanguageModel, optimizer: torch.optim.Optimizer, trainer_state: TrainerState, tokenizer: Any
) -> None:
    model.save_pretrained(folder)
    tensors, optimizer_meta = _split_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(folder / OPTIMIZER_FILE))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(folder / RNG_FILE))
    save_tokenizer(tokenizer, folder)
    state = {"format": FORMAT, "version": FORMAT_VERSION, **trainer_state.__dict__, "optimizer": optimizer_meta}
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")  # written last: marks it complete


def recover_interrupted_saves(folder: Path) -> str | None:
    """Put back or remove what saves killed half-way left in a run's checkpoints/ folder; say what was done."""
    folder = Path(folder)
    if folder.name != CHECKPOINTS or not folder.is_dir():
        return None  # only a run's checkpoints/ folder holds saves of ours
    return recover_interrupted_swaps(folder)


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
    if problem := _state_type_problem(state):
        raise CheckpointError(f"{path / STATE_FILE} is damaged: {problem}")
    return state


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
    problem = field_type_problem(state, TrainerState)
    return problem or field_type_problem(state["args"], TrainArguments, prefix="args.")


def _json_kind(value: Any) -> Any:
    """bool, number, str, None, an object, or a list of the kinds of its items."""
    if isinstance(value, (list, tuple)):
        return [_json_kind(item) for item in value]
    if isinstance(value, bool) or value is None:
        return type(value)
    return "number" if isinstance(value, (int, float)) else type(value)


def _group_type_problem(saved: list[dict[str, Any]], groups: list[dict[str, Any]]) -> str | None:
    """The first hyperparameter of the saved optimiser groups whose JSON type is not the one this optimiser
    keeps there (a string for a number would fail inside its step): None when all fit."""
    for index, (old, new) in enumerate(zip(saved, groups, strict=False)):  # a count that differs: see below
        for name, value in new.items():
            if name != "params" and value is not None and _json_kind(old.get(name)) != _json_kind(value):
                return f"optimizer.param_groups[{index}].{name} is {old.get(name)!r}, not of the type of {value!r}"
    return None


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
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


def load_model(path: Path, device: torch.device | str = "cpu") -> LanguageModel:
    try:
        model = LanguageModel.from_pretrained(path, device=device)
    except (ValueError, FileNotFoundError) as err:
        raise CheckpointError(f"cannot load the model of {path}: {err}") from None
    check_finite_weights(path, model)
    return model


def load_checkpoint(
    path: Path, model: LanguageModel, optimizer: torch.optim.Optimizer, state: dict[str, Any] | None = None
) -> TrainerState:
    """Restore weights, optimiser and random generators in place; return the trainer state.

    `state`: the checkpoint's trainer_state.json when the caller has already read it.
    """
    path = Path(path)
    state = read_trainer_state(path) if state is None else state
    weights = _load_tensors(path / WEIGHTS_FILE)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        reason = first[1] if len(first) > 1 else first[0]
        raise CheckpointError(f"{path}: the weights do not fit this model: {reason.strip()}") from None
    if problem := _group_type_problem(state["optimizer"]["param_groups"], optimizer.param_groups):
        raise CheckpointError(f"{path / STATE_FILE} is damaged: {problem}")
    check_finite_weights(path, model)
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


# ---------------------------------------------------------------- finding and pruning


def step_of_name(path: Path) -> int | None:
    """N of a step-N checkpoint folder; None for any other name."""
    number = path.name.removeprefix("step-")
    return int(number) if path.name.startswith("step-") and number.isdigit() else None


def step_checkpoints(folder: Path) -> list[Path]:
    """The step-N checkpoints of a run, oldest first."""
    return sorted((p for p in Path(folder).glob("step-*") if step_of_name(p) is not None), key=step_of_name)


def later_checkpoints(folder: Path, step: int) -> list[Path]:
    """The checkpoints of `folder` past `step`: step-N with N > step, and a final or best saved after it
    (or unreadable). A run resumed at `step` abandons them."""
    later = [p for p in step_checkpoints(folder) if step_of_name(p) > step]
    for path in (Path(folder) / FINAL, Path(folder) / BEST):
        if path.is_dir():
            try:
                saved_at = read_trainer_state(path).get("step", step + 1)
            except CheckpointError:
                saved_at = step + 1
            if saved_at > step:
                later.append(path)
    return later


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of `folder` (a run's checkpoints/) with the most steps among step-N and final; best
    only when there is neither (best is an earlier or equal step of the same run).

    A damaged checkpoint is passed over when a readable one exists; when none does, its error is raised.
    """
    folder = Path(folder)
    candidates = [p for p in [*step_checkpoints(folder), folder / FINAL] if p.is_dir()] or [folder / BEST]
    found, errors = [], []
    for path in candidates:
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


def find_checkpoint(target: Path) -> Path:
    """The one lookup policy of `--resume PATH` and `ten generate --checkpoint PATH`: a checkpoint folder as
    given, or the latest checkpoint of a run folder (or of its checkpoints/ folder)."""
    target = Path(target).expanduser()
    if (target / CONFIG_FILE).is_file():
        return target
    folder = target / CHECKPOINTS if (target / CHECKPOINTS).is_dir() else target
    set_aside = set_aside_folders(folder)
    if set_aside:  # the latest would be an older one: say so rather than pick it silently
        raise CheckpointError(f"{folder}: a save of {set_aside[0]} was interrupted and left it set aside; "
                              f"ten train --resume {target} puts it back")  # fmt: skip
    found = latest_checkpoint(folder) if folder.is_dir() else None
    if found is None:
        raise CheckpointError(f"no checkpoint in {target}")
    return found


def prune_step_checkpoints(folder: Path, keep: int) -> None:
    for old in step_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"
