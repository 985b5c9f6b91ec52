"""Finding a run's checkpoints (the one lookup policy of --resume and of every command that loads one), pruning
the old ones, and what a resume at an earlier step sets aside."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..atomic import recover_interrupted_swaps, set_aside_folders
from ..lm import CONFIG_FILE
from .checkpoint import CheckpointError, read_state
from .folders import ABANDONED, CHECKPOINTS, claim_run_dir
from .metrics_log import forget_records_after

BEST, FINAL = "best", "final"


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


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
                saved_at = read_state(path).get("step", step + 1)
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
    found, damaged = _read_candidates(Path(folder))
    if found:
        return max(found)[1]
    if damaged:
        raise damaged[-1][1]
    return None


def _read_candidates(folder: Path) -> tuple[list[tuple[int, Path]], list[tuple[Path, CheckpointError]]]:
    """(step, path) of each readable candidate of latest_checkpoint, and (path, why) of each damaged one."""
    candidates = [p for p in [*step_checkpoints(folder), folder / FINAL] if p.is_dir()] or [folder / BEST]
    found, damaged = [], []
    for path in candidates:
        if path.is_dir():
            try:
                found.append((read_state(path).get("step", -1), path))
            except CheckpointError as err:
                damaged.append((path, err))
    return found, damaged


def passed_over(checkpoint: Path) -> list[str]:
    """Why each damaged checkpoint beside `checkpoint` (in a run's checkpoints/) was passed over for it: a resume
    that falls back to an older step says so, and why."""
    if checkpoint.parent.name != CHECKPOINTS:
        return []
    _, damaged = _read_candidates(checkpoint.parent)
    step = read_state(checkpoint).get("step", -1)
    later = [(path, err) for path, err in damaged if path.name == FINAL or (step_of_name(path) or -1) > step]
    return [f"passed over {path.name}, which is damaged ({err}); resuming from {checkpoint.name}"
            for path, err in later]  # fmt: skip


def find_checkpoint(target: Path) -> Path:
    """The one lookup policy of `--resume PATH` and `ten generate --checkpoint PATH`: a checkpoint folder as
    given, or the latest checkpoint of a run folder (or of its checkpoints/ folder)."""
    target = Path(target).expanduser()
    if not target.exists():
        raise CheckpointError(f"{target} does not exist")
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


def recover_interrupted_saves(folder: Path) -> str | None:
    """Put back or remove what saves killed half-way left in a run's checkpoints/ folder; say what was done."""
    folder = Path(folder)
    if folder.name != CHECKPOINTS or not folder.is_dir():
        return None  # only a run's checkpoints/ folder holds saves of ours
    return recover_interrupted_swaps(folder)


def set_aside_abandoned_work(run_dir: Path, step: int) -> str | None:
    """A run resumed from an older checkpoint starts a new branch: the checkpoints saved after `step`, and their
    records, move to <run>/abandoned-after-step-N, so pruning and a later --resume see only the new branch.

    Returns what was moved, for the run's log (None when nothing was)."""
    later = later_checkpoints(run_dir / CHECKPOINTS, step)
    aside = claim_run_dir(run_dir / f"{ABANDONED}{checkpoint_name(step)}") if later else None
    for path in later:
        path.rename(aside / CHECKPOINTS / path.name)
    forget_records_after(run_dir, step, keep_in=aside)
    if aside is None:
        return None
    return (f"resuming at step {step:,}: the later checkpoints of this run "
            f"({', '.join(p.name for p in later)}) are moved to {aside}")  # fmt: skip
