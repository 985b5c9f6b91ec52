"""--batch_size auto and --tokens_per_step: the search, what it saves, and what a run does without them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from temporal_eigenstate_networks import TemporalEigenstateConfig, TemporalEigenstateNetwork
from temporal_eigenstate_networks.experiments.compare import token_budget_steps
from temporal_eigenstate_networks.training import TrainArguments, Trainer, batch_search
from temporal_eigenstate_networks.training import trainer as trainer_module
from temporal_eigenstate_networks.training.batch_search import BatchChoice, choose_batch, search
from temporal_eigenstate_networks.training.plan import resolve_run
from temporal_eigenstate_networks.training.precision import resolve_precision
from temporal_eigenstate_networks.training.presets import TRAINING_PRESETS

from .test_training import TINY, run_cli, run_cli_or_exit, tiny_arguments

MIB = 2**20
T = 32  # the tiny runs' window
FLOAT32 = resolve_precision("no", torch.device("cpu"))


def tiny_model() -> TemporalEigenstateNetwork:
    return TemporalEigenstateNetwork(TemporalEigenstateConfig(vocab_size=256, d_model=32, n_layers=1,
                                                              num_eigenstates=8, max_seq_len=T))  # fmt: skip


def cpu_memory(monkeypatch, fixed_mib: float, per_sequence_mib: float, available_mib: float) -> list[int]:
    """A CPU whose steps need fixed + per_sequence x batch MiB and which has `available_mib` free; returns the
    batch sizes whose steps were measured."""
    measured: list[int] = []

    def measure(model, batch, seq_len, device, precision) -> int:
        measured.append(batch)
        return int((fixed_mib + per_sequence_mib * batch) * MIB)

    monkeypatch.setattr(batch_search, "measure_step_bytes", measure)
    monkeypatch.setattr(batch_search, "free_memory_bytes", lambda device: int(available_mib * MIB))
    return measured


def not_called(*args, **kwargs):
    raise AssertionError("the batch size was searched for")


# ---------------------------------------------------------------- the search


def test_the_search_doubles_then_bisects_to_the_largest_size_that_fits():
    tried: list[int] = []

    def fits(size: int) -> bool:
        tried.append(size)
        return size <= 13

    assert search(fits, 100) == (13, 14)
    assert tried == [1, 2, 4, 8, 16, 12, 14, 13]
    assert search(lambda size: True, 6) == (6, None)  # all the target needs fits: nothing larger is tried
    assert search(lambda size: False, 6) == (0, 1)


def test_on_a_cpu_the_largest_batch_within_the_free_memory_and_the_accumulation_that_reaches_the_target(
    monkeypatch,
):
    # 100 + 10 b MiB against 80% of 1,024 MiB: b = 71 fits, 72 does not. The target is 200 windows: 3 micro-batches
    # of 71 would pass it, so 3 of 67.
    measured = cpu_memory(monkeypatch, fixed_mib=100, per_sequence_mib=10, available_mib=1024)
    choice = choose_batch(tiny_model(), T, 200 * T, 1, torch.device("cpu"), FLOAT32, reserve_bytes=0)
    assert (choice.batch_size, choice.accumulation) == (67, 3)
    assert "71 fit and 72 would need about 820 MiB at T = 32, more than the 819 MiB this run may use" in choice.reason
    assert set(measured) <= {1, 4}  # a CPU step larger than batch 4 is estimated, never run
    line = choice.line(T, 1, 200 * T)
    assert line.startswith("batch 67 x accumulation 3 = 6,432 tokens per step, for 6,400 asked (auto: 71 fit")


def test_the_optimiser_state_held_aside_counts_against_the_cpus_memory(monkeypatch):
    cpu_memory(monkeypatch, fixed_mib=100, per_sequence_mib=10, available_mib=1024)
    choice = choose_batch(tiny_model(), T, 200 * T, 1, torch.device("cpu"), FLOAT32, reserve_bytes=100 * MIB)
    assert (choice.batch_size, choice.accumulation) == (50, 4)  # 61 fit beside the 100 MiB: 4 micro-batches of 50


def test_a_target_that_fits_in_one_micro_batch_takes_no_more(monkeypatch):
    cpu_memory(monkeypatch, fixed_mib=1, per_sequence_mib=1, available_mib=1024)
    choice = choose_batch(tiny_model(), T, 6 * T, 1, torch.device("cpu"), FLOAT32, reserve_bytes=0)
    assert (choice.batch_size, choice.accumulation) == (6, 1)
    assert "6 fit at T = 32, all the target needs" in choice.reason


def test_data_parallel_processes_share_the_target_and_a_machines_memory(monkeypatch):
    cpu_memory(monkeypatch, fixed_mib=100, per_sequence_mib=10, available_mib=1024)
    # Two processes: 100 windows each; half of 819 MiB each, so 30 fit: 4 micro-batches of 25.
    choice = choose_batch(tiny_model(), T, 200 * T, 2, torch.device("cpu"), FLOAT32, 0, processes_here=2)
    assert (choice.batch_size, choice.accumulation) == (25, 4)
    assert "shared by 2 processes" in choice.reason


def test_a_model_that_does_not_fit_at_batch_1_on_a_cpu_is_one_line(monkeypatch):
    cpu_memory(monkeypatch, fixed_mib=100, per_sequence_mib=900, available_mib=1024)
    with pytest.raises(ValueError, match=r"even at batch 1: a step at T = 32 would need about 1,000 MiB, more than the "
                                         r"819 MiB this run may use \(80% of 1.00 GiB available\)"):  # fmt: skip
        choose_batch(tiny_model(), T, 200 * T, 1, torch.device("cpu"), FLOAT32, reserve_bytes=0)


def test_the_cpu_search_measures_real_steps_and_leaves_no_gradient_and_the_same_random_numbers():
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("measures through Linux's /proc")
    model = tiny_model()
    state = torch.get_rng_state()
    choice = choose_batch(model, T, 4 * T, 1, torch.device("cpu"), FLOAT32, reserve_bytes=0)
    assert (choice.batch_size, choice.accumulation) == (4, 1)  # a tiny model: the target decides
    assert all(p.grad is None for p in model.parameters())  # the run's first step starts from no gradient
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------- CUDA: tried, out of memory caught


def fake_cuda(monkeypatch, largest_that_fits: int) -> list[int]:
    """A "CUDA device" whose steps above `largest_that_fits` raise torch's out-of-memory error."""
    tried: list[int] = []

    def try_step(model, batch, seq_len, device, precision, reserve_bytes=0) -> None:
        tried.append(batch)
        if batch > largest_that_fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch} GiB")

    monkeypatch.setattr(batch_search, "try_step", try_step)
    monkeypatch.setattr(batch_search, "device_memory", lambda device: (3 * 2**30, 80 * 2**30))
    return tried


