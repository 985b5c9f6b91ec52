"""lm-evaluation-harness on a model folder, with the local tasks shipped in eval_tasks/ (no hub).

The folder is anything `transformers.AutoModelForCausalLM.from_pretrained` loads: importing this package registers
the `ten` model type, so an exported ten model loads like any other. The same tasks run with the
ordinary command:

    lm_eval --model hf --model_args pretrained=DIR --device cpu --tasks ten_shakespeare_ppl,ten_shakespeare_mc \\
        --include_path "$(python -c 'from temporal_eigenstate_networks.hf.evaluate import task_dir; print(task_dir())')"

(there transformers must know the `ten` model type without importing this package: the exported folder's
bundled code with `--trust_remote_code`, or `ten` registered some other way.)

lm-eval is an optional dependency (the `hf` extra), imported only when an evaluation runs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import WriteError, atomic_open, write_failure
from ..distribution import install_hint
from ..flags import comma_list
from ..lm import CONFIG_FILE, MODEL_TYPE
from . import register_when_imported

LM_EVAL_HINT = install_hint("hf")
DEFAULT_TASKS = ("ten_shakespeare_ppl", "ten_shakespeare_mc")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
# Result keys of lm-eval that are not metrics.
_NOT_METRICS = {"alias", "name", "sample_len", "samples"}


class EvaluationError(ValueError):
    """A request that cannot run (no such folder, an unknown task, lm-eval missing): told in one line."""


def task_dir() -> Path:
    """The folder of the local task YAMLs: lm-eval's `include_path` (`--include_path` on its command line)."""
    from .. import eval_tasks

    return Path(eval_tasks.__file__).resolve().parent


def task_names() -> list[str]:
    """The local tasks, by name (each YAML is named after its task)."""
    return sorted(path.stem for path in task_dir().glob("*.yaml"))


def parse_tasks(text: str | Sequence[str]) -> list[str]:
    """'a,b' or ['a', 'b'] -> the task names, refusing empty and unknown ones in one line."""
    names = comma_list(text) if isinstance(text, str) else [part.strip() for part in text]
    if not names or not all(names):
        raise EvaluationError(f"tasks must be comma-separated names from: {', '.join(task_names())}")
    unknown = [name for name in names if name not in task_names()]
    if unknown:
        raise EvaluationError(f"unknown task {', '.join(unknown)}; the local tasks are: {', '.join(task_names())}")
    return list(dict.fromkeys(names))


def import_lm_eval() -> Any:
    """The lm_eval module with its Hugging Face backend, or a one-line EvaluationError saying what to install."""
    try:
        import lm_eval  # noqa: PLC0415  (optional extra)
        from lm_eval.models.huggingface import HFLM  # noqa: F401, PLC0415  (needs transformers + accelerate)
    except ImportError as err:
        missing = f"no module {err.name}" if err.name else _one_line(err)
        raise EvaluationError(f"evaluation needs lm-evaluation-harness ({missing}): {LM_EVAL_HINT}") from None
    return lm_eval


@contextmanager
def offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 for the duration, unless the caller set them.

    huggingface_hub and datasets read them when first imported, so this guards the imports made inside it;
    the evaluation needs no network anyway (a local folder, local JSONL files).
    """
    saved = {name: os.environ.get(name) for name in OFFLINE_VARIABLES}
    for name in OFFLINE_VARIABLES:
        os.environ.setdefault(name, "1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def is_mamba2_checkpoint(model_dir: Path) -> bool:
    """A ten folder (model_type "ten") of Mamba-2: transformers' own Mamba2ForCausalLM, which ten's TenForCausalLM
    does not serve; its export does (`ten export`)."""
    try:
        values = json.loads((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # loading it says what is wrong
    return (
        isinstance(values, dict) and values.get("model_type") == MODEL_TYPE and values.get("architecture") == "mamba2"
    )


@contextmanager
def harness_folder(model_dir: Path) -> Iterator[Path]:
    """The folder lm-eval loads: `model_dir`, or for a ten checkpoint of Mamba-2 its export in a temporary folder
    (removed after), with the same context window as TEN's (the training window, see export.py)."""
    if not is_mamba2_checkpoint(model_dir):
        yield model_dir
        return
    from .export import export_hf  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="ten-eval-") as scratch:
        yield export_hf(model_dir, Path(scratch) / "mamba2")


