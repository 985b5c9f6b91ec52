"""Where users watch a run besides metrics.jsonl: TensorBoard, W&B and trackio (`ten train --report_to`).

The trainer hands each record to the chosen trackers where it appends it to metrics.jsonl, with the record's own
step, so a tracker cannot show other figures than the file. Each library is imported only when chosen (importing
ten stays as fast). A tracker that fails, at its start or mid-run (a full disk, a lost network, an error inside
the library), costs one warning and is dropped: never the training run.

W&B runs offline unless the user has logged in (or set WANDB_MODE); trackio writes to its local store. The run
folder's trackers.json keeps the id a resumed run continues the same tracker runs under.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import netrc
import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from ..atomic import atomic_write
from ..distribution import install_hint

TRACKERS = ("tensorboard", "wandb", "trackio")  # the names of --report_to, each also an extra of the same name
NONE = "none"
IDENTITY = "trackers.json"  # the id and projects of the run's tracker runs: a resume continues them
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # W&B's own folder name: it writes <dir>/wandb/
OUTPUTS = (IDENTITY, TENSORBOARD_DIR, WANDB_DIR)  # what trackers leave in a run folder (--overwrite deletes them)
DEFAULT_PROJECT = "ten"  # W&B's and trackio's project unless WANDB_PROJECT / TRACKIO_PROJECT says otherwise
ENDED = ("finished", "time_budget", "stopped")  # statuses of a run that ended as it should (W&B exit code 0)


def chosen(names: Sequence[str] | None) -> list[str]:
    """The trackers of a --report_to value (None, [] and ["none"] are none)."""
    return [name for name in names or () if name != NONE]


def check_report_to(names: Sequence[str] | None) -> None:
    """Raise ValueError on a --report_to a run cannot start with: an unknown or repeated name, none beside a
    tracker, or a tracker whose library is not installed (said with the install that brings it)."""
    names = list(names or ())
    if "" in names:
        raise ValueError(f"--report_to: an empty name in {','.join(names)!r}; give names separated by single commas")
    unknown = [name for name in names if name not in (*TRACKERS, NONE)]
    if unknown:
        raise ValueError(f"--report_to: unknown {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(TRACKERS)} or {NONE}, comma-separated")  # fmt: skip
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"--report_to: {', '.join(repeated)} given more than once")
    if NONE in names and len(names) > 1:
        raise ValueError(f"--report_to {NONE} means no tracker: give it alone")
    for name in chosen(names):
        if importlib.util.find_spec(name) is None:
            raise ValueError(missing_library(name, "is not installed"))


def missing_library(name: str, why: str) -> str:
    return f"--report_to {name}: {name} {why}; install it with {install_hint(name)}, or leave {name} out"


def import_library(name: str, module: str) -> Any:
    """Import a tracker's library now (before training starts): a failure is a one-line ValueError."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ValueError(missing_library(name, f"cannot be imported ({' '.join(str(err).split())})")) from None


# ---------------------------------------------------------------- what a tracker is told


@dataclass(frozen=True)
class TrackedRun:
    folder: Path  # the run folder (metrics.jsonl's)
    name: str  # shown in the trackers: the run folder's name
    identity: dict[str, str]  # trackers.json: "id", "wandb_project", "trackio_project"
    config: dict[str, Any]  # the resolved run plan: the hyperparameters
    summary: dict[str, Any]  # parameters, state bytes
    group: str | None = None  # runs shown together (the variants of one `ten compare`)
    resume_step: int | None = None  # the step of the checkpoint the run continues


