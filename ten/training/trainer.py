"""The training loop, in one place: set up, then step, evaluate and checkpoint until done or stopped."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..baselines import TransformerConfig, TransformerLM
from ..config import PRESETS, TemporalEigenstateConfig
from ..data import DataError, WindowSampler, load_token_data
from ..lm import ARCHITECTURES, LanguageModel, load_config
from ..model import TemporalEigenstateNetwork
from .arguments import RESUMABLE_OVERRIDES, TrainArguments
from .checkpoint import (
    TrainerState,
    checkpoint_name,
    load_checkpoint,
    prune_step_checkpoints,
    read_trainer_state,
    save_checkpoint,
)
from .distributed import DistributedContext, weights_fingerprint
from .optimizer import build_optimizer
from .precision import Precision, resolve_precision
from .run_dirs import any_in, check_writable, default_run_dir, find_resume_checkpoint, latest_run_dir, next_free_run_dir
from .schedule import learning_rate_at

SHARED_OVERRIDES = ("max_seq_len", "d_model", "n_layers", "num_heads", "dropout")
TEN_OVERRIDES = ("use_hten", "hten_scales", "energy_reg_weight", "num_eigenstates", "selective", "scan_backend")
EVAL_SEED = 1234  # the same validation windows at every evaluation, so the figures compare
LOG_EVERY = 10
UNBOUNDED_EPOCHS = 1000
FIT_AFTER_STEPS = 10  # steps timed before fitting the schedule to a time budget
FIT_MARGIN = 0.95  # of the time left, leaving room for evaluations and the final checkpoint


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number."""


@dataclass
class RunResult:
    status: str  # finished | time_budget | stopped (SIGINT/SIGTERM)
    step: int
    checkpoint: Path | None
    eval: dict[str, float] = field(default_factory=dict)
    sample: str = ""


class LanguageModelingObjective(nn.Module):
    """forward = compute_loss, so DDP and torch.compile see the whole training computation as one call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.compute_loss(inputs, targets, return_dict=True)


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a request the loop honours at the next step boundary."""

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


def resolve_device(request: str, context: DistributedContext) -> torch.device:
    if request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    if request.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {request}: no CUDA GPU is available here (use --device cpu)")
    if request == "cuda":
        return torch.device("cuda", context.local_rank)
    return torch.device(request)


