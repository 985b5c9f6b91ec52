"""The table and plot of a `ten synthetic` grid, from its results (the best learning rate of each cell)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..atomic import atomic_write
from .experiment import Result, best_of_sweep


def markdown_table(results: Sequence[Result]) -> str:
    header = ("variant", "d_model", "sizes", "train T", "test T", "lr", "accuracy", "answers", "state bytes/layer",
              "params", "final loss", "train s")  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    for r in sorted(results, key=lambda r: (r.variant, r.d_model, repr(r.sizes), r.train_seq_len, r.test_seq_len)):
        sizes = ", ".join(f"{k}={v}" for k, v in sorted(r.sizes.items())) or "-"
        lines.append(
            f"| {r.variant} | {r.d_model} | {sizes} | {r.train_seq_len:,} | {r.test_seq_len:,} | {r.learning_rate:g} "
            f"| {r.accuracy:.3f} | {r.scored:,} | {r.state_bytes_per_layer:,} | {r.parameters:,} | {r.final_loss:.3f} "
            f"| {r.train_seconds:.0f} |"
        )
    return "\n".join(lines)


def plot(results: Sequence[Result], path: Path, title: str) -> None:
    """Accuracy against test length (one line per model) and against state bytes per layer (log scales)."""
    import matplotlib  # noqa: PLC0415  (only when a grid has run)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (by_length, by_state) = plt.subplots(1, 2, figsize=(11, 4.2))
    models: dict[tuple, list[Result]] = {}
    for r in results:
        models.setdefault((r.variant, r.d_model, repr(sorted(r.sizes.items())), r.train_seq_len), []).append(r)
    for (variant, d_model, sizes, train_len), rows in sorted(models.items()):
        rows = sorted(rows, key=lambda r: r.test_seq_len)
        label = f"{variant} d={d_model} T={train_len}" + ("" if sizes == "[]" else f" {sizes}")
        line = by_length.plot([r.test_seq_len for r in rows], [r.accuracy for r in rows], marker="o", label=label)[0]
        by_state.scatter([r.state_bytes_per_layer for r in rows], [r.accuracy for r in rows], color=line.get_color())
    for axis, xlabel in ((by_length, "test sequence length (tokens)"), (by_state, "state per layer (bytes)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("accuracy")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    by_length.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: Sequence[Result], output: Path, title: str) -> str:
    """results.md and accuracy.png of the best learning rate of each cell; the table."""
    best = best_of_sweep(results)
    table = markdown_table(best)
    atomic_write(output / "results.md", lambda p: p.write_text(f"# {title}\n\n{table}\n"))
    plot(best, output / "accuracy.png", title)
    return table
