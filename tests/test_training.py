"""`ten train` and friends: exact resume, atomic checkpoints, signals, data parallelism, error messages."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from temporal_eigenstate_networks import TemporalEigenstateConfig, TemporalEigenstateNetwork
from temporal_eigenstate_networks.atomic import WriteError
from temporal_eigenstate_networks.cli import main
from temporal_eigenstate_networks.runs.checkpoint import load_model
from temporal_eigenstate_networks.training import TrainArguments, Trainer
from temporal_eigenstate_networks.training import checkpoint as checkpoint_module
from temporal_eigenstate_networks.training import trainer as trainer_module
from temporal_eigenstate_networks.training.optimizer import parameter_groups
from temporal_eigenstate_networks.training.precision import cpu_supports_bf16, resolve_precision
from temporal_eigenstate_networks.training.presets import TRAINING_PRESETS
from temporal_eigenstate_networks.training.schedule import learning_rate_at

TINY = ["--d_model", "32", "--n_layers", "1", "--num_eigenstates", "8", "--max_seq_len", "32", "--batch_size", "2",
        "--eval_batches", "1", "--sample_tokens", "0"]  # fmt: skip


def tiny_arguments(corpus: Path, output: Path, **overrides) -> TrainArguments:
    values = dict(dataset=str(corpus), d_model=32, n_layers=1, num_eigenstates=8, max_seq_len=32, batch_size=2,
                  eval_batches=1, sample_tokens=0, output_dir=str(output), eval_steps=1000,
                  save_steps=1000)  # fmt: skip
    return TrainArguments(**{**values, **overrides})


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def set_json(path: Path, keys: list, value) -> None:
    """Replace one value of a JSON file (a hand edit that gets a type wrong)."""
    data = json.loads(path.read_text())
    inner = data
    for key in keys[:-1]:
        inner = inner[key]
    inner[keys[-1]] = value
    path.write_text(json.dumps(data))


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what earlier steps of the test printed
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- the pieces


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    rates = [learning_rate_at(s, 1.0, total_steps=110, warmup_steps=10, min_ratio=0.1) for s in range(110)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))
    assert rates[-1] == pytest.approx(0.1, abs=1e-3)


def test_no_weight_decay_on_norms_biases_and_eigenvalue_parameters():
    model = TemporalEigenstateNetwork(TemporalEigenstateConfig(d_model=32, n_layers=1, num_eigenstates=8))
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {n for n in names.values() if "decay_logit" in n or "frequency" in n or "coupling" in n} <= no_decay_names
    assert all(p.dim() >= 2 for p in decay["params"]) and "embedding.weight" not in no_decay_names
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_precision_requests_that_cannot_be_met_are_errors():
    cpu = torch.device("cpu")
    assert resolve_precision("no", cpu).dtype is None
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)
    expected = torch.bfloat16 if cpu_supports_bf16() else None
    assert resolve_precision("auto", cpu).dtype == expected


# ---------------------------------------------------------------- training runs


def test_training_lowers_the_validation_loss_and_logs_every_figure(corpus, tmp_path):
    output = tmp_path / "run"
    result = Trainer(tiny_arguments(corpus, output, max_steps=40, eval_steps=20, learning_rate=3e-3)).train()
    assert result.status == "finished" and result.step == 40
    assert result.eval["val_ce"] < math.log(256) - 1.0  # well below the uniform guess
    lines = records(output)
    assert [r["event"] for r in lines][0] == "start" and lines[-1]["event"] == "end"
    train = [r for r in lines if r["event"] == "train"]
    assert {"loss", "ce", "energy", "lr", "tokens_per_s", "grad_norm"} <= set(train[0])
    assert all(r["loss"] == pytest.approx(r["ce"] + 0.01 * r["energy"], rel=1e-5) for r in train)
    evals = [r for r in lines if r["event"] == "eval"]
    assert {"val_ce", "val_ppl", "val_bits_per_byte"} <= set(evals[0])
    assert {p.name for p in (output / "checkpoints").iterdir()} == {"best", "final"}


@pytest.mark.parametrize("preset, given", [("medium", None), ("nano", None), ("nano", 3e-3)])
def test_the_peak_learning_rate_is_the_presets_unless_given(corpus, tmp_path, preset, given):
    args = tiny_arguments(corpus, tmp_path / "run", config=preset, learning_rate=given, max_steps=2, warmup_steps=0)
    Trainer(args).train()
    first = next(r for r in records(tmp_path / "run") if r["event"] == "train")
    assert first["lr"] == pytest.approx(given or TRAINING_PRESETS[preset].learning_rate)


@pytest.mark.parametrize("model", [{}, {"n_layers": 2, "layer_pattern": "ew", "attention_window": 8}],
                         ids=["ten", "hybrid-ew"])  # fmt: skip
def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(corpus, tmp_path, monkeypatch, model):
    """4 steps, SIGTERM, resume for 4 more == 8 steps straight (with dropout, so random state matters too)."""
    straight = Trainer(tiny_arguments(corpus, tmp_path / "a", max_steps=8, dropout=0.1, **model)).train()

    original_step = Trainer.train_step

    def step_then_signal(self):
        values = original_step(self)
        if self.state.step == 4:
            signal.raise_signal(signal.SIGTERM)  # the real handler: stop at this step boundary and save
        return values

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    first = Trainer(tiny_arguments(corpus, tmp_path / "b", max_steps=8, dropout=0.1, **model)).train()
    assert first.status == "stopped" and first.step == 4 and first.checkpoint.name == "step-0000004"
    monkeypatch.setattr(Trainer, "train_step", original_step)

    resumed = Trainer(tiny_arguments(corpus, tmp_path / "b", max_steps=8, dropout=0.1, resume="", **model)).train()
    assert resumed.status == "finished" and resumed.step == 8
    a, b = weights(straight.checkpoint), weights(resumed.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_default_output_dirs_are_numbered_and_resume_finds_the_latest(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = dict(output_dir=None, config="nano")
    first = Trainer(tiny_arguments(corpus, tmp_path, max_steps=1, **values)).train()
    second = Trainer(tiny_arguments(corpus, tmp_path, max_steps=1, **values)).train()
    assert first.checkpoint.parent.parent == Path("runs/nano")
    assert second.checkpoint.parent.parent == Path("runs/nano-2")
    resumed = Trainer(tiny_arguments(corpus, tmp_path, max_steps=2, resume="", **values)).train()
    assert resumed.checkpoint.parent.parent == Path("runs/nano-2") and resumed.step == 2


def test_a_crash_while_saving_leaves_no_half_checkpoint(corpus, tmp_path, monkeypatch):
    output = tmp_path / "run"
    trainer = Trainer(tiny_arguments(corpus, output, max_steps=2))
    trainer.train()
    final = output / "checkpoints" / "final"
    before = weights(final)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_tokenizer", crash)  # fails after the weights were written
    with pytest.raises(WriteError, match="disk full"):
        trainer.save("final")
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["best", "final"]
    assert all(torch.equal(before[k], v) for k, v in weights(final).items())


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:100]), "corrupt"),
        (lambda p: (p / "trainer_state.json").write_text("{"), "corrupt"),
        (lambda p: (p / "optimizer.safetensors").unlink(), "missing optimizer.safetensors"),
        (lambda p: (p / "trainer_state.json").write_text('{"format": "other"}'), "not a ten checkpoint"),
        (lambda p: set_json(p / "config.json", ["selective_range"], "0.1"), "config.json: selective_range must be a"),
        (lambda p: set_json(p / "trainer_state.json", ["step"], "1"), "step must be an integer, got '1'"),
        (lambda p: set_json(p / "trainer_state.json", ["args"], []), "args must be an object"),
        (lambda p: set_json(p / "trainer_state.json", ["args", "learning_rate"], "x"), "args.learning_rate must be"),
        (
            lambda p: set_json(p / "trainer_state.json", ["optimizer", "param_groups", 0, "eps"], "x"),
            "optimizer.param_groups[0].eps is 'x'",
        ),
    ],
)
def test_a_damaged_checkpoint_is_a_one_line_error(corpus, tmp_path, capsys, damage, message):
    output = tmp_path / "run"
    Trainer(tiny_arguments(corpus, output, max_steps=1)).train()
    damage(output / "checkpoints" / "final")
    code, _, err = run_cli(["train", "--dataset", str(corpus), *TINY, "--output_dir", str(output), "--resume"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_and_exits_cleanly(corpus, tmp_path, signum):
    output = tmp_path / "run"
    command = [sys.executable, "-m", "temporal_eigenstate_networks", "train", "--dataset", str(corpus), *TINY,
               "--max_steps", "100000", "--output_dir", str(output)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((output / "metrics.jsonl").exists() and "train" in (output / "metrics.jsonl").read_text()):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert f"{signum.name}: stopping at step" in out + err and "Traceback" not in err
    saved = [p for p in (output / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert len(saved) == 1 and (saved[0] / "trainer_state.json").is_file()


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(corpus, tmp_path, capsys, monkeypatch):
    original = TemporalEigenstateNetwork.compute_loss
    calls = []

    def poisoned(self, inputs, targets, return_dict=False):
        out = original(self, inputs, targets, return_dict=True)
        if self.training:  # training steps only: the check before each save runs in evaluation mode
            calls.append(1)
        if self.training and len(calls) > 3:  # from step 4 on
            out = {k: v * float("nan") for k, v in out.items()}
        return out if return_dict else out["loss"]

    monkeypatch.setattr(TemporalEigenstateNetwork, "compute_loss", poisoned)
    output = tmp_path / "run"
    argv = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "10", "--save_steps", "2", "--eval_steps", "100",
            "--output_dir", str(output)]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "the loss became nan at step 4" in err and "Traceback" not in err
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-0000002"]
    assert f"the last good checkpoint is {output / 'checkpoints' / 'step-0000002'}" in err


def test_after_a_divergence_the_checkpoints_work_and_the_advice_is_accepted(corpus, tmp_path, capsys):
    """A step's weights are only tested by the next step's forward: a save checks them first."""
    output = tmp_path / "run"
    argv = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "10", "--learning_rate", "300", "--save_steps",
            "1", "--warmup_steps", "0", "--eval_steps", "100", "--output_dir", str(output)]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    last = err.splitlines()[-1]
    assert code == 1 and "nan" in last and "so they are not saved" in last, last
    saved = sorted((output / "checkpoints").iterdir())
    assert saved and f"the last good checkpoint is {saved[-1]}" in last
    for checkpoint in saved:  # each gives a finite loss: resuming from it does not diverge at once
        model = load_model(checkpoint)
        inputs = torch.randint(0, 256, (2, 32))
        with torch.no_grad():
            assert math.isfinite(float(model.compute_loss(inputs, inputs.roll(-1, 1))))
    advice = last.split("ten train ")[-1].split()  # --resume <the checkpoint> --learning_rate <a tenth>
    assert advice[:2] == ["--resume", str(saved[-1])] and advice[2:] == ["--learning_rate", "30"]
    code, out, err = run_cli(["train", *advice], capsys)
    assert code == 0, err
    assert "the peak learning rate is lowered from 300 to 30" in out + err
    assert records(output)[-1]["event"] == "end" and records(output)[-1]["step"] == 10
    code, _, err = run_cli(["train", "--resume", str(output), "--learning_rate", "3000", "--max_steps", "11"], capsys)
    assert code == 2 and "a resumed run may only lower it" in err and err.count("\n") == 1


def test_a_checkpoint_with_weights_that_are_not_finite_is_one_line(corpus, tmp_path, capsys):
    output = tmp_path / "run"
    Trainer(tiny_arguments(corpus, output, max_steps=1)).train()
    final = output / "checkpoints" / "final"
    poisoned = weights(final)
    next(iter(poisoned.values()))[0] = float("nan")
    save_file(poisoned, str(final / "model.safetensors"))
    for argv in (["generate", "--checkpoint", str(output), "--prompt", "Now"], ["train", "--resume", str(final)]):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and "not finite numbers" in err and err.count("\n") == 1, (argv, err)


def signal_at(monkeypatch, module, name: str, signum: int, when=lambda *args, **kwargs: True) -> None:
    """Make module.name send `signum` to this process before it does its work (when `when(*its arguments)`)."""
    original = getattr(module, name)

    def signalling(*args, **kwargs):
        if when(*args, **kwargs):
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, signalling)


@pytest.fixture
def sigterm_exits():
    """SIGTERM's default ends the process (pytest with it): raise SystemExit(143) instead while a test runs."""

    def exit_143(signum, frame):
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, exit_143)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_final_evaluation_saves_the_last_step(corpus, tmp_path, capsys, monkeypatch, signum,
                                                                  sigterm_exits):  # fmt: skip
    signal_at(monkeypatch, trainer_module, "evaluate", signum)  # only the final evaluation runs: eval_steps 1000
    output = tmp_path / "run"
    argv = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "3", "--eval_batches", "4", "--output_dir",
            str(output)]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert f"{signum.name}: the evaluation at step 3 is skipped" in out + err and "Traceback" not in err
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-0000003"]
    end = records(output)[-1]
    assert end["event"] == "end" and end["status"] == "stopped" and end["step"] == 3 and "val_ce" not in end
    monkeypatch.undo()
    code, _, err = run_cli(["train", "--resume", str(output)], capsys)  # continuing it: the evaluation, then final
    assert code == 0 and (output / "checkpoints" / "final").is_dir() and "val_ce" in records(output)[-1], err