def run_identity(folder: Path, resumed: bool) -> dict[str, str]:
    """The run's tracker id and projects: a resumed run's from its trackers.json, a new run's fresh (and written
    there, atomically). The projects are kept too, so a resume lands in the same project whatever the shell says."""
    path = folder / IDENTITY
    saved: dict[str, Any] = {}
    if resumed and path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}  # damaged: a new tracker run, rather than no run at all
    fresh = {
        "id": secrets.token_hex(4),  # 8 characters of [0-9a-f]: a valid W&B run id
        "wandb_project": os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        "trackio_project": os.environ.get("TRACKIO_PROJECT") or DEFAULT_PROJECT,
    }
    identity = {**fresh, **{k: v for k, v in saved.items() if k in fresh and isinstance(v, str) and v}}
    if identity != saved:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(identity, indent=1) + "\n"))
    return identity


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics.jsonl record as trackers name them: event/key, without eval's val_ prefix
    ({"event": "eval", "val_ce": 1.2} -> {"eval/ce": 1.2}). Strings and lists (status, fingerprints) are not
    plotted."""
    event = record.get("event", "record")
    numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {f"{event}/{key.removeprefix('val_')}": value for key, value in numbers.items() if key != "step"}


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"args": {"seed": 1}} -> {"args.seed": 1}: for TensorBoard's hyperparameters, which are one level."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---------------------------------------------------------------- the trackers


class Tracker(Protocol):
    label: str  # how warnings and the log name it

    def start(self, run: TrackedRun) -> str:
        """Open the tracker run (a resumed run: the same one); return one line on where to watch it."""

    def log(self, record: dict[str, Any], step: int) -> None:
        """One metrics.jsonl record, at its step."""

    def finish(self, status: str) -> None:
        """Close the run, with the trainer's status (finished, time_budget, stopped, failed)."""


class TensorBoardTracker:
    """Event files in <run>/tensorboard. A resumed run purges the steps after its checkpoint, as metrics.jsonl
    drops their records, so TensorBoard never shows a step twice."""

    label = "TensorBoard"

    def __init__(self) -> None:
        self.module = import_library("tensorboard", "torch.utils.tensorboard")
        self.step = 0

    def start(self, run: TrackedRun) -> str:
        folder = run.folder / TENSORBOARD_DIR
        purge = None if run.resume_step is None else run.resume_step + 1  # events at steps >= this are hidden
        self.writer = self.module.SummaryWriter(str(folder), purge_step=purge, flush_secs=30)
        self.step = run.resume_step or 0
        self.writer.add_text("run_plan", json_block(run.config), self.step)
        self.writer.add_text("summary", json_block(run.summary), self.step)
        values = flat({**run.config, "summary": run.summary})
        plain = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}
        for summary in self.module.summary.hparams(plain, {}):  # in this run's folder, not a sub-run of its own
            self.writer.file_writer.add_summary(summary)
        return f"TensorBoard: tensorboard --logdir {folder}"

    def log(self, record: dict[str, Any], step: int) -> None:
        self.step = step
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status, self.step)
        self.writer.close()


def json_block(values: dict[str, Any]) -> str:
    """Values as TensorBoard's text tab shows them: indented JSON in a code block (its text is Markdown)."""
    return "```\n" + json.dumps(values, indent=1, default=str) + "\n```"


