"""Core performance of TEN, measured side by side in one run.

1. The recurrence alone (forward + backward): sequential vs chunked vs fft, and the chunked
   forward's memory bandwidth against a plain tensor copy.
2. A whole training step of a 2-layer TEN: tokens/s, matmul FLOP/s against a large matmul, and
   the share of the step spent in the recurrence (torch.profiler).
3. Generation: time per new token after a short and after a long prompt.

    python benchmarks/bench_core.py [--quick] [--device cpu|cuda] [--json PATH] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity
from torch.utils.flop_counter import FlopCounterMode

from temporal_eigenstate_networks import LanguageModel
from temporal_eigenstate_networks.architectures import build_model
from temporal_eigenstate_networks.device import resolve_device
from temporal_eigenstate_networks.ops import (
    MIN_DECAY,
    scan_chunked,
    scan_fft,
    scan_sequential,
    scan_triton,
    triton_available,
)
from temporal_eigenstate_networks.plausible import Yardstick, settle
from temporal_eigenstate_networks.timing import machine_description, median_seconds, sync

Table = tuple[str, list[str], list[list[str]]]  # title, headers, rows
# A yardstick measured again until it is settled against the figures read against it (plausible.settle).
Settle = Callable[[Sequence[float]], Yardstick]
# fmt: off
SIZES: dict[str, dict[str, Any]] = {
    "full": dict(batch=8, k=64, lengths=[512, 2048, 8192], copy_mib=256, d_model=512, train_lengths=[512, 2048],
                 train_batch=4, prompts=[64, 4096], new_tokens=64, reps=5),
    "quick": dict(batch=2, k=16, lengths=[64, 128, 256], copy_mib=16, d_model=64, train_lengths=[64, 128],
                  train_batch=2, prompts=[16, 256], new_tokens=8, reps=3),
    "gpu": dict(batch=8, k=64, lengths=[2048, 8192, 32768, 65536], copy_mib=1024, d_model=1024,
                train_lengths=[2048, 8192], train_batch=4, prompts=[1024, 8192, 32768], new_tokens=64, reps=10),
}
# fmt: on
SLOW_S = 1.0  # a sequential-backend call slower than this is timed once, its warm-up being the measurement


def make_table(title: str, columns: str, template: str, rows: list[dict[str, Any]]) -> Table:
    """Columns and cell formats separated by '|'; each row dict fills the template."""
    return title, columns.split("|"), [template.format(**row).split("|") for row in rows]


def copy_gb_per_s(device: torch.device, mib: int, reps: int) -> float:
    """GB read + written per second by dst.copy_(src) of ``mib`` MiB of float32."""
    src = torch.rand(mib * 2**18, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, reps)
    return 2 * src.numel() * 4 / seconds / 1e9


def matmul_gflop_per_s(device: torch.device, reps: int, quick: bool) -> float:
    n = 256 if quick else 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = median_seconds(lambda: a @ b, device, reps)
    return 2 * n**3 / seconds / 1e9


# ---- 1. the recurrence


def scan_inputs(batch: int, length: int, k: int, selective: bool, device: torch.device) -> tuple[Tensor, ...]:
    """lam with MIN_DECAY <= |lam| < 1, beta and a cotangent g, complex64."""
    lam_shape = (batch, length, k) if selective else (k,)
    magnitude = MIN_DECAY + (1 - MIN_DECAY) * 0.999 * torch.rand(lam_shape, device=device)
    lam = torch.polar(magnitude, 2 * math.pi * torch.rand(lam_shape, device=device)).requires_grad_()
    beta = torch.randn(batch, length, k, dtype=torch.complex64, device=device, requires_grad=True)
    return lam, beta, torch.randn_like(beta)


def time_fwd_bwd(fn: Callable, inputs: tuple[Tensor, ...], device: torch.device, reps: int, slow_s: float) -> float:
    """Seconds of fn(lam, beta).backward(g)."""
    lam, beta, grad = inputs

    def fwd_bwd() -> None:
        lam.grad = beta.grad = None
        fn(lam, beta).backward(grad)

    return median_seconds(fwd_bwd, device, reps, slow_s)


def recurrence_row(sz: dict[str, Any], length: int, selective: bool, device: torch.device, seq_max: int) -> dict:
    inputs = scan_inputs(sz["batch"], length, sz["k"], selective, device)
    row: dict[str, Any] = dict(mode="selective" if selective else "time-invariant", T=length)
    row["chunked_s"] = time_fwd_bwd(scan_chunked, inputs, device, sz["reps"], math.inf)
    row["fft_s"] = None if selective else time_fwd_bwd(scan_fft, inputs, device, sz["reps"], math.inf)
    # The sequential backend: one call after a warm-up, or the warm-up alone when it is slow.
    row["sequential_s"] = time_fwd_bwd(scan_sequential, inputs, device, 1, SLOW_S) if length <= seq_max else None
    lam, beta, _ = inputs
    fused = device.type == "cuda" and triton_available()
    if fused:
        row["triton_s"] = time_fwd_bwd(scan_triton, inputs, device, sz["reps"], math.inf)
    bytes_moved = (lam.numel() + 2 * beta.numel()) * 8  # read lam and beta, write c: complex64
    for name, fn in (("chunked", scan_chunked), ("triton", scan_triton)):
        if name == "chunked" or fused:
            with torch.no_grad():
                row[f"{name}_fwd_s"] = median_seconds(lambda fn=fn: fn(lam, beta), device, sz["reps"])
            row[f"{name}_fwd_gb_per_s"] = bytes_moved / row[f"{name}_fwd_s"] / 1e9
    return row


def gbps_text(gbps: float) -> str:
    return f"{gbps:.1f} GB/s"


def gflops_text(gflops: float) -> str:
    return f"{gflops:.1f} GFLOP/s"


# how plausible.settle names the figures and the yardstick in a reason
COPY: dict[str, Any] = dict(figure="a scan moved", what="the copy bandwidth", text=gbps_text)
MATMUL: dict[str, Any] = dict(figure="a training step counted", what="the matmul peak", text=gflops_text)


def percent(share: float | None) -> str:
    """A share of a yardstick; None (above it, or it is unreliable): never an impossible percentage."""
    return "unreliable" if share is None else f"{100 * share:.0f}%"


def yardstick_words(name: str, unit: str, yardstick: Yardstick) -> str:
    """'copy bandwidth 26.2 GB/s', with the re-measurements and, where they did not settle it, why the shares of
    it are not given."""
    words = f"{name} {yardstick.value:.1f} {unit}"
    if yardstick.unreliable:
        return f"{words}; shares of it unreliable, not given: {yardstick.unreliable}"
    return words + (f", the best of {yardstick.tries} measurements" if yardstick.tries > 1 else "")


def recurrence_cells(row: dict[str, Any], copy: Yardstick) -> dict[str, str]:
    def ms(seconds: float | None, missing: str) -> str:
        return missing if seconds is None else f"{1e3 * seconds:.2f}"

    seq = row["sequential_s"]
    cells = dict(mode=row["mode"], T=str(row["T"]), seq=ms(seq, "skipped (too slow)"), chunked=ms(row["chunked_s"], ""),
                 fft=ms(row["fft_s"], "n/a"), ratio=f"{seq / row['chunked_s']:.1f}x" if seq else "-",
                 fwd=ms(row["chunked_fwd_s"], ""), bw=f"{row['chunked_fwd_gb_per_s']:.2f}",
                 pct=percent(copy.share(row["chunked_fwd_gb_per_s"])))  # fmt: skip
    if "triton_s" in row:
        cells.update(triton=ms(row["triton_s"], ""), speedup=f"{row['chunked_s'] / row['triton_s']:.1f}x",
                     tfwd=ms(row["triton_fwd_s"], ""), tbw=f"{row['triton_fwd_gb_per_s']:.1f}",
                     tpct=percent(copy.share(row["triton_fwd_gb_per_s"])))  # fmt: skip
    return cells


def bench_recurrence(sz: dict[str, Any], device: torch.device, seq_max: int, copy: Settle) -> tuple[dict, list]:
    rows = [recurrence_row(sz, t, sel, device, seq_max) for sel in (True, False) for t in sz["lengths"]]
    moved = [row[key] for row in rows for key in ("chunked_fwd_gb_per_s", "triton_fwd_gb_per_s") if key in row]
    copy_bw = copy(moved)
    short, long = sz["lengths"][-2:]
    chunked = {(r["mode"], r["T"]): r["chunked_s"] for r in rows}
    growth = [dict(mode=m, ratio=chunked[m, long] / chunked[m, short]) for m in ("selective", "time-invariant")]
    yardstick = yardstick_words("copy bandwidth", "GB/s", copy_bw)
    title = f"Recurrence forward+backward, B={sz['batch']}, K={sz['k']} ({yardstick})"
    columns = "mode|T|sequential ms|chunked ms|fft ms|seq/chunked|chunked fwd ms|fwd GB/s|% of copy"
    template = "{mode}|{T}|{seq}|{chunked}|{fft}|{ratio}|{fwd}|{bw}|{pct}"
    if "triton_s" in rows[0]:  # the fused kernel runs on CUDA only
        columns += "|triton ms|chunked/triton|triton fwd ms|triton fwd GB/s|triton % of copy"
        template += "|{triton}|{speedup}|{tfwd}|{tbw}|{tpct}"
    growth_cols = f"mode|chunked(T={long}) / chunked(T={short})|linear growth"
    tables = [
        make_table(title, columns, template, [recurrence_cells(r, copy_bw) for r in rows]),
        make_table("Chunked growth", growth_cols, f"{{mode}}|{{ratio:.2f}}|{long / short:.2f}", growth),
    ]
    return dict(rows=rows, chunked_growth=growth, copy=vars(copy_bw)), tables


# ---- 2. a training step


def ten_model(sz: dict[str, Any], device: torch.device) -> LanguageModel:
    """The 2-layer selective TEN of the training and generation sections."""
    return build_model("ten", device, vocab_size=256, d_model=sz["d_model"], n_layers=2, num_eigenstates=sz["k"],
                       max_seq_len=max(sz["train_lengths"]), selective=True)  # fmt: skip


SCAN_OPS = ("ten::chunked_scan", "ten::chunked_scan_backward", "ten::triton_scan", "ten::triton_scan_backward")


def scan_share(step: Callable[[], None], device: torch.device, steps: int) -> float:
    """Percent of the step in the recurrence: the scan's custom operators (ops/chunked.py, ops/triton.py), forward
    and backward, as the profiler names them (CPU time against wall time on CPU; kernel time on CUDA)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall = time.perf_counter() - start
    events = [e for e in prof.key_averages() if e.device_type == DeviceType.CPU]  # not GPU-side annotations
    attr = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    in_scan = sum(getattr(e, attr) for e in events if e.key in SCAN_OPS) / 1e6
    total = sum(e.self_device_time_total for e in events) / 1e6 if device.type == "cuda" else wall
    return 100 * in_scan / total


