"""Reference backend: the recurrence one step at a time. Slow, short, obviously right."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import as_3d, check_scan_inputs


def scan_sequential(lam: Tensor, beta: Tensor, initial_state: Tensor | None = None) -> Tensor:
    check_scan_inputs(lam, beta, initial_state)
    lam = as_3d(lam).expand_as(beta)
    c = torch.zeros_like(beta[:, 0]) if initial_state is None else initial_state
    states = []
    for t in range(beta.shape[1]):
        c = lam[:, t] * c + beta[:, t]
        states.append(c)
    return torch.stack(states, dim=1)
