"""The run plan: every setting of a training run, worked out once.

`TrainArguments` hold what the user asked for (None: not given). `resolve_run` turns them, or a
saved run they continue, into a frozen `RunPlan`: the model to build, the window, batch and peak
learning rate, how long the schedule runs, where the run writes and which checkpoint it continues.
The trainer, `ten compare` and the run-folder code read the plan; none works a setting out again.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..architectures import architecture_config, build_model, variant_label
from ..config import PRESETS
from ..data import DataError
from ..data.identity import DataIdentity, recorded_location
from ..lm import CONFIG_FILE, LanguageModel, config_fields, load_config
from ..runs.folders import CHECKPOINTS, check_writable, claim_output_dir, claim_run_dir, latest_run_dir, run_dir_of
from ..runs.lock import take_lock
from ..runs.lookup import find_checkpoint, passed_over, recover_interrupted_saves
from .arguments import AUTO_BATCH, MODEL_FIELDS, RESUMABLE_OVERRIDES, TrainArguments
from .checkpoint import read_trainer_state
from .distributed import DistributedContext
from .presets import TRAINING_PRESETS

# A new run's model config is built before the tokenizer is known; `ModelPlan.build` puts the
# tokenizer's vocabulary in. The byte vocabulary is the default, so the plan's config is usually exact.
PROVISIONAL_VOCAB = 256
MAX_WARMUP_FRACTION = 0.2  # a warm-up never takes more than a fifth of the run: a short run still decays


@dataclass(frozen=True)
class ModelPlan:
    """Which network to build: an architecture of the registry and its validated config."""

    architecture: str  # a key of temporal_eigenstate_networks.lm.ARCHITECTURES
    config: Any  # the architecture's config class
    from_checkpoint: bool  # True: the config (and vocabulary) of the checkpoint being resumed

    def build(self, tokenizer_vocab: int) -> LanguageModel:
        config = self.config
        if not self.from_checkpoint:
            config = dataclasses.replace(config, vocab_size=tokenizer_vocab)
        if config.vocab_size < tokenizer_vocab:
            raise ValueError(f"the model's vocabulary ({config.vocab_size}) is smaller than the tokenizer's")
        return build_model(self.architecture, config=config)

    def run_name(self, preset: str) -> str:
        """runs/<this>: the preset, -hten when the model is hierarchical, -PATTERN for a hybrid, and the
        architecture if not TEN."""
        architecture = "" if self.architecture == "ten" else f"-{self.architecture}"
        return preset + variant_label(self.config, "-") + architecture


@dataclass(frozen=True)
class RunPlan:
    args: TrainArguments  # every setting, resolved: no None left where a preset supplies the value
    model: ModelPlan
    seq_len: int  # training window T
    batch_size: int | None  # sequences per micro-batch; None: --batch_size auto, until the trainer finds it
    max_steps: int | None  # a length in optimiser steps ...
    epochs: float | None  # ... or in passes over the training split; both None: the time budget decides
    time_budget_s: float | None  # the run's whole wall time, evaluations and checkpoints included
    output_dir: Path | None  # None for runs that write nothing (--dry_run, --benchmark)
    resume_from: Path | None = None  # the checkpoint folder this run continues
    resumed_state: dict[str, Any] | None = None  # its trainer_state.json, read once
    notes: tuple[str, ...] = ()  # what working out the plan did to the run folder, for the log
    data_location: Path | None = None  # a resumed run's data, found where the run found it (not args' relative path)

    @property
    def learning_rate(self) -> float:
        """The peak rate: held in the resolved arguments, read here."""
        return self.args.learning_rate

    @property
    def length_follows_budget(self) -> bool:
        return self.max_steps is None and self.epochs is None

    def total_steps(self, steps_per_epoch: int) -> int | None:
        """Optimiser steps of the schedule; None when the time budget sets the length."""
        if self.max_steps is not None:
            return self.max_steps
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * steps_per_epoch))
        return None

    def warmup_steps(self, total_steps: int | None) -> int:
        """--warmup_steps, at most a fifth of a run of `total_steps` steps (so it ends before the last step). A run
        whose time budget sets its length ends its warm-up at MAX_WARMUP_FRACTION of the budget instead."""
        if total_steps is None:
            return self.args.warmup_steps
        return min(self.args.warmup_steps, int(total_steps * MAX_WARMUP_FRACTION))


# ---------------------------------------------------------------- pieces of the plan


def model_plan(args: TrainArguments) -> ModelPlan:
    """The --model architecture at the --config preset's size, with the command line's overrides."""
    known = config_fields(args.model)
    overrides = {name: getattr(args, name) for name in MODEL_FIELDS if getattr(args, name) is not None}
    foreign = [f"--{name}" for name in overrides if name not in known]
    if foreign:
        verb = "does" if len(foreign) == 1 else "do"
        raise ValueError(f"{', '.join(foreign)} {verb} not apply to --model {args.model}")
    # The preset's every size: Mamba-2 is sized like the TEN they make (architecture_config).
    sizes = {**PRESETS[args.config].model_fields(), **overrides, "vocab_size": PROVISIONAL_VOCAB}
    config = architecture_config(args.model, sizes)
    if "hten_scales" in overrides and not config.use_hten:
        raise ValueError(f"--hten_scales needs --use_hten (the {args.config} preset has no HTEN)")
    check_eigenstate_flags(config, overrides)
    return ModelPlan(args.model, config, from_checkpoint=False)


def check_eigenstate_flags(config: Any, overrides: dict[str, Any]) -> None:
    """A hybrid without an eigenstate layer ignores the eigenstate settings: one given is a mistake, said."""
    layer_kinds = getattr(config, "layer_kinds", "")
    if not layer_kinds or set(layer_kinds) & set("eh"):
        return
    attention_fields = config_fields("transformer") | {"layer_pattern", "attention_window", "attention_heads"}
    ignored = [f"--{name}" for name in overrides if name not in attention_fields]
    if ignored:
        raise ValueError(f"--layer_pattern {config.layer_pattern} has no eigenstate layer (e or h), so "
                         f"{', '.join(ignored)} would change nothing")  # fmt: skip


def batch_shape(args: TrainArguments, model: ModelPlan) -> tuple[int, int | None]:
    """(window T, batch size): the command line's, else the model's training window and the preset's batch; a
    batch of None is --batch_size auto, which the trainer finds on the device (batch_search.py)."""
    if args.batch_size == AUTO_BATCH:
        return model.config.max_seq_len, None
    return model.config.max_seq_len, args.batch_size or TRAINING_PRESETS[args.config].batch_size


def target_tokens(args: TrainArguments) -> int:
    """The tokens per optimiser step --batch_size auto aims at: --tokens_per_step, else the preset's."""
    return args.tokens_per_step or TRAINING_PRESETS[args.config].tokens_per_step


