"""Train and test models on a synthetic task: the grid behind `ten synthetic`.

Every cell (variant x width x training length) trains a fresh 2-layer model on fresh seeded batches for a
fixed number of steps at each learning rate of a small sweep, then counts exact answers on held-out
examples (another seed) at each test length. Beyond the training length TEN and HTEN read the test
sequences through their recurrent state, a training length at a time (how they would be used); the
transformer reads them whole (its rotary positions are all it has to go on).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..architectures import build_model
from ..atomic import atomic_write
from ..lm import LanguageModel
from ..training.optimizer import build_optimizer
from ..training.schedule import learning_rate_at
from .tasks import TASKS, SyntheticError, SyntheticTask, accuracy

# name -> (architecture, config overrides): what each row of a table is.
VARIANTS: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "ten": ("ten", {}),
    "ten-noselective": ("ten", {"selective": False}),
    "hten": ("ten", {"use_hten": True, "hten_scales": [1, 2, 4, 8]}),
    "transformer": ("transformer", {}),
}
WARMUP_FRACTION = 0.1
MIN_LR_RATIO = 0.1
WEIGHT_DECAY = 0.1  # Zoology's
EVAL_BATCH = 32
SEED_STRIDE = 1_000_003  # seeds of the training batches: seed * stride + step; the test set: -(seed + 1)


@dataclass(frozen=True)
class Cell:
    """One model to train: the task setting and the model's sizes."""

    task: str
    variant: str
    d_model: int
    train_seq_len: int
    test_seq_lens: tuple[int, ...]
    learning_rate: float
    options: Mapping[str, Any] = field(default_factory=dict)  # the generator's (vocab_size, num_kv_pairs, ...)
    sizes: Mapping[str, Any] = field(default_factory=dict)  # model overrides (num_eigenstates, mlp_hidden, ...)
    steps: int = 500
    batch_size: int = 32
    test_examples: int = 256
    seed: int = 0


@dataclass
class Result:
    """What one cell measured, at one test length (a row of results.json)."""

    task: str
    variant: str
    d_model: int
    train_seq_len: int
    test_seq_len: int
    learning_rate: float
    accuracy: float
    scored: int  # answers counted
    state_bytes_per_layer: int  # after test_seq_len tokens, per sequence
    parameters: int
    final_loss: float
    train_seconds: float
    sizes: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def check_cell(cell: Cell) -> None:
    """Generate one example at every length first: a bad setting fails in one line before any training."""
    if cell.variant not in VARIANTS:
        raise SyntheticError(f"unknown variant {cell.variant!r}; known: {', '.join(VARIANTS)}")
    task = TASKS[cell.task]
    for seq_len in (cell.train_seq_len, *cell.test_seq_lens):
        task.generate(1, seq_len, seed=0, **cell.options)


def build(cell: Cell, device: torch.device) -> LanguageModel:
    architecture, overrides = VARIANTS[cell.variant]
    vocab = TASKS[cell.task].model_vocab_size(cell.options)
    sizes = {"n_layers": 2, "mlp_hidden": 0, **overrides, **cell.sizes}
    if architecture == "ten":
        sizes.setdefault("num_eigenstates", cell.d_model)
        sizes.setdefault("energy_reg_weight", 0.0)  # the task's loss alone, as for the other architectures
    return build_model(architecture, device, vocab_size=vocab, d_model=cell.d_model,
                       max_seq_len=cell.train_seq_len, **sizes)  # fmt: skip


