"""What a run trained on, told apart by content: the source as given, where it resolved, its size and hash.

A run records it (trainer_state.json "data") and a resumed run checks it: the same file under another path is
the same data, and another file under the same name is not. Text is hashed as read (every file of a folder,
joined), a token file as its bytes, a prepared folder by the hash `ten prepare` wrote into its meta.json.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import DataError

KINDS = ("builtin", "text", "hub", "tokens", "prepared")
SHOWN_HASH = 12  # hex digits of the hash in messages: enough to tell two files apart by eye


@dataclass(frozen=True)
class DataIdentity:
    given: str  # --dataset or --tokenized_dir as written, or the built-in or hub name
    kind: str  # one of KINDS
    resolved: str | None  # the absolute path of a local source; None for built-in and hub data
    bytes: int  # of the content hashed
    sha256: str

    def describe(self) -> str:
        """'data.txt (/home/me/data.txt, 1,234 bytes, sha256 1a2b3c4d5e6f)'."""
        where = f"{self.resolved}, " if self.resolved and self.resolved != self.given else ""
        return f"{self.given} ({where}{self.bytes:,} bytes, sha256 {self.sha256[:SHOWN_HASH]})"

    @property
    def label(self) -> str:
        """The source as the command line named it."""
        return f"--tokenized_dir {self.given}" if self.kind == "prepared" else repr(self.given)

    def same_content(self, other: DataIdentity) -> bool:
        return (self.sha256, self.bytes) == (other.sha256, other.bytes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> DataIdentity | None:
        """The identity a run saved, or None where it saved none (before ten recorded it) or a damaged one."""
        if not isinstance(values, dict):
            return None
        try:
            identity = cls(**{f.name: values[f.name] for f in fields(cls)})
        except (KeyError, TypeError):
            return None
        well_formed = isinstance(identity.sha256, str) and isinstance(identity.bytes, int)
        return identity if well_formed and isinstance(identity.given, str) else None


def digest(parts: Iterable[bytes]) -> tuple[int, str]:
    """(bytes, sha256 hex) of the parts read one after the other."""
    hasher, size = hashlib.sha256(), 0
    for part in parts:
        hasher.update(part)
        size += len(part)
    return size, hasher.hexdigest()


def file_blocks(paths: Iterable[Path], block: int = 1 << 20) -> Iterable[bytes]:
    """The bytes of the files, one after the other, a block at a time."""
    for path in paths:
        try:
            with Path(path).open("rb") as handle:
                yield from iter(lambda h=handle: h.read(block), b"")
        except OSError as err:
            raise DataError(f"cannot read {path}: {err.strerror}") from None


def text_identity(given: str, kind: str, text: str, resolved: Path | None = None) -> DataIdentity:
    size, sha = digest([text.encode("utf-8")])
    return DataIdentity(given, kind, None if resolved is None else str(resolved.resolve()), size, sha)


def files_identity(given: str, kind: str, paths: list[Path], resolved: Path) -> DataIdentity:
    size, sha = digest(file_blocks(paths))
    return DataIdentity(given, kind, str(resolved.resolve()), size, sha)


def recorded_location(identity: DataIdentity) -> Path | None:
    """Where the run found its data (resolved: whatever folder a command now runs in), while anything is there."""
    return Path(identity.resolved) if identity.resolved and Path(identity.resolved).exists() else None


def resume_data_problem(saved: DataIdentity, now: DataIdentity) -> str | None:
    """The one line refusing a resumed run's data, or None where it is what the run trained on."""
    if now.same_content(saved):
        return None
    return (f"the run trained on {saved.describe()}, but its data is now {now.describe()}: give the original with "
            "--dataset or --tokenized_dir, or pass --allow_data_change to continue on this data")  # fmt: skip


def check_resumed_data(saved_values: Any, now: DataIdentity, allow_change: bool) -> str | None:
    """Whether a resumed run may read `now`: a note for the log (or None), else a DataError in one line.

    `saved_values`: the identity the run recorded (trainer_state.json "data"), None for a run saved before."""
    saved = DataIdentity.from_dict(saved_values)
    if saved is None:
        return f"the run recorded no identity of its data (saved by an older ten): cannot check {now.describe()}"
    if now.same_content(saved):
        if saved.resolved != now.resolved:
            return f"the run's data, now at {now.resolved} (was {saved.resolved}): the same content"
        return None
    if not allow_change:
        raise DataError(resume_data_problem(saved, now))
    return f"--allow_data_change: the run trained on {saved.describe()}; from here on {now.describe()}"