def training_row(model: LanguageModel, batch: int, length: int, device: torch.device, reps: int) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, targets = torch.randint(0, 256, (2, batch, length), device=device)

    def step() -> None:
        model.compute_loss(inputs, targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = median_seconds(step, device, reps)
    with FlopCounterMode(display=False) as counter:
        step()
    gflop = counter.get_total_flops() / 1e9
    share = scan_share(step, device, 2 if length > 1024 else 3)
    return dict(T=length, batch=batch, step_ms=1e3 * seconds, tokens_per_s=batch * length / seconds,
                matmul_gflop=gflop, gflop_6nd=6 * model.num_parameters() * batch * length / 1e9,
                gflop_per_s=gflop / seconds, recurrence_share_pct=share)  # fmt: skip


def bench_training(sz: dict[str, Any], device: torch.device, batch: int, matmul: Settle) -> tuple[dict, list]:
    model = ten_model(sz, device)
    rows = [training_row(model, batch, length, device, sz["reps"]) for length in sz["train_lengths"]]
    peak = matmul([row["gflop_per_s"] for row in rows])
    for row in rows:
        share = peak.share(row["gflop_per_s"])
        row["pct_of_peak"] = None if share is None else 100 * share
        row["pct"] = percent(share)
    title = (
        f"Training step (AdamW), 2 layers, d_model={sz['d_model']}, K={sz['k']}, {model.num_parameters() / 1e6:.2f}"
        f" M parameters (N); matmul FLOPs counted by FlopCounterMode; {yardstick_words('matmul peak', 'GFLOP/s', peak)}"
    )
    columns = "T|batch|step ms|tokens/s|matmul GFLOP/step|6*N*tokens GFLOP|GFLOP/s|% of matmul peak|recurrence share"
    template = "{T}|{batch}|{step_ms:.1f}|{tokens_per_s:,.0f}|{matmul_gflop:.2f}|{gflop_6nd:.2f}|{gflop_per_s:.1f}"
    template += "|{pct}|{recurrence_share_pct:.1f}%"
    return dict(rows=rows, matmul_peak=vars(peak)), [make_table(title, columns, template, rows)]


# ---- 3. generation


@torch.inference_mode()
def time_decode(model: LanguageModel, prompt: Tensor, n: int, device: torch.device, reps: int) -> float:
    """Seconds per token of n greedy steps through model(token, state), after the prompt's pass."""
    logits, state = model(prompt, return_state=True)
    first = logits[:, -1:].argmax(-1)

    def decode() -> None:
        token, s = first, state
        for _ in range(n):
            out, s = model(token, state=s, return_state=True)
            token = out[:, -1:].argmax(-1)

    return median_seconds(decode, device, reps) / n


def generation_row(model: LanguageModel, prompt_len: int, n: int, device: torch.device, reps: int) -> dict:
    prompt = torch.randint(0, 256, (1, prompt_len), device=device)
    full = median_seconds(lambda: model.generate(prompt, n, temperature=0), device, reps)
    prefill = median_seconds(lambda: model.generate(prompt, 0, temperature=0), device, reps)
    step_ms = 1e3 * time_decode(model, prompt, n, device, reps)
    return dict(prompt=prompt_len, new_tokens=n, step_ms=step_ms, generate_ms=1e3 * (full - prefill) / n,
                prefill_ms=1e3 * prefill)  # fmt: skip


def bench_generation(sz: dict[str, Any], device: torch.device) -> tuple[list, list]:
    model = ten_model(sz, device).eval()
    rows = [generation_row(model, p, sz["new_tokens"], device, sz["reps"]) for p in sz["prompts"]]
    for row in rows:
        row["vs_first"] = row["step_ms"] / rows[0]["step_ms"]
    columns = "prompt|new tokens|ms/token (stepped)|vs shortest prompt|ms/token (generate - prefill)|prefill ms"
    template = "{prompt}|{new_tokens}|{step_ms:.3f}|{vs_first:.2f}x|{generate_ms:.3f}|{prefill_ms:.1f}"
    return rows, [make_table("Generation, batch 1, greedy, same model", columns, template, rows)]


# ---- output


def render(table: Table, markdown: bool) -> str:
    title, heads, rows = table
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    widths = [max(len(c) for c in col) for col in zip(heads, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([title, fmt.format(*heads), *(fmt.format(*r) for r in rows)]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds")
    parser.add_argument("--size", choices=list(SIZES), default=None, help="full (default), quick, or gpu (T to 65,536)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch_size", type=int, default=None, help="training-step batch (default 4; quick 2)")
    parser.add_argument("--sequential_max_len", type=int, default=2048, help="skip the sequential backend above")
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here as markdown")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except ValueError as err:  # --device cuda on a machine without a GPU
        parser.error(str(err))
    torch.manual_seed(0)
    sz = SIZES[args.size or ("quick" if args.quick else "full")]
    machine = machine_description(device)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()) + "\n", flush=True)

    # The yardsticks first, then again after the section that reads figures against them: a busy spell seldom
    # covers both, and a figure above them or two measurements far apart are measured again (plausible.settle).
    measure_copy = functools.partial(copy_gb_per_s, device, sz["copy_mib"], sz["reps"])
    measure_matmul = functools.partial(matmul_gflop_per_s, device, sz["reps"], args.quick)
    copy = functools.partial(settle, measure_copy, **COPY, first=measure_copy())
    matmul = functools.partial(settle, measure_matmul, **MATMUL, first=measure_matmul())
    results: dict[str, Any] = dict(machine=machine, sizes=sz)
    tables: list[Table] = []
    for name, section in (
        ("recurrence", lambda: bench_recurrence(sz, device, args.sequential_max_len, copy)),
        ("training", lambda: bench_training(sz, device, args.batch_size or sz["train_batch"], matmul)),
        ("generation", lambda: bench_generation(sz, device)),
    ):
        results[name], new = section()
        print("\n".join(render(t, False) for t in new), flush=True)
        tables += new
    # as before the re-measuring, at the top: the settled values
    results["copy_gb_per_s"] = results["recurrence"]["copy"]["value"]
    results["matmul_gflop_per_s"] = results["training"]["matmul_peak"]["value"]

    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown:
        header = "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + "\n\n"
        args.markdown.write_text(header + "\n".join(render(t, True) for t in tables))


if __name__ == "__main__":
    main()
