"""The CUDA paths checked on a real GPU, in one short run: exits 1 if any check fails.

CI has no GPU, so the fused kernel's tests there run under Triton's interpreter. This script runs the
same comparisons compiled for the card, at lengths the interpreter cannot reach, plus the model paths
that only exist on CUDA (bf16 autocast, compiled steps, CUDA-graph decoding):

    python benchmarks/gpu_check.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from temporal_eigenstate_networks import (
    TemporalEigenstateConfig,
    TemporalEigenstateNetwork,
    TransformerConfig,
    TransformerLM,
)
from temporal_eigenstate_networks.ops import scan, scan_sequential, triton_available

DEVICE = torch.device("cuda")
results: list[dict[str, Any]] = []
LENGTH = 512  # the models' training length


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach(), expected.detach().to(actual.dtype)
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def check(name: str, value: float, limit: float) -> None:
    ok = value <= limit
    results.append({"check": name, "value": value, "limit": limit, "ok": ok})
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {value:.3g} (limit {limit:g})", flush=True)


def random_inputs(batch: int, length: int, k: int, selective: bool, with_state: bool) -> tuple[Any, ...]:
    magnitude = 0.5 + 0.5 * torch.rand((batch, length, k) if selective else (k,), device=DEVICE, dtype=torch.float64)
    angle = (2 * torch.rand(magnitude.shape, device=DEVICE, dtype=torch.float64) - 1) * torch.pi
    lam = torch.polar(magnitude, angle)
    beta = torch.randn(batch, length, k, device=DEVICE, dtype=torch.complex128)
    initial = torch.randn(batch, k, device=DEVICE, dtype=torch.complex128) if with_state else None
    return lam, beta, initial


def values_and_gradients(fn: Callable[..., torch.Tensor], inputs: tuple[Any, ...], cotangent: torch.Tensor) -> list:
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    out.backward(cotangent.to(out.dtype))
    return [out.detach()] + [x.grad for x in leaves if x is not None]


def check_kernel() -> None:
    """Triton (complex64 in, float32 accumulation) against the sequential scan in complex128."""
    for batch, length, k, selective, with_state in [
        (1, 1, 64, True, False), (3, 1000, 12, True, True), (8, 4096, 64, True, False),
        (8, 4096, 64, False, True), (2, 65536, 16, True, True),
    ]:  # fmt: skip
        inputs = random_inputs(batch, length, k, selective, with_state)
        expected = scan_sequential(*inputs) if length <= 4096 else None
        if expected is None:  # too long for a Python loop: chunked in float64 is the reference there
            expected = scan(*inputs, backend="chunked")
        cotangent = torch.randn_like(expected)
        want = values_and_gradients(lambda *a: scan(*a, backend="chunked"), inputs, cotangent)
        low = tuple(None if x is None else x.to(torch.complex64) for x in inputs)
        got = values_and_gradients(lambda *a: scan(*a, backend="triton"), low, cotangent)
        plain = values_and_gradients(lambda *a: scan(*a, backend="chunked"), low, cotangent)
        label = f"B={batch} T={length} K={k} {'selective' if selective else 'fixed'}{' +state' if with_state else ''}"
        # float32 accumulation over thousands of steps with |lam| near 1 has its own error: chunked in complex64
        # (tested exact against sequential) sets the bar.
        bar = max(1e-5, 2 * relative_error(plain[0], expected))
        check(f"triton vs complex128 reference, {label}, values", relative_error(got[0], expected), bar)
        worst = max(relative_error(g, w) for g, w in zip(got[1:], want[1:], strict=True))
        check(f"triton vs complex128 reference, {label}, gradients", worst, 1e-4)


def tiny(use_hten: bool, backend: str) -> TemporalEigenstateConfig:
    return TemporalEigenstateConfig(vocab_size=256, d_model=128, n_layers=2, num_eigenstates=48, num_heads=4,
                                    max_seq_len=LENGTH, use_hten=use_hten, hten_scales=[1, 2, 4],
                                    scan_backend=backend)  # fmt: skip


def check_models() -> None:
    ids = torch.randint(0, 256, (4, LENGTH + 1), device=DEVICE)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    for use_hten in (False, True):
        name = "HTEN" if use_hten else "TEN"
        torch.manual_seed(0)
        chunked = TemporalEigenstateNetwork(tiny(use_hten, "chunked")).to(DEVICE)
        fused = TemporalEigenstateNetwork(tiny(use_hten, "triton")).to(DEVICE)
        fused.load_state_dict(chunked.state_dict())
        for model in (chunked, fused):
            model.compute_loss(inputs, targets).backward()
        check(f"{name}: triton vs chunked logits", relative_error(fused(inputs), chunked(inputs)), 1e-4)
        pairs = zip(fused.parameters(), chunked.parameters(), strict=True)
        worst = max(relative_error(a.grad, b.grad) for a, b in pairs)
        check(f"{name}: triton vs chunked gradients", worst, 1e-3)

        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = float(fused.compute_loss(inputs, targets).detach())
        fp32 = float(fused.compute_loss(inputs, targets).detach())
        check(f"{name}: bf16 autocast loss vs float32 (abs)", abs(bf16 - fp32), 0.05)

        fused.eval()
        with torch.no_grad():
            whole = fused(inputs[:1, :64])
            logits, state = fused(inputs[:1, :32], return_state=True)
            steps = [logits]
            for t in range(32, 64):
                logits, state = fused(inputs[:1, t : t + 1], state=state, return_state=True)
                steps.append(logits)
        check(f"{name}: streaming one token at a time vs whole", relative_error(torch.cat(steps, 1), whole), 1e-4)
        eager = fused.generate(inputs[:2, :16], 24, temperature=0, compile_step=False)
        graphed = fused.generate(inputs[:2, :16], 24, temperature=0, compile_step=True)
        check(f"{name}: greedy tokens, CUDA-graph step vs eager (mismatches)", float((eager != graphed).sum()), 0)

        torch.manual_seed(1)
        model = TemporalEigenstateNetwork(tiny(use_hten, "auto")).to(DEVICE)
        compiled = torch.compile(model)
        gap = float(compiled.compute_loss(inputs, targets)) - float(model.compute_loss(inputs, targets))
        check(f"{name}: compiled loss vs eager", abs(gap), 1e-4)

    transformer = TransformerLM(TransformerConfig(vocab_size=256, d_model=128, n_layers=2, num_heads=4,
                                                  max_seq_len=512)).to(DEVICE)  # fmt: skip
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = float(transformer.compute_loss(inputs, targets))
    check("transformer: bf16 loss is finite (0 = yes)", 0.0 if loss == loss else 1.0, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--json", help="write the checks here")
    parser.add_argument("--kernel_only", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not triton_available():
        print("gpu_check: needs a CUDA GPU and triton", file=sys.stderr)
        return 2
    start = time.perf_counter()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    torch.manual_seed(0)
    check_kernel()
    if "--kernel_only" not in sys.argv:
        check_models()
    failed = [r["check"] for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed in {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            summary = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "checks": results}
            json.dump(summary, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
