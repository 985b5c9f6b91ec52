"""Runs that keep their word: the resolved run plan, resuming a copied run folder, time budgets that
are used to their end, write failures, and run folders claimed atomically."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib.util
import multiprocessing
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from temporal_eigenstate_networks.atomic import WriteError, write_failure
from temporal_eigenstate_networks.cli import main
from temporal_eigenstate_networks.experiments.compare import variant_arguments
from temporal_eigenstate_networks.runs.folders import claim_run_dir
from temporal_eigenstate_networks.runs.lookup import find_checkpoint
from temporal_eigenstate_networks.training import TrainArguments, Trainer, resolve_run
from temporal_eigenstate_networks.training import checkpoint as checkpoint_module
from temporal_eigenstate_networks.training import trainer as trainer_module
from temporal_eigenstate_networks.training.budget import TimeBudget

from .test_training import TINY, records, run_cli, tiny_arguments


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256): equal digests mean byte-for-byte equal trees."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


# ---------------------------------------------------------------- the plan


def test_the_plan_is_resolved_once_and_frozen(corpus, tmp_path):
    plan = resolve_run(tiny_arguments(corpus, tmp_path / "run", config="large", d_model=48, num_eigenstates=12,
                                      max_seq_len=None, batch_size=None))  # fmt: skip
    assert plan.model.architecture == "ten" and plan.model.config.use_hten  # the large preset is HTEN
    assert plan.model.config.energy_reg_weight == 0.02 and plan.model.config.hten_scales == [1, 2, 4]
    assert (plan.seq_len, plan.batch_size, plan.learning_rate) == (1024, 8, 3e-4)  # the preset's
    assert plan.args.learning_rate == 3e-4 and plan.args.use_hten is True  # written in: a saved run says it
    assert plan.epochs == 1.0 and plan.max_steps is None and plan.time_budget_s is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seq_len = 7


def test_a_time_budget_without_a_length_lets_the_budget_decide(corpus, tmp_path):
    plan = resolve_run(tiny_arguments(corpus, tmp_path / "run", time_budget=2.0))
    assert plan.length_follows_budget and plan.total_steps(100) is None and plan.time_budget_s == 120.0
    plan = resolve_run(tiny_arguments(corpus, tmp_path / "run2", time_budget=2.0, epochs=3.0))
    assert not plan.length_follows_budget and plan.total_steps(100) == 300


def test_default_run_folders_are_named_from_the_resolved_model(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [(dict(config="large", num_eigenstates=12), "large-hten"),
             (dict(use_hten=True, num_eigenstates=16), "nano-hten"),
             (dict(model="transformer", num_eigenstates=None), "nano-transformer")]  # fmt: skip
    for values, name in cases:
        plan = resolve_run(tiny_arguments(corpus, tmp_path, output_dir=None, **values))
        assert plan.output_dir == Path("runs") / name


def test_settings_that_do_not_fit_the_model_are_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="--num_eigenstates does not apply to --model transformer"):
        resolve_run(tiny_arguments(corpus, tmp_path / "a", model="transformer"))
    with pytest.raises(ValueError, match="--hten_scales needs --use_hten"):
        resolve_run(tiny_arguments(corpus, tmp_path / "b", hten_scales=[1, 2]))


def test_compare_variants_keep_the_presets_energy_weight(tmp_path):
    base = TrainArguments(config="large")
    plans = {name: variant_arguments(base, name, tmp_path) for name in ("ten", "ten+energy", "hten+energy")}
    assert plans["ten+energy"].energy_reg_weight is None  # so the plan takes large's 0.02, not a default
    assert plans["ten"].energy_reg_weight == 0.0 and plans["ten"].use_hten is False
    assert plans["hten+energy"].use_hten is True


# ---------------------------------------------------------------- resume writes where it was resumed from


def test_resuming_a_copied_run_writes_into_the_copy_only(corpus, tmp_path, capsys):
    original, copy = tmp_path / "A", tmp_path / "B"
    argv = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "8", "--save_steps", "4", "--eval_steps", "100",
            "--dropout", "0.1"]  # fmt: skip
    assert run_cli([*argv, "--output_dir", str(original)], capsys)[0] == 0
    shutil.copytree(original, copy)
    for name in ("final", "best"):
        shutil.rmtree(copy / "checkpoints" / name)
    before = tree_digest(original)
    code, out, err = run_cli(["train", "--resume", str(copy)], capsys)
    assert code == 0, err
    assert "resuming from" in out + err and str(copy / "checkpoints" / "step-0000004") in out + err
    assert tree_digest(original) == before  # not one byte of the original run changed
    a, b = weights(original / "checkpoints" / "final"), weights(copy / "checkpoints" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # == the uninterrupted run
    lines = records(copy)  # the copy's history up to step 4, then the resumed run's: no step logged twice
    assert [r["step"] for r in lines if r["event"] == "start"] == [0, 4] and lines[-1]["event"] == "end"
    train_steps = [r["step"] for r in lines if r["event"] == "train"]
    assert train_steps == sorted(set(train_steps))


def test_resume_into_an_explicit_folder_refuses_one_that_holds_another_run(corpus, tmp_path, capsys):
    run, other, fresh = tmp_path / "run", tmp_path / "other", tmp_path / "fresh"
    for folder in (run, other):
        Trainer(tiny_arguments(corpus, folder, max_steps=2)).train()
    code, _, err = run_cli(["train", "--resume", str(run), "--max_steps", "3", "--output_dir", str(other)], capsys)
    assert code == 2 and "holds an earlier run" in err and err.count("\n") == 1
    code, _, err = run_cli(["train", "--resume", str(run), "--max_steps", "3", "--output_dir", str(fresh)], capsys)
    assert code == 0, err
    assert (fresh / "checkpoints" / "final").is_dir() and [r["step"] for r in records(fresh)][-1] == 3
    assert records(run)[-1]["step"] == 2  # the source run is left as it was


def test_resuming_a_loose_checkpoint_needs_an_output_dir(corpus, tmp_path, capsys):
    Trainer(tiny_arguments(corpus, tmp_path / "run", max_steps=2)).train()
    loose = tmp_path / "loose"
    shutil.copytree(tmp_path / "run" / "checkpoints" / "final", loose)
    code, _, err = run_cli(["train", "--resume", str(loose), "--max_steps", "3"], capsys)
    assert code == 2 and "--output_dir" in err and err.count("\n") == 1


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_resuming_an_older_checkpoint_sets_the_abandoned_branch_aside(corpus, tmp_path, capsys, monkeypatch):
    """Resumed at step 2 of a run that reached step 6, with --keep_checkpoints 1: pruning keeps the new branch's
    checkpoints, and a later --resume continues the new branch, not the old final."""
    output = tmp_path / "run"
    checkpoints, aside = output / "checkpoints", output / "abandoned-after-step-0000002"
    Trainer(tiny_arguments(corpus, output, max_steps=6, save_steps=2, keep_checkpoints=3)).train()
    assert names(checkpoints) == ["best", "final", "step-0000002", "step-0000004"]
    original = Trainer.train_step

    def step_then_signal(self):
        values = original(self)
        if self.state.step == 3:
            signal.raise_signal(signal.SIGTERM)  # stopped after the new branch's step 3 (saved: --save_steps 1)
        return values

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    argv = ["train", "--resume", str(checkpoints / "step-0000002"), "--save_steps", "1", "--keep_checkpoints", "1"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert f"(step-0000004, final, best) are moved to {aside}" in out + err
    assert names(checkpoints) == ["step-0000003"] and names(aside / "checkpoints") == ["best", "final", "step-0000004"]
    assert [r["step"] for r in records(aside)] == [6, 6]  # the old branch's final evaluation and end
    assert find_checkpoint(output) == checkpoints / "step-0000003"
    monkeypatch.setattr(Trainer, "train_step", original)
    code, out, err = run_cli(["train", "--resume", str(output)], capsys)
    assert code == 0 and "resuming from" in out and str(checkpoints / "step-0000003") in out, err
    assert names(checkpoints) == ["best", "final", "step-0000005"]
    assert [r["step"] for r in records(output) if r["event"] == "start"] == [0, 2, 3]
    assert run_cli(["train", "--dataset", str(corpus), "--output_dir", str(output), "--max_steps", "1"], capsys)[0] == 2
    code, out, err = run_cli(["train", "--dataset", str(corpus), "--output_dir", str(output), "--max_steps", "1",
                              "--d_model", "16", "--n_layers", "1", "--num_eigenstates", "8", "--max_seq_len", "16",
                              "--batch_size", "2", "--eval_batches", "1", "--sample_tokens", "0", "--overwrite"],
                             capsys)  # fmt: skip
    assert code == 0 and not aside.exists(), err  # --overwrite starts over: the set-aside branch goes too


class Killed(BaseException):
    """The process dies here (a kill, a power cut)."""


@pytest.mark.parametrize("kill_at, found_step", [(0, 2), (1, 2), (2, 2), (3, 4)],
                         ids=["before-writing", "before-setting-the-old-aside", "between-the-renames",
                              "before-removing-the-old"])  # fmt: skip
def test_a_save_killed_at_any_point_leaves_a_checkpoint_that_resume_finds(corpus, tmp_path, monkeypatch, kill_at,
                                                                          found_step):  # fmt: skip
    """Replacing final (step 2) by step 4: the disk as a kill at each rename or removal leaves it, and as the
    save's own error handling leaves it when that call raises; --resume finds a whole checkpoint in both."""
    output = tmp_path / "run"
    checkpoints, disk = output / "checkpoints", tmp_path / "disk"
    trainer = Trainer(tiny_arguments(corpus, output, max_steps=2))
    trainer.train()
    trainer.train_step()
    trainer.train_step()
    calls = {"count": 0, "killed": False}

    def kill_point(original):
        def call(*args, **kwargs):
            if calls["count"] == kill_at and not calls["killed"]:
                calls["killed"] = True
                shutil.copytree(checkpoints, disk)  # what a kill now would leave
                raise Killed
            calls["count"] += 1
            return original(*args, **kwargs)

        return call

    monkeypatch.setattr(Path, "rename", kill_point(Path.rename))
    monkeypatch.setattr(shutil, "rmtree", kill_point(shutil.rmtree))
    with pytest.raises(Killed):
        trainer.save("final")
    monkeypatch.undo()
    for how in ("raised", "killed"):
        if how == "killed":
            shutil.rmtree(checkpoints)
            disk.rename(checkpoints)
        leftovers = [p.name for p in checkpoints.iterdir() if p.name.startswith((".tmp-", ".old-"))]
        plan = resolve_run(tiny_arguments(corpus, output, resume="", max_steps=6))
        assert plan.resume_from == checkpoints / "final" and plan.resumed_state["step"] == found_step, how
        assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")], how  # recovered or removed
        assert bool(plan.notes) == bool(leftovers) and all(name in " ".join(plan.notes) for name in leftovers)