def wandb_logged_in(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether W&B has credentials here: WANDB_API_KEY, an identity token file, or a .netrc entry for its host
    (what `wandb login` writes)."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    url = urlparse(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    hosts = {url.netloc, url.hostname}
    try:
        entries = netrc.netrc(environ.get("NETRC") or None).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return any(host in entries for host in hosts if host)


def wandb_mode(environ: Mapping[str, str] = os.environ) -> str:
    """WANDB_MODE when the user set it; otherwise online if logged in, else offline (nothing is contacted)."""
    return environ.get("WANDB_MODE") or ("online" if wandb_logged_in(environ) else "offline")


class WandbTracker:
    """A W&B run whose id is the run folder's: a resume continues it. Offline runs are kept in <run>/wandb
    (unless WANDB_DIR says elsewhere) for `wandb sync`. Records are logged against a "step" metric, not W&B's
    own counter, so a resume (whose offline counter restarts) still plots at the right steps."""

    label = "W&B"

    def __init__(self) -> None:
        self.wandb = import_library("wandb", "wandb")

    def start(self, run: TrackedRun) -> str:
        mode = wandb_mode()
        where = {} if os.environ.get("WANDB_DIR") else {"dir": str(run.folder)}
        self.run = self.wandb.init(project=run.identity["wandb_project"], id=run.identity["id"], name=run.name,
                                   group=run.group, resume="allow", mode=mode, **where)  # fmt: skip
        self.run.config.update(run.config, allow_val_change=True)  # a resume may change the length or cadence
        self.run.summary.update(run.summary)
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        if mode == "offline":
            folder = Path(self.run.dir).parent  # .../wandb/offline-run-<time>-<id>[-N]/files
            parts = folder.parent / f"offline-run-*-{self.run.id}*"  # a resumed run's parts, in the order of time
            return f"W&B: offline run {self.run.id} in {folder}; upload it with: wandb sync {parts}"
        return f"W&B: {getattr(self.run, 'url', None) or f'run {self.run.id} ({mode})'}"

    def log(self, record: dict[str, Any], step: int) -> None:
        self.run.log({**scalars(record), "step": step})

    def finish(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status in ENDED else 1)


class TrackioTracker:
    """A run in trackio's local store (TRACKIO_DIR, else ~/.cache/huggingface/trackio), named after the run folder
    and its id, which a resume continues (trackio finds runs by name)."""

    label = "trackio"

    def __init__(self) -> None:
        self.trackio = import_library("trackio", "trackio")

    def start(self, run: TrackedRun) -> str:
        project = run.identity["trackio_project"]
        self.run = self.trackio.init(project=project, name=f"{run.name}-{run.identity['id']}", group=run.group,
                                     config={**run.config, "summary": run.summary}, resume="allow")  # fmt: skip
        return f"trackio: trackio show --project {project}"

    def log(self, record: dict[str, Any], step: int) -> None:
        self.run.log(scalars(record), step=step)

    def finish(self, status: str) -> None:
        self.trackio.finish()  # the module's: it also forgets the run, which its exit hook would finish again


ADAPTERS: dict[str, Callable[[], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "trackio": TrackioTracker,
}


# ---------------------------------------------------------------- all of a run's trackers


def warn_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Trackers:
    """The chosen trackers of a run, each guarded: the first exception it raises is one warning, and the
    tracker is dropped for the rest of the run."""

    def __init__(self, trackers: Sequence[Tracker] = (), warn: Callable[[str], None] = warn_on_stderr) -> None:
        self.trackers = list(trackers)
        self.warn = warn

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def start(
        self,
        folder: Path,
        config: dict[str, Any],
        summary: dict[str, Any],
        resumed: bool,
        resume_step: int | None = None,
        group: str | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        if not self.trackers:
            return
        try:
            identity = run_identity(folder, resumed)
        except OSError as err:  # a full disk: training will say so itself, the trackers just step aside
            self.drop_all(f"cannot write {folder / IDENTITY} ({err.strerror or err})")
            return
        run = TrackedRun(folder, folder.name, identity, config, summary, group, resume_step if resumed else None)
        for tracker in list(self.trackers):
            if (where := self.guarded(tracker, "starting", lambda t=tracker: t.start(run))) is not None:
                say(where)

    def log(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for tracker in list(self.trackers):
            self.guarded(tracker, f"logging step {step}", lambda t=tracker: t.log(record, step))

    def finish(self, status: str) -> None:
        for tracker in list(self.trackers):
            self.guarded(tracker, "finishing", lambda t=tracker: t.finish(status))
        self.trackers = []

    def guarded(self, tracker: Tracker, doing: str, call: Callable[[], Any]) -> Any:
        """call(), or None after warning and dropping `tracker` when it raises."""
        try:
            return call()
        except Exception as err:  # noqa: BLE001  (anything inside a tracker's library: never the run's end)
            self.trackers.remove(tracker)
            self.warn(f"warning: {tracker.label} failed while {doing} ({type(err).__name__}: "
                      f"{' '.join(str(err).split())[:300]}); the run goes on without it, and metrics.jsonl has every "
                      "record")  # fmt: skip
            if doing != "finishing":
                try:
                    tracker.finish("failed")  # let it release what it holds (files, threads, W&B's service)
                except Exception:  # noqa: BLE001, S110  (it already failed once: one warning is enough)
                    pass
            return None

    def drop_all(self, why: str) -> None:
        labels = ", ".join(t.label for t in self.trackers)
        self.trackers = []
        self.warn(f"warning: {labels}: {why}; the run goes on without them, and metrics.jsonl has every record")


def open_trackers(names: Sequence[str] | None, warn: Callable[[str], None] = warn_on_stderr) -> Trackers:
    """The trackers --report_to names, their libraries imported now: before training, so a library that cannot
    be imported is a one-line error rather than an hour's run unwatched."""
    check_report_to(names)
    return Trackers([ADAPTERS[name]() for name in chosen(names)], warn)
