"""Mixed precision: which autocast dtype a device can use, and the fp16 gradient scaler."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class Precision:
    dtype: torch.dtype | None  # None: full float32
    device_type: str
    note: str

    @property
    def name(self) -> str:
        return {None: "float32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A real scaler for fp16 (its gradients underflow); a disabled one, which passes through, otherwise."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)


def resolve_precision(request: str, device: torch.device) -> Precision:
    """`no`, `auto`, `bf16` or `fp16` on this device; an impossible request raises ValueError."""
    kind = device.type
    if request == "no":
        return Precision(None, kind, "")
    if kind == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if request == "fp16" or (request == "auto" and not bf16_ok):
            return Precision(torch.float16, kind, "fp16 with a gradient scaler")
        if not bf16_ok:
            raise ValueError(f"--mixed_precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16")
        return Precision(torch.bfloat16, kind, "")
    if request == "fp16":
        raise ValueError("--mixed_precision fp16 needs a CUDA GPU; on a CPU use bf16 (where the CPU supports it)")
    if cpu_supports_bf16():
        return Precision(torch.bfloat16, kind, "")
    if request == "bf16":
        raise ValueError("--mixed_precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); use no")
    return Precision(None, kind, "mixed precision: this CPU has no native bf16, training in float32")