def accumulation_for(tokens: int, batch_size: int, seq_len: int, world_size: int) -> int:
    """The micro-batches per step that reach `tokens` per optimiser step (at least: a step is whole batches)."""
    return max(1, math.ceil(tokens / (batch_size * seq_len * world_size)))


def step_arguments(args: TrainArguments, model: ModelPlan, explicit: set[str], world_size: int) -> TrainArguments:
    """A new run's --tokens_per_step as a gradient accumulation, worked out once: a resumed run keeps the saved
    one. For --batch_size auto the trainer works out both on the device; here only what can be refused before."""
    auto = args.batch_size == AUTO_BATCH
    if args.tokens_per_step is None and not auto:
        return args  # as before: --gradient_accumulation, 1 by default
    if "gradient_accumulation" in explicit:
        given = "--tokens_per_step" if args.tokens_per_step is not None else "--batch_size auto"
        raise ValueError(f"{given} works out --gradient_accumulation to reach the tokens per step: give "
                         "--tokens_per_step instead of --gradient_accumulation")  # fmt: skip
    seq_len, batch_size = batch_shape(args, model)
    tokens = target_tokens(args)
    if tokens < seq_len * world_size:
        where = f" in each of {world_size} processes" if world_size > 1 else ""
        raise ValueError(f"--tokens_per_step {tokens:,} is less than one window of {seq_len:,} tokens{where}: give "
                         f"at least {seq_len * world_size:,}, or a smaller --max_seq_len")  # fmt: skip
    if batch_size is None:
        return args
    return dataclasses.replace(args, gradient_accumulation=accumulation_for(tokens, batch_size, seq_len, world_size))


def with_batch(plan: RunPlan, batch_size: int, accumulation: int) -> RunPlan:
    """The plan with the micro-batch and accumulation --batch_size auto found, written into its arguments too, so
    the saved run says what it ran with and a resumed run takes them without searching again."""
    args = dataclasses.replace(plan.args, batch_size=batch_size, gradient_accumulation=accumulation)
    return dataclasses.replace(plan, args=args, batch_size=batch_size)