def test_a_signal_during_the_final_save_keeps_it_and_skips_the_sample(corpus, tmp_path, capsys, monkeypatch,
                                                                      sigterm_exits):  # fmt: skip
    signal_at(monkeypatch, trainer_module, "save_checkpoint", signal.SIGTERM, lambda path, *rest: path.name == "final")
    output = tmp_path / "run"
    argv = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "2", "--sample_tokens", "5", "--output_dir",
            str(output)]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and "sample (" not in out + err, err
    assert (output / "checkpoints" / "final").is_dir() and records(output)[-1]["status"] == "finished"


def test_prepared_token_files_train_like_the_text(corpus, tmp_path, capsys):
    prepared = tmp_path / "tokens"
    code, out, _ = run_cli(["prepare", "--dataset", str(corpus), "--output_dir", str(prepared)], capsys)
    assert code == 0 and (prepared / "train.bin").is_file()
    results = []
    for source in (["--dataset", str(corpus)], ["--tokenized_dir", str(prepared)]):
        output = tmp_path / f"run{len(results)}"
        assert run_cli(["train", *source, *TINY, "--max_steps", "3", "--output_dir", str(output)], capsys)[0] == 0
        results.append(weights(output / "checkpoints" / "final"))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_benchmark_mode_reports_speed_and_saves_nothing(corpus, tmp_path, capsys):
    output = tmp_path / "run"
    code, out, err = run_cli(["train", "--dataset", str(corpus), *TINY, "--benchmark", "--output_dir", str(output)],
                             capsys)  # fmt: skip
    assert code == 0 and "tokens_per_s" in out + err and "generate_ms_per_token" in out + err
    assert not output.exists()


