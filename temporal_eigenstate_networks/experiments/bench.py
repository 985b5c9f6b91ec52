"""`ten bench`: TEN against the transformer baseline of the same width and depth, and Mamba-2 sized like that TEN
(transformers' Mamba2ForCausalLM, where transformers is installed), side by side.

For each sequence length: forward time, training-step time (forward, backward, AdamW), peak
memory and tokens per second; then the time per generated token at several context lengths
(TEN and Mamba-2 from their recurrent states, the transformer from its KV cache) and the state one
sequence carries there. Every ratio compares two measurements taken in the same run, one after the other.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..architectures import build_model
from ..atomic import atomic_write
from ..baselines.mamba2_config import require_transformers_mamba2
from ..config import DEFAULT_ATTENTION_WINDOW, TemporalEigenstateConfig
from ..distribution import install_hint
from ..flags import POSITIVE, check_settings, comma_list, setting
from ..lm import LanguageModel
from ..plausible import Yardstick, above, excess, overhead_bound, settle
from ..runs.folders import check_writable
from ..timing import machine_description, median_seconds
from ..units import bytes_text, flop_rate_text, signed_text, significant_text
from .figures import png

MODELS = ("ten", "transformer", "mamba2")  # what bench measures, in the order of the tables' columns
LABELS = {"ten": "TEN", "transformer": "attn", "mamba2": "Mamba-2"}  # the tables' column names
NAMES = {"ten": "TEN", "transformer": "transformer", "mamba2": "Mamba-2"}  # in sentences and the plot
MAMBA2_SIZES = ("expand", "state_size", "head_dim")  # what Mamba-2's sizing rule chose (the rest is TEN's)
SLOW_S = 5.0  # a call slower than this is timed once (its warm-up): a 16k-token attention step would take minutes
DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EMULATED = 4.0  # a dtype's CPU matmul this many times slower than float32's is emulated, not native, there
# A gemv and a sum both stream the bytes once; a matmul reading faster than the plain read by more than this
# contradicts it (the two ops differ a little in how well they use the memory system, hence not 1.0).
READ_MARGIN = 1.25
# how the reasons a figure is unreliable name it and its yardstick (plausible.above)
STEP = "a training step counted"
MATVEC, PLAIN_READ = "batch-1 matmuls read weights at", "a plain read of the same bytes"


def parse_lengths(text: str, flag: str = "--lengths") -> tuple[int, ...]:
    """'256,512' -> (256, 512): positive and distinct (a repeated length would be a zero-width step in growth)."""
    try:
        values = tuple(comma_list(text, int))
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{flag}: expected comma-separated positive integers, got {text!r}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{flag}: {', '.join(map(str, repeated))} given more than once")
    return values


def parse_models(text: str, flag: str = "--models") -> tuple[str, ...]:
    """'ten,mamba2' -> ('ten', 'mamba2'), checked by check_models."""
    return check_models(tuple(comma_list(text)), flag)


def check_models(names: tuple[str, ...], flag: str = "--models") -> tuple[str, ...]:
    """``names``, if each is a model bench measures, given once; else a one-line ValueError."""
    unknown = [name for name in names if name not in MODELS]
    if not names or unknown:
        raise ValueError(f"{flag}: expected comma-separated names from {', '.join(MODELS)}, got {','.join(names)!r}")
    repeated = sorted({name for name in names if names.count(name) > 1}, key=MODELS.index)
    if repeated:
        raise ValueError(f"{flag}: {', '.join(repeated)} given more than once")
    return names


def mamba2_available() -> bool:
    """Whether transformers' Mamba2ForCausalLM can be built here (it imports transformers: seconds)."""
    try:
        require_transformers_mamba2()
    except ValueError:
        return False
    return True