def resolved_arguments(args: TrainArguments, model: ModelPlan, output_dir: Path | None) -> TrainArguments:
    """The arguments with every preset-supplied value written in, so a saved run says what it ran with."""
    config = model.config
    model_values = {name: getattr(config, name) for name in MODEL_FIELDS if hasattr(config, name)}
    batch_size = batch_shape(args, model)[1]
    auto = batch_size is None
    return dataclasses.replace(
        args, **model_values, batch_size=AUTO_BATCH if auto else batch_size,
        tokens_per_step=target_tokens(args) if auto else args.tokens_per_step,
        learning_rate=args.learning_rate or TRAINING_PRESETS[args.config].learning_rate,
        output_dir=None if output_dir is None else str(output_dir),
    )  # fmt: skip


def merge_resumed_arguments(
    saved: dict[str, Any], args: TrainArguments, explicit: set[str], model: ModelPlan
) -> TrainArguments:
    """The saved run's arguments, with the few a resumed run may change taken from the command line.

    Another setting may be given with the value in use: the saved one, or where the saved arguments lack it
    (a run saved before the setting existed), the one the checkpoint's model and preset give.
    """
    merged = TrainArguments.from_dict(saved)
    in_use = resolved_arguments(merged, model, None)
    changes = {}
    for name in explicit:
        value, before = getattr(args, name), getattr(in_use, name)
        if name == "batch_size" and value == AUTO_BATCH:
            continue  # the batch the run found (or was given): a resumed run does not search again
        if name in RESUMABLE_OVERRIDES or lowers_learning_rate(name, value, before):
            changes[name] = value
        elif value != before:
            rule = "may only lower it" if name == "learning_rate" else "keeps it"
            raise ValueError(f"--{name} {value} differs from the resumed run's {before}; a resumed run {rule}")
    return dataclasses.replace(merged, **changes)


def lowers_learning_rate(name: str, value: Any, before: Any) -> bool:
    """A resumed run may lower its peak learning rate (what a diverged run is advised to do), never raise it."""
    return name == "learning_rate" and value is not None and before is not None and value < before


# ---------------------------------------------------------------- the plan


def resolve_run(
    args: TrainArguments, explicit: set[str] | None = None, context: DistributedContext | None = None
) -> RunPlan:
    """The plan of a run from its arguments; a new run that writes claims its folder here.

    `explicit`: the settings the user gave (the CLI knows); None takes those that differ from the defaults.
    """
    args.validate()
    context = context or DistributedContext()
    if explicit is None:
        defaults = TrainArguments()
        explicit = {name for name, value in vars(args).items() if value != getattr(defaults, name)}
    if args.resume is not None:
        return _resume_plan(args, set(explicit), context)
    model = model_plan(args)
    args = step_arguments(args, model, set(explicit), context.world_size)
    writes = not (args.dry_run or args.benchmark)
    output_dir = None
    notes: tuple[str, ...] = ()
    if writes and args.output_dir is not None:
        output_dir = Path(args.output_dir).expanduser()
        if context.is_main:
            notes = lock_notes(output_dir)  # before --overwrite clears anything: another writer may be in it
            claim_output_dir(output_dir, args.overwrite, reading=local_data(args))
    elif writes:
        base = Path("runs") / model.run_name(args.config)
        output_dir = context.broadcast(claim_run_dir(base) if context.is_main else None)
        notes = lock_notes(output_dir) if context.is_main else ()
    plan = _plan(resolved_arguments(args, model, output_dir), model, output_dir)
    return dataclasses.replace(plan, notes=context.broadcast(notes))


def lock_notes(folder: Path) -> tuple[str, ...]:
    """Take the run folder's lock (runs/lock.py): what taking it did, for the log."""
    note = take_lock(folder)
    return () if note is None else (note,)


def local_data(args: TrainArguments) -> list[Path]:
    """The files and folders on this machine the run reads its data from (a hub name is none)."""
    given = [args.dataset, args.tokenized_dir]
    return [Path(p).expanduser() for p in given if p is not None and Path(p).expanduser().exists()]


