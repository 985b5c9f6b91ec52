"""`ten compare`: train several variants on the same data, seed and budget; tabulate and plot them.

Each variant is an ordinary `ten train` run (its own folder, metrics.jsonl and checkpoints), so
any of them can be resumed, sampled from or inspected on its own afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from ..training import TrainArguments, Trainer
from ..training.trainer import TEN_OVERRIDES

# name -> overrides of the shared arguments. "energy" variants take the run's --energy_reg_weight.
VARIANTS: dict[str, dict[str, Any]] = {
    "ten": {"energy_reg_weight": 0.0},
    "ten+energy": {},
    "hten": {"use_hten": True, "energy_reg_weight": 0.0},
    "hten+energy": {"use_hten": True},
    "transformer": {"model": "transformer", "energy_reg_weight": None},
    "ten-nonselective": {"selective": False, "energy_reg_weight": 0.0},
}
DEFAULT_ENERGY_WEIGHT = 0.01


def parse_variants(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        given = ", ".join(unknown) or "(none given)"
        raise ValueError(f"--variants: unknown {given}; choose from {', '.join(VARIANTS)}")
    return names


def variant_arguments(base: TrainArguments, name: str, output_dir: Path) -> TrainArguments:
    values = base.to_dict()
    if values["energy_reg_weight"] is None:
        values["energy_reg_weight"] = DEFAULT_ENERGY_WEIGHT
    if VARIANTS[name].get("model") == "transformer":  # the eigenstate settings do not apply to it
        values.update({key: None for key in TEN_OVERRIDES})
    values.update(VARIANTS[name])
    values.update(output_dir=str(output_dir / name), resume=None, overwrite=True)
    return TrainArguments.from_dict(values)


def eval_curve(run_dir: Path) -> list[dict[str, float]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["event"] == "eval"]


def run_comparison(base: TrainArguments, names: list[str], output_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        trainer = Trainer(variant_arguments(base, name, output_dir))
        result = trainer.train()
        trainer.close()
        elapsed = trainer.state.elapsed_s
        rows.append({
            "variant": name, "parameters": trainer.model.num_parameters(), "steps": result.step,
            "tokens": trainer.state.tokens_seen, "tokens_per_s": trainer.state.tokens_seen / max(elapsed, 1e-9),
            "wall_s": elapsed, **result.eval, "curve": eval_curve(trainer.output_dir),
        })  # fmt: skip
        if trainer.model.aux_loss_name is None:  # no energy to report, not a zero one
            rows[-1]["val_energy"] = None
        write_outputs(rows, base, output_dir)  # after every variant: an interrupted comparison keeps its rows
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    best = min(r["val_ce"] for r in rows)
    lines = [
        "| variant | parameters | val CE (nats) | bits/byte | perplexity | vs best | tokens/s | tokens | wall time "
        "| energy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        bits = r.get("val_bits_per_byte", r["val_bits_per_token"])
        energy = f"{r['val_energy']:.3f}" if r.get("val_energy") is not None else "-"
        lines.append(
            f"| {r['variant']} | {r['parameters'] / 1e6:.2f} M | {r['val_ce']:.4f} | {bits:.3f} | {r['val_ppl']:.2f} "
            f"| {100 * (r['val_ce'] / best - 1):+.1f}% | {r['tokens_per_s']:,.0f} | {r['tokens'] / 1e6:.1f} M "
            f"| {r['wall_s'] / 60:.1f} min | {energy} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    figure, (by_time, by_tokens) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        curve = r["curve"]
        by_time.plot([c["elapsed_s"] / 60 for c in curve], [c["val_ce"] for c in curve], marker=".", label=r["variant"])
        by_tokens.plot([c["tokens"] / 1e6 for c in curve], [c["val_ce"] for c in curve], marker=".", label=r["variant"])
    for axis, label in ((by_time, "training time (minutes)"), (by_tokens, "tokens seen (millions)")):
        axis.set_xlabel(label)
        axis.set_ylabel("validation cross-entropy (nats/token)")
        axis.grid(alpha=0.3)
    by_time.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_outputs(rows: list[dict[str, Any]], base: TrainArguments, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in dataclasses.asdict(base).items() if v is not None and k != "extra"}
    (output_dir / "results.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    (output_dir / "results.md").write_text(markdown_table(rows))
    plot(rows, output_dir / "validation_loss.png")


def token_budget_steps(tokens: int, base: TrainArguments) -> int:
    """--tokens as optimiser steps for this batch and window (the same for every variant)."""
    from ..config import PRESETS

    window = base.max_seq_len or PRESETS[base.config].max_seq_len
    batch = base.batch_size or PRESETS[base.config].batch_size
    return max(1, math.ceil(tokens / (window * batch * base.gradient_accumulation)))