def load_harness_model(
    model_dir: Path,
    *,
    batch_size: int = 1,
    device: str = "cpu",
    max_length: int | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """lm-eval's HFLM over the folder, as a decoder-only (causal) model."""
    register_when_imported()  # the `ten` model type for transformers' Auto classes

    import_lm_eval()
    from lm_eval.models.huggingface import HFLM  # noqa: PLC0415

    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise EvaluationError(f"no model folder at {model_dir}")
    try:
        return HFLM(pretrained=str(model_dir), backend="causal", device=device, batch_size=batch_size,
                    max_length=max_length, trust_remote_code=trust_remote_code)  # fmt: skip
    except (OSError, ValueError, KeyError) as err:
        raise EvaluationError(
            f"cannot load {model_dir} as a transformers causal language model: {_one_line(err)}"
        ) from None


class TaskFailed(RuntimeError):
    """A task that failed while it was evaluated, after the checks before any evaluation passed (so not a mistake
    in the request). `finished`: the results of the tasks that finished before it, as `evaluate` returns them."""

    def __init__(self, task: str, finished: dict[str, Any], cause: BaseException) -> None:
        self.task, self.finished = task, finished
        self.done = list(finished.get("results", {}))
        reason = _one_line(cause)
        reason = reason if reason == type(cause).__name__ else f"{type(cause).__name__}: {reason}"
        super().__init__(f"task {task} failed: {reason}")


def load_task(manager: Any, name: str) -> Any:
    """lm-eval's Task object of `name`, its data read (local files, offline), or one line naming the task."""
    try:
        if hasattr(manager, "load"):  # lm-eval 0.4.12 on; get_task_dict, deprecated there, before
            loaded = manager.load([name])["tasks"]
        else:
            from lm_eval.tasks import get_task_dict  # noqa: PLC0415

            loaded = get_task_dict([name], manager)
    except Exception as err:  # datasets and lm-eval fail in many ways; each is this one line
        raise EvaluationError(f"task {name} cannot read its data (offline, beside its YAML): {_one_line(err)}") from err
    return loaded[name]


def longest_answer(model: Any, task: Any, limit: int | float | None) -> int:
    """The most tokens any answer (the continuation of a loglikelihood request) of `task` takes, encoded as lm-eval's
    HFLM encodes it; it must fit the harness's context window, which lm-eval asserts only when it scores it."""
    docs = list(task.eval_docs)
    if limit is not None:  # lm-eval's reading: at most that many documents, a float below 1 a fraction of them
        docs = docs[: int(math.ceil(len(docs) * limit)) if limit < 1 else int(limit)]
    longest = 0
    for doc_id, doc in enumerate(docs):
        context = task.fewshot_context(doc, task.config.num_fewshot or 0)
        requests = task.construct_requests(doc=doc, ctx=context, metadata=(task.config.task, doc_id, 1))
        for request in requests if isinstance(requests, list) else [requests]:
            if request.request_type != "loglikelihood":  # rolling perplexity windows any length; others truncate
                continue
            context, continuation = request.arguments[:2]
            # lm-eval's own split of a (context, continuation) pair (private, but the same through 0.4.x); an
            # empty context is scored after a prefix token, the continuation encoded alone.
            tokens = model._encode_pair(context, continuation)[1] if context else model.tok_encode(continuation)
            longest = max(longest, len(tokens))
    return longest


def check_tasks(model: Any, tasks: dict[str, Any], limit: int | float | None, window: str) -> None:
    """Every task's needs against the model, before any task is evaluated: a failure found half-way would cost
    the tasks evaluated before it. `window`: where the context window comes from, for the message."""
    for name, task in tasks.items():
        needed = longest_answer(model, task, limit)
        if needed > model.max_length:
            raise EvaluationError(
                f"task {name} scores answers of up to {needed} tokens, longer than the context window "
                f"({model.max_length} tokens, {window}): pass --max_length {needed} or more (a ten model reads any "
                "length)"
            )


def merge_results(earlier: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """One results dict of two lm-eval runs on different tasks: their per-task tables joined, the rest the newer's
    (the same model and settings), the evaluation times added."""
    merged = dict(earlier)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(earlier.get(key), dict):
            merged[key] = {**earlier[key], **value}
        elif key == "total_evaluation_time_seconds" and key in earlier:
            merged[key] = str(float(earlier[key]) + float(value))
        else:
            merged[key] = value
    return merged


def evaluate(
    model_dir: Path | str,
    tasks: str | Sequence[str] = DEFAULT_TASKS,
    *,
    limit: int | float | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    max_length: int | None = None,
    trust_remote_code: bool = False,
    log_samples: bool = False,
    bootstrap_iters: int = 1000,
    on_task: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run lm-eval's simple_evaluate on the model folder with the local tasks, offline; its results dict. A ten
    checkpoint of Mamba-2 is evaluated as its export (`harness_folder`).

    `results["results"][task]` holds the metrics ("bits_per_byte,none", "acc,none", ...). `limit`: at most
    this many documents per task (a float below 1: that fraction). `max_length`: the context window of the
    harness (default: the model config's n_positions / max_position_embeddings, else the tokenizer's
    model_max_length). `device`: auto, cpu, cuda or cuda:N.

    Every task is loaded and checked against the model (its data readable, its answers within the context window)
    before the first is evaluated; then they run one at a time, `on_task` called with the results so far after
    each (to save them), and a task that fails raises TaskFailed holding the finished ones.
    """
    from ..device import resolve_device  # noqa: PLC0415

    names = parse_tasks(tasks)
    device = str(resolve_device(device))
    with offline(), harness_folder(Path(model_dir).expanduser()) as folder:
        lm_eval = import_lm_eval()
        from lm_eval.tasks import TaskManager  # noqa: PLC0415

        model = load_harness_model(folder, batch_size=batch_size, device=device, max_length=max_length,
                                   trust_remote_code=trust_remote_code)  # fmt: skip
        manager = TaskManager(include_path=str(task_dir()), include_defaults=False)
        window = "--max_length" if max_length else "the model's max_seq_len"
        check_tasks(model, {name: load_task(manager, name) for name in names}, limit, window)
        results: dict[str, Any] = {}
        for name in names:
            try:
                done = lm_eval.simple_evaluate(model=model, tasks=[name], task_manager=manager, limit=limit,
                                               log_samples=log_samples, bootstrap_iters=bootstrap_iters)  # fmt: skip
            except Exception as err:  # any failure inside lm-eval or the model: the finished tasks are kept
                raise TaskFailed(name, results, err) from err
            results = merge_results(results, done)
            if on_task is not None:
                on_task(results)
        return results


@dataclass
class MetricRow:
    task: str
    metric: str
    value: float
    stderr: float | None


def metric_rows(results: dict[str, Any]) -> list[MetricRow]:
    """(task, metric, value, stderr) of every numeric metric in a results dict, in the harness's order."""
    rows = []
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            metric, _, _filter = key.partition(",")
            if metric in _NOT_METRICS or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = values.get(f"{metric}_stderr,{_filter}" if _filter else f"{metric}_stderr")
            rows.append(MetricRow(task, metric, float(value), float(stderr) if isinstance(stderr, (int, float))
                                  else None))  # fmt: skip
    return rows


def _number(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4e}"


def format_table(rows: list[MetricRow]) -> str:
    """A plain-text table: task, metric, value (± stderr where the harness gives one)."""
    cells = [("task", "metric", "value")]
    for row in rows:
        value = _number(row.value) + (f" ± {_number(row.stderr)}" if row.stderr is not None else "")
        cells.append((row.task, row.metric, value))
    widths = [max(len(cell[i]) for cell in cells) for i in range(3)]
    lines = ["  ".join(cell[i].ljust(widths[i]) for i in range(3)).rstrip() for cell in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------- ten's own validation figures


@dataclass
class TenValidation:
    """What training measured on its validation split, for the checkpoint being evaluated."""

    step: int
    ce: float  # nats per token
    bits_per_byte: float | None  # recorded for the byte tokenizer only (one token per byte)
    dataset: str | None
    source: str  # where the figures come from, for the reader

    @property
    def bits_per_token(self) -> float:
        return self.ce / math.log(2)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tokenizer_kind(checkpoint: Path) -> str | None:
    from ..data.tokenizer import META_FILE  # noqa: PLC0415

    try:
        meta = json.loads((checkpoint / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta.get("kind") if isinstance(meta, dict) else None


def ten_validation(checkpoint: Path) -> TenValidation | None:
    """ten's validation figures for a training checkpoint (a folder with trainer_state.json), else None.

    From the run's metrics.jsonl: the evaluation at the checkpoint's step (train logs one at every
    --eval_steps, at the end, and before it saves `best`). Without one (a step-N checkpoint between
    evaluations, or no metrics.jsonl): the best validation loss of trainer_state.json, at some step <= N.
    """
    from ..runs.checkpoint import STATE_FILE  # noqa: PLC0415
    from ..runs.folders import run_dir_of  # noqa: PLC0415
    from ..runs.metrics_log import METRICS, read_records  # noqa: PLC0415

    checkpoint = Path(checkpoint)
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(state, dict):
        return None
    step = int(state.get("step", 0))
    args = state.get("args") if isinstance(state.get("args"), dict) else {}
    dataset = args.get("tokenized_dir") or args.get("dataset")
    run_dir = run_dir_of(checkpoint.resolve())
    if run_dir is not None:
        evaluations = read_records(run_dir, event="eval", skip_damaged=True)  # figures to show: a cut line is passed
        at_step = [r for r in evaluations if r.get("step") == step and _is_number(r.get("val_ce"))]
        if at_step:
            record = at_step[-1]
            return TenValidation(step, record["val_ce"], record.get("val_bits_per_byte"), dataset,
                                 f"{run_dir / METRICS}, step {step:,}")  # fmt: skip
    best = state.get("best_val_loss")
    if not _is_number(best):
        return None
    bits_per_byte = best / math.log(2) if _tokenizer_kind(checkpoint) == "byte" else None
    source = f"best validation loss in {checkpoint / STATE_FILE}"
    return TenValidation(step, float(best), bits_per_byte, dataset, source)


def comparison_lines(validation: TenValidation, rows: list[MetricRow]) -> list[str]:
    """ten's validation figures beside the harness's bits_per_byte, for the reader to compare."""
    bpb = f", {validation.bits_per_byte:.4f} bits/byte" if validation.bits_per_byte is not None else ""
    trained = f" (trained on {validation.dataset})" if validation.dataset else ""
    lines = [f"ten validation{trained}: ce {validation.ce:.4f} nats/token = {validation.bits_per_token:.4f} "
             f"bits/token{bpb}  [{validation.source}]"]  # fmt: skip
    lines += [f"harness {row.task}: bits_per_byte {row.value:.4f}" for row in rows if row.metric == "bits_per_byte"]
    return lines


def report(checkpoint: Path, results: dict[str, Any], limit: int | float | None = None) -> str:
    """What `ten eval` prints: the model, the harness's metrics, and ten's own validation figures beside them."""
    rows = metric_rows(results)
    lines = [f"\n{checkpoint}" + (f" (at most {limit} documents per task)" if limit else ""), format_table(rows)]
    if (validation := ten_validation(checkpoint)) is not None:
        lines += ["", *comparison_lines(validation, rows)]
    return "\n".join(lines)


def write_results(results: dict[str, Any], path: Path) -> None:
    """lm-eval's results as JSON (through the atomic writer: an older file stays whole if this one fails)."""
    try:
        with atomic_open(path) as handle:
            handle.write((json.dumps(results, indent=2, default=str) + "\n").encode("utf-8"))
    except OSError as err:
        raise WriteError(f"cannot write --output {path}: {write_failure(err)}") from err
