"""The training loop, in one place: set up from a run plan, then step, evaluate and checkpoint until
the schedule or the time budget ends, or a signal stops the run.

From the first step to the exit, a first SIGINT/SIGTERM ends the run with a checkpoint of its latest step
(an evaluation under way is cut short); only a second Ctrl-C stops at once."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..atomic import WriteError
from ..data import DataError, TokenData, WindowSampler, load_token_data
from ..data.identity import check_resumed_data
from ..device import resolve_device
from ..flags import command_line
from ..lm import LanguageModel
from ..runs.checkpoint import CheckpointError, TrainerState, non_finite_parameters
from ..runs.folders import CHECKPOINTS, release_run_dir
from ..runs.lock import release_lock
from ..runs.lookup import FINAL, checkpoint_name, latest_checkpoint, prune_step_checkpoints, set_aside_abandoned_work
from ..runs.metrics_log import append_record
from ..runs.trackers import Trackers, open_trackers
from ..units import duration_text, tokens_text
from .arguments import TrainArguments
from .batch_search import BatchChoice, choose_batch
from .budget import TimeBudget
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import DistributedContext, weights_fingerprint
from .optimizer import build_optimizer
from .plan import MAX_WARMUP_FRACTION, RunPlan, resolve_run, target_tokens, with_batch
from .precision import Precision, resolve_precision
from .schedule import learning_rate_at, learning_rate_at_fraction

EVAL_SEED = 1234  # the same validation windows at every evaluation, so the figures compare
LOG_EVERY = 10


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number: what happened (`reason`), then what to do."""

    def __init__(self, reason: str, advice: str) -> None:
        super().__init__(f"{reason}; {advice}")
        self.reason = reason


def lower_rate(rate: float) -> float:
    """The learning rate advised after a divergence: a tenth, in 3 digits (6e-05, not 5.9999999999999995e-05)."""
    return float(f"{rate / 10:.3g}")


@dataclass
class RunResult:
    status: str  # finished | time_budget (a step-defined run cut short) | stopped (SIGINT/SIGTERM)
    step: int
    checkpoint: Path | None
    eval: dict[str, float] = field(default_factory=dict)  # empty when a signal cut the final evaluation short
    sample: str = ""


class LanguageModelingObjective(nn.Module):
    """forward = compute_loss, so DDP and torch.compile see the whole training computation as one call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.compute_loss(inputs, targets, return_dict=True)


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a request honoured at the next step boundary or evaluation batch."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.reason = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def metric_name(loss_key: str) -> str:
    """compute_loss's keys as logged: loss, ce_loss -> ce, energy_loss -> energy."""
    return loss_key if loss_key == "loss" else loss_key.removesuffix("_loss")


def load_run_data(plan: RunPlan) -> TokenData:
    args = plan.args
    max_tokens = None if args.subset_size is None else args.subset_size * plan.seq_len + 1
    dataset, tokenized = args.dataset, Path(args.tokenized_dir) if args.tokenized_dir else None
    if plan.data_location is not None:  # read there, recorded as the run names it
        dataset, tokenized = (dataset, plan.data_location) if tokenized else (str(plan.data_location), None)
    data = load_token_data(
        dataset, args.tokenizer, max_train_tokens=max_tokens, streaming=args.streaming, tokenized_dir=tokenized
    )
    data.identity = dataclasses.replace(data.identity, given=args.tokenized_dir or args.dataset)
    for split, tokens in (("training", data.train), ("validation", data.val)):
        if len(tokens) < plan.seq_len + 1:
            raise DataError(
                f"the {split} split of {data.identity.label} has {len(tokens):,} tokens, fewer than one window of "
                f"{plan.seq_len + 1}; give a longer corpus or a smaller --max_seq_len"
            )
    return data