def test_out_of_memory_while_trying_on_cuda_is_caught_and_bisected(monkeypatch):
    tried = fake_cuda(monkeypatch, largest_that_fits=12)
    choice = choose_batch(tiny_model(), 1024, 100 * 1024, 1, torch.device("cuda"), FLOAT32, reserve_bytes=0)
    assert (choice.batch_size, choice.accumulation) == (12, 9)  # 9 micro-batches of 12 reach 100 windows
    assert (
        choice.reason
        == "12 fit and 13 ran out of memory at T = 1,024 on cuda (3.00 GiB of 80.0 GiB free before the search)"
    )
    assert tried == [1, 2, 4, 8, 16, 12, 14, 13]
    line = choice.line(1024, 1, 100 * 1024)
    assert line == f"batch 12 x accumulation 9 = 110,592 tokens per step, for 102,400 asked (auto: {choice.reason})"


def test_out_of_memory_at_batch_1_on_cuda_is_one_line_naming_the_window_and_the_memory(monkeypatch):
    fake_cuda(monkeypatch, largest_that_fits=0)
    with pytest.raises(ValueError, match=r"even at batch 1: a step at T = 1,024 ran out of memory on cuda "
                                         r"\(3.00 GiB of 80.0 GiB free before the search\)") as error:  # fmt: skip
        choose_batch(tiny_model(), 1024, 8 * 1024, 1, torch.device("cuda"), FLOAT32, reserve_bytes=0)
    assert "\n" not in str(error.value)


