"""Sliding-window attention's prefill kernels side by side: SDPA with a band mask against FlexAttention's block mask.

Each (T, W) times one SlidingWindowAttention layer (d 256, 4 heads, batch 8) on each kernel, the kernels taking
turns: the forward alone (a prompt's prefill) and forward + backward (training). The figure is the median of
`--reps` calls after a warm-up (FlexAttention's warm-up compiles it). Where a kernel cannot run (FlexAttention
has no backward on the CPU), the cell says so. A window of W >= T is plain causal attention on either kernel, so
it is timed once, for reference. FLEX_DEVICE_TYPES in modules/attention.py is chosen by this table.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attention_window.py
    .venv/bin/python benchmarks/attention_window.py --lengths 1024 4096 --windows 128 512 --device cuda
"""

from __future__ import annotations

import argparse
import warnings

import torch

from temporal_eigenstate_networks.modules.attention import SlidingWindowAttention
from temporal_eigenstate_networks.timing import cpu_name, median_seconds

KERNELS = ("sdpa", "flex")


def milliseconds(kernel: str, layer_args: tuple[int, int, int], u: torch.Tensor, backward: bool, reps: int) -> str:
    """The median ms of the layer on ``kernel``, or why it cannot run there."""
    layer = SlidingWindowAttention(*layer_args, kernel=kernel).to(u.device)
    if kernel == "flex" and backward and u.device.type == "cpu":
        return "no CPU backward"

    def call() -> None:
        with torch.set_grad_enabled(backward):
            y = layer(u).y
            if backward:
                y.sum().backward()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a failed kernel warns and falls back: reported below instead
        seconds = median_seconds(call, u.device, reps)
    return "failed" if layer.kernel != kernel else f"{1e3 * seconds:,.1f}"


def ratio(flex: str, sdpa: str) -> str:
    try:
        return f"{float(flex.replace(',', '')) / float(sdpa.replace(',', '')):.2f}"
    except ValueError:
        return "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--windows", type=int, nargs="+", default=[64, 256, 512, 2048])
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch._dynamo.config.recompile_limit = 64  # a compilation per window and length: not a fault here

    device = torch.device(args.device)
    name = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"{name}, {torch.get_num_threads()} threads, float32, torch {torch.__version__}; d {args.d_model}, "
          f"{args.num_heads} heads, batch {args.batch_size}; median of {args.reps} after a warm-up\n")  # fmt: skip
    print("| T | W | forward: SDPA band (ms) | FlexAttention (ms) | flex / SDPA "
          "| fwd + bwd: SDPA band (ms) | FlexAttention (ms) | flex / SDPA |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for length in args.lengths:
        u = torch.randn(args.batch_size, length, args.d_model, device=device)
        for window in sorted({min(w, length) for w in args.windows}):
            layer_args = (args.d_model, args.num_heads, window)
            cells = []
            for backward in (False, True):
                kernels = KERNELS[:1] if window == length else KERNELS  # W = T: causal SDPA on either
                ms = {kernel: milliseconds(kernel, layer_args, u, backward, args.reps) for kernel in kernels}
                flex = ms.get("flex", "(causal, as SDPA)")
                cells += [ms["sdpa"], flex, ratio(flex, ms["sdpa"])]
            print(f"| {length} | {window} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