@torch.no_grad()
def evaluate(
    model: LanguageModel,
    sampler: WindowSampler,
    batches: int,
    precision: Precision,
    device: torch.device,
    stopped: Callable[[], bool] = lambda: False,
) -> dict[str, float] | None:
    """Mean CE (nats/token) and any auxiliary loss (TEN: raw energy) over fixed validation windows.

    None when `stopped()` turns true before the last batch (a signal: the run must save, not evaluate)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    for index in range(batches):
        if stopped():
            model.train(was_training)
            return None
        inputs, targets = (t.to(device) for t in sampler.batch(index))
        with precision.autocast():
            out = model.compute_loss(inputs, targets, return_dict=True)
        for key, value in out.items():
            name = f"val_{metric_name(key)}"
            if key != "loss":
                sums[name] = sums.get(name, 0.0) + float(value) / batches
    model.train(was_training)
    ce = sums["val_ce"]
    return {"val_ce": ce, "val_ppl": math.exp(min(ce, 80.0)), "val_bits_per_token": ce / math.log(2), **sums}


class Trainer:
    def __init__(
        self,
        run: TrainArguments | RunPlan,
        explicit: set[str] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        tracker_group: str | None = None,
        continued_by: str | None = None,
    ) -> None:
        """`run`: a plan, or arguments to resolve one from (`explicit`: see resolve_run).

        `clock` measures the time budget (tests pass a fake one). `tracker_group`: the --report_to trackers show
        the run among the others of this group (the variants of a `ten compare`). `continued_by`: the command
        that continues the run when it stops early, where a caller runs it (`ten compare --resume DIR`); that
        caller says so itself, so the run's end line does not, and a failed save names it. Default: the run's
        own `ten train --resume`.
        """
        self.trackers = Trackers()
        self.tracker_group = tracker_group
        self.continued_by = continued_by
        started = clock()  # the time budget counts the set-up (data, model) too
        device_request = run.args.device if isinstance(run, RunPlan) else run.device
        self.context = DistributedContext.from_environment(device_request)
        self.plan: RunPlan | None = None
        try:
            self.device = resolve_device(device_request, self.context.local_rank)
            self.plan = run if isinstance(run, RunPlan) else resolve_run(run, explicit, self.context)
            self._set_up(clock, started)
        except BaseException:
            self.close(wait_for_peers=False)
            if self.plan is not None and self.plan.output_dir is not None and self.plan.resume_from is None:
                release_run_dir(self.plan.output_dir)  # a run that never started leaves no folder behind
            raise

    # ------------------------------------------------------------------ set-up

    def _set_up(self, clock: Callable[[], float], started: float) -> None:
        plan, args = self.plan, self.plan.args
        self.args = args
        self.output_dir = plan.output_dir
        self.checkpoint_dir = None if plan.output_dir is None else plan.output_dir / CHECKPOINTS
        self.data = load_run_data(plan)
        data_note = None  # before the model is built: data a resumed run must not read fails at once
        if plan.resumed_state is not None:
            data_note = check_resumed_data(plan.resumed_state.get("data"), self.data.identity, args.allow_data_change)
        torch.manual_seed(args.seed)
        self.model = plan.model.build(self.data.tokenizer.vocab_size).to(self.device)
        self.model.gradient_checkpointing = args.gradient_checkpointing
        self.precision = resolve_precision(args.mixed_precision, self.device)
        self.scaler = self.precision.grad_scaler()
        self.batch_note: str | None = None  # --batch_size auto's choice and its reason, for the run header
        if plan.batch_size is None:
            self.find_batch()
            plan, args = self.plan, self.args
        self.optimizer = build_optimizer(self.model, plan.learning_rate, args.weight_decay, args.use_8bit_optim)
        identity = self.data.identity.to_dict()
        self.state = TrainerState(args=args.to_dict(), data=identity)
        self.stop = StopRequest()  # its handlers are installed for the whole of train()
        self.notes = list(plan.notes) + ([data_note] if data_note else [])  # logged with the run's description
        if plan.resume_from is not None:
            self.state = load_checkpoint(plan.resume_from, self.model, self.optimizer, plan.resumed_state)
            self.state.args = args.to_dict()
            if self.state.data is not None and self.state.data["sha256"] != identity["sha256"]:  # allowed: recorded
                self.state.data_changes.append({"step": self.state.step, "before": self.state.data, "after": identity})
            self.state.data = identity
            if self.state.scaler:
                self.scaler.load_state_dict(self.state.scaler)
            if self.context.is_main and plan.output_dir is not None:
                if note := set_aside_abandoned_work(plan.output_dir, self.state.step):
                    self.notes.append(note)

        self.tokens_per_step = plan.batch_size * plan.seq_len * args.gradient_accumulation * self.context.world_size
        self.steps_per_epoch = max(1, len(self.data.train) // self.tokens_per_step)
        self.total_steps = plan.total_steps(self.steps_per_epoch)  # None: the time budget sets the length
        self.warmup_steps = plan.warmup_steps(self.total_steps)
        checkpoint_bytes = 3 * sum(p.numel() * p.element_size() for p in self.model.parameters())  # + 2 moments
        self.budget = TimeBudget(plan.time_budget_s, self.state.elapsed_s, clock,
                                 args.eval_batches / args.gradient_accumulation, checkpoint_bytes, started)  # fmt: skip
        self.check_budget_left()
        self.learning_rate = plan.learning_rate  # of the step being taken; logged at the end
        self.train_sampler = WindowSampler(
            self.data.train, plan.seq_len, plan.batch_size, seed=args.seed, rank=self.context.rank
        )
        self.eval_sampler = WindowSampler(self.data.val, plan.seq_len, plan.batch_size, seed=EVAL_SEED)
        self.objective: nn.Module = LanguageModelingObjective(self.model)
        if self.context.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.objective = nn.parallel.DistributedDataParallel(self.objective, device_ids=device_ids)
        self.objective = self.maybe_compile(self.objective)
        # Imported now, before training: a library that cannot be imported is a one-line error. Rank 0 alone
        # logs, and only a run that writes metrics.jsonl (not --dry_run or --benchmark).
        if self.context.is_main and plan.output_dir is not None:
            self.trackers = open_trackers(args.report_to, warn=lambda line: tqdm.write(line, file=sys.stderr))

    def find_batch(self) -> None:
        """--batch_size auto: rank 0 finds the micro-batch and accumulation on its device, every rank takes them,
        and they join the run's arguments (what a resumed run continues with)."""
        plan, world = self.plan, self.context.world_size
        choice: BatchChoice | str | None = None
        failure: Exception | None = None
        if self.context.is_main:
            weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
            reserve = 2 * weight_bytes + (weight_bytes if self.context.enabled else 0)  # AdamW's moments, DDP's buckets
            processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.context.enabled else 1
            try:
                choice = choose_batch(self.model, plan.seq_len, target_tokens(plan.args), world, self.device,
                                      self.precision, reserve, processes_here)  # fmt: skip
            except ValueError as err:
                choice = str(err)  # every rank raises it, not only this one
            except Exception as err:  # noqa: BLE001  (re-raised below, once the other ranks know to stop)
                failure = err
        choice = self.context.broadcast(choice)
        if failure is not None:
            raise failure
        if choice is None:
            raise RuntimeError("rank 0 failed while finding the --batch_size auto (its error says why)")
        if isinstance(choice, str):
            raise ValueError(choice)
        self.plan = with_batch(plan, choice.batch_size, choice.accumulation)
        self.args = self.plan.args
        self.batch_note = choice.line(plan.seq_len, world, target_tokens(plan.args))

    def check_budget_left(self) -> None:
        """A resumed run whose time budget is spent (or whose budget-long schedule ended) has nothing to do."""
        plan = self.plan
        if plan.resume_from is None or plan.time_budget_s is None or plan.output_dir is None:
            return
        same_budget = plan.resumed_state["args"].get("time_budget") == self.args.time_budget
        ended = plan.resume_from.name == FINAL and plan.length_follows_budget and same_budget
        if ended or self.state.elapsed_s >= plan.time_budget_s:
            raise ValueError(
                f"{plan.resume_from} has used its --time_budget of {self.args.time_budget:g} minutes; give a larger "
                "--time_budget (minutes for the whole run) or a --max_steps to train on"
            )

    def maybe_compile(self, module: nn.Module) -> nn.Module:
        """torch.compile of the whole step: the scan is a custom operator (ops/chunked.py), one op in the graph."""
        wanted = self.device.type == "cuda" if self.args.compile is None else self.args.compile
        if not wanted or self.args.dry_run:
            return module
        try:
            return torch.compile(module)
        except Exception as err:  # noqa: BLE001  (any backend failure means: run eagerly)
            self.log(f"torch.compile: unavailable here ({type(err).__name__}); running eagerly")
            return module

    def describe(self) -> None:
        plan, args = self.plan, self.args
        self.log(self.model.summary())
        threads = f" ({torch.get_num_threads()} threads)" if self.device.type == "cpu" else ""
        world = f" x {self.context.world_size} processes" if self.context.enabled else ""
        self.log(f"device: {self.device}{threads}{world}   precision: {self.precision.name}")
        if self.precision.note:
            self.log(self.precision.note)
        self.log(f"data: {self.data.description}")
        if self.total_steps is None:
            steps = f"as many as {args.time_budget:g} minutes allow (the schedule ends with the budget)"
        else:
            cut = "" if args.time_budget is None else f", fewer if {args.time_budget:g} minutes run out first"
            steps = f"{self.total_steps:,}{cut}"
        self.log(
            f"steps: {steps} ({self.steps_per_epoch:,} per epoch), "
            f"{self.tokens_per_step:,} tokens per step = batch {plan.batch_size} x seq {plan.seq_len} "
            f"x accumulation {args.gradient_accumulation}{world}; "
            f"lr {plan.learning_rate:g}, warm-up {self.warmup_steps}, cosine to {args.min_lr_ratio:g} x lr"
        )
        if self.batch_note:
            self.log(self.batch_note)
        if plan.output_dir is not None:
            self.log(f"output: {plan.output_dir}")
        if plan.resume_from is not None:
            self.log(f"resuming from {plan.resume_from} at step {self.state.step:,}")
            before = plan.resumed_state["args"].get("learning_rate")
            if before is not None and plan.learning_rate < before:
                self.log(f"the peak learning rate is lowered from {before:g} to {plan.learning_rate:g} from here on")
        for note in self.notes:
            self.log(note)

    def log(self, message: str) -> None:
        if self.context.is_main:
            tqdm.write(message)

    def record(self, **values: Any) -> None:
        """One line of output_dir/metrics.jsonl (rank 0 only), and the same record to the --report_to trackers:
        this is where both are written, so they cannot disagree."""
        if self.context.is_main and self.output_dir is not None:
            append_record(self.output_dir, values)
            self.trackers.log(values)

    def train(self) -> RunResult:
        with self.stop:  # from here to the exit, a signal ends the run with a checkpoint
            self.describe()
            self.start_trackers()
            try:
                result = self.run()
            except BaseException as err:
                self.trackers.finish("interrupted" if isinstance(err, KeyboardInterrupt) else "failed")
                raise
            self.trackers.finish(result.status)
            return result

    def run(self) -> RunResult:
        """From the start record to the end: the steps, evaluations and checkpoints, then the final ones."""
        self.record(event="start", step=self.state.step, total_steps=self.total_steps,
                    fingerprint=weights_fingerprint(self.model), world_size=self.context.world_size)  # fmt: skip
        if self.plan.time_budget_s is not None:
            self.evaluate()  # times the final evaluation the budget must leave room for; the curve's first point
        status = self.loop(self.stop)
        return self.finish(status)

    def start_trackers(self) -> None:
        """Open the --report_to trackers' runs (a resumed run: the same ones, from its checkpoint's step)."""
        if not self.trackers:
            return
        plan, model = self.plan, self.model
        config = {
            "args": self.args.to_dict(),
            "model": {"architecture": model.architecture, **model.config.to_dict()},
            "seq_len": plan.seq_len, "batch_size": plan.batch_size, "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps, "tokens_per_step": self.tokens_per_step,
            "steps_per_epoch": self.steps_per_epoch, "world_size": self.context.world_size,
            "device": str(self.device), "precision": self.precision.name, "data": self.data.description,
            "resumed_from": None if plan.resume_from is None else str(plan.resume_from),
        }  # fmt: skip
        summary = {
            "parameters": model.num_parameters(),
            "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "state_bytes": model.state_bytes(model.config.max_seq_len),  # one sequence's, at the training window
        }
        resumed = plan.resume_from is not None
        self.trackers.start(self.output_dir, config, summary, resumed, self.state.step, self.tracker_group,
                            say=self.log)  # fmt: skip

    def stop_requested(self) -> bool:
        """Whether a signal arrived on any rank (all ranks ask together, so all stop at the same point)."""
        return self.context.any(self.stop.reason is not None, self.device)

    # ------------------------------------------------------------------ the loop

    def learning_rate_now(self) -> float:
        """The schedule's rate for the next step: by steps, or by the fraction of the time budget used."""
        step, peak, floor = self.state.step, self.plan.learning_rate, self.args.min_lr_ratio
        if self.total_steps is None:
            fraction = self.budget.fraction()
            return learning_rate_at_fraction(step, fraction, peak, self.warmup_steps, floor, MAX_WARMUP_FRACTION)
        return learning_rate_at(step, peak, self.total_steps, self.warmup_steps, floor)

    def train_step(self) -> dict[str, float]:
        """One optimiser step over `gradient_accumulation` micro-batches: the losses, grad norm and lr."""
        args, step = self.args, self.state.step
        totals, names = None, []
        for micro in range(args.gradient_accumulation):
            inputs, targets = self.train_sampler.batch(step * args.gradient_accumulation + micro)
            inputs, targets = inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
            last = micro == args.gradient_accumulation - 1
            no_sync = self.objective.no_sync() if self.context.enabled and not last else contextlib.nullcontext()
            with no_sync, self.precision.autocast():
                out = self.objective(inputs, targets)
            with no_sync:
                self.scaler.scale(out["loss"] / args.gradient_accumulation).backward()
            names = [metric_name(key) for key in out]
            parts = torch.stack(list(out.values())).detach().float() / args.gradient_accumulation
            totals = parts if totals is None else totals + parts
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.grad_clip or float("inf"))
        values = dict(zip([*names, "grad_norm"], self.context.mean(torch.cat([totals, norm.reshape(1).float()]))
                          .tolist(), strict=True))  # fmt: skip
        if not math.isfinite(values["loss"]):
            detail = ", ".join(f"{k} {v}" for k, v in values.items() if k not in ("loss", "grad_norm"))
            raise TrainingDiverged(f"the loss became {values['loss']} at step {step + 1} ({detail})",
                                   self.divergence_advice())  # fmt: skip
        self.learning_rate = self.learning_rate_now()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        return {**values, "lr": self.learning_rate}

    def loop(self, stop: StopRequest) -> str:
        """Steps until the schedule ends (finished), the budget ends (finished, or time_budget for a run
        whose length was given in steps), or a signal arrives (stopped)."""
        # The bar closes before any error is printed, so the error is the last line.
        with tqdm(total=self.total_steps, initial=self.state.step, disable=not self.context.is_main,
                  dynamic_ncols=True, desc="train", unit="step") as bar:  # fmt: skip
            return self.take_steps(stop, bar)

    def take_steps(self, stop: StopRequest, bar: tqdm) -> str:
        args, budget = self.args, self.budget
        rate = None
        status = "finished"
        while self.total_steps is None or self.state.step < self.total_steps:
            out_of_time = budget.exhausted()  # before the step: do one more step and the end still fit?
            if self.context.any(stop.reason is not None or out_of_time, self.device):
                if stop.reason is not None or not out_of_time:
                    status = "stopped"
                elif self.total_steps is not None:
                    status = "time_budget"
                why = stop.reason or f"the {args.time_budget:g}-minute time budget is used"
                self.log(f"{why}: stopping at step {self.state.step:,}")
                break
            step_start = budget.clock()
            metrics = self.train_step()
            seconds = budget.clock() - step_start
            budget.record_step(seconds)
            self.state.elapsed_s = budget.elapsed()
            speed = self.tokens_per_step / max(seconds, 1e-9)
            rate = speed if rate is None else 0.9 * rate + 0.1 * speed
            self.show_progress(bar, metrics, rate)
            step = self.state.step
            if step % LOG_EVERY == 0 or step == 1:
                self.record(event="train", step=step, tokens=self.state.tokens_seen, **metrics, tokens_per_s=rate,
                            elapsed_s=self.state.elapsed_s, **self.memory())  # fmt: skip
            # The end evaluates and saves anyway: no periodic evaluation or checkpoint at the last step, nor
            # one that the time left cannot hold (decided by all ranks alike: a checkpoint waits for them all).
            more = self.total_steps is None or step < self.total_steps
            evaluation_s = budget.evaluation_s() + budget.save_s  # it may save a best checkpoint
            if more and step % args.eval_steps == 0 and self.all_ranks(budget.fits(evaluation_s)):
                self.evaluate_and_keep_best()
            if more and step % args.save_steps == 0 and self.all_ranks(budget.fits(budget.save_s)):
                self.save(checkpoint_name(step))
        return status

    def memory(self) -> dict[str, float]:
        """The GPU memory the run has needed so far (peak allocated, GiB); nothing on a CPU, where no allocator
        counts it."""
        if self.device.type != "cuda":
            return {}
        return {"peak_memory_gib": torch.cuda.max_memory_allocated(self.device) / 2**30}

    def all_ranks(self, flag: bool) -> bool:
        return not self.context.any(not flag, self.device)

    def show_progress(self, bar: tqdm, metrics: dict[str, float], rate: float) -> None:
        postfix = {k: f"{v:.2e}" if k == "lr" else f"{v:.4f}" for k, v in metrics.items() if k != "grad_norm"}
        postfix["tok/s"] = f"{rate:,.0f}"
        if self.args.hourly_rate is not None:
            postfix["cost"] = f"${self.args.hourly_rate * self.state.elapsed_s / 3600:.2f}"
        bar.set_postfix(postfix, refresh=False)
        if self.total_steps is None:  # a time budget: the total is an estimate, updated as the speed changes
            left = self.budget.steps_left()
            bar.total = None if left is None else self.state.step + left
        bar.update()

    # ------------------------------------------------------------------ evaluation, checkpoints, the end

    def evaluate_and_keep_best(self) -> dict[str, float]:
        """Evaluate, and save `best` when the loss is the lowest yet; {} when a signal cut the evaluation short."""
        metrics = self.evaluate()
        if not metrics:
            return metrics
        best = self.state.best_val_loss
        if best is None or metrics["val_ce"] < best:
            self.state.best_val_loss = metrics["val_ce"]
            self.save("best", prune=False)
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Validation figures, logged and recorded; the time it takes is what the budget keeps for the end.

        {} when a signal arrives before it ends: a preempted job has seconds, not an evaluation's minutes."""
        start = self.budget.clock()
        metrics = evaluate(self.model, self.eval_sampler, self.args.eval_batches, self.precision, self.device,
                           stopped=self.stop_requested)  # fmt: skip
        if metrics is None:
            self.log(f"{self.stop.reason or 'a signal'}: the evaluation at step {self.state.step:,} is skipped")
            return {}
        if self.context.enabled:  # one set of figures for all ranks, so all make the same `best` choice
            averaged = self.context.mean(torch.tensor(list(metrics.values()), dtype=torch.float64, device=self.device))
            metrics = dict(zip(metrics, averaged.tolist(), strict=True))
        self.budget.record_eval(self.budget.clock() - start)
        if self.data.tokenizer.name == "byte":
            metrics["val_bits_per_byte"] = metrics["val_bits_per_token"]
        self.state.elapsed_s = self.budget.elapsed()
        self.record(event="eval", step=self.state.step, tokens=self.state.tokens_seen, elapsed_s=self.state.elapsed_s,
                    **metrics)  # fmt: skip
        bpb = f"  bits/byte {metrics['val_bits_per_byte']:.3f}" if "val_bits_per_byte" in metrics else ""
        extra = "".join(f"  {k[4:]} {v:.3f}" for k, v in metrics.items() if k not in ("val_ce", "val_ppl")
                        and not k.startswith("val_bits"))  # fmt: skip
        self.log(f"step {self.state.step:,}: validation ce {metrics['val_ce']:.4f}  ppl {metrics['val_ppl']:.2f}{bpb}"
                 f"{extra}")  # fmt: skip
        return metrics

    def save(self, name: str, prune: bool = True) -> Path | None:
        """Rank 0 writes; every rank learns whether it worked, so none runs ahead of (or waits on) a failed write.

        Only weights known to give a finite loss are saved: the last step's are checked first (the next step's
        forward would be the first to see that they diverged)."""
        path, failure, diverged = None, None, None
        start = self.budget.clock()
        if self.context.is_main:
            diverged = self.divergence()
        if self.context.any(diverged is not None, self.device):
            raise TrainingDiverged(f"{diverged or 'the weights diverged'}, so they are not saved as {name}",
                                   self.divergence_advice())  # fmt: skip
        if self.context.is_main:
            self.state.scaler = self.scaler.state_dict() if self.scaler.is_enabled() else {}
            try:
                path = save_checkpoint(self.checkpoint_dir / name, self.model, self.optimizer, self.state,
                                       self.data.tokenizer)  # fmt: skip
                if prune:
                    prune_step_checkpoints(self.checkpoint_dir, self.args.keep_checkpoints)
            except WriteError as err:
                failure = err
            self.budget.record_save(self.budget.clock() - start)
        if self.context.any(failure is not None, self.device):
            raise WriteError(f"{failure or 'rank 0 could not write a checkpoint'}; {self.resume_hint()}")
        return path

    @torch.no_grad()
    def divergence(self) -> str | None:
        """Why the weights must not be saved (a NaN or infinity in them, or in their loss on the next training
        batch), or None. Evaluation mode: no dropout, so no random numbers are drawn and resuming stays exact."""
        step = self.state.step
        bad = non_finite_parameters(self.model)
        if bad:
            return f"the weights after step {step} hold NaN or infinite values ({bad[0]})"
        inputs, targets = (t.to(self.device) for t in self.train_sampler.batch(step * self.args.gradient_accumulation))
        was_training = self.model.training
        self.model.eval()
        with self.precision.autocast():
            loss = float(self.model.compute_loss(inputs, targets))
        self.model.train(was_training)
        return None if math.isfinite(loss) else f"the weights after step {step} give a loss of {loss}"

    def divergence_advice(self) -> str:
        """What to do after a divergence: continue from the last checkpoint (all are finite) at a lower rate."""
        lower = command_line(TrainArguments, learning_rate=lower_rate(self.plan.learning_rate))
        plain = command_line(TrainArguments, mixed_precision="no")
        precision = f" (or {plain})" if self.precision.dtype is not None else ""
        try:
            last = None if self.checkpoint_dir is None else latest_checkpoint(self.checkpoint_dir)
        except CheckpointError:
            last = None
        if last is None:
            return f"no checkpoint of this run was saved: start again with a lower rate, e.g. {lower}{precision}"
        return (f"the last good checkpoint is {last}: continue from it at a lower rate with "
                f"ten train {command_line(TrainArguments, resume=str(last))} {lower}{precision}")  # fmt: skip

    def resume_hint(self) -> str:
        """Where a run that cannot write stands: its last good checkpoint and how to continue."""
        try:
            last = latest_checkpoint(self.checkpoint_dir)
        except CheckpointError:
            last = None
        if last is None:
            return "no checkpoint of this run was saved"
        return f"the last good checkpoint is {last}; when there is room again, continue with: {self.resume_command()}"

    def resume_command(self) -> str:
        """The command that continues this run: its own `ten train --resume`, or the caller's (`continued_by`)."""
        return self.continued_by or f"ten train {command_line(TrainArguments, resume=str(self.output_dir))}"

    def finish(self, status: str) -> RunResult:
        """Evaluate and save the end of the run; after a signal (in the loop or in this evaluation), only save."""
        metrics: dict[str, float] = {}
        if status != "stopped":
            metrics = self.evaluate_and_keep_best()
            status = status if metrics else "stopped"
        path = self.save(FINAL if status == "finished" else checkpoint_name(self.state.step))
        fingerprints = self.context.gather_floats(weights_fingerprint(self.model))
        self.record(event="end", status=status, step=self.state.step, elapsed_s=self.budget.elapsed(),
                    lr=self.learning_rate, fingerprints=fingerprints, **metrics)  # fmt: skip
        if len(set(fingerprints)) > 1:
            raise RuntimeError(f"data-parallel ranks ended with different weights: {fingerprints}")
        wanted = self.context.is_main and self.args.sample_tokens and metrics and self.stop.reason is None
        sample = self.sample() if wanted else ""  # a signal during the save: the checkpoint is there, exit now
        self.log(self.throughput_line())
        if path is not None:
            own_hint = status != "finished" and self.continued_by is None  # else the caller gives its own
            self.log(f"checkpoint: {path}" + (f"; continue with: {self.resume_command()}" if own_hint else ""))
        return RunResult(status, self.state.step, path, metrics, sample)

    def throughput_line(self) -> str:
        """Tokens, time and speed of the run; its peak GPU memory and, with --hourly_rate, what it cost."""
        tokens, seconds = self.state.tokens_seen, max(self.state.elapsed_s, 1e-9)
        parts = [f"{tokens_text(tokens)} tokens in {duration_text(seconds)} ({tokens / seconds:,.0f} tokens/s)"]
        if memory := self.memory():
            parts.append(f"peak memory {memory['peak_memory_gib']:,.1f} GiB")
        if self.args.hourly_rate is not None:
            cost = self.args.hourly_rate * seconds / 3600
            parts.append(f"${cost:,.2f} at ${self.args.hourly_rate:g}/hour, ${1e6 * cost / max(tokens, 1):,.3f} "
                         "per million tokens")  # fmt: skip
        return "run: " + ", ".join(parts)

    def sample(self) -> str:
        prompt = torch.as_tensor(self.data.val[:32].astype("int64"), device=self.device).unsqueeze(0)
        ids = self.model.generate(prompt, self.args.sample_tokens, temperature=0.8, top_k=50, seed=self.args.seed)
        text = self.data.tokenizer.decode(ids[0])
        self.log(f"sample ({self.args.sample_tokens} new tokens after a 32-token validation prompt):\n{text}")
        return text

    def close(self, wait_for_peers: bool = True) -> None:
        self.context.close(wait_for_peers)
        if self.plan is not None and self.plan.output_dir is not None and self.context.is_main:
            release_lock(self.plan.output_dir)  # another process may write the run now