# ---------------------------------------------------------------- time budgets, on a fake clock


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


EVAL_S, SAVE_S = 3.0, 0.5  # what an evaluation and a checkpoint write cost on the fake clock


def fake_time_run(monkeypatch, arguments: TrainArguments, step_s, clock: FakeClock) -> list[dict]:
    """Train with every step, evaluation and checkpoint advancing `clock` as `step_s(step)` etc. say."""
    original_step, original_eval = Trainer.train_step, trainer_module.evaluate
    original_save = trainer_module.save_checkpoint

    def slow_step(self):
        values = original_step(self)
        clock.now += step_s(self.state.step)
        return values

    def slow_eval(*args, **kwargs):
        clock.now += EVAL_S
        return original_eval(*args, **kwargs)

    def slow_save(*args, **kwargs):
        clock.now += SAVE_S
        return original_save(*args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", slow_step)
    monkeypatch.setattr(trainer_module, "evaluate", slow_eval)
    monkeypatch.setattr(trainer_module, "save_checkpoint", slow_save)
    Trainer(arguments, clock=clock).train()
    return records(Path(arguments.output_dir))


@pytest.mark.parametrize("step_s", [lambda step: 0.25 if step <= 60 else 1.0,  # fast, then the machine gets busy
                                    lambda step: 1.0 if step <= 20 else 0.25],  # busy at first, then fast
                         ids=["fast-then-slow", "slow-then-fast"])  # fmt: skip
def test_a_time_budget_is_used_to_its_end_and_the_schedule_reaches_its_floor(corpus, tmp_path, monkeypatch, step_s):
    budget_s = 60.0
    args = tiny_arguments(corpus, tmp_path / "run", time_budget=budget_s / 60, eval_steps=25, save_steps=40,
                          warmup_steps=5, learning_rate=1e-3, min_lr_ratio=0.1)  # fmt: skip
    lines = fake_time_run(monkeypatch, args, step_s, FakeClock())
    end = lines[-1]
    assert end["event"] == "end" and end["status"] == "finished"
    assert 0.95 * budget_s <= end["elapsed_s"] <= budget_s, end["elapsed_s"]
    assert end["lr"] == pytest.approx(1e-4, rel=0.05)  # the floor: min_lr_ratio x peak
    assert (tmp_path / "run" / "checkpoints" / "final").is_dir()


def test_a_resumed_time_budgeted_run_continues_its_clock(corpus, tmp_path, monkeypatch):
    """Stopped at 20 s of a 60 s budget, then resumed on a clock with another origin: it ends at the budget."""
    args = tiny_arguments(corpus, tmp_path / "run", time_budget=1.0, eval_steps=1000, warmup_steps=0)
    stop_at = 40

    def step_then_stop(self):
        values = original(self)
        if self.state.step == stop_at:
            raise_stop()
        return values

    import signal

    def raise_stop():
        signal.raise_signal(signal.SIGTERM)

    original = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", step_then_stop)
    first = fake_time_run(monkeypatch, args, lambda step: 0.5, FakeClock())
    assert first[-1]["status"] == "stopped" and first[-1]["elapsed_s"] == pytest.approx(EVAL_S + 20.0 + SAVE_S)
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = dataclasses.replace(args, resume="")
    lines = fake_time_run(monkeypatch, resumed, lambda step: 0.5, FakeClock(start=1e6))
    assert 0.95 * 60 <= lines[-1]["elapsed_s"] <= 60 and lines[-1]["lr"] == pytest.approx(args.min_lr_ratio * 6e-4,
                                                                                          rel=0.05)  # fmt: skip
    with pytest.raises(ValueError, match="has used its --time_budget of 1 minutes"):
        Trainer(resumed)  # its budget is spent: nothing to do unless given more
    assert Trainer(dataclasses.replace(resumed, time_budget=1.5), clock=FakeClock()).plan.time_budget_s == 90


def test_the_budget_estimates_the_steps_left_from_recent_steps():
    clock = FakeClock()
    budget = TimeBudget(101.0, 0.0, clock, eval_batches_per_step=0.0, checkpoint_bytes=0)
    budget.record_save(0.5)  # the end: no evaluation, two writes of 0.5 s, so 100 s for training
    assert budget.steps_left() is None  # nothing timed yet: the bar shows no total
    for _ in range(10):
        clock.now += 1.0
        budget.record_step(1.0)
    assert budget.steps_left() == 90
    for _ in range(3):
        clock.now += 3.0
        budget.record_step(3.0)
    assert budget.steps_left() == 27  # (100 - 19) / 3: the machine slowed down, the total follows
    assert not budget.exhausted() and budget.fraction() == pytest.approx(0.19)
    clock.now = 97.5
    assert budget.fits(2.5) and not budget.fits(2.6) and budget.exhausted()


# ---------------------------------------------------------------- write failures


def test_a_full_disk_is_one_line_with_the_last_good_checkpoint(corpus, tmp_path, capsys, monkeypatch):
    output = tmp_path / "run"
    real_save_file = checkpoint_module.save_file

    def full_from_step_4(tensors, path, *args, **kwargs):
        if "step-0000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save_file(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", full_from_step_4)
    argv = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "8", "--save_steps", "2", "--eval_steps", "100",
            "--output_dir", str(output)]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    last = err.splitlines()[-1]  # above it: the progress bar, closed
    assert code == 1 and last.startswith("ten train: error: ") and "Traceback" not in err
    good = output / "checkpoints" / "step-0000002"
    for part in ("cannot write checkpoint step-0000004", str(output / "checkpoints"), "No space left on device",
                 f"the last good checkpoint is {good}", f"ten train --resume {output}"):  # fmt: skip
        assert part in last, (part, last)
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-0000002"]  # nothing half-written