@dataclass
class BenchSettings:
    """What `ten bench` measures: each field with a flag declares it (see flags.py), in the order of --help."""

    # None: all three, Mamba-2 only where transformers is installed (run_bench says so in one line where it is not)
    models: tuple[str, ...] | None = setting(
        None,
        "comma-separated, from: ten, transformer, mamba2 (default: all three; mamba2 where transformers is installed)",
        read=parse_models,
    )
    d_model: int = setting(512, bound=POSITIVE)
    n_layers: int = setting(4, bound=POSITIVE)
    num_eigenstates: int = setting(64, bound=POSITIVE)
    # TEN's column as a hybrid; the transformer's is all attention; Mamba-2 is sized like the hybrid
    layer_pattern: str | None = setting(None, "measure TEN as this hybrid, e.g. eeew (see ten train --help)")
    attention_window: int | None = setting(None, "the hybrid's w layers' window (default 256)", bound=POSITIVE)
    lengths: tuple[int, ...] = setting((256, 512, 1024, 2048, 4096, 8192, 16384), "sequence lengths T",
                                       read=parse_lengths)  # fmt: skip
    # the same work per step at every length
    tokens_per_batch: int = setting(8192, "batch = this / T (at least 1)", bound=POSITIVE)
    contexts: tuple[int, ...] = setting((128, 1024, 8192), "contexts for per-token generation time", read=parse_lengths)
    decode_batches: tuple[int, ...] = setting((1,), "batch sizes for generation time, e.g. 1,16", read=parse_lengths)
    new_tokens: int = setting(32, bound=POSITIVE)
    reps: int = setting(3, bound=POSITIVE)
    # a model whose step takes longer stops growing T
    max_step_seconds: float = setting(60.0, "stop growing T past this", bound=POSITIVE)
    dtype: str = setting("float32", "autocast dtype", choices=("float32", "bf16", "fp16"))
    device: str = "cpu"  # the command resolves its --device to one
    weight_read_mib: int = 128  # more than any CPU cache

    def __post_init__(self) -> None:
        """Checked now, before any folder is made or anything measured: the bounds its fields declare (the parser
        checked a command's), then TEN's settings by its config."""
        check_settings(self)
        if self.models is not None:
            self.models = check_models(tuple(self.models))
            if "mamba2" in self.models and not mamba2_available():
                raise ValueError(f"--models mamba2 is transformers' Mamba2ForCausalLM, which is not installed here: "
                                 f"{install_hint('hf')}")  # fmt: skip
        hybrid = {key: getattr(self, key) for key in ("layer_pattern", "attention_window") if getattr(self, key)}
        TemporalEigenstateConfig(d_model=self.d_model, n_layers=self.n_layers, num_eigenstates=self.num_eigenstates,
                                 **hybrid)  # fmt: skip


# ---------------------------------------------------------------- measuring


def _cpu_peak_in_fresh_process(name: str, settings: BenchSettings, length: int, batch: int, train: bool, out) -> None:
    """Runs in a spawned process: the rise of peak RSS (VmHWM: ru_maxrss would carry the parent's
    peak across fork and exec) over the RSS after building model and inputs."""
    torch.manual_seed(0)
    model = build(name, settings, length, torch.device("cpu"))
    ids = torch.randint(0, 256, (batch, length + 1))

    def run(window: torch.Tensor) -> None:
        if train:
            with autocast(settings, torch.device("cpu")):
                loss = model.compute_loss(window[:, :-1], window[:, 1:])
            loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast(settings, torch.device("cpu")):
                model(window[:, :-1])

    # A first pass loads code (a custom operator's first call imports torch._dynamo, ~100 MiB): on a tiny one,
    # before the baseline, so that the rise is the pass's memory and not the libraries it loads.
    run(ids[:1, :9])
    baseline_kib = _status_kib("VmRSS")
    run(ids)
    out.put(max(0, _status_kib("VmHWM") - baseline_kib) / 1024)


def _status_kib(field: str) -> int:
    return int(Path("/proc/self/status").read_text().split(f"{field}:")[1].split()[0])


def peak_memory_mib(name: str, settings: BenchSettings, length: int, batch: int, train: bool) -> float | None:
    """Peak memory of one forward (or forward + backward) pass.

    CUDA: max_memory_allocated. CPU: in a fresh process, because a process that has run other sizes
    keeps freed memory mapped and would hide the rise (Linux only; None elsewhere).
    """
    device = torch.device(settings.device)
    if device.type == "cuda":
        model = build(name, settings, length, device)
        ids = torch.randint(0, 256, (batch, length + 1), device=device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        if train:
            with autocast(settings, device):
                model.compute_loss(ids[:, :-1], ids[:, 1:]).backward()
        else:
            with torch.inference_mode(), autocast(settings, device):
                model(ids[:, :-1])
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        del model
        return peak
    if not Path("/proc/self/status").exists():
        return None
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_cpu_peak_in_fresh_process, args=(name, settings, length, batch, train, queue))
    process.start()
    process.join()
    return queue.get() if process.exitcode == 0 else None


def build(name: str, settings: BenchSettings, max_len: int, device: torch.device) -> LanguageModel:
    """Each model from the same sizes: build_model gives each the ones its config has, and sizes Mamba-2 like
    the TEN they make (hybrid included)."""
    hybrid = {key: getattr(settings, key) for key in ("layer_pattern", "attention_window") if getattr(settings, key)}
    return build_model(name, device, vocab_size=256, d_model=settings.d_model, n_layers=settings.n_layers,
                       num_eigenstates=settings.num_eigenstates, max_seq_len=max_len, **hybrid)  # fmt: skip


