"""torch.compile against eager for one training step (forward, backward, AdamW), timed alternately in one process.

    python benchmarks/compile_step.py                       # TEN, HTEN, a hybrid: d 256, 4 layers, T 256, batch 16
    python benchmarks/compile_step.py --device cuda --dtype bf16 --d_model 1024 --n_layers 12 --seq_len 2048

Prints, per model: the graph breaks torch.compile met (TORCH_LOGS=graph_breaks names them), the seconds spent
compiling, and the median eager and compiled step with their ratio. The step is the trainer's: compute_loss through
one module, so the compiler sees what `ten train --compile` gives it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch._dynamo.utils import counters

from temporal_eigenstate_networks import TemporalEigenstateConfig, TemporalEigenstateNetwork
from temporal_eigenstate_networks.training.trainer import LanguageModelingObjective

VARIANTS = {"ten": {}, "hten": {"use_hten": True, "hten_scales": [1, 2]}, "hybrid eeea": {"layer_pattern": "eeea"}}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_step(objective: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                  dtype: torch.dtype | None) -> Callable[[], None]:  # fmt: skip
    def step() -> None:
        with torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype is not None):
            loss = objective(inputs[:, :-1], inputs[:, 1:])["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    config = TemporalEigenstateConfig(vocab_size=256, d_model=args.d_model, n_layers=args.n_layers,
                                      max_seq_len=args.seq_len, **VARIANTS[name])  # fmt: skip
    torch.manual_seed(0)
    model = TemporalEigenstateNetwork(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    objective = LanguageModelingObjective(model)
    inputs = torch.randint(0, 256, (args.batch, args.seq_len + 1), device=device)
    dtype = DTYPES[args.dtype]
    torch._dynamo.reset()
    counters.clear()
    eager = training_step(objective, optimizer, inputs, dtype)
    compiled = training_step(torch.compile(objective), optimizer, inputs, dtype)
    compile_s = timed(compiled, device)  # the first call compiles forward and backward
    timed(eager, device)  # warm-up
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.repeats):  # alternately: a busy moment of the machine falls on both
        times["eager"].append(timed(eager, device))
        times["compiled"].append(timed(compiled, device))
    eager_ms, compiled_ms = (1e3 * statistics.median(times[k]) for k in ("eager", "compiled"))
    breaks = sum(counters["graph_break"].values())
    return {"breaks": breaks, "compile_s": compile_s, "eager_ms": eager_ms, "compiled_ms": compiled_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--n_layers", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"{device} {args.dtype}, d {args.d_model}, {args.n_layers} layers, T {args.seq_len}, batch {args.batch}, "
          f"median of {args.repeats} alternations, torch {torch.__version__}")  # fmt: skip
    print("| model | graph breaks | compile s | eager ms | compiled ms | eager / compiled |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.variants.split(","):
        r = measure(name, args, device)
        print(f"| {name} | {r['breaks']} | {r['compile_s']:.1f} | {r['eager_ms']:,.0f} | {r['compiled_ms']:,.0f} | "
              f"{r['eager_ms'] / r['compiled_ms']:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
