"""`--report_to`: what TensorBoard, W&B and trackio hold, read back with each one's own reader, is what metrics.jsonl
holds (steps and values); a resume continues the same tracker run; a tracker that fails costs a warning, not the run.

Nothing here reaches a network: W&B has no credentials (so it runs offline), its server address is a closed local
port, the hub is offline, and trackio's store is a temporary folder.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from temporal_eigenstate_networks.experiments import compare
from temporal_eigenstate_networks.runs import trackers as trackers_module
from temporal_eigenstate_networks.runs.trackers import IDENTITY, TensorBoardTracker, scalars, wandb_mode
from temporal_eigenstate_networks.training import Trainer

from .test_overwrite import one_line_error
from .test_training import TINY, records, tiny_arguments


def needs(name: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(name) is None, reason=f"{name} is not installed (the {name} extra; dev installs it)"
    )


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """Every tracker kept on this machine. trackio reads TRACKIO_DIR once, when first imported."""
    home = tmp_path_factory.mktemp("trackers")
    if "trackio" in sys.modules and not str(sys.modules["trackio"].utils.TRACKIO_DIR).startswith(str(home.parent)):
        pytest.skip("trackio was imported before its store could be moved to a temporary folder")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT",
                     "TRACKIO_PROJECT", "TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):  # fmt: skip
            patch.delenv(name, raising=False)
        patch.setenv("NETRC", str(home / "no-netrc"))  # no `wandb login` either
        patch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: a request would fail here
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            patch.setenv(name, str(home / name.lower()))
        patch.setenv("TRACKIO_DIR", str(home / "trackio"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        yield
        if "wandb" in sys.modules:
            sys.modules["wandb"].teardown()  # W&B's service process ends with the tests that started it


def expected(output: Path) -> dict[tuple[str, int], float]:
    """Every number of metrics.jsonl, as the trackers name it: (tag, step) -> value."""
    out: dict[tuple[str, int], float] = {}
    for record in records(output):
        for tag, value in scalars(record).items():
            assert (tag, record["step"]) not in out, f"{tag} twice at step {record['step']} in metrics.jsonl"
            out[tag, record["step"]] = value
    return out


def assert_same(logged: dict[tuple[str, int], float], output: Path) -> None:
    want = expected(output)
    assert sorted(logged) == sorted(want)
    for key, value in want.items():
        assert logged[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key


# ---------------------------------------------------------------- each library's own reader


def tensorboard_scalars(folder: Path) -> dict[tuple[str, int], float]:
    """TensorBoard's event reader (which applies a resumed run's purge); a step twice under one tag fails."""
    from tensorboard.backend.event_processing import event_accumulator

    reader = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    reader.Reload()
    out = {}
    for tag in reader.Tags()["scalars"]:
        events = reader.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: steps logged twice: {steps}"
        out.update({(tag, e.step): e.value for e in events})
    return out


def tensorboard_texts(folder: Path) -> dict[str, str]:
    from tensorboard.backend.event_processing import event_accumulator

    reader = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.TENSORS: 0})
    reader.Reload()
    return {tag.split("/")[0]: reader.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
            for tag in reader.Tags()["tensors"]}  # fmt: skip


def wandb_file_records(path: Path) -> list[bytes]:
    """The records of a .wandb file: W&B's header, then LevelDB's log format (32 KiB blocks; each record a
    7-byte header: checksum, length, kind 1 whole, 2 first, 3 middle, 4 last part)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, parts, position, block = [], b"", 7, 32768
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 2):
            parts = chunk
        elif kind in (3, 4):
            parts += chunk
        if kind in (1, 4):
            out.append(parts)
    return out


def wandb_runs(run_folder: Path) -> list[dict]:
    """Each offline W&B run in the run folder, oldest first, parsed with W&B's own record type."""
    from wandb.proto.wandb_internal_pb2 import Record

    def name(item) -> str:
        return item.key or "/".join(item.nested_key)

    runs = []
    for path in run_folder.glob("wandb/offline-run-*/run-*.wandb"):
        run = {"path": path, "history": [], "config": {}, "summary": {}}
        for raw in wandb_file_records(path):
            record = Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.update(id=record.run.run_id, project=record.run.project, group=record.run.run_group,
                           name=record.run.display_name, start=record.run.start_time.ToMicroseconds())  # fmt: skip
            elif kind == "history":
                run["history"].append({name(i): json.loads(i.value_json) for i in record.history.item})
            elif kind in ("config", "summary"):
                run[kind].update({name(i): json.loads(i.value_json) for i in getattr(record, kind).update})
        runs.append(run)
    return sorted(runs, key=lambda r: r["start"])


