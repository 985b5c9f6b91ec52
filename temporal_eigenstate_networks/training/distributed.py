"""Data parallelism under torchrun: one process per device, gradients averaged by DDP."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_request: str) -> DistributedContext:
        """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
        world_size = environment_world_size()
        if world_size <= 1:
            return cls()
        context = cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
        use_cuda = device_request != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(context.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
        return context

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor of metrics (every rank gets it)."""
        if self.enabled:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values /= self.world_size
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value on every rank (e.g. a folder chosen by looking at the file system)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_floats(self, value: float) -> list[float]:
        if not self.enabled:
            return [value]
        out: list[float | None] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return [float(v) for v in out]

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on one: a stop request must stop all ranks at the same step."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def close(self, wait_for_peers: bool = True) -> None:
        """Leave the process group; after a clean run, only once every rank has finished with it."""
        if self.enabled and dist.is_initialized():
            if wait_for_peers:
                dist.barrier()  # tearing down while a peer still talks aborts it ("terminate called...")
            dist.destroy_process_group()


TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets beside WORLD_SIZE


def environment_world_size() -> int:
    """WORLD_SIZE, checked: a WORLD_SIZE > 1 without the rest of torchrun's variables (set by hand, or left
    over in a shell) would otherwise end in a KeyError, or in a wait for peers that never come."""
    text = os.environ.get("WORLD_SIZE", "1")
    if not text.strip().isdigit():
        raise ValueError(f"WORLD_SIZE={text!r} is not a number of processes; unset it, or start with torchrun")
    world_size = int(text)
    missing = [name for name in TORCHRUN_VARIABLES if not os.environ.get(name)]
    if world_size > 1 and missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} is set without torchrun's {', '.join(missing)}: start a data-parallel run "
            "with torchrun --nproc_per_node=N -m temporal_eigenstate_networks train ..., or unset WORLD_SIZE"
        )
    return world_size


def weights_fingerprint(model: nn.Module) -> float:
    """A float64 summary of every weight: equal across ranks when DDP kept them in step."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).square().sum() for i, p in enumerate(model.parameters())))
