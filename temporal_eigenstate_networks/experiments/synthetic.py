"""Train and test models on a synthetic task: the grid behind `ten synthetic`, its table and its plot.

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
from ..baselines.mamba2_config import require_transformers_mamba2
from ..data.synthetic_tasks import TASKS, SyntheticError, SyntheticTask, TaskSettings, accuracy
from ..flags import NON_NEGATIVE, POSITIVE, SEED, check_settings, setting
from ..lm import LanguageModel
from ..training.optimizer import build_optimizer
from ..training.schedule import learning_rate_at
from .figures import png

# name -> (architecture, config overrides): what each row of a table is.
VARIANTS: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "ten": ("ten", {}),
    "ten-noselective": ("ten", {"selective": False}),
    "hten": ("ten", {"use_hten": True, "hten_scales": [1, 2, 4, 8]}),
    "transformer": ("transformer", {}),
    # The 2-layer hybrids of the recall papers' size: a TEN layer, then attention (full, or over a window).
    "ten-hybrid": ("ten", {"layer_pattern": "ea"}),
    "ten-swa": ("ten", {"layer_pattern": "ew"}),
    # transformers' Mamba-2, sized like the TEN of the same cell. Its block is already the recall papers' mixer
    # alone (norm, mixer, residual: Mamba has no MLP); with --mlp it grows its expand to TEN's parameters instead.
    "mamba2": ("mamba2", {}),
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
    if VARIANTS[cell.variant][0] == "mamba2":
        require_transformers_mamba2()
    task = TASKS[cell.task]
    for seq_len in (cell.train_seq_len, *cell.test_seq_lens):
        task.generate(1, seq_len, seed=0, **cell.options)


# ---------------------------------------------------------------- the grid `ten synthetic` asks for

TASK_OPTIONS = ("vocab_size", "num_kv_pairs", "num_tokens")  # the generator's, over the task's settings
# Over each variant's defaults; each applies to the architectures whose config has it (layer_pattern: TEN's).
MODEL_SIZES = ("num_eigenstates", "num_heads", "selective_range", "n_layers", "layer_pattern", "attention_window",
               "attention_heads")  # fmt: skip


@dataclass(frozen=True)
class GridSettings:
    """What `ten synthetic` was asked for: each field declares its flag (see flags.py), in the order of --help;
    None: the task's (or the model's) default."""

    task: str = setting(choices=tuple(TASKS))
    variants: Sequence[str] = setting(("ten", "hten", "transformer"), "comma-separated, from: ten, ten-noselective, "
                                      "hten, transformer, ten-hybrid (ea), ten-swa (ew), mamba2")  # fmt: skip
    d_models: Sequence[int] = setting((64,), "widths, e.g. 64,128,256")
    lengths: Sequence[int] | None = setting(None, "training lengths (default: the task's)")
    test_lengths: Sequence[int] | None = setting(
        None, "test lengths (default: the training length; induction_heads: 64 ... 64x)"
    )
    learning_rates: Sequence[float] = setting((1e-3, 3e-3), "the sweep: each cell reports its best rate")
    steps: int = setting(400, bound=POSITIVE)
    batch_size: int = setting(32, bound=POSITIVE)
    test_examples: int = setting(256, bound=POSITIVE)
    # the generator's options (TASK_OPTIONS)
    vocab_size: int | None = setting(None, "the task's data vocabulary", bound=POSITIVE)
    num_kv_pairs: int | None = setting(None, "MQAR (default: Zoology's for the length)", bound=POSITIVE)
    num_tokens: int | None = setting(None, "selective copying: tokens to copy", bound=POSITIVE)
    # the models' sizes (MODEL_SIZES)
    num_eigenstates: int | None = setting(None, "TEN/HTEN (default: d_model)", bound=POSITIVE)
    num_heads: int | None = setting(None, bound=POSITIVE)
    selective_range: float | None = setting(None, "TEN's |da|, |dw| bound (default 0.1)", bound=NON_NEGATIVE)
    n_layers: int | None = setting(None, "default 2", bound=POSITIVE)
    layer_pattern: str | None = setting(None, "TEN variants' layers: e, h, a (attention), w (window), e.g. ea")
    attention_window: int | None = setting(None, "w layers' window (default 256)", bound=POSITIVE)
    attention_heads: int | None = setting(None, "a/w layers' heads (default d_model / 64)", bound=POSITIVE)
    mlp: bool = setting(False, "keep an MLP in each block (default: mixers only)")  # the library's default width
    paper: bool = setting(False, "the papers' settings (for a GPU)")  # else the CPU ones
    seed: int = setting(0, bound=SEED)

    def __post_init__(self) -> None:
        check_settings(self)  # the parser checked a command's; a library caller's are checked here


@dataclass(frozen=True)
class Grid:
    cells: list[Cell]  # every one checked: a bad setting has failed before any training
    title: str  # the task, which settings, and their source


def plan_grid(settings: GridSettings) -> Grid:
    """The cells (train length x width x variant x learning rate) of the settings, each checked."""
    unknown = [v for v in settings.variants if v not in VARIANTS]
    if unknown:
        raise SyntheticError(f"unknown variant {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    task = TASKS[settings.task]
    defaults = task.paper if settings.paper else task.cpu
    options, sizes = grid_options(settings, defaults), grid_sizes(settings)
    cells = [
        Cell(task=settings.task, variant=variant, d_model=d_model, train_seq_len=length,
             test_seq_lens=cell_test_lengths(settings, defaults, length), learning_rate=rate, options=options,
             sizes=sizes, steps=settings.steps, batch_size=settings.batch_size, test_examples=settings.test_examples,
             seed=settings.seed)
        for length in settings.lengths or [defaults.train_seq_len] for d_model in settings.d_models
        for variant in settings.variants for rate in settings.learning_rates
    ]  # fmt: skip
    for cell in cells:
        check_cell(cell)
    return Grid(cells, describe(task, settings.paper))


def grid_options(settings: GridSettings, defaults: TaskSettings) -> dict[str, Any]:
    """The generator's options: the task's settings, with those given on top."""
    options = dict(defaults.options)
    options.update({name: getattr(settings, name) for name in TASK_OPTIONS if getattr(settings, name) is not None})
    if settings.task == "mqar" and settings.lengths and settings.num_kv_pairs is None:
        options["num_kv_pairs"] = None  # Zoology's number of pairs for each length
    return options


def grid_sizes(settings: GridSettings) -> dict[str, Any]:
    """The model sizes given, over each variant's defaults (`build`)."""
    sizes = {name: getattr(settings, name) for name in MODEL_SIZES if getattr(settings, name) is not None}
    if settings.mlp:
        sizes["mlp_hidden"] = None  # the library's default width instead of none
    return sizes


