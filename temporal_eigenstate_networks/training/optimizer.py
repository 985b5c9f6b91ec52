"""AdamW with weight decay only on the weight matrices."""

from __future__ import annotations

import torch
from torch import nn

from ..modules.block import is_no_weight_decay


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight matrices decay; norms, biases (under 2 dimensions) and parameters tagged no_weight_decay do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param.dim() < 2 or is_no_weight_decay(param):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, learning_rate: float, weight_decay: float, use_8bit: bool
) -> torch.optim.Optimizer:
    groups = parameter_groups(model, weight_decay)
    if use_8bit:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("--use_8bit_optim needs bitsandbytes (pip install bitsandbytes) and a CUDA GPU") from None
        if not next(model.parameters()).is_cuda:
            raise ValueError("--use_8bit_optim needs a CUDA GPU: bitsandbytes' 8-bit AdamW has no CPU kernels")
        return bnb.optim.AdamW8bit(groups, lr=learning_rate, betas=(0.9, 0.95))
    fused = next(model.parameters()).is_cuda  # one kernel for all parameters where it exists
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.95), fused=fused)
