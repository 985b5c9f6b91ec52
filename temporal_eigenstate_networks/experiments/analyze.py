"""What a trained TEN learned, layer by layer and scale by scale, and whether it is what the paper says.

The paper's visualisation claim: low-frequency eigenstates (w near 0) end with |lam| near 1 and carry
document-level context, high-frequency ones decay fast and capture local patterns. Three figures test it:

- the rank correlation between |w_k| and the timescale 1 / (1 - |lam_k|) over a layer's eigenstates (the
  claim predicts a negative one), beside the same figure at initialisation (which is not zero: it comes
  from how the initial timescales are dealt to the Fourier frequencies);
- the response of each eigenstate to one token changed `lag` steps back: |c_k(t) - c'_k(t)|^2 over
  the eigenstate's mean energy, for the low- and the high-frequency half (the claim predicts that the
  low half keeps responding far back while the high half forgets);
- the selective spread: how far the input moves lam around its learned base over validation text.

Every figure is measured at the eigenstate core's own input, captured while the model reads validation
text, so the upstream layers are the trained ones and the response isolates the recurrence.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_write
from ..modules.eigenstate import EigenstateCore, energy
from ..modules.hierarchical import scales_one_by_one
from ..runs.checkpoint import load_model
from ..runs.lookup import find_checkpoint
from .figures import png
from .positions import check_vocabulary, evaluation_data, validation_windows

NEAR_LAGS = (1, 2, 3, 4)
# The shortest window whose lags reach 16: the farthest (8, 16) then lie beyond the nearest, so far/near measures
# memory (shorter, the two overlap and the ratio reads 1, perfect memory, whatever the model).
MIN_LENGTH = 17


@dataclass
class CoreReport:
    layer: int
    scale: int  # HTEN scale: the core steps once per `scale` tokens (1 for TEN)
    magnitude: list[float]  # |lam_k| of the learned base (input-independent)
    frequency: list[float]  # |w_k| in [0, pi]
    angle: list[float]  # arg lam_k in (-pi, pi], for the complex plane
    timescale: list[float]  # 1 / (1 - |lam_k|), in the core's steps
    initial_timescale: list[float]  # the same at initialisation
    initial_frequency: list[float]
    frequency_timescale_correlation: float  # Spearman, trained
    initial_frequency_timescale_correlation: float  # Spearman, at initialisation
    selective_magnitude_spread: float  # mean over k of the std of |lam_k(t)| over the text (0 if not selective)
    selective_phase_spread: float  # mean over k of the std of arg lam_k(t), radians
    coupling_distance: float  # ||R - I||_F / sqrt(K)
    energy_positions: list[int]  # 1-based, log-spaced
    energy_by_position: list[float]  # E(t) = sum_k |c_k(t)|^2 at those positions, mean over the sequences
    lags: list[int]  # in the core's steps
    low_frequency_response: list[float]  # per lag, mean over the low-|w| half
    high_frequency_response: list[float]
    far_near_ratio_low: float  # response at the farthest lags / at the nearest, low-|w| half
    far_near_ratio_high: float
    selective_sample: list[list[float]]  # a few hundred (re, im) of lam(t) for the complex-plane plot


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation (ties broken by position: the eigenvalues are continuous)."""
    if len(x) < 3:
        return float("nan")
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def capture_core_inputs(model: torch.nn.Module, ids: Tensor) -> list[tuple[int, int, EigenstateCore, Tensor]]:
    """(layer, scale, core, the core's input u) for every eigenstate core, from one forward pass over ids."""
    captured: dict[int, Tensor] = {}
    cores = [(layer, scale, core) for layer, block in enumerate(model.blocks) for scale, core in block.mixer.cores()]
    hooks = [core.register_forward_hook(lambda m, args, out, i=i: captured.__setitem__(i, args[0].detach()))
             for i, (_, _, core) in enumerate(cores)]  # fmt: skip
    try:
        with torch.no_grad(), scales_one_by_one(model):  # HTEN's fused pass runs no core as a module
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return [(layer, scale, core, captured[i]) for i, (layer, scale, core) in enumerate(cores)]


