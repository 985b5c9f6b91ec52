"""Validation loss by position, past the training length: does a model keep using a longer context?

Each model reads the same validation windows of `length` tokens whole, from position 1 (TEN and HTEN in one
pass of the scan, Mamba-2 in one pass of its chunked scan, the transformer with attention over the whole window
and rotary positions it never trained on); the cross-entropy of every position is averaged over the windows. For
the recurrent models one pass is what reading the window through their state a training length at a time gives
(tests/test_mamba2_tools.py checks Mamba-2's).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..architectures import variant_label
from ..atomic import atomic_write
from ..data import TokenData, load_token_data
from ..data.identity import DataIdentity, recorded_location
from ..lm import LanguageModel
from ..runs.checkpoint import load_model, training_data
from ..runs.lookup import find_checkpoint
from .figures import png

OUTPUTS = ("positions.json", "positions.md", "positions.png")


@dataclass
class PositionLoss:
    name: str
    train_length: int
    loss: list[float]  # nats, mean over the windows, position 1 ... length


def validation_windows(tokens: np.ndarray, length: int, count: int) -> torch.Tensor:
    """`count` windows of length + 1 tokens, evenly spaced over the stream (at most every token once)."""
    available = len(tokens) - (length + 1)
    if available < 0:
        raise ValueError(f"the validation split holds {len(tokens):,} tokens: too few for one window of {length + 1:,}")
    count = min(count, available // (length + 1) + 1)
    starts = np.linspace(0, available, count).astype(np.int64)
    return torch.from_numpy(np.stack([tokens[s : s + length + 1].astype(np.int64) for s in starts]))


def evaluation_data(checkpoints: Sequence[Path], dataset: str | None, tokenizer: str | None) -> TokenData:
    """The text the checkpoints are read on: `dataset` where given; else the data their runs trained on (which must
    be the same for all), found where the run found it and checked to be what it trained on; the built-in
    Shakespeare for models saved without a run."""
    if dataset is not None:
        return load_token_data(dataset, tokenizer or "byte")
    recorded = {str(c): data for c in checkpoints if (data := training_data(c)) is not None}
    if not recorded:
        return load_token_data("shakespeare", tokenizer or "byte")
    (first, data), *others = recorded.items()
    for other, other_data in others:
        if not same_data(data, other_data):
            raise ValueError(f"{first} trained on {describe_data(data)}, {other} on {describe_data(other_data)}: "
                             "choose the text with --dataset")  # fmt: skip
    identity = DataIdentity.from_dict(data["identity"])
    location = None if identity is None else recorded_location(identity)
    tokenized_dir = Path(data["tokenized_dir"]) if data["tokenized_dir"] else None
    if location is not None:
        tokenized_dir = location if tokenized_dir else None
    source = data["dataset"] if location is None or tokenized_dir else str(location)
    loaded = load_token_data(source, tokenizer or data["tokenizer"], tokenized_dir=tokenized_dir)
    # A hub dataset's text is a prefix sized by the run's --subset_size: not comparable; the rest must match.
    if identity is not None and identity.kind != "hub" and not loaded.identity.same_content(identity):
        raise ValueError(f"{first} trained on {identity.describe()}, but that is now {loaded.identity.describe()}: "
                         "give the text to read with --dataset")  # fmt: skip
    return loaded


def same_data(one: dict[str, Any], other: dict[str, Any]) -> bool:
    """Two runs' data (training_data) are the same: the same content where both recorded it, else the same
    settings."""
    first, second = DataIdentity.from_dict(one["identity"]), DataIdentity.from_dict(other["identity"])
    if first is not None and second is not None:
        return first.same_content(second) and one["tokenizer"] == other["tokenizer"]
    return {k: v for k, v in one.items() if k != "identity"} == {k: v for k, v in other.items() if k != "identity"}


def describe_data(data: dict[str, Any]) -> str:
    source = f"--tokenized_dir {data['tokenized_dir']}" if data["tokenized_dir"] else repr(data["dataset"])
    return f"{source} ({data['tokenizer']})"


def check_vocabulary(checkpoint: Path, model: LanguageModel, data: TokenData) -> None:
    """The text must be tokenized as the model was trained: its vocabulary at least."""
    if model.config.vocab_size != data.tokenizer.vocab_size:
        source = data.description.split(":")[0]
        raise ValueError(f"{checkpoint} has {model.config.vocab_size} tokens, the tokenizer of {source} "
                         f"{data.tokenizer.vocab_size}: give the run's --tokenizer")  # fmt: skip


@torch.no_grad()
def loss_by_position(model: LanguageModel, windows: torch.Tensor, batch_size: int = 1) -> list[float]:
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(windows.shape[1] - 1, dtype=torch.float64)
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        logits = model(batch[:, :-1]).float()
        ce = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # (B, T)
        total += ce.sum(0).double().cpu()
    return (total / len(windows)).tolist()


def binned(loss: Sequence[float], bins: int = 40) -> tuple[list[float], list[float]]:
    """Log-spaced bins of positions (1-based) and the mean loss in each: readable from 1 to thousands."""
    edges = np.unique(np.geomspace(1, len(loss) + 1, bins + 1).astype(int))
    centres, means = [], []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        centres.append(math.sqrt(low * (high - 1)) if high - 1 > low else float(low))
        means.append(float(np.mean(loss[low - 1 : high - 1])))
    return centres, means


def markdown(results: Sequence[PositionLoss], marks: Sequence[int]) -> str:
    """Mean loss over position ranges ending at each mark (e.g. the training length, 2x, ... the window)."""
    ranges = list(zip([0, *marks[:-1]], marks, strict=True))
    header = "| model | trained at | " + " | ".join(f"{a + 1:,}-{b:,}" for a, b in ranges) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(ranges)]
    for r in results:
        cells = [f"{np.mean(r.loss[a:b]):.3f}" for a, b in ranges]
        lines.append(f"| {r.name} | {r.train_length:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: Sequence[PositionLoss], path: Path, title: str) -> None:
    with png(path, figsize=(7, 4.2)) as (_, axis):
        for r in results:
            x, y = binned(r.loss)
            line = axis.plot(x, y, marker=".", label=f"{r.name} (trained at {r.train_length})")[0]
            axis.axvline(r.train_length, color=line.get_color(), linestyle=":", alpha=0.6)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("position in the window (tokens)")
        axis.set_ylabel("validation cross-entropy (nats/token)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        axis.set_title(title, fontsize=10)


def run_positions(
    targets: Sequence[str], dataset: str | None, tokenizer: str | None, length: int, sequences: int, batch_size: int,
    device: torch.device, output: Path, log: Callable[[str], None],
) -> str:  # fmt: skip
    """Each checkpoint's loss by position over the same validation windows of `dataset` (None: the data the runs
    trained on, see evaluation_data), written to `output` (positions.json, positions.md, positions.png); the
    table."""
    checkpoints = [find_checkpoint(Path(target)) for target in targets]
    data = evaluation_data(checkpoints, dataset, tokenizer)
    log(f"data: {data.description}")
    windows = validation_windows(data.val, length, sequences)
    results = []
    for target, checkpoint in zip(targets, checkpoints, strict=True):
        model = load_model(checkpoint, device)
        check_vocabulary(checkpoint, model, data)
        name = f"{model.architecture}{variant_label(model.config, '/')} ({Path(target).name})"
        loss = loss_by_position(model, windows, batch_size)
        results.append(PositionLoss(name, model.config.max_seq_len, loss))
        log(f"{name}: mean loss {sum(loss) / len(loss):.4f} over {len(windows)} windows of {length:,}")
    title = f"{data.description.split(':')[0]}: validation loss by position ({len(windows)} windows of {length:,})"
    return write_outputs(results, length, output, title)


def write_outputs(results: Sequence[PositionLoss], length: int, output: Path, title: str) -> str:
    """positions.json, positions.md (mean loss up to the shortest training length, 2x, 4x ... the window) and
    positions.png; the table."""
    output.mkdir(parents=True, exist_ok=True)
    shortest = min(r.train_length for r in results)
    marks = sorted({min(shortest * 2**i, length) for i in range(20)})
    table = markdown(results, marks)
    text = json.dumps([vars(r) for r in results]) + "\n"
    atomic_write(output / "positions.json", lambda p: p.write_text(text))
    atomic_write(output / "positions.md", lambda p: p.write_text(f"# {title}\n\n{table}\n"))
    plot(results, output / "positions.png", title)
    return table