def test_write_failures_read_the_same_from_the_os_and_from_safetensors():
    assert write_failure(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    wrapped = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert write_failure(wrapped) == "No space left on device"
    assert isinstance(WriteError("x"), RuntimeError) and not isinstance(WriteError("x"), ValueError)


# ---------------------------------------------------------------- run folders


def _claim(base: str, barrier, results) -> None:
    barrier.wait()  # every process tries at the same moment
    results.put(str(claim_run_dir(Path(base))))


def test_runs_started_at_the_same_moment_claim_different_folders(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_claim, args=(str(tmp_path / "runs" / "nano"), barrier, results))
                 for _ in range(4)]  # fmt: skip
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    claimed = sorted(results.get(timeout=10) for _ in processes)
    assert claimed == sorted(str(tmp_path / "runs" / name) for name in ("nano", "nano-2", "nano-3", "nano-4"))


def test_a_run_that_fails_to_start_gives_its_folder_back(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", *TINY, "--dataset", str(tmp_path / "missing.txt")], capsys)
    assert code == 2 and "unknown dataset" in err
    assert not (tmp_path / "runs" / "nano").exists()
    assert main(["train", "--dataset", str(corpus), *TINY, "--max_steps", "1"]) == 0
    assert (tmp_path / "runs" / "nano" / "checkpoints" / "final").is_dir()  # the name was free again


def test_the_end_of_a_run_tells_its_speed_and_cost(corpus, tmp_path, capsys):
    argv = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "2", "--hourly_rate", "1.57",
            "--output_dir", str(tmp_path / "run")]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    line = next(line for line in (out + err).splitlines() if line.startswith("run: "))
    assert code == 0 and "run: 128 tokens in " in line and "tokens/s" in line and "at $1.57/hour" in line
    assert "per million tokens" in line