def lag_responses(core: EigenstateCore, u: Tensor, lags: list[int], states: Tensor | None = None) -> Tensor:
    """(len(lags), K): the change of each eigenstate's final value when the input `lag` steps back is swapped
    for another sequence's, |c_k(T) - c'_k(T)|^2, over the eigenstate's mean energy. `states`: core(u), if known."""
    if states is None:
        _, states = core(u)
    scale = (states.abs() ** 2).mean((0, 1)).clamp_min(1e-12)  # (K,)
    last = u.shape[1] - 1
    donor = torch.roll(torch.arange(u.shape[0]), 1)  # each sequence gets its neighbour's token
    rows = []
    for lag in lags:
        changed = u.clone()
        changed[:, last - lag] = u[donor, last - lag]
        _, other = core(changed)
        rows.append(((other[:, -1] - states[:, -1]).abs() ** 2).mean(0) / scale)
    return torch.stack(rows)


def log_lags(steps: int) -> list[int]:
    """1, 2, 3, 4, then doubling up to the longest lag the sequence allows."""
    lags = [lag for lag in NEAR_LAGS if lag < steps]
    lag = 8
    while lag < steps:
        lags.append(lag)
        lag *= 2
    return lags


def sampled_energy(per_position: Tensor, points: int = 64) -> tuple[list[int], list[float]]:
    """E(t) at log-spaced positions (1-based), to keep the JSON small for long sequences."""
    positions = np.unique(np.geomspace(1, len(per_position), points).astype(int))
    return positions.tolist(), [float(per_position[p - 1]) for p in positions]


