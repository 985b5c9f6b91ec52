"""Small JSON files (tokenizer and prepared-data meta): written atomically, read with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_open
from .errors import DataError


def write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_open(Path(path)) as handle:
        handle.write((json.dumps(data, indent=2) + "\n").encode("utf-8"))


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`, or a one-line DataError saying which file is missing or garbled."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"no {what} at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read {what} {path}: {reason}") from None
    if not isinstance(data, dict):
        raise DataError(f"cannot read {what} {path}: expected a JSON object")
    return data
