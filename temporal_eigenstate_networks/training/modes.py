"""What `ten train --dry_run` and `ten train --benchmark` do with a set-up Trainer instead of training it.

They read the trainer's plan, data and model and write nothing, so the Trainer itself only trains.
"""

from __future__ import annotations

import torch

from ..data import WindowSampler
from ..timing import median_seconds, sync
from .trainer import Trainer


def dry_run(trainer: Trainer) -> dict[str, float]:
    """Summary, then the loss of a few real windows, without training."""
    args, plan, model = trainer.args, trainer.plan, trainer.model
    trainer.describe()
    sampler = WindowSampler(trainer.data.train, plan.seq_len, args.dry_samples, seed=args.seed)
    inputs, targets = (t.to(trainer.device) for t in sampler.batch(0))
    with torch.no_grad(), trainer.precision.autocast():
        out = model.compute_loss(inputs, targets, return_dict=True)
    values = {k: float(v) for k, v in out.items()}
    parts = "  ".join(f"{k} {v:.4f}" for k, v in values.items())
    aux = model.aux_loss_name
    weighted = f" (loss = ce_loss + {model.aux_loss_weight:g} x {aux}, raw)" if aux else ""
    trainer.log(f"dry run on {args.dry_samples} windows of {plan.seq_len} tokens: {parts}{weighted}")
    return values


def benchmark(trainer: Trainer, steps: int = 10, new_tokens: int = 64) -> dict[str, float]:
    """Speed of this configuration on this device: training steps and per-token generation, nothing saved."""
    device, model = trainer.device, trainer.model
    trainer.describe()
    trainer.train_step()  # compilation, allocator; median_seconds warms up once more
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s = median_seconds(trainer.train_step, device, steps)
    prompt = torch.as_tensor(trainer.data.val[:64].astype("int64"), device=device).unsqueeze(0)
    generate_s = median_seconds(lambda: model.generate(prompt, new_tokens, temperature=0), device, 3)
    prefill_s = median_seconds(lambda: model.generate(prompt, 0, temperature=0), device, 3)
    results = {"step_ms": 1e3 * step_s, "tokens_per_s": trainer.tokens_per_step / step_s,
               "generate_ms_per_token": 1e3 * (generate_s - prefill_s) / new_tokens}  # fmt: skip
    if device.type == "cuda":
        results["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    trainer.log("benchmark: " + "  ".join(f"{k} {v:,.2f}" for k, v in results.items()))
    return results