def train(model: LanguageModel, cell: Cell, device: torch.device) -> float:
    """`cell.steps` AdamW steps on fresh batches (warm-up, then cosine); the mean loss of the last tenth."""
    task = TASKS[cell.task]
    optimizer = build_optimizer(model, cell.learning_rate, WEIGHT_DECAY, use_8bit=False)
    warmup = max(1, round(WARMUP_FRACTION * cell.steps))
    recent: list[float] = []
    model.train()
    for step in range(cell.steps):
        batch = task.generate(cell.batch_size, cell.train_seq_len, seed=cell.seed * SEED_STRIDE + step, **cell.options)
        rate = learning_rate_at(step, cell.learning_rate, cell.steps, warmup, MIN_LR_RATIO)
        for group in optimizer.param_groups:
            group["lr"] = rate
        loss = model.compute_loss(batch.inputs.to(device), batch.targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            return value
        recent = (recent + [value])[-max(1, cell.steps // 10) :]
    return sum(recent) / len(recent)


def _logit_pieces(model: LanguageModel, inputs: Tensor, piece: int) -> Iterator[tuple[int, Tensor]]:
    """(start, logits) of the inputs: whole for attention or within the training length, else read through
    the recurrent state a piece at a time."""
    if model.architecture == "transformer" or inputs.shape[1] <= piece:
        yield 0, model(inputs)
        return
    state = None
    for start in range(0, inputs.shape[1], piece):
        logits, state = model(inputs[:, start : start + piece], state=state, return_state=True)
        yield start, logits


@torch.no_grad()
def score(model: LanguageModel, cell: Cell, seq_len: int, device: torch.device) -> tuple[float, int]:
    """Accuracy on `cell.test_examples` held-out sequences of `seq_len` tokens, and the answers counted."""
    task = TASKS[cell.task]
    batch = task.generate(cell.test_examples, seq_len, seed=-(cell.seed + 1) % (1 << 62), **cell.options)
    model.eval()
    correct = total = 0
    rows = max(1, EVAL_BATCH * cell.train_seq_len // seq_len)  # keep a batch of logits at most this many tokens
    for first in range(0, cell.test_examples, rows):
        inputs = batch.inputs[first : first + rows].to(device)
        targets = batch.targets[first : first + rows].to(device)
        for start, logits in _logit_pieces(model, inputs, cell.train_seq_len):
            hit, count = accuracy(logits, targets[:, start : start + logits.shape[1]])
            correct, total = correct + hit, total + count
    return correct / max(total, 1), total


def run_cell(cell: Cell, device: torch.device) -> list[Result]:
    torch.manual_seed(cell.seed)
    model = build(cell, device)
    began = time.perf_counter()
    final_loss = train(model, cell, device)
    seconds = time.perf_counter() - began
    results = []
    for seq_len in cell.test_seq_lens:
        acc, scored = score(model, cell, seq_len, device) if math.isfinite(final_loss) else (0.0, 0)
        results.append(Result(
            task=cell.task, variant=cell.variant, d_model=cell.d_model, train_seq_len=cell.train_seq_len,
            test_seq_len=seq_len, learning_rate=cell.learning_rate, accuracy=acc, scored=scored,
            state_bytes_per_layer=model.state_bytes(seq_len) // model.config.n_layers,
            parameters=model.num_parameters(), final_loss=final_loss, train_seconds=seconds,
            sizes=dict(cell.sizes), options=dict(cell.options),
        ))  # fmt: skip
    return results


def run_grid(cells: Sequence[Cell], device: torch.device, output: Path, log: Callable[[str], None]) -> list[Result]:
    """Every cell in turn, a line each; results.json is rewritten after every model, so an interrupted grid
    keeps its rows."""
    results: list[Result] = []
    for number, cell in enumerate(cells, 1):
        rows = run_cell(cell, device)
        results += rows
        log(f"[{number}/{len(cells)}] {cell.variant} d={cell.d_model} T={cell.train_seq_len} "
            f"lr={cell.learning_rate:g}: loss {rows[0].final_loss:.3f}, {rows[0].train_seconds:.0f} s, accuracy "
            + ", ".join(f"{r.accuracy:.3f} at {r.test_seq_len:,}" for r in rows))  # fmt: skip
        text = json.dumps(as_json(results), indent=1) + "\n"
        atomic_write(output / "results.json", lambda p, text=text: p.write_text(text))
    return results


def best_of_sweep(results: Sequence[Result]) -> list[Result]:
    """Per cell (all but the learning rate), the rows of the rate with the best accuracy at the training length."""

    def cell_key(r: Result) -> tuple:
        return (r.task, r.variant, r.d_model, r.train_seq_len, repr(sorted(r.sizes.items())),
                repr(sorted(r.options.items())))  # fmt: skip

    # Each (cell, rate) is scored by its row at the training length (else its shortest test length).
    scores: dict[tuple, tuple[float, float]] = {}
    for r in sorted(results, key=lambda r: (r.test_seq_len != r.train_seq_len, r.test_seq_len)):
        scores.setdefault((cell_key(r), r.learning_rate), (r.accuracy, -r.final_loss))
    best: dict[tuple, float] = {}
    for (cell, rate), score in scores.items():
        if cell not in best or score > scores[cell, best[cell]]:
            best[cell] = rate
    return [r for r in results if best[cell_key(r)] == r.learning_rate]


def describe(task: SyntheticTask, paper: bool) -> str:
    settings = task.paper if paper else task.cpu
    note = f": {settings.note}" if settings.note else ""
    return f"{task.name} ({'paper' if paper else 'CPU'} settings; {task.source}){note}"


def as_json(results: Sequence[Result]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
