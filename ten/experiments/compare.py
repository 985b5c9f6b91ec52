"""`ten compare`: train several variants on the same data, seed and budget; tabulate and plot them.

Each variant is an ordinary `ten train` run (its own folder, metrics.jsonl and checkpoints), so
any of them can be resumed, sampled from or inspected on its own afterwards.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..lm import config_fields
from ..training import TrainArguments, Trainer
from ..training.arguments import MODEL_FIELDS
from ..training.plan import batch_shape, model_plan

# name -> overrides of the shared arguments. The "+energy" variants keep the run's --energy_reg_weight
# (the preset's when not given); the others turn the energy loss off.
PLAIN_TEN = {"use_hten": False, "hten_scales": None}  # also on the presets that default to HTEN
VARIANTS: dict[str, dict[str, Any]] = {
    "ten": {**PLAIN_TEN, "energy_reg_weight": 0.0},
    "ten+energy": PLAIN_TEN,
    "hten": {"use_hten": True, "energy_reg_weight": 0.0},
    "hten+energy": {"use_hten": True},
    "transformer": {"model": "transformer"},
    "ten-nonselective": {**PLAIN_TEN, "selective": False, "energy_reg_weight": 0.0},
}


def parse_variants(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        given = ", ".join(unknown) or "(none given)"
        raise ValueError(f"--variants: unknown {given}; choose from {', '.join(VARIANTS)}")
    return names


def variant_arguments(base: TrainArguments, name: str, output_dir: Path) -> TrainArguments:
    values = {**base.to_dict(), **VARIANTS[name]}
    fields = config_fields(values["model"])
    values.update({key: None for key in MODEL_FIELDS if key not in fields})  # settings of another architecture
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
        energy = f"{r['val_energy']:.3f}" if "val_energy" in r else "-"  # models without an energy loss
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
    settings = {k: v for k, v in base.to_dict().items() if v is not None}
    (output_dir / "results.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    (output_dir / "results.md").write_text(markdown_table(rows))
    plot(rows, output_dir / "validation_loss.png")


def token_budget_steps(tokens: int, base: TrainArguments) -> int:
    """--tokens as optimiser steps for the run's window and batch (the same for every variant)."""
    seq_len, batch_size = batch_shape(base, model_plan(base))
    return max(1, math.ceil(tokens / (seq_len * batch_size * base.gradient_accumulation)))