def test_generate_never_picks_an_older_checkpoint_past_one_a_save_set_aside(corpus, tmp_path, capsys):
    output = tmp_path / "run"
    Trainer(tiny_arguments(corpus, output, max_steps=2, save_steps=1)).train()
    checkpoints = output / "checkpoints"
    (checkpoints / "final").rename(checkpoints / ".old-final-4242")  # killed between the two renames of a save
    code, _, err = run_cli(["generate", "--checkpoint", str(output), "--prompt", "a", "--max_new_tokens", "2"], capsys)
    assert code == 2 and "a save of final was interrupted" in err and err.count("\n") == 1
    assert run_cli(["train", "--resume", str(output), "--max_steps", "2"], capsys)[0] == 0  # resume puts it back
    assert (checkpoints / "final").is_dir() and not (checkpoints / ".old-final-4242").exists()


def test_commands_that_never_compile_do_not_import_dynamo(tmp_path):
    """`ten --help`, generate and export never compile: importing torch._dynamo (~1 s) is not theirs to pay. (It
    comes with a meta-device build or a torch custom operator's first call; see lm.from_pretrained, ops.common.)"""
    from temporal_eigenstate_networks import TemporalEigenstateConfig, TemporalEigenstateNetwork
    from temporal_eigenstate_networks.data import ByteTokenizer, save_tokenizer

    config = TemporalEigenstateConfig(d_model=32, n_layers=2, num_eigenstates=8, num_heads=2, max_seq_len=32)
    TemporalEigenstateNetwork(config).save_pretrained(tmp_path / "model")
    save_tokenizer(ByteTokenizer(), tmp_path / "model")
    model, exported = tmp_path / "model", tmp_path / "exported"
    exports = importlib.util.find_spec("transformers") is not None
    code = f"""
import contextlib, sys
from temporal_eigenstate_networks.cli import main
with contextlib.suppress(SystemExit):
    main(["--help"])
main(["generate", "--checkpoint", {str(model)!r}, "--prompt", "To be", "--max_new_tokens", "3", "--device", "cpu"])
if "transformers" in sys.modules:  # it imports torch._dynamo itself; ten's own paths do not import it
    raise SystemExit("transformers was imported")
if {exports}:  # export checks that transformers is installed, and needs no import of it
    main(["export", "--checkpoint", {str(model)!r}, "--hf", {str(exported)!r}])
print("dynamo imported:", "torch._dynamo" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "dynamo imported: False"
    assert (exported / "config.json").is_file() == exports


def test_finding_and_loading_a_checkpoint_does_not_import_training():
    """generate, positions, analyze, export and eval load a model without the training package."""
    package = "temporal_eigenstate_networks"
    code = (f"import sys, {package}.runs.lookup, {package}.runs.checkpoint; "
            f"print(sorted(m for m in sys.modules if m.startswith('{package}.training')))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
