"""A finished `ten train` run's model FLOPs utilisation, on the machine that trained it (gpu.sh runs it after each
preset run).

- tokens/s: the run's own, the last training record of metrics.jsonl (a moving average of the step's speed, so
  compilation and the first steps have decayed out of it); evaluation and saving are not in it.
- FLOPs per token: one training step (forward and backward) of the run's model at its window, batch 1, counted
  by torch's FlopCounterMode: the matmuls and attention; the scan's few elementwise FLOPs are not counted, as
  MFU conventionally leaves them out.
- the yardstick: a large square matmul measured here in the run's precision, until two measurements agree
  (plausible.settle); an MFU above it is not printed.

Usage: python benchmarks/train_mfu.py RUN_DIR [--hourly_rate 1.57]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from temporal_eigenstate_networks.experiments.bench import (
    BenchSettings,
    counted_tflop,
    matmul_peak_tflops,
    tflops_text,
)
from temporal_eigenstate_networks.lm import LanguageModel
from temporal_eigenstate_networks.plausible import settle
from temporal_eigenstate_networks.training.precision import resolve_precision

BENCH_DTYPE = {"float32": "float32", "bf16 autocast": "bf16", "fp16 autocast": "fp16"}


def last_record(run: Path, event: str) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    matching = [record for record in records if record.get("event") == event]
    if not matching:
        raise ValueError(f"{run / 'metrics.jsonl'} has no '{event}' record: is {run} a finished ten train run?")
    return matching[-1]


def flops_per_token(model: LanguageModel, seq_len: int, precision, device: torch.device) -> float:
    """FLOPs of one training step at the run's window, batch 1, per token."""
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len + 1), device=device)

    def step() -> None:
        with precision.autocast():
            loss = model.compute_loss(ids[:, :-1], ids[:, 1:])
        loss.backward()

    tflop = counted_tflop(step)
    model.zero_grad(set_to_none=True)
    return tflop * 1e12 / seq_len


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a ten train --output_dir")
    parser.add_argument("--hourly_rate", type=float, default=None, help="$/hour of this machine")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    options = parser.parse_args()
    try:
        report(options.run, torch.device(options.device), options.hourly_rate)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"train_mfu.py: {err}")


def report(run: Path, device: torch.device, hourly_rate: float | None) -> None:
    final = run / "checkpoints" / "final"
    state = json.loads((final / "trainer_state.json").read_text())
    args = state["args"]
    precision = resolve_precision(args["mixed_precision"], device)
    model = LanguageModel.from_pretrained(final).to(device)
    seq_len = args.get("max_seq_len") or model.config.max_seq_len
    train = last_record(run, "train")
    tokens_per_s = train["tokens_per_s"]
    per_token = flops_per_token(model, seq_len, precision, device)
    achieved = tokens_per_s * per_token / 1e12
    settings = BenchSettings(dtype=BENCH_DTYPE[precision.name], device=device.type)
    peak = settle(lambda: matmul_peak_tflops(settings, device), [achieved], "the training step counted",
                  f"the {settings.dtype} matmul peak", tflops_text)  # fmt: skip
    share = peak.share(achieved)
    mfu = f"{share:.1%}" if share is not None else f"not given: {peak.unreliable or 'above the peak'}"
    lines = [
        f"run: {run} ({model.architecture}, {model.num_parameters() / 1e6:,.1f} M parameters, T = {seq_len:,}, "
        f"batch {args['batch_size']} x accumulation {args['gradient_accumulation']}, {precision.name}, {device})",
        f"tokens/s: {tokens_per_s:,.0f} (the last training record, step {train['step']:,})",
        f"FLOPs per token (training step, counted): {per_token / 1e9:#.3g} GFLOP",
        f"achieved: {tflops_text(achieved)}; {settings.dtype} matmul peak here: {tflops_text(peak.value)}",
        f"MFU: {mfu}",
    ]
    if "peak_memory_gib" in train:
        lines.append(f"peak memory: {train['peak_memory_gib']:,.1f} GiB")
    if hourly_rate is not None:
        per_million = hourly_rate * 1e6 / tokens_per_s / 3600
        # the steps' own rate; the run's end line gives the whole run's, evaluations, saves and start included
        lines.append(f"cost: ${per_million:,.3f} per million tokens at ${hourly_rate:g}/hour, at the steps' rate")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
