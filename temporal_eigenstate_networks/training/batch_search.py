"""--batch_size auto: the largest micro-batch of the run's model that fits in memory at its window, and the
gradient accumulation that reaches the run's tokens per step.

The sizes are searched by doubling from 1, then bisecting. What "fits" means depends on the device:
- CUDA: tried. A forward and backward of the real model at that size, with the optimiser's moments held aside;
  an out-of-memory error means too large, and the memory is freed after each try.
- CPU: never tried beyond batch 4. There, memory that runs out is rarely an exception: the kernel's OOM killer
  ends the process (or swap slows it a hundredfold). So the peak memory of a step is measured at batches 1 and 4,
  extrapolated linearly (activations grow with the batch), and compared with the memory the machine has
  available.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..units import bytes_text
from .precision import Precision

CPU_SHARE = 0.8  # of the memory available: room for the page cache, evaluation batches and other processes
MEASURED = (1, 4)  # the batch sizes whose steps a CPU measures (after a warm-up step at batch 1); 1 and 2 differ
# too little: the noise of the resident size (+-20 MiB at nano) made the line 15% too shallow
ADVICE = "give a smaller --max_seq_len, or --gradient_checkpointing or --mixed_precision, or a smaller model"


@dataclass(frozen=True)
class BatchChoice:
    batch_size: int  # sequences per micro-batch, on each process
    accumulation: int  # micro-batches per optimiser step
    reason: str  # why this size: what fitted, and what did not

    def line(self, seq_len: int, world_size: int, target: int) -> str:
        """The run header's line: "batch 24 x accumulation 4 = 98,304 tokens per step (auto: ...)"."""
        tokens = self.batch_size * seq_len * self.accumulation * world_size
        world = f" x {world_size} processes" if world_size > 1 else ""
        asked = "" if tokens == target else f", for {target:,} asked"
        return (f"batch {self.batch_size} x accumulation {self.accumulation}{world} = {tokens:,} tokens per step"
                f"{asked} (auto: {self.reason})")  # fmt: skip


def search(fits: Callable[[int], bool], upper: int) -> tuple[int, int | None]:
    """The largest size in 1..upper that fits (0: not even 1), and the smallest tried that did not (None: upper
    fits). Doubling from 1, then bisecting between the last that fitted and the first that did not."""
    if not fits(1):
        return 0, 1
    largest, failed = 1, None
    while largest < upper:
        size = min(2 * largest, upper)
        if not fits(size):
            failed = size
            break
        largest = size
    while failed is not None and failed - largest > 1:
        middle = (largest + failed) // 2
        if fits(middle):
            largest = middle
        else:
            failed = middle
    return largest, failed


@dataclass(frozen=True)
class MemoryProbe:
    """Whether a batch fits on a device, and the words that say why or why not."""

    fits: Callable[[int], bool]
    short_of: Callable[[int], str]  # what a size that does not fit did: "ran out of memory"
    limit: str  # what it ran against: " on cuda:0 (3.00 GiB of 80.0 GiB free)"
    used: Callable[[int], str] = lambda batch: ""  # what a size that fits takes, where known


def choose_batch(
    model: nn.Module,
    seq_len: int,
    target: int,
    world_size: int,
    device: torch.device,
    precision: Precision,
    reserve_bytes: int,
    processes_here: int = 1,
) -> BatchChoice:
    """The micro-batch and accumulation for `target` tokens per optimiser step over `world_size` processes.

    `reserve_bytes`: what the run holds beyond a step and the weights (the optimiser's moments, DDP's buckets).
    `processes_here`: the processes sharing this machine's memory (a CPU run under torchrun). The random
    number generators are left as they were, and no gradient is left behind."""
    upper = math.ceil(target / (seq_len * world_size))  # more than this per micro-batch would pass the target
    model.train()
    cuda = device.type == "cuda" and torch.cuda.is_available()
    with torch.random.fork_rng(devices=[device] if cuda else []):  # the run draws what it would have drawn
        if device.type == "cuda":
            probe = _probe_by_trying(model, seq_len, device, precision, reserve_bytes)
        elif device.type == "cpu":
            probe = _probe_by_estimate(model, seq_len, upper, device, precision, reserve_bytes, processes_here)
        else:
            raise ValueError(f"--batch_size auto measures memory on CUDA and CPUs, not {device.type}: give "
                             "--batch_size N")  # fmt: skip
        largest, failed = search(probe.fits, upper)
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)  # the run's peak memory is its own, not the largest try's
    where = f"at T = {seq_len:,}"
    if largest == 0:
        raise ValueError(f"the model does not fit in memory even at batch 1: a step {where} {probe.short_of(1)}"
                         f"{probe.limit}; {ADVICE}")  # fmt: skip
    if failed is None:
        reason = f"{largest} fit {where}, all the target needs{probe.used(largest)}"
    else:
        reason = f"{largest} fit and {failed} {probe.short_of(failed)} {where}{probe.limit}"
    accumulation = math.ceil(upper / largest)
    batch_size = math.ceil(upper / accumulation)  # as many micro-batches, evened out: no larger than needed
    if batch_size < largest:
        reason += f"; {accumulation} micro-batches of {batch_size} reach the target"
    return BatchChoice(batch_size, accumulation, reason)


