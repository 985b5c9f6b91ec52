"""One writer per run folder: a second process is refused naming the first; a dead writer's lock is taken over."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

from temporal_eigenstate_networks.cli import main
from temporal_eigenstate_networks.runs.lock import LOCK_FILE, release_lock, take_lock

from .test_overwrite import one_line_error
from .test_training import TINY

HOLD = "import sys, time\nfrom temporal_eigenstate_networks.runs.lock import take_lock\n" \
       "take_lock(sys.argv[1]); print('held', flush=True); time.sleep(600)\n"  # fmt: skip


def holder(folder: Path) -> subprocess.Popen:
    """Another process that holds `folder`'s lock until killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def _race(folder: str, barrier, results) -> None:
    barrier.wait()
    try:
        take_lock(Path(folder))
        results.put("held")
        time.sleep(2)  # hold it while the other tries
    except ValueError as err:
        results.put(str(err))


def test_of_two_processes_started_together_exactly_one_holds_the_folder(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    racers = [context.Process(target=_race, args=(str(tmp_path / "run"), barrier, results)) for _ in range(2)]
    for racer in racers:
        racer.start()
    outcomes = sorted(results.get(timeout=60) for _ in racers)
    for racer in racers:
        racer.join(timeout=60)
    assert outcomes.count("held") == 1
    assert "is being written by process" in next(outcome for outcome in outcomes if outcome != "held")


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "1", "--output_dir", str(run)]
    process = holder(run)
    try:
        err = one_line_error(capsys, [*argv, "--overwrite"])  # refused before --overwrite clears anything
        assert f"is being written by process {process.pid}" in err
        err = one_line_error(capsys, ["compare", "--dataset", str(corpus), *TINY, "--tokens", "64",
                                      "--variants", "ten", "--output_dir", str(run)])  # fmt: skip
        assert f"is being written by process {process.pid}" in err
    finally:
        process.kill()
        process.wait()
    capsys.readouterr()
    assert main(argv) == 0
    assert f"took over the lock of {run}: process {process.pid} no longer runs" in capsys.readouterr().out
    assert not (run / LOCK_FILE).exists()  # given back at the end
    process = holder(run)
    try:  # a resume is a writer too
        err = one_line_error(capsys, ["train", "--resume", str(run), "--max_steps", "2"])
        assert f"is being written by process {process.pid}" in err
    finally:
        process.kill()
        process.wait()


def test_a_lock_is_taken_once_per_process_and_given_back(tmp_path):
    folder = tmp_path / "run"
    assert take_lock(folder) is None and take_lock(folder) is None  # the same process: a comparison and its runs
    assert f'"pid": {os.getpid()}' in (folder / LOCK_FILE).read_text()
    release_lock(folder)
    assert not (folder / LOCK_FILE).exists()
