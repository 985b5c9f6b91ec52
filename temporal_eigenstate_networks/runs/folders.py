"""Run folders: where a run goes when none is named, which run --resume continues, and the checks
that a run never writes over another.

A run folder holds `metrics.jsonl` and `checkpoints/`. A default folder, `runs/<name>`, is claimed
with an atomic mkdir, so two runs started at the same moment take `runs/<name>` and `runs/<name>-2`.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic import overlap, refuse_overlap
from .metrics_log import METRICS
from .trackers import OUTPUTS as TRACKER_OUTPUTS

CHECKPOINTS = "checkpoints"


def any_in(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def holds_run(folder: Path) -> bool:
    return (folder / METRICS).is_file() or any_in(folder / CHECKPOINTS)


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint folder belongs to (<run>/checkpoints/<name>), or None."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else None


def check_writable(folder: Path, flag: str = "--output_dir") -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{flag} {folder} cannot be written: {err.strerror or err}") from None


ABANDONED = "abandoned-after-"  # + the step: the later checkpoints of a run resumed from an older one


def claim_output_dir(folder: Path, overwrite: bool, reading: Iterable[Path] = ()) -> None:
    """An explicit --output_dir: refused when it holds a run (its checkpoints would be lost) unless --overwrite."""
    # A tracker's files too: a new run in the folder must not continue the old one's W&B run or TensorBoard steps.
    kept = (CHECKPOINTS, METRICS, *TRACKER_OUTPUTS)
    earlier = [p for p in (folder / name for name in kept) if p.is_file() or any_in(p)]
    earlier += sorted(folder.glob(f"{ABANDONED}*")) if folder.is_dir() else []  # checkpoints a resume set aside
    clear_earlier(folder, earlier, overwrite, reading=reading)
    check_writable(folder / CHECKPOINTS)


def clear_earlier(
    folder: Path, earlier: list[Path], overwrite: bool, what: str = "run", reading: Iterable[Path] = ()
) -> None:
    """Refuse a folder whose `earlier` files (a run's, a comparison's) would be lost; --overwrite deletes them,
    never one that is, holds or lies inside what the command reads (`reading`: its data, a checkpoint)."""
    for path in earlier:
        for read in reading:
            if relation := overlap(path, read):
                raise ValueError(f"--output_dir {folder}: --overwrite would delete {path}, which {relation} {read}, "
                                 "what this command reads; choose another --output_dir")  # fmt: skip
    if earlier and not overwrite:
        raise ValueError(
            f"--output_dir {folder} holds an earlier {what}: continue it with --resume, "
            "start over with --overwrite, or choose another --output_dir"
        )
    linked = [p for p in earlier if p.is_dir() and p.is_symlink()]
    if linked:  # what it points at may be another run's, or a folder the user meant to keep
        raise ValueError(
            f"--output_dir {folder}: {linked[0].name} is a link to {linked[0].resolve()}, which --overwrite does "
            "not empty; empty or remove it yourself, or choose another --output_dir"
        )
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def claim_results_dir(given: str | Path | None, default: Path, outputs: tuple[str, ...], overwrite: bool) -> Path:
    """Where a command that writes `outputs` (positions, analyze) writes: the next free `default`, `default`-2, ...
    when none is given; a given folder that holds one of them only with --overwrite (which replaces them)."""
    if given is None:
        return claim_run_dir(default, writable="")
    folder = Path(given).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output_dir {folder} is a file")
    earlier = [name for name in outputs if (folder / name).exists()]
    if earlier and not overwrite:
        raise ValueError(f"--output_dir {folder} holds an earlier {earlier[0]}: choose another folder, or replace it "
                         "with --overwrite")  # fmt: skip
    check_writable(folder)
    return folder


def check_output_file(
    given: str | Path, overwrite: bool, reading: Iterable[tuple[Path, str]] = (), flag: str = "--output"
) -> Path:
    """A file a command writes after its work (`ten eval --output`), checked before that work starts: not a folder,
    apart from what the command reads (`reading`: (path, what it is)), an existing file replaced only with
    --overwrite, and its folder writable (created if missing, as the write would)."""
    path = Path(given).expanduser()
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: name a file, e.g. {path / 'results.json'}")
    for read, what in reading:
        refuse_overlap(path, read, flag, what)
    if path.exists() and not overwrite:
        raise ValueError(f"{flag} {path} exists: choose another file, or replace it with --overwrite")
    check_writable(path.parent, flag)
    return path


@contextmanager
def released_if_empty(folder: Path) -> Iterator[None]:
    """A claimed folder given back if the command fails before it writes anything there."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty
        raise


def numbered_run_dirs(base: Path) -> list[Path]:
    """base, base-2, base-3, ... as they exist, in order."""
    numbered = [p for p in base.parent.glob(f"{base.name}-*") if p.name[len(base.name) + 1 :].isdigit()]
    return [base, *sorted(numbered, key=lambda p: int(p.name[len(base.name) + 1 :]))]


def claim_run_dir(base: Path, writable: str = CHECKPOINTS) -> Path:
    """Create and return the first of base, base-2, ... that does not exist yet (and its `writable` subfolder).

    mkdir either creates the folder or fails because it exists, atomically: of two runs racing for
    one name, exactly one gets it and the other moves on to the next number.
    """
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create {base.parent}: {err.strerror or err}") from None
    number = 1
    while True:
        candidate = base if number == 1 else base.parent / f"{base.name}-{number}"
        try:
            candidate.mkdir()
        except FileExistsError:
            number += 1
            continue
        except OSError as err:
            raise ValueError(f"cannot create {candidate}: {err.strerror or err}") from None
        check_writable(candidate / writable)
        return candidate


def release_run_dir(folder: Path) -> None:
    """Give back a claimed folder that a run failed to start in (only if it is still empty of results)."""
    if holds_run(folder):
        return
    for path in (folder / CHECKPOINTS, folder):
        try:
            path.rmdir()
        except OSError:
            return


def latest_run_dir(base: Path, marker: str = CHECKPOINTS, what: str = "run") -> Path:
    """The most recently written of base, base-2, ... that holds `marker` (a folder with files, or a file)."""
    runs = [p for p in numbered_run_dirs(base) if any_in(p / marker) or (p / marker).is_file()]
    if not runs:
        raise ValueError(f"--resume: no {what} in {base} (or {base}-N) to continue; name one with --resume PATH")
    return max(runs, key=lambda p: (p / marker).stat().st_mtime)
