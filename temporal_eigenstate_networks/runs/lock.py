"""One writer per run folder: a lock file taken when a run (or a comparison) starts or resumes, given back at its end.

Two processes writing one folder would interleave their metrics and delete each other's checkpoints, so the
second is refused in one line naming the first. A lock whose process is gone (killed, the machine rebooted) is
stale: the next run takes it over and says so. The lock is the file's existence, made whole by a hard link (which
fails where the file exists), so of two processes starting together exactly one gets it; a process holds a
folder's lock at most once (a comparison and its runs are one process).
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "writer.lock"
_held: set[Path] = set()  # the folders this process holds, given back at exit if not before


def take_lock(folder: Path) -> str | None:
    """Hold `folder`'s lock (creating the folder); a note where a stale lock was taken over. ValueError where a
    live process holds it."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file where the folder would be, no permission, a full disk
        raise ValueError(f"--output_dir {folder} cannot be written: {err.strerror or err}") from None
    if folder.resolve() in _held:
        return None
    path, mine = folder / LOCK_FILE, folder / f"{LOCK_FILE}.{os.getpid()}"
    note = None
    try:
        mine.write_text(_record())
        while True:
            try:
                os.link(mine, path)  # atomic, and the lock is whole when it appears: it exists or it does not
                break
            except FileExistsError:
                holder = _read(path)
                if holder is not None and holder["pid"] == os.getpid() and holder["host"] == socket.gethostname():
                    break  # left by this process (or this PID before a reboot): ours
                if holder is not None and _alive(holder):
                    raise ValueError(f"{folder} is being written by process {holder['pid']} on {holder['host']} "
                                     f"(since {holder['since']}): wait for it to end, or stop it; a folder has one "
                                     "writer") from None  # fmt: skip
                # Stale: of several takers, the one whose rename moves it aside takes it; the others look again.
                aside = folder / f"{LOCK_FILE}.stale.{os.getpid()}"
                try:
                    os.rename(path, aside)
                except FileNotFoundError:
                    continue
                aside.unlink(missing_ok=True)
                note = f"took over the lock of {folder}: {_who(holder)} no longer runs"
    except OSError as err:
        raise ValueError(f"--output_dir {folder} cannot be written: {err.strerror or err}") from None
    finally:
        mine.unlink(missing_ok=True)
    _held.add(folder.resolve())
    return note


def release_lock(folder: Path) -> None:
    """Give `folder`'s lock back, if this process holds it."""
    folder = Path(folder).expanduser().resolve()
    if folder not in _held:
        return
    _held.discard(folder)
    if (_read(folder / LOCK_FILE) or {}).get("pid") == os.getpid():
        (folder / LOCK_FILE).unlink(missing_ok=True)


@atexit.register
def _release_all() -> None:
    for folder in list(_held):
        release_lock(folder)


def _record() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")})


def _read(path: Path) -> dict | None:
    """The holder a lock file names; None where it cannot be read (a process killed while writing it)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _alive(holder: dict) -> bool:
    """Whether the process a lock names still runs. One on another machine (a shared disk) cannot be asked, so it
    counts as running."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _who(holder: dict | None) -> str:
    return "a process whose lock cannot be read" if holder is None else f"process {holder['pid']}"