def _resume_plan(args: TrainArguments, explicit: set[str], context: DistributedContext) -> RunPlan:
    if args.resume:
        target = Path(args.resume).expanduser()
    elif args.output_dir is not None:
        target = Path(args.output_dir).expanduser()
    else:
        target = context.broadcast(latest_run_dir(Path("runs") / model_plan(args).run_name(args.config)))
    # Before looking: a save killed between its renames may have set the latest checkpoint aside.
    folders = [p for p in (target / CHECKPOINTS, target, target.parent) if p.name == CHECKPOINTS and p.is_dir()]
    notes: tuple[str, ...] = ()
    if folders and context.is_main:
        if not (args.dry_run or args.benchmark):  # one writer: before anything in the run folder changes
            notes = lock_notes(folders[0].parent)
        note = recover_interrupted_saves(folders[0])
        notes += () if note is None else (note,)
    notes = context.broadcast(notes)
    checkpoint = find_checkpoint(target)
    notes += tuple(passed_over(checkpoint)) if context.is_main else ()
    state = read_trainer_state(checkpoint)
    architecture, config = load_config(checkpoint / CONFIG_FILE)
    model = ModelPlan(architecture, config, from_checkpoint=True)
    merged = merge_resumed_arguments(state["args"], args, explicit, model)
    if args.batch_size == AUTO_BATCH and "batch_size" in explicit:
        notes += (f"--batch_size auto: the run continues with its batch {merged.batch_size} x accumulation "
                  f"{merged.gradient_accumulation} (a resumed run does not search again)",)  # fmt: skip
    if "allow_data_change" not in explicit:  # once: a later resume checks the data again
        merged = dataclasses.replace(merged, allow_data_change=False)
    merged.validate()
    writes = not (merged.dry_run or merged.benchmark)
    output_dir = resumed_output_dir(args, target, checkpoint, context) if writes else None
    plan = _plan(resolved_arguments(merged, model, output_dir), model, output_dir, checkpoint, state)
    return dataclasses.replace(plan, notes=notes, data_location=resumed_data_location(state.get("data"), explicit))


def resumed_data_location(saved_data: Any, explicit: set[str]) -> Path | None:
    """Where a resumed run reads its data when the command line gives no --dataset or --tokenized_dir: the place
    the run found it (recorded resolved, so a relative path does not depend on where the run is resumed from)
    while it is there; else None, the path as saved. The trainer then checks the content (data/identity.py)."""
    identity = DataIdentity.from_dict(saved_data)
    if explicit & {"dataset", "tokenized_dir"} or identity is None or identity.resolved is None:
        return None
    if (location := recorded_location(identity)) is not None:
        return location
    if not Path(identity.given).expanduser().exists():
        flag = "--tokenized_dir" if identity.kind == "prepared" else "--dataset"
        raise DataError(f"the run's data {identity.describe()} is no longer there, nor is {identity.given} here: "
                        f"give it with {flag}")  # fmt: skip
    return None


def resumed_output_dir(args: TrainArguments, target: Path, checkpoint: Path, context: DistributedContext) -> Path:
    """The folder the checkpoint's run is in, wherever it was copied or moved; or an explicit --output_dir
    that is that run or holds none. Never the folder named in the saved settings."""
    source = run_dir_of(checkpoint)
    if args.output_dir is not None:
        output_dir = Path(args.output_dir).expanduser()
        if context.is_main and (source is None or output_dir.resolve() != source.resolve()):
            take_lock(output_dir)
            claim_output_dir(output_dir, args.overwrite, reading=[checkpoint, *local_data(args)])
        return output_dir
    if source is None:
        raise ValueError(
            f"--resume {target}: {checkpoint} is not in a run folder's checkpoints/; "
            "say where the continued run writes with --output_dir"
        )
    if context.is_main:
        check_writable(source / CHECKPOINTS)
    return source


def _plan(
    args: TrainArguments,
    model: ModelPlan,
    output_dir: Path | None,
    resume_from: Path | None = None,
    resumed_state: dict[str, Any] | None = None,
) -> RunPlan:
    seq_len, batch_size = batch_shape(args, model)
    budget_s = None if args.time_budget is None else 60.0 * args.time_budget
    epochs = args.epochs
    if epochs is None and args.max_steps is None and budget_s is None:
        epochs = 1.0  # nothing says how long: one pass over the training split
    return RunPlan(
        args=args, model=model, seq_len=seq_len, batch_size=batch_size,
        max_steps=args.max_steps, epochs=None if args.max_steps is not None else epochs, time_budget_s=budget_s,
        output_dir=output_dir, resume_from=resume_from, resumed_state=resumed_state,
    )  # fmt: skip