def test_generate_prints_text_from_a_checkpoint_deterministically(corpus, tmp_path, capsys):
    output = tmp_path / "run"
    Trainer(tiny_arguments(corpus, output, max_steps=2)).train()
    argv = ["generate", "--checkpoint", str(output), "--prompt", "Now is", "--max_new_tokens", "20", "--seed", "3"]
    code, first, _ = run_cli(argv, capsys)
    assert code == 0 and first.startswith("Now is") and len(first) > len("Now is")
    assert run_cli(argv, capsys)[1] == first


def test_dry_run_prints_the_losses_and_writes_nothing(corpus, tmp_path, capsys):
    output = tmp_path / "run"
    code, out, err = run_cli(["train", "--dataset", str(corpus), *TINY, "--output_dir", str(output), "--dry_run",
                              "--dry_samples", "2"], capsys)  # fmt: skip
    text = out + err
    assert code == 0 and "ce_loss" in text and "energy_loss" in text and "parameters" in text
    assert not output.exists()


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_bf16_autocast_training_runs_on_cpu(corpus, tmp_path):
    result = Trainer(tiny_arguments(corpus, tmp_path / "run", max_steps=3, mixed_precision="bf16")).train()
    assert math.isfinite(result.eval["val_ce"])


def run_process_group(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run torchrun in a session of its own: on a timeout its workers are killed with it, not left holding a
    collective for gloo's 30 minutes (a leftover was seen after a killed run)."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as process:  # fmt: skip
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            pytest.fail(f"torchrun did not finish in {timeout} s: {err[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.mark.parametrize("model", ["ten", "mamba2"])
def test_torchrun_two_cpu_ranks_stay_in_step(corpus, tmp_path, model):
    if model == "mamba2":
        pytest.importorskip("transformers", reason="mamba2 is transformers' Mamba2ForCausalLM (the hf extra)")
    output = tmp_path / "run"
    sizes = TINY if model == "ten" else [arg for arg in TINY if arg not in ("--num_eigenstates", "8")]
    tracked = importlib.util.find_spec("tensorboard") is not None  # only rank 0 may log to a tracker
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "temporal_eigenstate_networks", "train", "--dataset", str(corpus), *sizes, "--model", model,
               "--max_steps", "3", "--device", "cpu", "--output_dir", str(output),
               *(["--report_to", "tensorboard"] if tracked else [])]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = run_process_group(command, env, timeout=300)
    assert done.returncode == 0, done.stderr[:3000]
    lines = records(output)
    start = next(r for r in lines if r["event"] == "start")
    end = next(r for r in lines if r["event"] == "end")
    assert start["world_size"] == 2 and len(end["fingerprints"]) == 2
    assert end["fingerprints"][0] == end["fingerprints"][1] != start["fingerprint"]
    header = {"ten": "TemporalEigenstateNetwork:", "mamba2": "Mamba2 (transformers' Mamba2ForCausalLM"}[model]
    assert done.stdout.count(header) == 1  # only rank 0 prints
    if tracked:
        assert len(list((output / "tensorboard").iterdir())) == 1  # one writer: rank 0's


# ---------------------------------------------------------------- user mistakes: exit 2, one line


def bad_inputs(tmp_path: Path, corpus: Path) -> list[tuple[list[str], str]]:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    short = tmp_path / "short.txt"
    short.write_text("too short")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    earlier_run = tmp_path / "earlier"
    (earlier_run / "checkpoints" / "final").mkdir(parents=True)
    linked_run = tmp_path / "linked"  # its checkpoints/ is a link to a folder elsewhere, which holds a run
    linked_run.mkdir()
    (tmp_path / "elsewhere" / "step-0000001").mkdir(parents=True)
    (linked_run / "checkpoints").symlink_to(tmp_path / "elsewhere")
    data = ["--dataset", str(corpus)]
    cases = [
        (["--config", "huge"], "invalid choice: 'huge'"),
        (["--hten_scales", "1,a"], "--hten_scales"),
        (["--hten_scales", "0,2"], "positive"),
        (["--hten_scales", "2,2"], "distinct"),
        (["--hten_scales", ""], "--hten_scales"),
        (["--hten_scales", "1,2"], "--hten_scales needs --use_hten"),
        (["--model", "transformer", "--use_hten"], "--use_hten, --num_eigenstates do not apply to --model"),
        (["--device", "tpu"], "expected auto, cpu, cuda or cuda:N"),
        (["--energy_reg_weight", "-1"], "--energy_reg_weight"),
        (["--energy_reg_weight", "nan"], "--energy_reg_weight"),
        (["--energy_reg_weight", "inf"], "--energy_reg_weight"),
        (["--learning_rate", "0"], "--learning_rate"),
        (["--learning_rate", "-1e-3"], "--learning_rate"),
        (["--batch_size", "0"], "--batch_size"),
        (["--max_seq_len", "-5"], "--max_seq_len"),
        (["--max_steps", "0"], "--max_steps"),
        (["--dataset", str(tmp_path / "missing.txt")], "unknown dataset"),
        (["--dataset", str(empty)], "empty"),
        (["--dataset", str(binary)], "not UTF-8"),
        (["--dataset", str(short)], "fewer than one window"),
        ([*data, "--resume", str(tmp_path / "nothing")], "nothing does not exist"),
        ([*data, "--output_dir", str(blocker / "run")], "--output_dir"),
        ([*data, "--output_dir", str(earlier_run)], "holds an earlier run"),
        ([*data, "--use_8bit_optim"], "bitsandbytes"),
        ([*data, "--output_dir", str(linked_run), "--overwrite"], "checkpoints is a link to"),
        (["--d_mod", "64"], "ten train: error: unrecognized arguments: --d_mod 64 (see ten train --help)"),  # in full
        (["--max_step", "8"], "unrecognized arguments: --max_step 8"),
        ([*data, "--resume", str(earlier_run), "--max_step", "8"], "unrecognized arguments: --max_step 8"),
        (["--seed", "-1"], "argument --seed: must be an integer in [0, 2**64 - 1]"),  # at parse time: no folder
    ]
    if not torch.cuda.is_available():
        cases.append(([*data, "--device", "cuda"], "no CUDA GPU"))
    return cases


def run_cli_or_exit(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of a command, including those argparse ends itself."""
    try:
        code, _, err = run_cli(argv, capsys)
    except SystemExit as exit_:  # argparse's own errors
        code, err = exit_.code, capsys.readouterr().err
    return code, err


def test_every_user_mistake_is_one_line_and_exit_code_2(corpus, tmp_path, capsys):
    for flags, message in bad_inputs(tmp_path, corpus):
        argv = ["train", *TINY, "--max_steps", "1", "--output_dir", str(tmp_path / "out"), *flags]
        code, err = run_cli_or_exit(argv, capsys)
        assert code == 2, (flags, err)
        assert message in err, (flags, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (flags, err)
    assert (tmp_path / "elsewhere" / "step-0000001").is_dir()  # --overwrite deleted nothing through the link


def test_world_size_without_torchrun_is_one_line(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    argv = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "1", "--output_dir", str(tmp_path / "run")]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "WORLD_SIZE=2 is set without torchrun's RANK, LOCAL_RANK" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_resume_accepts_the_settings_in_use_and_a_runs_checkpoints_folder(corpus, tmp_path, capsys):
    output = tmp_path / "run"
    Trainer(tiny_arguments(corpus, output, max_steps=1)).train()  # at the preset's learning rate
    state_file = output / "checkpoints" / "final" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    for name in ("learning_rate", "selective_range"):  # as a run saved before these were recorded
        del state["args"][name]
    state_file.write_text(json.dumps(state))
    nano = TRAINING_PRESETS["nano"]
    given = ["--learning_rate", str(nano.learning_rate), "--selective_range", "0.1", "--batch_size", "2"]
    argv = ["train", "--dataset", str(corpus), *TINY, *given, "--max_steps", "2", "--resume"]
    code, _, err = run_cli([*argv, str(output / "checkpoints")], capsys)  # the run's checkpoints/: the run
    assert code == 0, err
    assert records(output)[-1]["step"] == 2 and (output / "checkpoints" / "final").is_dir()
    code, _, err = run_cli([*argv, str(output), "--learning_rate", "1e-3"], capsys)
    assert code == 2 and "--learning_rate 0.001 differs from the resumed run's 0.0006" in err


def test_mlp_hidden_0_builds_blocks_without_an_mlp(corpus, tmp_path, capsys):
    code, out, err = run_cli(["train", "--dry_run", "--mlp_hidden", "0", "--dataset", str(corpus), *TINY], capsys)
    assert code == 0, err
    trainer = Trainer(tiny_arguments(corpus, tmp_path / "run", mlp_hidden=0, dry_run=True))
    assert trainer.plan.model.config.mlp_hidden == 0
    assert all(block.mlp is None for block in trainer.model.blocks)
    assert f"{trainer.model.config.parameter_count():,} parameters" in out  # the printed summary is this model
    trainer.close()


def test_a_resumed_run_keeps_its_mlp_hidden(corpus, tmp_path, capsys):
    output = tmp_path / "run"
    Trainer(tiny_arguments(corpus, output, max_steps=1, mlp_hidden=64)).train()
    argv = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "2", "--resume", str(output)]
    code, _, err = run_cli([*argv, "--mlp_hidden", "0"], capsys)
    assert code == 2 and "--mlp_hidden 0 differs from the resumed run's 64; a resumed run keeps it" in err
    code, _, err = run_cli([*argv, "--mlp_hidden", "64"], capsys)  # the value in use may be given
    assert code == 0, err


def test_a_checkpoint_path_that_does_not_exist_is_named(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    for command in (["generate", "--checkpoint", str(missing)], ["positions", "--checkpoint", str(missing)]):
        code, _, err = run_cli(command, capsys)
        assert code == 2 and err.strip().endswith(f"{missing} does not exist") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("damage", "why"),
    [(lambda p: (p / "trainer_state.json").write_text("{"), "corrupt"),
     (lambda p: (p / "optimizer.safetensors").unlink(), "missing optimizer.safetensors")],
)  # fmt: skip
def test_a_resume_that_passes_over_a_damaged_final_says_so_and_why(corpus, tmp_path, capsys, damage, why):
    output = tmp_path / "run"
    Trainer(tiny_arguments(corpus, output, max_steps=4, save_steps=2)).train()
    damage(output / "checkpoints" / "final")
    code, out, _ = run_cli(["train", "--dataset", str(corpus), *TINY, "--output_dir", str(output), "--resume",
                            "--max_steps", "5"], capsys)  # fmt: skip
    assert code == 0
    said = next(line for line in out.splitlines() if "passed over final" in line)
    assert why in said and "resuming from step-0000002" in said


def test_a_prompt_from_a_file_or_in_any_bytes_reaches_the_byte_model_as_it_is(corpus, tmp_path, capsys):
    output = tmp_path / "run"
    Trainer(tiny_arguments(corpus, output, max_steps=1)).train()
    raw = b"Now is the winter " + b"\xff\xfe"  # not UTF-8
    (tmp_path / "prompt.bin").write_bytes(raw)
    base = ["generate", "--checkpoint", str(output), "--max_new_tokens", "0"]
    code, out, _ = run_cli([*base, "--prompt_file", str(tmp_path / "prompt.bin")], capsys)
    assert code == 0 and out.startswith("Now is the winter \ufffd\ufffd")  # its bytes, shown with replacements
    code, out, _ = run_cli([*base, "--prompt", os.fsdecode(raw)], capsys)  # the same bytes on the command line
    assert code == 0 and out.startswith("Now is the winter \ufffd\ufffd")
    (tmp_path / "empty.txt").write_text("")
    for flags, message in (
        (["--prompt_file", str(tmp_path / "empty.txt")], "is empty"),
        (["--prompt_file", str(tmp_path / "none.txt")], "No such file"),
        (["--prompt", "x", "--prompt_file", str(tmp_path / "prompt.bin")], "not allowed with"),
    ):
        code, err = run_cli_or_exit([*base, *flags], capsys)
        assert code == 2 and message in err and err.count("\n") == 1


def test_a_prompt_that_is_not_utf8_is_one_line_for_a_text_tokenizer():
    import numpy as np

    from temporal_eigenstate_networks.cli import UserError, prompt_ids

    class TextTokenizer:
        kind = "bpe"

        def encode(self, text: str) -> np.ndarray:
            return np.array([ord(c) for c in text])

    assert prompt_ids(TextTokenizer(), "ab", None).tolist() == [97, 98]
    with pytest.raises(UserError, match=r"--prompt is not UTF-8 text \(byte 2\)"):
        prompt_ids(TextTokenizer(), os.fsdecode(b"ab\xff"), None)
