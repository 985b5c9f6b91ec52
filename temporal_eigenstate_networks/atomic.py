"""Atomic writes: a file, or a folder of files, is either the old one or the complete new one, never half written.

A file is written to a temporary name in the same folder (so the final rename is atomic on POSIX and Windows),
flushed to disk, then renamed over the target. On any error the temporary file is removed.

A folder (a checkpoint, an export) is written into a hidden `.tmp-NAME-PID` beside it and renamed into place,
the older NAME set aside as `.old-NAME-PID` meanwhile, so a crash or a full disk leaves either the previous
folder or the new one; recover_interrupted_swaps puts back or removes what a killed swap left behind.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import BinaryIO

LEFTOVER = re.compile(r"\.(tmp|old)-(.+)-\d+")  # what a folder swap killed half-way leaves: see replace_folder


class WriteError(RuntimeError):
    """A file could not be written (a full disk, a lost mount): not the user's mistake, so exit code 1."""


def write_failure(err: BaseException) -> str:
    """Why a write failed, in a few words: the OS's reason ("No space left on device"), also out of
    safetensors, which reports it as SafetensorError("... I/O error: No space left on device (os error 28)")."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err)
    if f"os error {errno.ENOSPC}" in text:
        return os.strerror(errno.ENOSPC)
    return text.split("I/O error: ")[-1]


def _default_mode() -> int:
    """rw for whom the umask allows: mkstemp's 0600 would hide checkpoints from the rest of a team."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write `path` through (for writers that take a path, e.g. safetensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Open a temporary file next to `path` for binary writing; on success it replaces `path`."""
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        yield handle


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary_path), then move the result to `path`."""
    with atomic_path(path) as tmp:
        write(tmp)


# ---------------------------------------------------------------- folders


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield an empty hidden folder to fill; on success its files are flushed to disk and it replaces `path`.

    On any error the new folder is removed and an older `path` stays as it was.
    """
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        _fsync_folder(tmp)
        replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def overlap(target: Path, read: Path) -> str | None:
    """How ``target`` (a folder about to be replaced or written into) overlaps ``read`` (what the command reads):
    "is", "holds" or "lies inside"; None where they are apart. Resolved, so a link or ".." is no way round."""
    target, read = target.expanduser().resolve(), read.expanduser().resolve()
    if target == read:
        return "is"
    if target in read.parents:
        return "holds"
    return "lies inside" if read in target.parents else None


def refuse_overlap(target: Path, read: Path, flag: str, what: str) -> None:
    """One line, before anything is written, where writing ``target`` would delete or change ``read``."""
    if relation := overlap(target, read):
        raise ValueError(f"{flag} {target} {relation} the {what} {read} it reads: writing there would delete or "
                         f"change it; choose another folder")  # fmt: skip


def refuse_foreign_files(folder: Path, flag: str, command: str, patterns: tuple[str, ...]) -> None:
    """One line where --overwrite, which replaces `folder` whole, would delete what `command` did not write there
    (names matching none of `patterns`): a run, another checkpoint's optimizer state, a user's own files. Such a
    folder is emptied by hand, never by a mistyped flag."""
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.is_dir() or not any(fnmatch(p.name, g) for g in patterns))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3:,} more" if len(foreign) > 3 else "")
        raise ValueError(f"{flag} {folder} holds what {command} does not write ({shown}): --overwrite replaces only "
                         "a folder of its own; choose another folder, or empty this one yourself")  # fmt: skip


def replace_folder(new: Path, path: Path) -> None:
    """Move `new` to `path`; an older `path` is set aside first and put back if the move fails.

    A kill between the two renames leaves `.old-NAME-PID` without NAME: recover_interrupted_swaps puts it back.
    """
    old = path.parent / f".old-{path.name}-{os.getpid()}"
    if path.exists():
        path.rename(old)
    try:
        new.rename(path)
    except BaseException:  # a failed move or a second Ctrl-C: the older folder goes back
        if old.exists() and not path.exists():
            old.rename(path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    for file in folder.iterdir():
        with file.open("rb") as handle:
            os.fsync(handle.fileno())


def set_aside_folders(folder: Path) -> list[str]:
    """The names of `folder` that a killed swap set aside (`.old-NAME-PID` without NAME), so missing now."""
    return [target.name for path, kind, target in _leftovers(folder) if kind == "old" and not target.exists()]


def recover_interrupted_swaps(folder: Path, name: str | None = None) -> str | None:
    """Put back or remove what folder swaps killed half-way left in `folder` (only those of `name` when given);
    say what was done, or None when nothing was left.

    `.old-NAME-PID` without NAME is the last complete NAME (killed between the two renames): it goes back.
    Any other `.tmp-*` (a new folder never moved in) or `.old-*` (one already replaced) is removed.
    """
    restored, removed = [], []
    for path, kind, target in _leftovers(folder):
        if name is not None and target.name != name:
            continue
        if kind == "old" and not target.exists():
            path.rename(target)
            restored.append(f"{target.name} (from {path.name})")
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    if not restored and not removed:
        return None
    done = [f"put back {', '.join(restored)}"] if restored else []
    done += [f"removed {', '.join(removed)}"] if removed else []
    return f"{folder}: a save was interrupted; {'; '.join(done)}"


def _leftovers(folder: Path) -> list[tuple[Path, str, Path]]:
    """(leftover, "tmp" or "old", the folder it was written for) in `folder`, .old-* before .tmp-*."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        match = LEFTOVER.fullmatch(path.name)
        if match is not None and path.is_dir():
            found.append((path, match.group(1), folder / match.group(2)))
    return found