def test_an_error_other_than_out_of_memory_is_not_taken_for_a_size_too_large(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(batch_search, "try_step", broken)
    monkeypatch.setattr(batch_search, "device_memory", lambda device: (2**30, 2**30))
    with pytest.raises(RuntimeError, match="a bug"):
        choose_batch(tiny_model(), T, 8 * T, 1, torch.device("cuda"), FLOAT32, reserve_bytes=0)


# ---------------------------------------------------------------- in a run: printed, saved, resumed


def saved_arguments(output: Path) -> dict:
    return json.loads((output / "checkpoints" / "final" / "trainer_state.json").read_text())["args"]


def test_the_choice_is_printed_saved_with_the_runs_arguments_and_reused_on_resume(
    corpus, tmp_path, capsys, monkeypatch
):
    cpu_memory(monkeypatch, fixed_mib=100, per_sequence_mib=200, available_mib=1024)  # 3 fit, 4 do not
    output = tmp_path / "run"
    argv = ["train", "--dataset", str(corpus), *TINY, "--batch_size", "auto", "--tokens_per_step", str(8 * T),
            "--max_steps", "2", "--output_dir", str(output)]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    # 100 + 200 b MiB in 819 MiB: 3 fit. The target is 8 windows: 3 micro-batches of 3.
    assert "batch 3 x accumulation 3 = 288 tokens per step, for 256 asked (auto: 3 fit and 4 would need" in out
    assert "288 tokens per step = batch 3 x seq 32 x accumulation 3" in out
    saved = saved_arguments(output)
    assert (saved["batch_size"], saved["gradient_accumulation"], saved["tokens_per_step"]) == (3, 3, 256)

    monkeypatch.setattr(trainer_module, "choose_batch", not_called)
    monkeypatch.setattr(batch_search, "measure_step_bytes", not_called)
    code, out, err = run_cli(["train", "--resume", str(output), "--max_steps", "4", "--batch_size", "auto"], capsys)
    assert code == 0, err
    assert "--batch_size auto: the run continues with its batch 3 x accumulation 3" in out
    state = json.loads((output / "checkpoints" / "final" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["tokens_seen"] == 4 * 288
    assert (state["args"]["batch_size"], state["args"]["gradient_accumulation"]) == (3, 3)


def test_a_dry_run_shows_the_choice(corpus, tmp_path, capsys, monkeypatch):
    cpu_memory(monkeypatch, fixed_mib=1, per_sequence_mib=1, available_mib=1024)
    argv = ["train", "--dataset", str(corpus), *TINY, "--batch_size", "auto", "--dry_run"]
    code, out, err = run_cli(argv, capsys)
    # The nano preset's target: 4,096 tokens, 128 windows of 32, all in one micro-batch.
    assert code == 0 and "batch 128 x accumulation 1 = 4,096 tokens per step (auto: 128 fit at T = 32" in out, err


def test_without_the_flags_a_run_is_what_it_was(corpus, tmp_path, monkeypatch):
    defaults = TrainArguments()
    assert (defaults.batch_size, defaults.gradient_accumulation, defaults.tokens_per_step) == (None, 1, None)
    plan = resolve_run(TrainArguments(dry_run=True))
    assert (plan.batch_size, plan.args.batch_size, plan.args.gradient_accumulation) == (8, 8, 1)
    assert plan.args.tokens_per_step is None
    monkeypatch.setattr(trainer_module, "choose_batch", not_called)
    output = tmp_path / "run"
    trainer = Trainer(tiny_arguments(corpus, output, max_steps=1, gradient_accumulation=2))
    trainer.train()
    trainer.close()
    saved = saved_arguments(output)
    assert (saved["batch_size"], saved["gradient_accumulation"], saved["tokens_per_step"]) == (2, 2, None)
    assert trainer.tokens_per_step == 2 * T * 2


def test_tokens_per_step_with_a_batch_given_sets_the_accumulation(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "choose_batch", not_called)
    plan = resolve_run(tiny_arguments(corpus, tmp_path / "run", tokens_per_step=5 * T, dry_run=True))
    assert (plan.batch_size, plan.args.gradient_accumulation) == (2, 3)  # 3 x 2 windows: at least 5
    plan = resolve_run(TrainArguments(config="small", tokens_per_step=2**16, dry_run=True))
    assert plan.args.gradient_accumulation == 2**16 // (TRAINING_PRESETS["small"].batch_size * 1024)
    # ten compare's --tokens as steps: 5 steps of 2 x 3 windows.
    assert token_budget_steps(5 * 6 * T, tiny_arguments(corpus, tmp_path / "c", tokens_per_step=6 * T)) == 5


def test_the_presets_give_a_target_to_batch_size_auto():
    plan = resolve_run(TrainArguments(config="medium", batch_size="auto", dry_run=True))
    assert plan.batch_size is None and plan.args.batch_size == "auto"  # found by the trainer, on the device
    assert plan.args.tokens_per_step == TRAINING_PRESETS["medium"].tokens_per_step == 2**19


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch_size", "0"], "argument --batch_size: must be positive or auto, got '0'"),
        (["--batch_size", "foo"], "argument --batch_size: must be a number or auto, got 'foo'"),
        (["--tokens_per_step", "0"], "argument --tokens_per_step: must be positive, got '0'"),
        (["--tokens_per_step", "16"], "--tokens_per_step 16 is less than one window of 32 tokens: give at least 32"),
        (["--batch_size", "auto", "--tokens_per_step", "31"], "--tokens_per_step 31 is less than one window"),
        (["--tokens_per_step", "64", "--gradient_accumulation", "2"], "give --tokens_per_step instead of"),
        (["--batch_size", "auto", "--gradient_accumulation", "2"], "--batch_size auto works out"),
    ],
)
def test_bad_values_are_one_line(corpus, tmp_path, capsys, flags, message):
    argv = ["train", "--dataset", str(corpus), *TINY, "--output_dir", str(tmp_path / "run"), *flags]
    code, err = run_cli_or_exit(argv, capsys)
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_library_callers_bad_batch_size_is_a_value_error():
    with pytest.raises(ValueError, match="--batch_size must be a positive number or auto, got foo"):
        TrainArguments(batch_size="foo").validate()
    TrainArguments(batch_size="auto").validate()


def test_compare_refuses_batch_size_auto_in_one_line(corpus, tmp_path, capsys):
    argv = ["compare", "--dataset", str(corpus), *TINY, "--batch_size", "auto", "--tokens", "1000",
            "--variants", "ten", "--output_dir", str(tmp_path / "compare")]  # fmt: skip
    code, err = run_cli_or_exit(argv, capsys)
    assert code == 2 and "--batch_size auto is for ten train" in err and err.count("\n") == 1, err


def test_every_rank_takes_rank_0s_choice(corpus, tmp_path, monkeypatch):
    """Under torchrun only rank 0 searches; the others take what it broadcasts."""

    class OtherRank:
        is_main, enabled, world_size = False, True, 2

        def broadcast(self, value):
            assert value is None  # this rank found nothing itself
            return BatchChoice(5, 2, "rank 0's reason")

    monkeypatch.setattr(trainer_module, "choose_batch", not_called)
    trainer = Trainer.__new__(Trainer)
    trainer.context = OtherRank()
    trainer.plan = resolve_run(tiny_arguments(corpus, tmp_path / "run", batch_size="auto", dry_run=True))
    trainer.find_batch()
    assert (trainer.plan.batch_size, trainer.args.batch_size, trainer.args.gradient_accumulation) == (5, 5, 2)
    assert trainer.batch_note.startswith("batch 5 x accumulation 2 x 2 processes = 640 tokens per step")
