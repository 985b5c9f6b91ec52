"""Run folders: where a run goes when none is named, which run --resume continues, and the checks
that a new run never writes over an old one."""

from __future__ import annotations

from pathlib import Path

from .arguments import TrainArguments
from .checkpoint import latest_checkpoint


def any_in(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"--output_dir {folder} cannot be written: {err.strerror or err}") from None


def find_resume_checkpoint(target: Path) -> Path:
    """A checkpoint folder as given, or the latest checkpoint of a run folder."""
    target = target.expanduser()
    if (target / "trainer_state.json").is_file() or (target.is_dir() and not (target / "checkpoints").is_dir()):
        return target
    found = latest_checkpoint(target / "checkpoints")
    if found is None:
        raise ValueError(f"--resume: no checkpoint in {target / 'checkpoints'}")
    return found


def default_run_dir(args: TrainArguments) -> Path:
    """runs/<preset>[-hten]: where a run goes when --output_dir is not given."""
    return Path("runs") / (args.config + ("-hten" if args.use_hten else ""))


def numbered_run_dirs(base: Path) -> list[Path]:
    """base, base-2, base-3, ... as they exist, in order."""
    numbered = [p for p in base.parent.glob(f"{base.name}-*") if p.name[len(base.name) + 1 :].isdigit()]
    return [base, *sorted(numbered, key=lambda p: int(p.name[len(base.name) + 1 :]))]


def holds_run(folder: Path) -> bool:
    return (folder / "metrics.jsonl").is_file() or any_in(folder / "checkpoints")


def next_free_run_dir(base: Path) -> Path:
    """base if it holds no run, else the first free base-N: a new run never lands on an old one."""
    if not holds_run(base):
        return base
    number = 2
    while holds_run(base.parent / f"{base.name}-{number}"):
        number += 1
    return base.parent / f"{base.name}-{number}"


def latest_run_dir(base: Path) -> Path:
    runs = [p for p in numbered_run_dirs(base) if any_in(p / "checkpoints")]
    if not runs:
        raise ValueError(f"--resume: no run in {base} (or {base}-N) to continue; name one with --resume PATH")
    return max(runs, key=lambda p: (p / "checkpoints").stat().st_mtime)