def _probe_by_trying(
    model: nn.Module, seq_len: int, device: torch.device, precision: Precision, reserve_bytes: int
) -> MemoryProbe:
    free, total = device_memory(device)

    def fits(batch: int) -> bool:
        ran_out = False
        try:
            try_step(model, batch, seq_len, device, precision, reserve_bytes)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            ran_out = True  # the error (and the tensors its frames hold) is released before the memory is freed
        release_memory(model, device)
        return not ran_out

    limit = f" on {device} ({bytes_text(free)} of {bytes_text(total)} free before the search)"
    return MemoryProbe(fits, lambda batch: "ran out of memory", limit)


def _probe_by_estimate(
    model: nn.Module,
    seq_len: int,
    upper: int,
    device: torch.device,
    precision: Precision,
    reserve_bytes: int,
    processes_here: int,
) -> MemoryProbe:
    available = free_memory_bytes(device)
    budget = CPU_SHARE * available / processes_here
    shared = f", shared by {processes_here} processes" if processes_here > 1 else ""
    room = f"the {bytes_text(budget)} this run may use ({CPU_SHARE:.0%} of {bytes_text(available)} available{shared})"
    gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    if gradients + reserve_bytes > budget:  # not even worth a measured step, which could be killed
        raise ValueError(f"the model does not fit in memory even at batch 1: its gradients and optimiser state alone "
                         f"need {bytes_text(gradients + reserve_bytes)}, more than {room}; {ADVICE}")  # fmt: skip
    estimate = step_memory_model(model, seq_len, min(upper, MEASURED[-1]), device, precision)

    def needs(batch: int) -> float:
        return estimate(batch) + reserve_bytes

    return MemoryProbe(
        fits=lambda batch: needs(batch) <= budget,
        short_of=lambda batch: f"would need about {bytes_text(needs(batch))}",
        limit=f", more than {room}",
        used=lambda batch: f": about {bytes_text(needs(batch))} of {room}",
    )


def step_memory_model(
    model: nn.Module, seq_len: int, largest_measured: int, device: torch.device, precision: Precision
) -> Callable[[int], float]:
    """Bytes a training step at a batch size needs beyond what is held now (its activations and the gradients),
    as a straight line through steps measured at MEASURED's sizes (up to `largest_measured`)."""
    measure_step_bytes(model, 1, seq_len, device, precision)  # warm-up: one-time allocations are not the batch's
    sizes = sorted({min(size, largest_measured) for size in MEASURED})
    measured = [measure_step_bytes(model, size, seq_len, device, precision) for size in sizes]
    if len(sizes) == 1:
        return lambda batch: float(measured[0] * batch)  # only batch 1 is asked for: no line to draw
    slope = max(0.0, (measured[-1] - measured[0]) / (sizes[-1] - sizes[0]))
    fixed = max(0.0, measured[0] - slope * sizes[0])
    return lambda batch: fixed + slope * batch


# ---------------------------------------------------------------- one step, and memory


def try_step(
    model: nn.Module, batch: int, seq_len: int, device: torch.device, precision: Precision, reserve_bytes: int = 0
) -> None:
    """A forward and backward of a training step at this batch (token 0 everywhere: memory does not depend on the
    tokens), with `reserve_bytes` held aside meanwhile. Eager, also for a run that compiles its step: compiling
    each size would take minutes (what the compiled step needs instead is not measured here)."""
    reserve = torch.empty(reserve_bytes, dtype=torch.uint8, device=device) if reserve_bytes else None
    inputs = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
    with precision.autocast():
        loss = model.compute_loss(inputs, inputs)
    loss.backward()
    del loss, reserve


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA allocation that failed: torch's own error, or a library's (cuBLAS, a kernel launch) worded as one."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in str(err) or "CUBLAS_STATUS_ALLOC_FAILED" in str(err))
    )


def release_memory(model: nn.Module, device: torch.device) -> None:
    """Free what a try left: the gradients, and on CUDA the allocator's cached blocks."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of a CUDA device."""
    return torch.cuda.mem_get_info(device)


def free_memory_bytes(device: torch.device) -> int:
    """The memory a CPU process can still take: the least of the machine's available memory (free, plus what the
    kernel can reclaim) and what is left of a cgroup's limit (a container's)."""
    limits = [available for available in (_meminfo_available(), _cgroup_left()) if available is not None]
    if not limits:
        raise ValueError("--batch_size auto cannot read this machine's free memory: give --batch_size N")
    return min(limits)


def _meminfo_available() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # free pages only: a lower bound
    return None


def _cgroup_left() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        root = Path("/sys/fs/cgroup")
        limit = (root / "memory.max").read_text().strip()
        if limit != "max":
            return int(limit) - int((root / "memory.current").read_text())
    return None


def measure_step_bytes(model: nn.Module, batch: int, seq_len: int, device: torch.device, precision: Precision) -> int:
    """The peak memory of one step at this batch beyond what the process held before it, from Linux's peak
    resident size (reset before the step through /proc/self/clear_refs)."""
    release_memory(model, device)
    _return_freed_memory()  # else memory freed earlier but kept by malloc would be reused unseen
    before = _status_bytes("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident size to the current one
    except OSError:
        raise ValueError(
            "--batch_size auto on a CPU measures a step's memory through Linux's /proc/self/clear_refs, which this "
            "system does not offer: give --batch_size N"
        ) from None
    try_step(model, batch, seq_len, device, precision)
    peak = _status_bytes("VmHWM")
    release_memory(model, device)
    return max(0, peak - before)


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"--batch_size auto cannot read {key} in /proc/self/status: give --batch_size N")


def _return_freed_memory() -> None:
    """glibc's malloc_trim: hand memory freed but cached by malloc back to the system (nothing elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