def cell_test_lengths(settings: GridSettings, defaults: TaskSettings, train_length: int) -> tuple[int, ...]:
    """The lengths given; else the training length when it was given, else the task's test lengths."""
    return tuple(settings.test_lengths or ([train_length] if settings.lengths else defaults.test_seq_lens))


# ---------------------------------------------------------------- one cell: build, train, score


def build(cell: Cell, device: torch.device) -> LanguageModel:
    architecture, overrides = VARIANTS[cell.variant]
    vocab = TASKS[cell.task].model_vocab_size(cell.options)
    sizes = {"n_layers": 2, "mlp_hidden": 0, **overrides, **cell.sizes}
    if architecture in ("ten", "mamba2"):  # Mamba-2 is sized like the TEN of these sizes
        sizes.setdefault("num_eigenstates", cell.d_model)
    if architecture == "ten":
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


def run_synthetic(grid: Grid, device: torch.device, output: Path, log: Callable[[str], None]) -> str:
    """The grid, trained and tested into `output` (results.json, results.md, accuracy.png); the table."""
    output.mkdir(parents=True, exist_ok=True)
    first = grid.cells[0]
    log(grid.title)
    log(f"{len(grid.cells)} models, {first.steps} steps of {first.batch_size} sequences each -> {output}")
    return write_report(run_grid(grid.cells, device, output, log), output, grid.title)


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
    with png(path, 1, 2, figsize=(11, 4.2)) as (fig, (by_length, by_state)):
        models: dict[tuple, list[Result]] = {}
        for r in results:
            models.setdefault((r.variant, r.d_model, repr(sorted(r.sizes.items())), r.train_seq_len), []).append(r)
        for (variant, d_model, sizes, train_len), rows in sorted(models.items()):
            rows = sorted(rows, key=lambda r: r.test_seq_len)
            label = f"{variant} d={d_model} T={train_len}" + ("" if sizes == "[]" else f" {sizes}")
            accuracy = [r.accuracy for r in rows]
            line = by_length.plot([r.test_seq_len for r in rows], accuracy, marker="o", label=label)[0]
            by_state.scatter([r.state_bytes_per_layer for r in rows], accuracy, color=line.get_color())
        for axis, xlabel in ((by_length, "test sequence length (tokens)"), (by_state, "state per layer (bytes)")):
            axis.set_xscale("log", base=2)
            axis.set_xlabel(xlabel)
            axis.set_ylabel("accuracy")
            axis.set_ylim(-0.02, 1.02)
            axis.grid(alpha=0.3)
        by_length.legend(fontsize=7)
        fig.suptitle(title, fontsize=10)


def write_report(results: Sequence[Result], output: Path, title: str) -> str:
    """results.md and accuracy.png of the best learning rate of each cell; the table."""
    best = best_of_sweep(results)
    table = markdown_table(best)
    atomic_write(output / "results.md", lambda p: p.write_text(f"# {title}\n\n{table}\n"))
    plot(best, output / "accuracy.png", title)
    return table
