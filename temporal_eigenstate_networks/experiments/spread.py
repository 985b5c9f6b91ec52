"""Several seeds of each variant, read against their noise: mean and spread at equal tokens and equal time.

Every run of a comparison logs its validation curve (metrics.jsonl). Two budgets are read off those
curves, the same for every run: the fewest tokens any run reached (equal tokens: what the architecture
learns from the same data) and the shortest wall time any run took (equal wall-clock: what it learns for
the same cost on this machine); between evaluations the curve is interpolated linearly.

A difference from the reference variant is told apart from noise when the two variants' seed ranges
(min..max) do not overlap: with 3 seeds each, two variants that are truly alike give that 1 time in 10.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from ..units import duration_text, spread_text, tokens_text
from .figures import png

MIN_SEEDS = 3  # for a verdict: two alike variants' ranges of 3 seeds miss each other 1 time in 10

# The paper's ablation table (WikiText-103, T = 2,048, matched parameters): validation perplexity.
PAPER_PERPLEXITY = {
    "full": 16.1,
    "no-selective": 16.9,
    "no-gate": 16.7,
    "one-head": 16.4,
    "no-coupling": 17.8,
    "real-eigenvalues": 18.3,
    "fixed-basis": 19.7,
    "k32": 17.2,
    "k128": 15.9,
    "hten4": 15.3,
}


def value_at(curve: list[dict[str, float]], key: str, x: float) -> float:
    """val_ce of an evaluation curve at ``x`` of ``key`` ("tokens" or "elapsed_s"), linearly interpolated."""
    points = sorted((c[key], c["val_ce"]) for c in curve)
    if not points:
        raise ValueError("the run has no evaluation")
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1]


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant (in the order first met): parameters, seeds, and the spread of val CE at both budgets.

    ``rows``: one per finished run, each with "variant", "seed", "parameters", "tokens_per_s" and "curve".
    """
    tokens = min(max(c["tokens"] for c in r["curve"]) for r in rows)
    seconds = min(max(c["elapsed_s"] for c in r["curve"]) for r in rows)
    variants: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = variants.setdefault(r["variant"], {"parameters": r["parameters"], "seeds": [], "equal_tokens": [],
                                                   "equal_time": [], "tokens_per_s": []})  # fmt: skip
        entry["seeds"].append(r["seed"])
        entry["equal_tokens"].append(value_at(r["curve"], "tokens", tokens))
        entry["equal_time"].append(value_at(r["curve"], "elapsed_s", seconds))
        entry["tokens_per_s"].append(r["tokens_per_s"])
    for entry in variants.values():
        for budget in ("equal_tokens", "equal_time"):
            entry[budget] = {**spread(entry[budget]), "values": entry[budget]}
        entry["tokens_per_s"] = statistics.fmean(entry["tokens_per_s"])
    return {"tokens": tokens, "seconds": seconds, "variants": variants}


def apart(a: dict[str, float], b: dict[str, float]) -> bool:
    """Whether two seed ranges do not overlap."""
    return a["min"] > b["max"] or b["min"] > a["max"]


def verdict(ours: dict[str, Any], reference: dict[str, Any], paper_delta: float | None) -> str:
    """Against the reference variant: does our difference go the paper's way, beyond the seeds' noise?"""
    seeds = min(len(ours.get("values", [0] * MIN_SEEDS)), len(reference.get("values", [0] * MIN_SEEDS)))
    if seeds < MIN_SEEDS:  # two seeds' ranges miss each other by chance 1 time in 3
        return f"{seeds} seed{'s' if seeds > 1 else ''}: no verdict"
    if not apart(ours, reference):
        return "cannot be told from noise"
    if paper_delta is None:
        return "apart from noise"
    same_way = (ours["mean"] - reference["mean"]) * paper_delta > 0
    return "holds here" if same_way else "does not hold here"


def markdown(summary: dict[str, Any], reference: str | None) -> str:
    """The table: val CE mean ± std (min..max) at equal tokens and at equal time, and the verdicts."""
    variants = summary["variants"]
    ref = variants.get(reference) if reference else None
    paper_ref = PAPER_PERPLEXITY.get(reference or "")
    lines = [
        f"Validation CE (nats/token), mean ± std (min..max) over seeds, at {tokens_text(summary['tokens'])} tokens "
        f"and at {duration_text(summary['seconds'])}" + (f"; differences against `{reference}`" if ref else ""),
        "",
        "| variant | parameters | seeds | equal tokens | Δ | equal time | Δ | tokens/s | paper ppl | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, entry in variants.items():
        cells = []
        for budget in ("equal_tokens", "equal_time"):
            s = entry[budget]
            cells.append(spread_text(s, len(entry["seeds"])))
            cells.append(f"{s['mean'] - ref[budget]['mean']:+.4f}" if ref and name != reference else "")
        paper = PAPER_PERPLEXITY.get(name)
        judged = ""
        if ref and name != reference:
            delta = None if paper is None or paper_ref is None else math.log(paper) - math.log(paper_ref)
            judged = verdict(entry["equal_tokens"], ref["equal_tokens"], delta)
        lines.append(
            f"| {name} | {entry['parameters'] / 1e6:.2f} M | {len(entry['seeds'])} | {cells[0]} | {cells[1]} "
            f"| {cells[2]} | {cells[3]} | {entry['tokens_per_s']:,.0f} | {paper if paper else ''} | {judged} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], reference: str | None, path: Path) -> None:
    """Left: each variant's validation curve over tokens, the mean of its seeds inside their min..max band.
    Right: every seed's val CE at equal tokens, one line per variant, against the reference's range (shaded)."""
    summary = summarize(rows)
    variants = summary["variants"]
    with png(path, 1, 2, figsize=(13, 0.5 + max(4.5, 0.45 * len(variants)))) as (_, (curves, final)):
        for name in variants:
            runs = [r["curve"] for r in rows if r["variant"] == name]
            xs = sorted({c["tokens"] for c in runs[0] if c["tokens"] <= summary["tokens"]})
            ys = [[value_at(curve, "tokens", x) for curve in runs] for x in xs]
            millions = [x / 1e6 for x in xs]
            (line,) = curves.plot(millions, [statistics.fmean(y) for y in ys], label=name)
            curves.fill_between(millions, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.2)
        curves.set_xlabel("tokens seen (millions)")
        curves.set_ylabel("validation cross-entropy (nats/token)")
        curves.grid(alpha=0.3)
        curves.legend(fontsize="small")
        names = list(variants)[::-1]  # the reference on top
        for i, name in enumerate(names):
            s = variants[name]["equal_tokens"]
            final.plot([s["min"], s["max"]], [i, i], color="gray")
            final.plot(s["values"], [i] * len(s["values"]), "o", color="black", markersize=4)
        if reference in variants:
            s = variants[reference]["equal_tokens"]
            final.axvspan(s["min"], s["max"], color="tab:blue", alpha=0.15, label=f"{reference}: min..max")
            final.legend(fontsize="small")
        final.set_yticks(range(len(names)), names)
        final.set_xlabel(f"validation cross-entropy at {tokens_text(summary['tokens'])} tokens, each seed a dot")
        final.grid(alpha=0.3, axis="x")
