"""What every speed measurement here shares: waiting for the GPU, a median timer and a description of the
machine. Used by `ten bench`, `benchmarks/bench_core.py` and `ten train --benchmark`, so their figures are
taken the same way.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from time import perf_counter
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for the work queued on a GPU: CUDA calls return before it is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of fn(), including the GPU work it queued and none that was queued before."""
    sync(device)
    start = perf_counter()
    fn()
    sync(device)
    return perf_counter() - start


def median_seconds(fn: Callable[[], Any], device: torch.device, reps: int, slow_s: float = math.inf) -> float:
    """Median seconds of `reps` calls of fn() after one warm-up call (allocator, kernel selection).

    A warm-up slower than `slow_s` is the single measurement: long calls vary little, and repeating
    one (a 16k-token attention step, the sequential scan) would take minutes.
    """
    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    warm_up = timed_call(fn, device)
    if warm_up > slow_s:
        return warm_up
    return statistics.median(timed_call(fn, device) for _ in range(reps))


def cpu_name() -> str:
    """The model name from /proc/cpuinfo where there is one: platform.processor() is often just 'x86_64'."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def machine_description(device: torch.device) -> dict[str, Any]:
    """cpu, cores, torch, threads, device, gpu (on CUDA only) and python: enough to tell two runs' machines apart.

    The first five keep the order bench_core.py has always printed, so old and new headers compare.
    """
    info: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "device": str(device)}  # fmt: skip
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["python"] = platform.python_version()
    return info