def autocast(settings: BenchSettings, device: torch.device):
    dtype = None if settings.dtype == "float32" else DTYPES[settings.dtype]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def step_functions(
    model: LanguageModel, length: int, settings: BenchSettings, device: torch.device
) -> tuple[int, Callable[[], None], Callable[[], None]]:
    """A forward pass (inference) and a training step (forward, backward, AdamW) on a random batch."""
    batch = max(1, settings.tokens_per_batch // length)
    ids = torch.randint(0, 256, (batch, length + 1), device=device)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def forward() -> None:
        with torch.inference_mode(), autocast(settings, device):
            model(inputs)

    def train_step() -> None:
        with autocast(settings, device):
            loss = model.compute_loss(inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return batch, forward, train_step


def warm_up(model: LanguageModel, length: int, settings: BenchSettings, device: torch.device) -> None:
    """One untimed measurement: a fresh process runs its first steps 10-30% slow (heap growth)."""
    _, forward, train_step = step_functions(model, length, settings, device)
    median_seconds(forward, device, settings.reps, SLOW_S)
    median_seconds(train_step, device, settings.reps, SLOW_S)


def counted_tflop(step: Callable[[], None]) -> float:
    """Matmul and attention FLOPs of one call of `step` (torch's FlopCounterMode), in TFLOP."""
    # Imported here: it imports triton (~0.2 s), which `ten` pays at every start if BenchSettings' module does.
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e12


def matmul_flops(dtype: str, device: torch.device, n: int, reps: int) -> float:
    """FLOP/s of an n x n matmul in `dtype` (a name of DTYPES)."""
    a, b = (torch.randn(n, n, device=device, dtype=DTYPES[dtype]) for _ in range(2))
    return 2 * n**3 / median_seconds(lambda: a @ b, device, reps)


def matmul_peak_tflops(settings: BenchSettings, device: torch.device) -> float:
    """What a large square matmul reaches here in the bench's dtype: the yardstick of the MFU column."""
    return matmul_flops(settings.dtype, device, 8192 if device.type == "cuda" else 2048, settings.reps) / 1e12


def emulated_dtype(dtype: str, rate: float, float32_rate: float) -> str | None:
    """Why bench refuses `dtype` on a CPU whose matmuls in it run at `rate` FLOP/s against float32's (most CPUs
    have no float16 matmul: PyTorch falls back to a loop 30x slower, and every figure would time that); None where
    it is fast enough to measure."""
    if rate * EMULATED >= float32_rate:
        return None
    return (f"--dtype {dtype}: this CPU's {dtype} matmuls run at {flop_rate_text(rate)}, {float32_rate / rate:.0f} "
            f"times slower than in float32 ({flop_rate_text(float32_rate)}): not native here, so bench would time "
            f"their emulation; use --dtype float32 (or bf16 where the CPU has it), or a GPU")  # fmt: skip


def check_dtype(settings: BenchSettings, device: torch.device) -> None:
    """On a CPU, a one-line ValueError where the autocast dtype's matmuls are emulated (a quick probe, both dtypes
    one after the other); a GPU runs both natively."""
    if device.type != "cpu" or settings.dtype == "float32":
        return
    # The best of three rounds, the dtypes taking turns: a core that another job holds slows a two-thread matmul
    # 40x at times, and one such measurement of float32 would let an emulated dtype through.
    rounds = [{dtype: matmul_flops(dtype, device, 256, 3) for dtype in (settings.dtype, "float32")} for _ in range(3)]
    rates = {dtype: max(round_[dtype] for round_ in rounds) for dtype in rounds[0]}
    if reason := emulated_dtype(settings.dtype, rates[settings.dtype], rates["float32"]):
        raise ValueError(reason)


def measure_length(model: LanguageModel, length: int, settings: BenchSettings, device: torch.device) -> dict:
    batch, forward, train_step = step_functions(model, length, settings, device)
    row: dict[str, Any] = {"T": length, "batch": batch, "train_tflop": counted_tflop(train_step)}
    row["forward_ms"] = 1e3 * median_seconds(forward, device, settings.reps, SLOW_S)
    row["train_step_ms"] = 1e3 * median_seconds(train_step, device, settings.reps, SLOW_S)
    row["tokens_per_s"] = batch * length / (row["train_step_ms"] / 1e3)
    row["train_tflops"] = row["train_tflop"] / (row["train_step_ms"] / 1e3)
    row["train_peak_mib"] = peak_memory_mib(model.architecture, settings, length, batch, train=True)
    row["forward_peak_mib_b1"] = peak_memory_mib(model.architecture, settings, length, 1, train=False)
    return row


def measure_generation(
    model: LanguageModel, context: int, batch: int, settings: BenchSettings, device: torch.device
) -> float:
    """ms per new token after `context` tokens, stepping through the model's state (greedy) the way
    `generate` does: a compiled step (CUDA graphs) on a GPU, the eager one on a CPU."""
    prompt = torch.randint(0, 256, (batch, context), device=device)
    step = model.decode_step(compiled=device.type == "cuda")
    with torch.inference_mode(), autocast(settings, device):
        logits, state = model(prompt, return_state=True)
        first = logits[:, -1:].argmax(-1)
        step(first, state)  # compiles (and records the CUDA graph) outside the timing: a slow warm-up would be timed

        # Mamba-2's step updates its cache in place, so each repetition goes on where the last one stopped: its
        # state has one size at any context, so its time per token is the same.
        def decode() -> None:
            token, carried = first, state
            for _ in range(settings.new_tokens):
                out, carried = step(token, carried)
                token = out[:, -1:].argmax(-1)

        return 1e3 * median_seconds(decode, device, settings.reps, SLOW_S) / settings.new_tokens


def weight_read_rates(settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    """GB/s at which batch-1 matmuls read d_model-wide weight matrices (4d x d, an MLP's), beside a plain read of
    the same bytes as one buffer, and what a call of the matmul costs at any size (one of 1 element).

    Generating one token reads every weight once, through matrix-vector products; on a CPU
    that is the floor of the time per token, where the matrices are large enough for the reads to dominate.
    """
    d = settings.d_model
    count = max(1, settings.weight_read_mib * 2**20 // (4 * d * 4 * d))
    buffer = torch.randn(count, 4 * d, d, device=device)  # the matrices are its slices: one read covers them all
    weights = buffer.unbind(0)
    x, one = torch.randn(1, d, device=device), torch.randn(1, 1, device=device)

    def matvec() -> None:
        for w in weights:
            torch.nn.functional.linear(x, w)

    def empty() -> None:
        for _ in range(count):
            torch.nn.functional.linear(one, one)

    timed = {"matvec": matvec, "empty": empty, "read": buffer.sum}
    return weight_read_figures(lambda what: median_seconds(timed[what], device, 5, SLOW_S), buffer.numel() * 4, count)


def weight_read_figures(seconds: Callable[[str], float], total_bytes: int, count: int) -> dict[str, Any]:
    """The weight-read figures from seconds("matvec") (`count` batch-1 matmuls over `total_bytes` of weights),
    seconds("empty") (as many calls on 1 element) and seconds("read") (one plain read of the same bytes), measured
    until two agree and the matmuls read no faster than it (see plausible.settle)."""
    gigabytes = total_bytes / 1e9
    matvec_s = seconds("matvec")
    figures: dict[str, Any] = {"matvec_gbps": gigabytes / matvec_s, "matrix_bytes": total_bytes // count,
                               "call_us": 1e6 * matvec_s / count, "empty_call_us": 1e6 * seconds("empty") / count,
                               "read_bytes": total_bytes}  # fmt: skip
    read = settle(lambda: gigabytes / seconds("read"), [figures["matvec_gbps"]], MATVEC, PLAIN_READ, gbps_text,
                  margin=READ_MARGIN)  # fmt: skip
    figures.update(read_gbps=read.value, read_measured=read.measured, unreliable=read.unreliable)
    return figures


def gbps_text(gbps: float) -> str:
    return f"{significant_text(gbps)} GB/s"


def tflops_text(tflops: float) -> str:
    return flop_rate_text(1e12 * tflops)


OUT_OF_MEMORY = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError ("DefaultCPUAllocator: not enough memory: ...",
    or "can't allocate memory" where the kernel refuses the allocation outright)."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(phrase in str(err).lower() for phrase in OUT_OF_MEMORY)


def free_memory(device: torch.device) -> None:
    """What a failed allocation left cached, so the other model is measured with the memory it would have had."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def chosen_models(settings: BenchSettings) -> tuple[list[str], str | None]:
    """The models to measure, in the tables' order, and the line saying why Mamba-2 was left out (where --models
    was not given and transformers is missing: bench then runs as before it measured Mamba-2)."""
    if settings.models is not None:
        return [name for name in MODELS if name in settings.models], None
    if mamba2_available():
        return list(MODELS), None
    left_out = f"Mamba-2 left out: it is transformers' Mamba2ForCausalLM, not installed here ({install_hint('hf')})"
    return [name for name in MODELS if name != "mamba2"], left_out


def run_bench(
    settings: BenchSettings, log: Callable[[str], None] = print, into: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Measures each length for each model; a model that runs out of memory (or time) at a length gets an
    out-of-memory (or stopped) entry there and is not measured at longer ones.

    The results fill `into` as they are measured (a finished length at a time), so that an interrupted run's
    caller still holds what was measured."""
    device = torch.device(settings.device)
    torch.manual_seed(0)
    names, left_out = chosen_models(settings)
    if left_out:
        log(left_out)
    results = {} if into is None else into
    results.update({"settings": settings.__dict__, "machine": machine_description(device), "models": names,
                    "left_out": left_out, "lengths": [], "generation": [], "stopped": {}})  # fmt: skip
    models = {name: build(name, settings, max(settings.lengths), device) for name in names}
    results["parameters"] = {name: model.num_parameters() for name, model in models.items()}
    results["weight_mib"] = {name: model.num_parameters() * 4 / 2**20 for name, model in models.items()}
    if "mamba2" in models:
        results["mamba2_sizes"] = {key: getattr(models["mamba2"].config, key) for key in MAMBA2_SIZES}
    log(parameters_line(results))
    first_peak = matmul_peak_tflops(settings, device)  # the MFU's yardstick, measured again at the end
    active, warm = set(names), set()
    for length in settings.lengths:
        row: dict[str, Any] = {"T": length, "batch": max(1, settings.tokens_per_batch // length), "out_of_memory": []}
        for name in names:
            if name not in active:
                continue
            try:
                if name not in warm:  # at the first length measured: it may be the one that does not fit
                    warm_up(models[name].train(), length, settings, device)
                    warm.add(name)
                measured = measure_length(models[name].train(), length, settings, device)
            except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
                if not is_out_of_memory(err):
                    raise
                free_memory(device)
                active.discard(name)
                row["out_of_memory"].append(name)
                results["stopped"][name] = f"out of memory at T = {length}"
                log(f"{name}: out of memory at T = {length}; no longer measured")
                continue
            row[name] = measured
            if measured["train_step_ms"] / 1e3 > settings.max_step_seconds:
                active.discard(name)
                results["stopped"][name] = f"step over {settings.max_step_seconds:g} s at T = {length}"
        results["lengths"].append(row)
        log(format_length_row(row))
        if not active:
            break
    for batch in settings.decode_batches:
        for context in settings.contexts:
            row = generation_row(models, context, batch, settings, device)
            results["generation"].append(row)
            log(f"generation after {context:,} tokens, batch {batch}: "
                + ", ".join(f"{name} {ms_per_step(row, name)}" for name in names))  # fmt: skip
    # measured again here, at another moment than at the start: a busy spell seldom covers both
    peak = settle(lambda: matmul_peak_tflops(settings, device), step_tflops(results), STEP, f"the {settings.dtype} "
                  f"matmul peak", tflops_text, first=first_peak)  # fmt: skip
    results.update(matmul_peak_tflops=peak.value, matmul_peak_measured=peak.measured,
                   matmul_peak_unreliable=peak.unreliable)  # fmt: skip
    results["weight_reads"] = weight_read_rates(settings, device)
    log(weight_read_line(results))
    return results


def step_tflops(results: dict[str, Any]) -> list[float]:
    """The counted TFLOP/s of every training step measured: none may exceed the matmul peak."""
    rows = results["lengths"]
    return [row[name]["train_tflops"] for row in rows for name in MODELS if name in row and "train_tflops" in row[name]]


def mfu_unreliable(results: dict[str, Any]) -> str | None:
    """Why the MFU column is not given: as the run found it, or (a bench.json written before the check) a step
    above the peak it was read against."""
    if reason := results.get("matmul_peak_unreliable"):
        return reason
    peak = results.get("matmul_peak_tflops")
    if peak and (step := excess(peak, step_tflops(results))) is not None:
        tries = len(results.get("matmul_peak_measured", ())) or 1
        return above(STEP, step, f"the {results['settings']['dtype']} matmul peak", peak, tries, tflops_text)
    return None


def generation_row(
    models: dict[str, LanguageModel], context: int, batch: int, settings: BenchSettings, device: torch.device
) -> dict[str, Any]:
    """Each model's ms per generated token after `context` tokens (None where it ran out of memory), and the bytes
    of state one sequence carries there."""
    state_bytes = {name: model.state_bytes(context) for name, model in models.items()}
    row: dict[str, Any] = {"context": context, "batch": batch, "out_of_memory": [], "state_bytes": state_bytes}
    for name, model in models.items():
        try:
            row[name] = measure_generation(model.eval(), context, batch, settings, device)
        except (RuntimeError, MemoryError) as err:
            if not is_out_of_memory(err):
                raise
            free_memory(device)
            row[name] = None
            row["out_of_memory"].append(name)
    return row


def parameters_line(results: dict[str, Any]) -> str:
    """Each model's parameter count; Mamba-2's sizes, which its sizing rule chose to match TEN's count."""
    counts = ", ".join(f"{NAMES[name]} {count:,}" for name, count in results["parameters"].items())
    line = f"parameters: {counts}"
    if sizes := results.get("mamba2_sizes"):
        line += f" (Mamba-2: {', '.join(f'{key} {value}' for key, value in sizes.items())}, sized like TEN)"
    return line


def weight_read_line(results: dict[str, Any]) -> str:
    """The weight-read rate and each model's per-token floor from it; where the matmuls contradict the plain read,
    or time the cost of a call rather than its reads (narrow models), why neither is given."""
    rates, mib = results["weight_reads"], results["weight_mib"]
    # a bench.json from before the one-buffer read: its plain read was of the same matrices, one at a time
    read = f"a plain read of one {bytes_text(rates['read_bytes'])} buffer" if "read_bytes" in rates else "a plain read"
    read += f": {significant_text(rates['read_gbps'])} GB/s"
    unreliable = rates.get("unreliable")
    if not unreliable and excess(rates["read_gbps"], [rates["matvec_gbps"]], READ_MARGIN) is not None:
        tries = len(rates.get("read_measured", ())) or 1
        unreliable = above(MATVEC, rates["matvec_gbps"], PLAIN_READ, rates["read_gbps"], tries, gbps_text)
    if unreliable:
        return f"batch-1 matmul weight reads: unreliable, {unreliable}; no per-token floor is given"
    if "call_us" in rates and overhead_bound(rates["call_us"], rates["empty_call_us"]):
        width = results["settings"]["d_model"]
        return (f"batch-1 matmuls on d_model {width}'s {bytes_text(rates['matrix_bytes'])} weight matrices take "
                f"{significant_text(rates['call_us'])} us a call, of which at least "
                f"{significant_text(rates['empty_call_us'])} us is the cost of any call (one on 1 element): they time "
                f"call overhead as much as weight reads, so at this width no read rate or per-token floor is given "
                f"({read})")  # fmt: skip
    floor = {name: 2**20 * size / 1e9 / rates["matvec_gbps"] * 1e3 for name, size in mib.items()}
    each = ", ".join(f"{significant_text(floor[name])} ms for {NAMES[name]} ({bytes_text(2**20 * mib[name])})"
                     for name in mib)  # fmt: skip
    rate = significant_text(rates["matvec_gbps"])
    return f"batch-1 matmuls read weights at {rate} GB/s ({read}); reading every weight once per token takes {each}"


# ---------------------------------------------------------------- reporting


def measured_models(results: dict[str, Any]) -> list[str]:
    """The models of a bench.json, in the tables' order (one written before "models" was saved: those in its rows)."""
    if "models" in results:
        return list(results["models"])
    rows = results["lengths"] + results["generation"]
    return [name for name in MODELS if any(name in row or name in row.get("out_of_memory", ()) for row in rows)]


def ratio(row: dict, key: str, other: str) -> str:
    """TEN's figure over `other`'s at one length."""
    if "ten" in row and other in row:
        return f"{row['ten'][key] / row[other][key]:.2f}"
    return "-"


def ms_per_step(row: dict[str, Any], name: str) -> str:
    return "out of memory" if row[name] is None else f"{row[name]:.2f} ms/step"


def format_length_row(row: dict[str, Any]) -> str:
    parts = [f"T={row['T']:>6}"]
    for name in MODELS:
        if name in row.get("out_of_memory", ()):
            parts.append(f"{name}: out of memory")
        elif name in row:
            m = row[name]
            speed = f"{m['tokens_per_s']:,.0f} tok/s"
            parts.append(f"{name}: fwd {m['forward_ms']:.1f} ms, step {m['train_step_ms']:.1f} ms, {speed}")
    return "  ".join(parts)


def _mib(value: float | None) -> str:
    """Whole MiB from 10 on, 2 significant digits below (a tiny model's 0.31 MiB is not "0")."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 9.95 or value == 0 else f"{value:.2g}"


def length_cell(row: dict[str, Any], name: str, key: str, fmt: str = "{:,.1f}") -> str:
    """One model's figure at one length; OOM where it ran out of memory, stopped where it was no longer measured."""
    if name not in row:
        return "OOM" if name in row.get("out_of_memory", ()) else "stopped"
    value = row[name][key]
    return _mib(value) if key.endswith("mib") or key.endswith("b1") else fmt.format(value)


def table_line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def length_table(results: dict[str, Any], names: list[str]) -> list[str]:
    """Per length: each model's figures, a metric's columns side by side, TEN's time over each other model's
    beside its times."""
    others = [name for name in names if name != "ten"] if "ten" in names else []
    peak = results.get("matmul_peak_tflops")
    yardstick = Yardstick(peak or 0.0, unreliable=mfu_unreliable(results))

    def mfu(model: dict | None) -> str:
        """Counted FLOP/s of the training step as a share of the measured matmul peak; never one above 100%."""
        if model is None or not peak or "train_tflops" not in model:
            return "-"
        share = yardstick.share(model["train_tflops"])
        return "unreliable" if share is None else f"{100 * share:.0f}%"

    header = ["T", "batch"]
    for key, words in (("fwd", "fwd ms"), ("step", "step ms")):
        header += [f"{LABELS[name]} {words}" for name in names] + [f"{key} TEN/{LABELS[name]}" for name in others]
    for words in ("tok/s", "MFU", "fwd+bwd MiB", "fwd MiB (B=1)"):
        header += [f"{LABELS[name]} {words}" for name in names]
    lines = [table_line(header), "|" + "---:|" * len(header)]
    for row in results["lengths"]:
        measured = [row[name] for name in names if name in row]
        batch = row["batch"] if "batch" in row else measured[0]["batch"]  # older bench.json: in the models' rows
        cell = functools.partial(length_cell, row)
        cells = [f"{row['T']:,}", str(batch)]
        for key in ("forward_ms", "train_step_ms"):
            cells += [cell(name, key) for name in names] + [ratio(row, key, name) for name in others]
        cells += [cell(name, "tokens_per_s", "{:,.0f}") for name in names]
        cells += [mfu(row.get(name)) for name in names]
        cells += [cell(name, "train_peak_mib") for name in names]
        cells += [cell(name, "forward_peak_mib_b1") for name in names]
        lines.append(table_line(cells))
    return lines


def generation_table(results: dict[str, Any], names: list[str]) -> list[str]:
    """Per context and batch: each model's ms per token, how many times TEN's each other model's is, and the state
    one sequence carries."""
    others = [name for name in names if name != "ten"] if "ten" in names else []
    with_state = any("state_bytes" in row for row in results["generation"])  # older bench.json: none
    header = ["context", "batch", *(f"{LABELS[name]} ms/step" for name in names)]
    header += [f"{LABELS[name]} / TEN" for name in others]
    header += [f"{LABELS[name]} state KiB" for name in names] if with_state else []
    lines = [table_line(header), "|" + "---:|" * len(header)]
    for row in results["generation"]:
        times = {name: row.get(name) for name in names}
        cells = [f"{row['context']:,}", str(row.get("batch", 1))]
        cells += ["OOM" if times[name] is None else f"{times[name]:.2f}" for name in names]
        cells += ["-" if times["ten"] is None or times[name] is None else f"{times[name] / times['ten']:.2f}x"
                  for name in others]  # fmt: skip
        if with_state:
            cells += [f"{row['state_bytes'][name] / 1024:,.1f}" for name in names]
        lines.append(table_line(cells))
    return lines


def markdown(results: dict[str, Any]) -> str:
    names = measured_models(results)
    lines = length_table(results, names)
    if results["generation"]:  # none where a run was interrupted before it
        lines += ["", *generation_table(results, names)]
    if peak := results.get("matmul_peak_tflops"):
        lines.append(f"\n{mfu_note(results, peak)}")
    if "weight_reads" in results:
        lines.append(f"\n{weight_read_line(results)}.")
    for name, why in results["stopped"].items():
        lines.append(f"\n{name}: stopped, {why}.")
    if interrupted := results.get("interrupted"):
        lines.append(f"\n{interrupted_note(results, interrupted)}")
    if "parameters" in results:
        lines.append(f"\n{parameters_line(results)}.")
    if left_out := results.get("left_out"):
        lines.append(f"\n{left_out}.")
    if "ten" in names and (pattern := results["settings"].get("layer_pattern")):
        window = results["settings"].get("attention_window") or DEFAULT_ATTENTION_WINDOW
        lines.append(f"\nTEN is the hybrid {pattern} (w layers over {window:,} tokens).")
    return "\n".join(lines) + "\n"


def interrupted_note(results: dict[str, Any], interrupted: str) -> str:
    """What an interrupted run did not measure (the lengths after the last one it kept, and what comes after)."""
    parts = {"the longer lengths": results["lengths"][-1]["T"] == max(results["settings"]["lengths"]),
             "generation": results["generation"], "the matmul peak (MFU)": results.get("matmul_peak_tflops"),
             "the weight reads": results.get("weight_reads")}  # fmt: skip
    missing = ", ".join(what for what, measured in parts.items() if not measured)
    return f"Interrupted {interrupted}" + (f": not measured: {missing}." if missing else ".")


def mfu_note(results: dict[str, Any], peak: float) -> str:
    if reason := mfu_unreliable(results):
        return f"MFU: unreliable, not given: {reason}."
    dtype, measured = results["settings"]["dtype"], results.get("matmul_peak_measured", [])
    best = f" (the best of {', '.join(map(tflops_text, measured))})" if len(measured) > 1 else ""
    return (f"MFU: FLOPs counted by torch's FlopCounterMode per training step, against a {dtype} matmul measured "
            f"at {flop_rate_text(1e12 * peak)} in the same run{best}.")  # fmt: skip


def plot(results: dict[str, Any], output_dir: Path) -> list[Path]:
    # Time per token, not per call: the batch shrinks as T grows, down to 1 past tokens_per_batch.
    panels = [("forward_ms", "forward, us per token", True), ("train_step_ms", "training step, us per token", True),
              ("forward_peak_mib_b1", "forward peak memory, batch 1 (MiB)", False)]  # fmt: skip
    names = measured_models(results)
    path = output_dir / "bench_scaling.png"
    with png(path, 1, len(panels), figsize=(15, 4.5)) as (figure, axes):
        for axis, (key, label, per_token) in zip(axes, panels, strict=True):
            for name in names:
                measured = [(r["T"], r[name]) for r in results["lengths"] if name in r and r[name][key]]
                points = [(t, 1e3 * m[key] / (m["batch"] * t) if per_token else m[key]) for t, m in measured]
                if points:
                    axis.loglog(*zip(*points, strict=True), marker="o", label=NAMES[name], base=2)
            axis.set_xlabel("sequence length T")
            axis.set_ylabel(label)
            axis.grid(alpha=0.3, which="both")
            if axis.get_lines():
                axis.legend()
        settings = results["settings"]
        title = " vs ".join(NAMES[name] for name in names)
        figure.suptitle(f"{title}, d={settings['d_model']}, {settings['n_layers']} layers")
    return [path]


def write_outputs(results: dict[str, Any], output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1) + "\n"
    atomic_write(output_dir / "bench.json", lambda tmp: tmp.write_text(text))
    atomic_write(output_dir / "bench.md", lambda tmp: tmp.write_text(markdown(results)))
    plot(results, output_dir)


def run_command(settings: BenchSettings, output_dir: Path) -> None:
    """`ten bench`: measure, write bench.md, bench.json and bench_scaling.png, print the table and memory growth.
    Interrupted (Ctrl-C), it writes the lengths measured so far and stops as the command's interruption does."""
    check_dtype(settings, torch.device(settings.device))  # before the folder: a refused command leaves none
    check_writable(output_dir)  # before any measuring: a folder that cannot be written would lose it all
    results: dict[str, Any] = {}
    try:
        run_bench(settings, into=results)
    except KeyboardInterrupt:
        keep_interrupted(results, output_dir)
        raise
    write_outputs(results, output_dir)
    exponents = {name: growth(results, name, "forward_peak_mib_b1") for name in results["models"]}
    print("\n" + markdown(results))
    if measured := [f"{n} p = {signed_text(e)}" for n, e in exponents.items() if e is not None]:  # two lengths or more
        print("forward peak memory ~ T^p: " + ", ".join(measured))
    print(f"written: {output_dir}/bench.md, bench.json, bench_scaling.png")


def keep_interrupted(results: dict[str, Any], output_dir: Path) -> None:
    """After a Ctrl-C: the lengths (and generation rows) measured so far, written as a finished run's are and
    marked interrupted; nothing measured yet, the empty folder is removed."""
    if not results.get("lengths"):
        with contextlib.suppress(OSError):
            output_dir.rmdir()  # only if empty
        return
    lengths = [row["T"] for row in results["lengths"]]
    results["interrupted"] = f"after T = {lengths[-1]:,}"
    write_outputs(results, output_dir)
    kept = ", ".join(f"{t:,}" for t in lengths)
    print(f"interrupted: kept the lengths measured (T = {kept}) in {output_dir}/bench.md and bench.json",
          file=sys.stderr)  # fmt: skip


def growth(results: dict[str, Any], name: str, key: str) -> float | None:
    """Exponent p in cost ~ T^p between the two longest measured lengths (where fixed costs matter least)."""
    points = [(r["T"], r[name][key]) for r in results["lengths"] if name in r and r[name][key]]
    if len(points) < 2:
        return None
    (t0, v0), (t1, v1) = points[-2], points[-1]
    return math.log(v1 / v0) / math.log(t1 / t0)