def build_model(args: TrainArguments, vocab_size: int) -> LanguageModel:
    """The --model architecture at the --config preset's size, with the command line's overrides."""
    shared = {name: getattr(args, name) for name in SHARED_OVERRIDES if getattr(args, name) is not None}
    if args.model == "transformer":
        given = [f"--{name}" for name in TEN_OVERRIDES if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to TEN, not to --model transformer")
        preset = PRESETS[args.config]
        values = {"d_model": preset.d_model, "n_layers": preset.n_layers, "max_seq_len": preset.max_seq_len, **shared}
        return TransformerLM(TransformerConfig(vocab_size=vocab_size, **values))
    ten_only = {name: getattr(args, name) for name in TEN_OVERRIDES if getattr(args, name) is not None}
    config = TemporalEigenstateConfig.from_preset(args.config, vocab_size=vocab_size, **shared, **ten_only)
    return TemporalEigenstateNetwork(config)


def window_length(args: TrainArguments) -> int:
    return args.max_seq_len or PRESETS[args.config].max_seq_len


def merge_resumed_arguments(saved: dict[str, Any], args: TrainArguments, explicit: set[str]) -> TrainArguments:
    """The saved run's arguments, with the few a resumed run may change taken from the command line."""
    merged = TrainArguments.from_dict(saved)
    for name in explicit:
        value, before = getattr(args, name), getattr(merged, name)
        if name in RESUMABLE_OVERRIDES:
            setattr(merged, name, value)
        elif value != before:
            raise ValueError(f"--{name} {value} differs from the resumed run's {before}; a resumed run keeps it")
    return merged


@torch.no_grad()
def evaluate(
    model: LanguageModel, sampler: WindowSampler, batches: int, precision: Precision, device: torch.device
) -> dict[str, float]:
    """Mean CE (nats/token) and raw energy over fixed validation windows; perplexity and bits."""
    was_training = model.training
    model.eval()
    ce = energy = 0.0
    for index in range(batches):
        inputs, targets = (t.to(device) for t in sampler.batch(index))
        with precision.autocast():
            out = model.compute_loss(inputs, targets, return_dict=True)
        ce += float(out["ce_loss"]) / batches
        energy += float(out.get("energy_loss", 0.0)) / batches
    model.train(was_training)
    return {"val_ce": ce, "val_ppl": math.exp(min(ce, 80.0)), "val_bits_per_token": ce / math.log(2),
            "val_energy": energy}  # fmt: skip


class Trainer:
    def __init__(self, args: TrainArguments, explicit: set[str] | None = None) -> None:
        """`explicit`: the settings the user gave (the CLI knows); None takes those that differ from the defaults."""
        args.validate()
        if explicit is None:
            defaults = TrainArguments()
            explicit = {name for name, value in vars(args).items() if value != getattr(defaults, name)}
        self.context = DistributedContext.from_environment(args.device)
        self.device = resolve_device(args.device, self.context)
        self.resume_from: Path | None = None
        self.saved_state: dict[str, Any] | None = None
        if args.resume is not None:
            target = args.resume or args.output_dir or self.context.broadcast(latest_run_dir(default_run_dir(args)))
            self.resume_from = find_resume_checkpoint(Path(target))
            self.saved_state = read_trainer_state(self.resume_from)
            args = merge_resumed_arguments(self.saved_state["args"], args, set(explicit))
            args.validate()
        elif args.output_dir is None:
            base = default_run_dir(args)
            args.output_dir = str(self.context.broadcast(next_free_run_dir(base)))
            if Path(args.output_dir) != base and not (args.dry_run or args.benchmark):
                self.log(f"{base} holds an earlier run; this one goes to {args.output_dir}")
        self.args = args
        self.explicit = set(explicit)
        self.output_dir = Path(args.output_dir).expanduser()
        self.checkpoint_dir = self.output_dir / "checkpoints"
        if self.context.is_main and not (args.dry_run or args.benchmark):
            if self.resume_from is None:
                self.claim_output_dir()
            check_writable(self.checkpoint_dir)
        torch.manual_seed(args.seed)

    # ------------------------------------------------------------------ set-up

    def claim_output_dir(self) -> None:
        """A new run never writes over an earlier one unless told to: that would lose its checkpoints."""
        earlier = [p for p in (self.checkpoint_dir, self.output_dir / "metrics.jsonl") if p.is_file() or any_in(p)]
        if earlier and not self.args.overwrite:  # only an explicit --output_dir can point at an earlier run
            raise ValueError(
                f"--output_dir {self.output_dir} holds an earlier run: continue it with --resume, "
                "start over with --overwrite, or choose another --output_dir"
            )
        for path in earlier:
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    def log(self, message: str) -> None:
        if self.context.is_main:
            tqdm.write(message)

    def record(self, **values: Any) -> None:
        """One line of output_dir/metrics.jsonl (rank 0 only)."""
        if self.context.is_main and not self.args.dry_run:
            with (self.output_dir / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(values) + "\n")

    def load_data(self) -> None:
        args = self.args
        if self.resume_from is not None:
            self.seq_len = load_config(self.resume_from / "config.json")[1].max_seq_len
        else:
            self.seq_len = window_length(args)
        max_tokens = None if args.subset_size is None else args.subset_size * self.seq_len + 1
        tokenized = Path(args.tokenized_dir) if args.tokenized_dir else None
        self.data = load_token_data(
            args.dataset, args.tokenizer, max_train_tokens=max_tokens, streaming=args.streaming, tokenized_dir=tokenized
        )
        for split, tokens in (("training", self.data.train), ("validation", self.data.val)):
            if len(tokens) < self.seq_len + 1:
                raise DataError(
                    f"the {split} split of {args.dataset!r} has {len(tokens):,} tokens, fewer than one window of "
                    f"{self.seq_len + 1}; give a longer corpus or a smaller --max_seq_len"
                )

    def build(self) -> None:
        args = self.args
        if self.resume_from is not None:
            architecture, config = load_config(self.resume_from / "config.json")
            model = ARCHITECTURES[architecture](config)
        else:
            model = build_model(args, self.data.tokenizer.vocab_size)
        if model.config.vocab_size < self.data.tokenizer.vocab_size:
            raise ValueError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's")
        self.model = model.to(self.device)
        self.model.gradient_checkpointing = args.gradient_checkpointing
        self.precision = resolve_precision(args.mixed_precision, self.device)
        self.scaler = self.precision.grad_scaler()
        self.learning_rate = args.learning_rate or PRESETS[args.config].learning_rate
        self.optimizer = build_optimizer(self.model, self.learning_rate, args.weight_decay, args.use_8bit_optim)
        self.batch_size = args.batch_size or PRESETS[args.config].batch_size
        self.state = TrainerState(args=args.to_dict())
        if self.resume_from is not None:
            self.state = load_checkpoint(self.resume_from, self.model, self.optimizer)
            self.state.args = args.to_dict()
            if self.state.scaler:
                self.scaler.load_state_dict(self.state.scaler)
        self.tokens_per_step = self.batch_size * self.seq_len * args.gradient_accumulation * self.context.world_size
        self.steps_per_epoch = max(1, len(self.data.train) // self.tokens_per_step)
        epochs = args.epochs
        if args.time_budget and "epochs" not in self.explicit:
            epochs = UNBOUNDED_EPOCHS  # the budget decides the length (the schedule is fitted to it)
        self.total_steps = args.max_steps or max(1, math.ceil(epochs * self.steps_per_epoch))
        if self.state.total_steps and not args.max_steps:
            self.total_steps = self.state.total_steps  # fitted to the time budget of the run being resumed
        self.set_warmup()
        self.train_sampler = WindowSampler(
            self.data.train, self.seq_len, self.batch_size, seed=args.seed, rank=self.context.rank
        )
        self.eval_sampler = WindowSampler(self.data.val, self.seq_len, self.batch_size, seed=EVAL_SEED)
        self.objective: nn.Module = LanguageModelingObjective(self.model)
        if self.context.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.objective = nn.parallel.DistributedDataParallel(self.objective, device_ids=device_ids)
        self.objective = self.maybe_compile(self.objective)

    def set_warmup(self) -> None:
        self.warmup_steps = min(self.args.warmup_steps, self.total_steps // 5)  # a short run still decays

    def fit_schedule_to_budget(self, seconds_per_step: float, seconds_left: float) -> None:
        """With --time_budget and no --max_steps, the cosine schedule spans the steps the budget allows."""
        fitted = self.state.step + int(FIT_MARGIN * seconds_left / seconds_per_step)
        if fitted < self.total_steps:
            self.total_steps = self.state.total_steps = max(fitted, self.state.step + 1)
            self.set_warmup()
            self.log(f"time budget: about {self.total_steps:,} steps fit; the schedule now ends there")

    def maybe_compile(self, module: nn.Module) -> nn.Module:
        if not self.args.compile or self.args.dry_run:
            return module
        if self.device.type != "cuda":
            self.log("torch.compile: skipped on CPU, where it does not speed these complex-valued kernels up")
            return module
        try:
            return torch.compile(module)
        except Exception as err:  # noqa: BLE001  (any backend failure means: run eagerly)
            self.log(f"torch.compile: unavailable here ({type(err).__name__}); running eagerly")
            return module

    def describe(self) -> None:
        args, model = self.args, self.model
        self.log(model.summary())
        threads = f" ({torch.get_num_threads()} threads)" if self.device.type == "cpu" else ""
        world = f" x {self.context.world_size} processes" if self.context.enabled else ""
        self.log(f"device: {self.device}{threads}{world}   precision: {self.precision.name}")
        if self.precision.note:
            self.log(self.precision.note)
        self.log(f"data: {self.data.description}")
        unbounded = self.total_steps >= UNBOUNDED_EPOCHS * self.steps_per_epoch
        by_budget = args.time_budget and not args.max_steps and unbounded
        steps = f"as many as {args.time_budget:g} minutes allow" if by_budget else f"{self.total_steps:,}"
        self.log(
            f"steps: {steps} ({self.steps_per_epoch:,} per epoch), "
            f"{self.tokens_per_step:,} tokens per step = batch {self.batch_size} x seq {self.seq_len} "
            f"x accumulation {args.gradient_accumulation}{world}; "
            f"lr {self.learning_rate:g}, warm-up {self.warmup_steps}, cosine to {args.min_lr_ratio:g} x lr"
        )
        if args.num_workers:
            self.log("note: batches are slices of an in-memory token array, so --num_workers has nothing to do")
        if self.resume_from is not None:
            self.log(f"resuming from {self.resume_from} at step {self.state.step:,}")

    # ------------------------------------------------------------------ modes

    def dry_run(self) -> dict[str, float]:
        """Summary, then the loss of a few real windows, without training."""
        self.load_data()
        self.build()
        self.describe()
        sampler = WindowSampler(self.data.train, self.seq_len, self.args.dry_samples, seed=self.args.seed)
        inputs, targets = (t.to(self.device) for t in sampler.batch(0))
        with torch.no_grad(), self.precision.autocast():
            out = self.model.compute_loss(inputs, targets, return_dict=True)
        values = {k: float(v) for k, v in out.items()}
        self.log(
            f"dry run on {self.args.dry_samples} windows of {self.seq_len} tokens: ce_loss {values['ce_loss']:.4f}  "
            f"energy_loss {values.get('energy_loss', 0.0):.4f} (raw)  loss {values['loss']:.4f} "
            f"(= ce + {self.model.aux_loss_weight:g} x energy)"
        )
        return values

    def benchmark(self, steps: int = 10, new_tokens: int = 64) -> dict[str, float]:
        """Speed of this configuration on this device: training steps and per-token generation, nothing saved."""
        self.load_data()
        self.build()
        self.describe()
        for _ in range(2):  # warm-up: allocator, kernels, compilation
            self.train_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.train_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        step_s = (time.perf_counter() - start) / steps
        prompt = torch.as_tensor(self.data.val[:64].astype("int64"), device=self.device).unsqueeze(0)
        self.model.generate(prompt, 4, temperature=0)
        start = time.perf_counter()
        self.model.generate(prompt, new_tokens, temperature=0)
        generate_s = time.perf_counter() - start
        start = time.perf_counter()
        self.model.generate(prompt, 0, temperature=0)
        per_token_ms = 1e3 * (generate_s - (time.perf_counter() - start)) / new_tokens
        results = {"step_ms": 1e3 * step_s, "tokens_per_s": self.tokens_per_step / step_s,
                   "generate_ms_per_token": per_token_ms}  # fmt: skip
        if self.device.type == "cuda":
            results["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.log("benchmark: " + "  ".join(f"{k} {v:,.2f}" for k, v in results.items()))
        return results

    def train(self) -> RunResult:
        self.load_data()
        self.build()
        self.describe()
        self.record(event="start", step=self.state.step, total_steps=self.total_steps,
                    fingerprint=weights_fingerprint(self.model), world_size=self.context.world_size)  # fmt: skip
        with StopRequest() as stop:
            status = self.loop(stop)
        return self.finish(status)

    # ------------------------------------------------------------------ the loop

    def train_step(self) -> list[float]:
        """One optimiser step over `gradient_accumulation` micro-batches; returns loss, ce, energy, grad norm."""
        args, step = self.args, self.state.step
        totals = torch.zeros(3, device=self.device)
        for micro in range(args.gradient_accumulation):
            inputs, targets = self.train_sampler.batch(step * args.gradient_accumulation + micro)
            inputs, targets = inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
            last = micro == args.gradient_accumulation - 1
            no_sync = self.objective.no_sync() if self.context.enabled and not last else contextlib.nullcontext()
            with no_sync, self.precision.autocast():
                out = self.objective(inputs, targets)
            with no_sync:
                self.scaler.scale(out["loss"] / args.gradient_accumulation).backward()
            energy = out.get("energy_loss", torch.zeros_like(out["loss"]))  # models without one: 0
            parts = torch.stack([out["loss"], out["ce_loss"], energy]).detach().float()
            totals += parts / args.gradient_accumulation
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.grad_clip or float("inf"))
        values = self.context.mean(torch.cat([totals, norm.reshape(1).float()])).tolist()
        if not math.isfinite(values[0]):
            raise TrainingDiverged(
                f"the loss became {values[0]} at step {step + 1} (ce {values[1]}, energy {values[2]}); "
                "lower --learning_rate or use --mixed_precision no; the last good checkpoint is kept"
            )
        lr = learning_rate_at(step, self.learning_rate, self.total_steps, self.warmup_steps, args.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        return [*values, lr]

    def loop(self, stop: StopRequest) -> str:
        args = self.args
        budget_s = args.time_budget * 60 if args.time_budget else math.inf
        start = time.perf_counter()
        elapsed_before = self.state.elapsed_s
        bar = tqdm(total=self.total_steps, initial=self.state.step, disable=not self.context.is_main,
                   dynamic_ncols=True, desc="train", unit="step")  # fmt: skip
        rate = None
        status = "finished"
        fit = args.time_budget is not None and not args.max_steps and not self.state.total_steps
        first_step = self.state.step
        while self.state.step < self.total_steps:
            step_start = time.perf_counter()
            loss, ce, energy, grad_norm, lr = self.train_step()
            now = time.perf_counter()
            self.state.elapsed_s = elapsed_before + now - start
            speed = self.tokens_per_step / (now - step_start)
            rate = speed if rate is None else 0.9 * rate + 0.1 * speed
            postfix = {"loss": f"{loss:.4f}", "ce": f"{ce:.4f}", "energy": f"{energy:.3f}", "lr": f"{lr:.2e}",
                       "tok/s": f"{rate:,.0f}"}  # fmt: skip
            if args.hourly_rate is not None:
                postfix["cost"] = f"${args.hourly_rate * self.state.elapsed_s / 3600:.2f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update()
            step = self.state.step
            if fit and step - first_step == FIT_AFTER_STEPS:
                self.fit_schedule_to_budget((now - start) / FIT_AFTER_STEPS, budget_s - (now - start))
                bar.total = self.total_steps
            if step % LOG_EVERY == 0 or step == 1:
                self.record(event="train", step=step, tokens=self.state.tokens_seen, loss=loss, ce=ce, energy=energy,
                            lr=lr, grad_norm=grad_norm, tokens_per_s=rate, elapsed_s=self.state.elapsed_s)  # fmt: skip
            if step % args.eval_steps == 0 and step < self.total_steps:
                self.evaluate_and_keep_best()
            if step % args.save_steps == 0 and step < self.total_steps:
                self.save(checkpoint_name(step))
            out_of_time = now - start >= budget_s
            if self.context.any(stop.reason is not None or out_of_time, self.device):
                status = "time_budget" if out_of_time and stop.reason is None else "stopped"
                self.log(f"{stop.reason or 'time budget reached'}: stopping at step {step:,}")
                break
        bar.close()
        return status

    # ------------------------------------------------------------------ evaluation, checkpoints, the end

    def evaluate_and_keep_best(self) -> dict[str, float]:
        metrics = evaluate(self.model, self.eval_sampler, self.args.eval_batches, self.precision, self.device)
        if self.data.tokenizer.name == "byte":
            metrics["val_bits_per_byte"] = metrics["val_bits_per_token"]
        self.record(event="eval", step=self.state.step, tokens=self.state.tokens_seen, elapsed_s=self.state.elapsed_s,
                    **metrics)  # fmt: skip
        bpb = f"  bits/byte {metrics['val_bits_per_byte']:.3f}" if "val_bits_per_byte" in metrics else ""
        self.log(
            f"step {self.state.step:,}: validation ce {metrics['val_ce']:.4f}  ppl {metrics['val_ppl']:.2f}{bpb}  "
            f"energy {metrics['val_energy']:.3f}"
        )
        best = self.state.best_val_loss
        if best is None or metrics["val_ce"] < best:
            self.state.best_val_loss = metrics["val_ce"]
            self.save("best", prune=False)
        return metrics

    def save(self, name: str, prune: bool = True) -> Path | None:
        """Rank 0 writes; every rank waits, so no rank runs ahead of a checkpoint that may be resumed."""
        path = None
        if self.context.is_main:
            self.state.scaler = self.scaler.state_dict() if self.scaler.is_enabled() else {}
            path = save_checkpoint(self.checkpoint_dir / name, self.model, self.optimizer, self.state,
                                   self.data.tokenizer)  # fmt: skip
            if prune:
                prune_step_checkpoints(self.checkpoint_dir, self.args.keep_checkpoints)
        self.context.barrier()
        return path

    def finish(self, status: str) -> RunResult:
        metrics: dict[str, float] = {}
        if status == "stopped":  # a signal: save at once (a preempted job has seconds, not an evaluation's minutes)
            path = self.save(checkpoint_name(self.state.step))
        else:
            metrics = self.evaluate_and_keep_best()
            path = self.save("final" if status == "finished" else checkpoint_name(self.state.step))
        fingerprints = self.context.gather_floats(weights_fingerprint(self.model))
        self.record(event="end", status=status, step=self.state.step, fingerprints=fingerprints, **metrics)
        if len(set(fingerprints)) > 1:
            raise RuntimeError(f"data-parallel ranks ended with different weights: {fingerprints}")
        sample = self.sample() if self.context.is_main and self.args.sample_tokens and metrics else ""
        if path is not None:
            resume = "" if status == "finished" else f"; continue with: ten train --resume {self.output_dir}"
            self.log(f"checkpoint: {path}{resume}")
        return RunResult(status, self.state.step, path, metrics, sample)

    def sample(self) -> str:
        prompt = torch.as_tensor(self.data.val[:32].astype("int64"), device=self.device).unsqueeze(0)
        ids = self.model.generate(prompt, self.args.sample_tokens, temperature=0.8, top_k=50, seed=self.args.seed)
        text = self.data.tokenizer.decode(ids[0])
        self.log(f"sample ({self.args.sample_tokens} new tokens after a 32-token validation prompt):\n{text}")
        return text

    def close(self, wait_for_peers: bool = True) -> None:
        self.context.close(wait_for_peers)
