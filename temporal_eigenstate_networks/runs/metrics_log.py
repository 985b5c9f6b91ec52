"""A run's metrics.jsonl: one JSON object a line (train, eval, start and end events), appended as the run goes,
read by `ten compare` and `ten eval`, and cut back when a run resumes at an earlier step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import WriteError, atomic_write, write_failure

METRICS = "metrics.jsonl"


def append_record(run_dir: Path, values: dict[str, Any]) -> None:
    """One line more; appended, not rewritten, so a crash costs at most the line being written."""
    path = Path(run_dir) / METRICS
    try:
        with path.open("a") as handle:
            handle.write(json.dumps(values) + "\n")
    except OSError as err:
        raise WriteError(f"cannot write {path}: {write_failure(err)}") from err


def read_records(run_dir: Path, event: str | None = None, skip_damaged: bool = False) -> list[dict[str, Any]]:
    """The records of a run, oldest first (only those of `event` when given).

    `skip_damaged`: a missing or unreadable file gives [] and a line cut short by a crash is passed over (for
    figures shown beside others); otherwise either is an error."""
    try:
        lines = (Path(run_dir) / METRICS).read_text(encoding="utf-8").splitlines()
    except OSError:
        if skip_damaged:
            return []
        raise
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if skip_damaged:
                continue
            raise
        if skip_damaged and not isinstance(record, dict):
            continue
        if event is None or record.get("event") == event:
            records.append(record)
    return records


def forget_records_after(run_dir: Path, step: int, keep_in: Path | None = None) -> None:
    """Drop the records of steps after `step`: a run resumed there will log those steps again.

    `keep_in`: a folder to write the dropped records to (with the checkpoints they belong to)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) < len(lines):
        if keep_in is not None:
            dropped = [line for line in lines if line not in kept]
            atomic_write(keep_in / METRICS, lambda tmp: tmp.write_text("".join(dropped)))
        atomic_write(path, lambda tmp: tmp.write_text("".join(kept)))