@torch.no_grad()
def analyze_core(layer: int, scale: int, core: EigenstateCore, u: Tensor, initial: EigenstateCore) -> CoreReport:
    u = u.float()
    base = core.eigenvalues()
    magnitude, frequency = base.abs().double().cpu().numpy(), base.angle().abs().double().cpu().numpy()
    timescale = 1 / (1 - magnitude)
    start = initial.eigenvalues()
    initial_timescale = (1 / (1 - start.abs().double())).cpu().numpy()
    initial_frequency = start.angle().abs().double().cpu().numpy()

    lam = core.eigenvalues(u) if core.selection is not None else base.expand(*u.shape[:2], -1)
    magnitude_spread = float(lam.abs().flatten(0, 1).std(0).mean()) if core.selection is not None else 0.0
    phase_spread = float(lam.angle().flatten(0, 1).std(0).mean()) if core.selection is not None else 0.0
    flat = lam.flatten(0, 1)
    sample = flat[torch.linspace(0, len(flat) - 1, min(len(flat), 64)).long()].flatten()
    sample = sample[torch.linspace(0, len(sample) - 1, min(len(sample), 400)).long()]

    k = core.num_eigenstates
    coupling = core.coupling_matrix().double()
    coupling_distance = float((coupling - torch.eye(k, dtype=coupling.dtype, device=coupling.device)).norm())
    _, states = core(u)
    energy_positions, energy_values = sampled_energy(energy(states).mean(0).cpu())
    lags = log_lags(u.shape[1])
    response = lag_responses(core, u, lags, states).double().cpu().numpy() if lags else np.zeros((0, k))
    low = frequency <= np.median(frequency)
    low_curve, high_curve = response[:, low].mean(1), response[:, ~low].mean(1)
    near = [i for i, lag in enumerate(lags) if lag in NEAR_LAGS]
    far = [i for i, lag in enumerate(lags) if lag >= max(lags) // 2] if lags else []

    def ratio(curve: np.ndarray) -> float:
        if not near or not far:
            return float("nan")
        return float(curve[far].mean() / max(curve[near].mean(), 1e-30))

    return CoreReport(
        layer=layer,
        scale=scale,
        magnitude=magnitude.tolist(),
        frequency=frequency.tolist(),
        angle=base.angle().double().cpu().tolist(),
        timescale=timescale.tolist(),
        initial_timescale=initial_timescale.tolist(),
        initial_frequency=initial_frequency.tolist(),
        frequency_timescale_correlation=spearman(frequency, timescale),
        initial_frequency_timescale_correlation=spearman(initial_frequency, initial_timescale),
        selective_magnitude_spread=magnitude_spread,
        selective_phase_spread=phase_spread,
        coupling_distance=coupling_distance / math.sqrt(k),
        energy_positions=energy_positions,
        energy_by_position=energy_values,
        lags=lags,
        low_frequency_response=low_curve.tolist(),
        high_frequency_response=high_curve.tolist(),
        far_near_ratio_low=ratio(low_curve),
        far_near_ratio_high=ratio(high_curve),
        selective_sample=[[float(z.real), float(z.imag)] for z in sample.cpu()],
    )


def analyze(model: torch.nn.Module, ids: Tensor) -> list[CoreReport]:
    """A report per eigenstate core of a TEN/HTEN model reading ids (B, T)."""
    if not hasattr(model, "eigenstate_analysis"):
        raise ValueError(f"only TEN models have eigenstates to analyze, not a {model.architecture!r} model")
    if not any(block.mixer.cores() for block in model.blocks):
        raise ValueError(f"layer_pattern {model.config.layer_kinds!r} has no eigenstate layer (e or h) to analyze")
    model.eval()
    initial_model = type(model)(model.config)  # the deterministic initial eigenvalues of the same config
    initial_cores = [core for block in initial_model.blocks for _, core in block.mixer.cores()]
    captured = capture_core_inputs(model, ids)
    return [analyze_core(layer, scale, core, u, initial.to(u.device))
            for (layer, scale, core, u), initial in zip(captured, initial_cores, strict=True)]  # fmt: skip


def summary_rows(reports: list[CoreReport]) -> list[dict[str, Any]]:
    """One row per core: the figures that test the paper's claim."""
    rows = []
    for r in reports:
        timescale = np.asarray(r.timescale)
        rows.append({
            "layer": r.layer, "scale": r.scale, "K": len(timescale),
            "median timescale": float(np.median(timescale)), "max timescale": float(timescale.max()),
            "corr(abs w, timescale)": r.frequency_timescale_correlation,
            "at init": r.initial_frequency_timescale_correlation,
            "far/near, low abs w": r.far_near_ratio_low, "far/near, high abs w": r.far_near_ratio_high,
            "norm(R - I) / sqrt K": r.coupling_distance,
            "selective spread of abs lam": r.selective_magnitude_spread, "of phase (rad)": r.selective_phase_spread,
        })  # fmt: skip
    return rows


def markdown(reports: list[CoreReport]) -> str:
    rows = summary_rows(reports)
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---:|" * len(headers)]
    for row in rows:
        cells = [f"{v:,.3g}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(reports: list[CoreReport], folder: Any) -> list[str]:
    """Four PNGs, one panel per core: eigenvalues, timescale vs frequency, energy, lag response."""
    columns = min(len(reports), 4)
    rows = math.ceil(len(reports) / columns)
    written = []

    def figure(name: str, draw: Any) -> None:
        with png(folder / name, rows, columns, dpi=110, figsize=(4 * columns, 3.6 * rows), squeeze=False) as (_, axes):
            for ax, report in zip(axes.flat, reports, strict=False):
                draw(ax, report)
                ax.set_title(f"layer {report.layer}" + (f", scale {report.scale}" if report.scale != 1 else ""))
            for ax in list(axes.flat)[len(reports) :]:
                ax.axis("off")
        written.append(name)

    def eigenvalues(ax: Any, r: CoreReport) -> None:
        circle = np.exp(1j * np.linspace(0, 2 * np.pi, 200))
        ax.plot(circle.real, circle.imag, color="0.7", lw=0.8)
        cloud = np.asarray(r.selective_sample)
        if len(cloud):
            ax.scatter(cloud[:, 0], cloud[:, 1], s=3, alpha=0.25, color="tab:orange", label="with input")
        base = np.asarray(r.magnitude) * np.exp(1j * np.asarray(r.angle))
        points = ax.scatter(base.real, base.imag, c=np.log10(r.timescale), s=14, cmap="viridis", label="base")
        ax.figure.colorbar(points, ax=ax, label="log10 timescale")
        ax.set_aspect("equal")
        ax.legend(fontsize=7, loc="lower left")

    def timescales(ax: Any, r: CoreReport) -> None:
        ax.scatter(r.initial_frequency, r.initial_timescale, s=8, color="0.75", label="initial")
        ax.scatter(r.frequency, r.timescale, s=10, label=f"trained (rho {r.frequency_timescale_correlation:.2f})")
        ax.set_yscale("log")
        ax.set_xlabel("|w| (rad)")
        ax.set_ylabel("timescale (steps)")
        ax.legend(fontsize=7)

    def energies(ax: Any, r: CoreReport) -> None:
        ax.plot(r.energy_positions, r.energy_by_position)
        ax.set_xscale("log")
        ax.set_xlabel("position (steps)")
        ax.set_ylabel("E(t)")

    def responses(ax: Any, r: CoreReport) -> None:
        ax.plot(r.lags, r.low_frequency_response, marker="o", ms=3, label="low |w| half")
        ax.plot(r.lags, r.high_frequency_response, marker="o", ms=3, label="high |w| half")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("lag of the changed token (steps)")
        ax.set_ylabel("|dc|^2 / mean |c|^2")
        ax.legend(fontsize=7)

    figure("eigenvalues.png", eigenvalues)
    figure("timescales.png", timescales)
    figure("energy.png", energies)
    figure("lag_response.png", responses)
    return written


OUTPUTS = ("analysis.json", "analysis.md", "eigenvalues.png", "timescales.png", "energy.png", "lag_response.png")


def check_length(length: int | None) -> None:
    if length is not None and length < MIN_LENGTH:
        raise ValueError(f"--length {length} is too short to tell far lags from near ones: give at least {MIN_LENGTH}")


def run_analysis(
    target: Path, dataset: str | None, tokenizer: str | None, length: int | None, sequences: int,
    device: torch.device, output: Path,
) -> tuple[str, str, list[str]]:  # fmt: skip
    """A TEN checkpoint's analysis over validation windows of `dataset` (None: the data its run trained on, see
    positions.evaluation_data; `length` None: 4 x its training window), written to `output` (analysis.json,
    analysis.md and the pictures); the title, the table and the pictures' names."""
    check_length(length)
    checkpoint = find_checkpoint(target)
    model = load_model(checkpoint, device)
    if model.architecture != "ten":
        raise ValueError(f"{checkpoint} is a {model.architecture} model: only TEN has eigenstates to analyze")
    data = evaluation_data([checkpoint], dataset, tokenizer)
    check_vocabulary(checkpoint, model, data)
    length = length or max(MIN_LENGTH, 4 * model.config.max_seq_len)
    windows = validation_windows(data.val, length, sequences)[:, :-1].to(device)
    reports = analyze(model, windows)
    output.mkdir(parents=True, exist_ok=True)
    table = markdown(reports)
    title = (f"{checkpoint}: eigenstates over {len(windows)} validation windows of {length:,} tokens of "
             f"{data.description.split(':')[0]}")  # fmt: skip
    text = json.dumps({"checkpoint": str(checkpoint), "length": length, "cores": [asdict(r) for r in reports]})
    atomic_write(output / "analysis.json", lambda p: p.write_text(text + "\n"))
    atomic_write(output / "analysis.md", lambda p: p.write_text(f"# {title}\n\n{table}\n"))
    return title, table, plot(reports, output)
