"""benchmarks/train_mfu.py: a finished run's MFU from its own tokens/s and the FLOPs of its training step."""

import importlib.util
from pathlib import Path

import pytest
import torch

from temporal_eigenstate_networks.lm import LanguageModel
from temporal_eigenstate_networks.training import Trainer
from temporal_eigenstate_networks.training.precision import resolve_precision

from .test_training import tiny_arguments


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_training_step_counts_six_flops_per_weight_and_token(corpus, tmp_path):
    train_mfu = load_benchmark("train_mfu")
    Trainer(tiny_arguments(corpus, tmp_path / "run", max_steps=2)).train()
    model = LanguageModel.from_pretrained(tmp_path / "run" / "checkpoints" / "final")
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    matmul_weights += model.config.vocab_size * model.config.d_model  # the tied LM head
    cpu = torch.device("cpu")
    counted = train_mfu.flops_per_token(model, 32, resolve_precision("no", cpu), cpu)
    # forward 2 and backward 4 per weight and token; the eigenstate coupling adds a little, the scan nothing
    assert 6 * matmul_weights <= counted <= 1.05 * 6 * matmul_weights
    assert all(p.grad is None for p in model.parameters())  # counting leaves no gradient behind


def test_the_report_names_tokens_flops_mfu_and_cost(corpus, tmp_path, capsys):
    train_mfu = load_benchmark("train_mfu")
    Trainer(tiny_arguments(corpus, tmp_path / "run", max_steps=2)).train()
    capsys.readouterr()  # the run's own output
    train_mfu.report(tmp_path / "run", torch.device("cpu"), hourly_rate=2.0)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "run", "tokens/s", "FLOPs per token (training step, counted)", "achieved", "MFU", "cost"]  # fmt: skip
    assert lines[-1].endswith("per million tokens at $2/hour, at the steps' rate")


def test_a_folder_that_is_not_a_finished_run_is_one_line(tmp_path, monkeypatch):
    train_mfu = load_benchmark("train_mfu")
    monkeypatch.setattr("sys.argv", ["train_mfu.py", str(tmp_path), "--device", "cpu"])
    with pytest.raises(SystemExit) as stop:
        train_mfu.main()
    assert str(stop.value).startswith("train_mfu.py: ") and "trainer_state.json" in str(stop.value)
    assert "\n" not in str(stop.value)
