"""Training speed of the paper's ablation variants, side by side in one run.

Every variant is built as `ten compare --variants ablations` builds it, then the variants take turns: each
round times a few optimiser steps of every variant, so a machine that slows down midway slows them all alike.
The figure per variant is the median over rounds; docs/RESULTS.md quotes it beside the ablation tables.

    .venv/bin/python benchmarks/ablation_speed.py                        # the T = 1,024 table's shape
    .venv/bin/python benchmarks/ablation_speed.py --max_seq_len 256 --batch_size 16
"""

from __future__ import annotations

import argparse
import statistics

from temporal_eigenstate_networks.experiments.compare import ABLATIONS, parse_variants
from temporal_eigenstate_networks.timing import median_seconds
from temporal_eigenstate_networks.training import TrainArguments, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--n_layers", type=int, default=4)
    parser.add_argument("--num_eigenstates", type=int, default=64)
    parser.add_argument("--max_seq_len", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--variants", type=parse_variants, default=list(ABLATIONS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round (median)")
    args = parser.parse_args()
    if unknown := [name for name in args.variants if name not in ABLATIONS]:
        parser.error(f"not an ablation variant: {', '.join(unknown)} (choose from {', '.join(ABLATIONS)})")

    base = {"config": "nano", "d_model": args.d_model, "n_layers": args.n_layers,
            "num_eigenstates": args.num_eigenstates, "max_seq_len": args.max_seq_len, "batch_size": args.batch_size,
            "mixed_precision": "auto", "benchmark": True}  # fmt: skip
    trainers = {name: Trainer(TrainArguments.from_dict({**base, **ABLATIONS[name]})) for name in args.variants}
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    for round_ in range(args.rounds):
        for name, trainer in trainers.items():
            seconds[name].append(median_seconds(trainer.train_step, trainer.device, args.steps))
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    reference = statistics.median(seconds[args.variants[0]])
    print(f"\nT = {args.max_seq_len}, batch {args.batch_size}, d = {args.d_model}, {args.n_layers} layers, "
          f"K = {args.num_eigenstates}; median of {args.rounds} rounds of {args.steps} steps\n")  # fmt: skip
    print(f"| variant | parameters | step (ms) | tokens/s | speed vs {args.variants[0]} |")
    print("|---|---:|---:|---:|---:|")
    for name, trainer in trainers.items():
        step = statistics.median(seconds[name])
        print(f"| {name} | {trainer.model.num_parameters() / 1e6:.2f} M | {1e3 * step:,.0f} "
              f"| {trainer.tokens_per_step / step:,.0f} | {reference / step:.2f}x |")  # fmt: skip
    for trainer in trainers.values():
        trainer.close()


if __name__ == "__main__":
    main()
