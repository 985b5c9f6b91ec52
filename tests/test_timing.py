"""timing.py and device.py: the timer and machine description the benchmarks share, and the one reading
of --device."""

from __future__ import annotations

import pytest
import torch

import temporal_eigenstate_networks.timing
from temporal_eigenstate_networks.cli import main
from temporal_eigenstate_networks.device import resolve_device
from temporal_eigenstate_networks.timing import machine_description, median_seconds

CPU = torch.device("cpu")
NO_GPU = "--device {}: no CUDA GPU is available here (use --device cpu)"

# ---------------------------------------------------------------- resolve_device


@pytest.fixture
def gpu(monkeypatch):
    """Pretend there is (True) or is not (False) a GPU: torch.device("cuda", n) needs none to be built."""

    def pretend(present: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: present)

    return pretend


def test_resolve_device_without_a_gpu(gpu):
    gpu(False)
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu", local_rank=1) == CPU
    for request in ("cuda", "cuda:1"):
        with pytest.raises(ValueError) as caught:
            resolve_device(request)
        assert str(caught.value) == NO_GPU.format(request)


def test_resolve_device_with_a_gpu(gpu):
    gpu(True)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=2) == torch.device("cuda", 2)  # a torchrun process's own GPU
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cuda:1", local_rank=3) == torch.device("cuda", 1)  # an explicit index wins
    assert resolve_device("cpu") == CPU


@pytest.mark.parametrize("request_", ["tpu", "CPU", "", "cuda:", "cuda:x", "cuda:-1", " cpu", "mps"])
def test_resolve_device_rejects_other_values(request_, gpu):
    gpu(True)
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device(request_)


def test_resolve_device_on_this_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resolve_device_on_a_real_gpu():
    assert resolve_device("cuda") == torch.device("cuda", 0)


def test_bench_command_reports_a_bad_device_in_one_line(gpu, capsys):
    gpu(False)
    assert main(["bench", "--device", "cuda"]) == 2
    assert capsys.readouterr().err == f"ten bench: error: {NO_GPU.format('cuda')}\n"
    assert main(["bench", "--device", "gpu"]) == 2
    assert capsys.readouterr().err == "ten bench: error: --device gpu: expected auto, cpu, cuda or cuda:N\n"


# ---------------------------------------------------------------- median_seconds


class FakeClock:
    """perf_counter for timing.py: each call of `fn` advances it by the next of `durations` seconds."""

    def __init__(self, durations: list[float]) -> None:
        self.now, self.durations, self.calls = 100.0, durations, 0

    def __call__(self) -> float:
        return self.now

    def fn(self) -> None:
        self.now += self.durations[self.calls]
        self.calls += 1


def test_median_seconds_is_the_median_after_a_warm_up(monkeypatch):
    clock = FakeClock([9.0, 3.0, 1.0, 2.0])
    monkeypatch.setattr(temporal_eigenstate_networks.timing, "perf_counter", clock)
    assert median_seconds(clock.fn, CPU, reps=3) == 2.0  # the warm-up's 9 s is not among them
    assert clock.calls == 4


def test_median_seconds_takes_a_slow_warm_up_as_the_one_measurement(monkeypatch):
    clock = FakeClock([9.0, 3.0, 1.0, 2.0])
    monkeypatch.setattr(temporal_eigenstate_networks.timing, "perf_counter", clock)
    assert median_seconds(clock.fn, CPU, reps=3, slow_s=5.0) == 9.0
    assert clock.calls == 1

    fast = FakeClock([4.0, 3.0, 1.0, 2.0])
    monkeypatch.setattr(temporal_eigenstate_networks.timing, "perf_counter", fast)
    assert median_seconds(fast.fn, CPU, reps=3, slow_s=5.0) == 2.0
    assert fast.calls == 4


def test_median_seconds_calls_a_real_function_reps_plus_one_times():
    calls = []
    assert median_seconds(lambda: calls.append(1), CPU, reps=5) >= 0
    assert len(calls) == 6
    with pytest.raises(ValueError, match="reps must be at least 1"):
        median_seconds(lambda: None, CPU, reps=0)


# ---------------------------------------------------------------- machine_description


def test_machine_description_on_cpu():
    info = machine_description(CPU)
    assert list(info) == ["cpu", "cores", "torch", "threads", "device", "python"]
    assert info["device"] == "cpu" and info["torch"] == torch.__version__
    assert info["threads"] == torch.get_num_threads() and info["cores"] >= 1
    assert isinstance(info["cpu"], str) and info["cpu"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_machine_description_names_the_gpu():
    info = machine_description(torch.device("cuda", 0))
    assert info["gpu"] == torch.cuda.get_device_name(0) and info["device"] == "cuda:0"
