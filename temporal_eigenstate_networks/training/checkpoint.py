"""Saving and restoring a run's training state: the model, optimiser, random generators and trainer state, in the
checkpoint format of runs/checkpoint.py, written whole or not at all (atomic_folder), so a crash or a full disk
leaves either the previous checkpoint or the new one; the next --resume puts back or removes what a killed save
left behind. A checkpoint is only written from weights that give a finite loss.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from ..atomic import WriteError, atomic_folder, write_failure
from ..data import save_tokenizer
from ..jsontypes import field_type_problem
from ..lm import WEIGHTS_FILE, LanguageModel, with_tied_names
from ..runs.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    OPTIMIZER_FILE,
    RNG_FILE,
    STATE_FILE,
    CheckpointError,
    TrainerState,
    check_finite_weights,
    load_tensors,
    read_state,
)
from .arguments import TrainArguments

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


# ---------------------------------------------------------------- reading


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The JSON state of a checkpoint folder (read_state), its saved training arguments checked too."""
    state = read_state(path)
    if problem := field_type_problem(state["args"], TrainArguments, prefix="args."):
        raise CheckpointError(f"{Path(path) / STATE_FILE} is damaged: {problem}")
    return state


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


def load_checkpoint(
    path: Path, model: LanguageModel, optimizer: torch.optim.Optimizer, state: dict[str, Any] | None = None
) -> TrainerState:
    """Restore weights, optimiser and random generators in place; return the trainer state.

    `state`: the checkpoint's trainer_state.json when the caller has already read it.
    """
    path = Path(path)
    state = read_trainer_state(path) if state is None else state
    weights = with_tied_names(load_tensors(path / WEIGHTS_FILE), model)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        reason = first[1] if len(first) > 1 else first[0]
        raise CheckpointError(f"{path}: the weights do not fit this model: {reason.strip()}") from None
    if problem := _group_type_problem(state["optimizer"]["param_groups"], optimizer.param_groups):
        raise CheckpointError(f"{path / STATE_FILE} is damaged: {problem}")
    check_finite_weights(path, model)
    optimizer_state = _join_optimizer_state(load_tensors(path / OPTIMIZER_FILE), state["optimizer"])
    try:
        optimizer.load_state_dict(optimizer_state)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: the optimiser state does not fit this model: {err}") from None
    rng = load_tensors(path / RNG_FILE)
    torch.set_rng_state(rng["cpu"])
    cuda_states = [rng[f"cuda{i}"] for i in range(len(rng)) if f"cuda{i}" in rng]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    fields = TrainerState.__dataclass_fields__
    return TrainerState(**{k: v for k, v in state.items() if k in fields})