def wandb_scalars(runs: list[dict]) -> dict[tuple[str, int], float]:
    out = {}
    for run in runs:
        for row in run["history"]:
            for tag, value in row.items():
                if not tag.startswith("_") and tag != "step":
                    assert (tag, row["step"]) not in out, f"{tag} twice at step {row['step']}"
                    out[tag, row["step"]] = value
    return out


def trackio_run(output: Path) -> tuple[list[str], dict[tuple[str, int], float], dict]:
    """trackio's local store, through its own storage class: the project's runs, and this run's numbers and
    config."""
    from trackio.sqlite_storage import SQLiteStorage

    identity = json.loads((output / IDENTITY).read_text())
    project, name = identity["trackio_project"], f"{output.name}-{identity['id']}"
    out = {}
    for row in SQLiteStorage.get_logs(project, name):
        for tag, value in row.items():
            if "/" in tag:
                assert (tag, row["step"]) not in out, f"{tag} twice at step {row['step']}"
                out[tag, row["step"]] = value
    return SQLiteStorage.get_runs(project), out, SQLiteStorage.get_run_config(project, name)


# ---------------------------------------------------------------- the choice, before anything runs


def test_report_to_mistakes_are_one_line_before_a_folder_is_claimed(corpus, tmp_path, capsys, monkeypatch):
    output = tmp_path / "run"
    base = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "1", "--output_dir", str(output)]
    assert "unknown 'mlflow'" in one_line_error(capsys, [*base, "--report_to", "tensorboard,mlflow"])
    assert "give it alone" in one_line_error(capsys, [*base, "--report_to", "none,wandb"])
    assert "more than once" in one_line_error(capsys, [*base, "--report_to", "wandb,wandb"])
    assert "an empty name in 'a,,b'" in one_line_error(capsys, [*base, "--report_to", "a,,b"])
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else found(name, *a))
    error = one_line_error(capsys, [*base, "--report_to", "wandb"])
    assert "wandb is not installed" in error and "pip install 'temporal-eigenstate-networks[wandb]'" in error
    assert not output.exists()


def test_importing_ten_imports_no_tracker_library():
    names = ("wandb", "trackio", "tensorboard", "torch.utils.tensorboard")
    code = (f"import sys, temporal_eigenstate_networks.cli, temporal_eigenstate_networks.training\n"
            f"print([name for name in {names!r} if name in sys.modules])")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_wandb_is_offline_unless_logged_in(tmp_path):
    netrc = tmp_path / "netrc"
    assert wandb_mode({"NETRC": str(netrc)}) == "offline"
    assert wandb_mode({"NETRC": str(netrc), "WANDB_API_KEY": "x" * 40}) == "online"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    netrc.chmod(0o600)
    assert wandb_mode({"NETRC": str(netrc)}) == "online"
    assert wandb_mode({"NETRC": str(netrc), "WANDB_BASE_URL": "http://localhost:8080"}) == "offline"
    assert wandb_mode({"NETRC": str(netrc), "WANDB_MODE": "disabled"}) == "disabled"  # the user's word wins


# ---------------------------------------------------------------- what each holds, and resuming


@needs("tensorboard")
def test_tensorboard_holds_metrics_jsonl_and_a_resume_to_an_earlier_checkpoint_shows_no_step_twice(corpus, tmp_path):
    output = tmp_path / "run"
    values = dict(max_steps=12, eval_steps=5, save_steps=5, report_to=["tensorboard"])
    Trainer(tiny_arguments(corpus, output, **values)).train()
    assert_same(tensorboard_scalars(output / "tensorboard"), output)
    texts = tensorboard_texts(output / "tensorboard")
    trainer_args = json.loads(texts["run_plan"].strip("`\n"))["args"]
    assert trainer_args["d_model"] == 32 and trainer_args["max_steps"] == 12
    assert json.loads(texts["summary"].strip("`\n"))["parameters"] > 0 and texts["status"] == "finished"

    # From step 5, the steps after it again: metrics.jsonl drops their records, TensorBoard hides their events.
    earlier = output / "checkpoints" / "step-0000005"
    resumed = Trainer(tiny_arguments(corpus, output, **values, resume=str(earlier))).train()
    assert resumed.step == 12 and len(list((output / "tensorboard").iterdir())) == 2
    assert_same(tensorboard_scalars(output / "tensorboard"), output)


