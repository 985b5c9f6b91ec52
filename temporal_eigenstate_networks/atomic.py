"""Atomic file writes: a file is either the old one or the complete new one, never half written.

Write to a temporary name in the same folder (so the final rename is atomic on POSIX and Windows),
flush it to disk, then rename it over the target. On any error the temporary file is removed.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


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
