"""Which torch device a `--device` flag (auto, cpu, cuda, cuda:N) means on this machine.

One place for every command's flag, so each names the same values and fails with the same line.
"""

from __future__ import annotations

import re

import torch


def resolve_device(request: str, local_rank: int = 0) -> torch.device:
    """auto: this process's GPU if there is one, else the CPU; cuda: cuda:local_rank; cuda:N as given.

    Raises ValueError (one line, naming the flag's value) for another value, or for cuda without a GPU.
    """
    if request not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", request):
        raise ValueError(f"--device {request}: expected auto, cpu, cuda or cuda:N")
    if request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    if request.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {request}: no CUDA GPU is available here (use --device cpu)")
    if request == "cuda":  # under torchrun each process takes the GPU of its local rank
        return torch.device("cuda", local_rank)
    return torch.device(request)