@needs("wandb")
def test_wandb_offline_run_holds_metrics_jsonl_and_a_resume_continues_it(corpus, tmp_path):
    output = tmp_path / "run"
    Trainer(tiny_arguments(corpus, output, max_steps=4, eval_steps=2, report_to=["wandb"])).train()
    Trainer(tiny_arguments(corpus, output, max_steps=8, eval_steps=2, resume="")).train()  # keeps its trackers
    runs = wandb_runs(output)
    identity = json.loads((output / IDENTITY).read_text())
    assert len(runs) == 2 and {r["id"] for r in runs} == {identity["id"]}  # one W&B run, in two offline parts
    assert all(r["path"].parent.name.startswith("offline-run-") and r["name"] == "run" for r in runs)
    assert runs[0]["project"] == "ten"
    assert_same(wandb_scalars(runs), output)
    assert runs[-1]["config"]["args"]["max_steps"] == 8 and runs[-1]["config"]["model"]["d_model"] == 32
    assert runs[-1]["summary"]["parameters"] > 0 and runs[-1]["summary"]["status"] == "finished"

    # --overwrite starts a new run in the folder: a new W&B run, not the old one continued.
    Trainer(tiny_arguments(corpus, output, max_steps=2, report_to=["wandb"], overwrite=True)).train()
    again = wandb_runs(output)
    assert len(again) == 1 and again[0]["id"] != identity["id"]


@needs("trackio")
def test_trackio_store_holds_metrics_jsonl_and_a_resume_continues_its_run(corpus, tmp_path):
    output = tmp_path / "run"
    Trainer(tiny_arguments(corpus, output, max_steps=4, eval_steps=2, report_to=["trackio"])).train()
    Trainer(tiny_arguments(corpus, output, max_steps=8, eval_steps=2, resume="")).train()
    runs, logged, config = trackio_run(output)
    assert len(runs) == 1  # the resume continued the run
    assert_same(logged, output)
    assert config["args"]["d_model"] == 32 and config["summary"]["parameters"] > 0


@needs("wandb")
def test_compare_shows_its_variants_as_one_group(corpus, tmp_path, capsys):
    base = tiny_arguments(corpus, tmp_path, max_steps=2, report_to=["wandb"], output_dir=None)
    folder = tmp_path / "comparison"
    compare.run_comparison(base, ["ten", "transformer"], folder)
    runs = [run for variant in ("ten", "transformer") for run in wandb_runs(folder / variant)]
    assert [r["name"] for r in runs] == ["ten", "transformer"] and len({r["id"] for r in runs}) == 2
    assert {r["group"] for r in runs} == {compare.tracker_group(folder)}


# ---------------------------------------------------------------- a tracker that fails


@needs("tensorboard")
def test_a_tracker_that_fails_mid_run_costs_one_warning_not_the_run(corpus, tmp_path, capsys, monkeypatch):
    calls = []

    def full_disk(self, record, step):
        calls.append(step)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, record, step)

    original = TensorBoardTracker.log
    monkeypatch.setattr(TensorBoardTracker, "log", full_disk)
    output = tmp_path / "run"
    result = Trainer(tiny_arguments(corpus, output, max_steps=12, eval_steps=5, report_to=["tensorboard"])).train()
    assert result.status == "finished" and result.step == 12 and records(output)[-1]["event"] == "end"
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "TensorBoard" in warnings[0] and "No space left on device" in warnings[0]
    assert len(calls) == 2  # dropped: not asked again
    logged = tensorboard_scalars(output / "tensorboard")
    assert {step for _, step in logged} == {0}  # the start record, logged before the failure
    assert not any(math.isnan(v) for v in logged.values())


@needs("tensorboard")
def test_a_tracker_that_fails_to_start_costs_one_warning_not_the_run(corpus, tmp_path, capsys, monkeypatch):
    class Broken:
        label = "Broken"

        def start(self, run):
            raise ConnectionError("the server went away")

    monkeypatch.setitem(trackers_module.ADAPTERS, "tensorboard", Broken)
    output = tmp_path / "run"
    result = Trainer(tiny_arguments(corpus, output, max_steps=2, report_to=["tensorboard"])).train()
    assert result.status == "finished"
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "Broken failed while starting" in warnings[0] and "went away" in warnings[0]


def test_train_records_carry_the_peak_gpu_memory_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**29)
    on = SimpleNamespace(device=torch.device("cuda", 0))
    assert Trainer.memory(on) == {"peak_memory_gib": 1.5}
    assert Trainer.memory(SimpleNamespace(device=torch.device("cpu"))) == {}  # no allocator counts it
