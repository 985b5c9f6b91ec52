"""`ten compare`: train several variants on the same data, seed and budget; tabulate and plot them.

Each variant is an ordinary `ten train` run (its own folder, metrics.jsonl and checkpoints), so
any of them can be resumed, sampled from or inspected on its own afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..architectures import mamba2_sizes_like
from ..atomic import atomic_write
from ..data.identity import DataIdentity
from ..flags import comma_list, command_line, flags_of
from ..lm import config_fields
from ..runs.folders import (
    CHECKPOINTS,
    any_in,
    check_writable,
    claim_run_dir,
    clear_earlier,
    holds_run,
    latest_run_dir,
)
from ..runs.lock import release_lock, take_lock
from ..runs.metrics_log import read_records
from ..training import TrainArguments, Trainer, TrainingDiverged
from ..training.arguments import AUTO_BATCH, MODEL_FIELDS
from ..training.plan import batch_shape, local_data, merge_resumed_arguments, model_plan, step_arguments
from ..training.trainer import lower_rate
from ..units import duration_text, tokens_text
from . import spread
from .figures import png

# name -> overrides of the shared arguments. The "+energy" variants keep the run's --energy_reg_weight
# (the preset's when not given); the others turn the energy loss off.
PLAIN_TEN = {"use_hten": False, "hten_scales": None}  # also on the presets that default to HTEN
VARIANTS: dict[str, dict[str, Any]] = {
    "ten": {**PLAIN_TEN, "energy_reg_weight": 0.0},
    "ten+energy": PLAIN_TEN,
    "hten": {"use_hten": True, "energy_reg_weight": 0.0},
    "hten+energy": {"use_hten": True},
    "transformer": {"model": "transformer"},
    "ten-nonselective": {**PLAIN_TEN, "selective": False, "energy_reg_weight": 0.0},
}
DEFAULT_VARIANTS = list(VARIANTS)
# The paper's ablation table, each against "full" (the run's settings, energy loss included); see
# temporal_eigenstate_networks/experiments/spread.py for the paper's figures.
# Each sets every part an ablation removes, so a flag given for all (--no_coupling) cannot silently change "full".
FULL = {**PLAIN_TEN, "selective": True, "output_gate": True, "coupling": True, "real_eigenvalues": False,
        "fixed_basis": False}  # fmt: skip
ABLATIONS: dict[str, dict[str, Any]] = {
    "full": FULL,
    "no-selective": {**FULL, "selective": False},
    "no-gate": {**FULL, "output_gate": False},
    "one-head": {**FULL, "num_heads": 1},  # one full K x K coupling
    "no-coupling": {**FULL, "coupling": False},
    "real-eigenvalues": {**FULL, "real_eigenvalues": True},
    "fixed-basis": {**FULL, "fixed_basis": True},
    "k32": {**FULL, "num_eigenstates": 32},
    "k128": {**FULL, "num_eigenstates": 128},
    "hten4": {**FULL, "use_hten": True, "hten_scales": [1, 2, 4, 8]},
}
VARIANTS.update(ABLATIONS)
# Hybrids (design section 10): one attention layer in four, full or over a window; energy off, as "ten".
HYBRIDS: dict[str, dict[str, Any]] = {
    "ten-hybrid": {**PLAIN_TEN, "layer_pattern": "eeea", "energy_reg_weight": 0.0},
    "ten-swa": {**PLAIN_TEN, "layer_pattern": "eeew", "energy_reg_weight": 0.0},
}
VARIANTS.update(HYBRIDS)
# The peer (transformers' Mamba-2, the hf extra), sized like this comparison's "ten" (variant_arguments).
VARIANTS["mamba2"] = {"model": "mamba2"}
SWITCHES = {
    "layer_pattern": "--layer_pattern",
    "model": "--model",
    "selective": "--no_selective",
    "output_gate": "--no_output_gate",
    "coupling": "--no_coupling",
    "real_eigenvalues": "--real_eigenvalues",
    "fixed_basis": "--fixed_basis",
}
GROUPS = {"ablations": list(ABLATIONS)}  # --variants ablations: the whole table


RESULTS = "results.json"  # also the comparison's record: its settings, variants and the rows so far
PLOT = "validation_loss.png"
SEEDS_PLOT = "seeds.png"  # several seeds: each variant's mean and spread
OUTPUTS = (RESULTS, "results.md", PLOT, SEEDS_PLOT)
DEFAULT_DIR = Path("runs/compare")
DONE = ("finished", "time_budget")  # a variant that ran its budget (time_budget: --tokens cut short by --time_budget)
INTERRUPTED = "interrupted"
DIVERGED = "diverged"  # kept as a row: the same settings would diverge again, and the other variants go on
BUDGET = ("max_steps", "epochs", "time_budget")


def parse_variants(text: str) -> list[str]:
    names = [name for part in comma_list(text) if part for name in GROUPS.get(part, [part])]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        given = ", ".join(unknown) or "(none given)"
        raise ValueError(f"--variants: unknown {given}; choose from {', '.join(VARIANTS)} or {', '.join(GROUPS)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"--variants: {', '.join(repeated)} given more than once; each variant runs once")
    return names


def run_key(name: str, seed: int, seeds: int) -> str:
    """A run's folder (and key) in the comparison: the variant's name, with its seed when there are several."""
    return name if seeds == 1 else f"{name}-seed{seed}"


def variant_arguments(
    base: TrainArguments, name: str, output_dir: Path, resume: bool = False, seed: int | None = None, seeds: int = 1
) -> TrainArguments:
    """The variant's `ten train` arguments: a fresh run in output_dir/<run key>, or (resume) its continuation."""
    seed = base.seed if seed is None else seed
    values = {**base.to_dict(), **VARIANTS[name], "seed": seed}
    if values["model"] == "mamba2" and values["expand"] is None and values["state_size"] is None:
        ten = model_plan(TrainArguments.from_dict({**base.to_dict(), **VARIANTS["ten"]})).config
        values.update(mamba2_sizes_like(ten))  # the sizes of the comparison's TEN, not only the preset's
    fields = config_fields(values["model"])
    values.update({key: None for key in MODEL_FIELDS if key not in fields})  # settings of another architecture
    folder = output_dir / run_key(name, seed, seeds)
    values.update(output_dir=str(folder), resume=str(folder) if resume else None, overwrite=not resume)
    return TrainArguments.from_dict(values)


def check_variants(base: TrainArguments, names: list[str], typed: set[str] = frozenset()) -> None:
    """Every variant's settings before any trains: a bad one fails now, not after hours of the others. A flag
    given for all variants that a variant sets itself would be silently overridden: refused."""
    for name in names:
        # Sizes (K, heads, scales, the energy weight) are the run's, which a variant may scale from; a switch
        # of the model's parts is the variant's own.
        overridden = sorted(typed & set(VARIANTS[name]) & set(SWITCHES))
        if overridden:
            raise ValueError(f"{SWITCHES[overridden[0]]} is what variant {name} sets: it cannot apply to every variant")
        args = variant_arguments(base, name, DEFAULT_DIR)
        try:
            args.validate()
            model_plan(args)
        except ValueError as err:  # the variant's own settings may be what a flag given for all contradicts
            raise ValueError(f"variant {name}: {err}") from None


# ---------------------------------------------------------------- where a comparison writes


@dataclass
class Comparison:
    base: TrainArguments
    names: list[str]
    folder: Path
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # resumed: the finished runs' rows, by run key
    seeds: int = 1  # runs per variant, at seeds base.seed, base.seed + 1, ...


def new_comparison(
    args: TrainArguments, variants: str, tokens: int | None, seeds: int = 1, typed: set[str] = frozenset()
) -> Comparison:
    """ten train's rule: an --output_dir that holds a comparison is refused unless --overwrite (which deletes
    it); without one, the first free runs/compare, runs/compare-2, ..."""
    names = parse_variants(variants)
    if (args.time_budget is None) == (tokens is None):
        raise ValueError("give the budget of each variant: --time_budget MINUTES or --tokens N (one of them)")
    base = args if tokens is None else dataclasses.replace(args, max_steps=token_budget_steps(tokens, args))
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {seeds!r}")
    check_variants(base, names, typed)
    if args.output_dir is None:
        folder = claim_run_dir(DEFAULT_DIR, writable="")
        say_lock_note(folder)
        return Comparison(base, names, folder, seeds=seeds)
    folder = Path(args.output_dir).expanduser()
    say_lock_note(folder)  # one comparison writes its folder: before --overwrite clears an earlier one
    runs = [p for p in folder.iterdir() if holds_run(p)] if folder.is_dir() else []
    earlier = [folder / n for n in OUTPUTS if (folder / n).exists()] + runs
    clear_earlier(folder, earlier, args.overwrite, what="comparison", reading=local_data(args))
    check_writable(folder)
    return Comparison(base, names, folder, seeds=seeds)


def resumed_comparison(
    args: TrainArguments, variants: str | None, tokens: int | None, typed: set[str], seeds: int | None = None
) -> Comparison:
    """The comparison in --resume PATH, --output_dir or the latest runs/compare[-N], with its saved settings and
    variants; `typed` (the flags given) may only repeat them, or change what a resumed `ten train` may change.
    `seeds` larger than the comparison's adds runs at the next seeds (a verdict too close to call wants more)."""
    if args.overwrite:
        raise ValueError("--resume keeps the finished variants and --overwrite deletes them: give one of the two")
    named = [Path(p).expanduser() for p in (args.resume, args.output_dir) if p]
    if len(named) == 2 and named[0].resolve() != named[1].resolve():
        raise ValueError(f"--resume {named[0]} and --output_dir {named[1]}: a comparison continues in its own folder")
    folder = named[0] if named else latest_run_dir(DEFAULT_DIR, marker=RESULTS, what="comparison")
    record = read_record(folder)
    say_lock_note(folder)
    saved = {k: v for k, v in record["settings"].items() if k not in ("resume", "overwrite", "output_dir")}
    before = TrainArguments.from_dict(saved)
    for name in sorted(typed & set(BUDGET)):
        if getattr(args, name) != getattr(before, name):
            raise ValueError(f"--{name} {getattr(args, name)} differs from the comparison's {getattr(before, name)}; "
                             "its variants keep the same budget")  # fmt: skip
    base = merge_resumed_arguments(saved, args, typed - {"resume", "output_dir", "overwrite"}, model_plan(before))
    if tokens is not None and token_budget_steps(tokens, base) != base.max_steps:
        raise ValueError(f"--tokens {tokens} differs from the comparison's budget; its variants keep the same budget")
    names, had = record["variants"], record.get("seeds", 1)
    if variants is not None and parse_variants(variants) != names:
        raise ValueError(f"--variants {variants} differs from the comparison's {','.join(names)}")
    seeds = had if seeds is None else seeds
    if seeds < had:
        raise ValueError(f"--seeds {seeds} is fewer than the comparison's {had}: its finished runs stay in it")
    if had == 1 and seeds > 1:  # its run folders are named without their seed
        raise ValueError(
            "a comparison of one seed names its runs without it, so it cannot take more: run a new one with --seeds"
        )
    done = {run_key(r["variant"], r.get("seed", base.seed), had): r for r in record["rows"]
            if r.get("status", "finished") in (*DONE, DIVERGED)}  # fmt: skip
    return Comparison(base, names, folder, done, seeds)


def run_command(args: TrainArguments, variants: str, tokens: int | None, seeds: int, typed: set[str]) -> None:
    """`ten compare`: a new comparison, or the one --resume names (where only the flags in `typed`, those the user
    gave, may change it); run it, then print its table and what was written."""
    settings_typed = typed & set(flags_of(TrainArguments))
    if args.batch_size == AUTO_BATCH:  # each variant would find its own: a comparison trains them all on one batch
        raise ValueError(
            "--batch_size auto is for ten train: the variants of a comparison differ in memory and train on one "
            "batch; give --batch_size N (and --tokens_per_step for the accumulation)"
        )
    if args.resume is not None:
        asked = variants if "variants" in typed else None
        more = seeds if "seeds" in typed else None  # more seeds: the comparison grows
        comparison = resumed_comparison(args, asked, tokens, settings_typed, more)
    else:
        comparison = new_comparison(args, variants, tokens, seeds, settings_typed)
    output = comparison.folder
    try:
        rows = run_comparison(comparison.base, comparison.names, output, comparison.done, comparison.seeds)
    finally:
        release_lock(output)
        with contextlib.suppress(OSError):
            output.rmdir()  # only if empty: a comparison whose first variant could not start leaves no folder
    written = ", ".join(name for name in OUTPUTS if (output / name).exists())
    print(f"\n{(output / 'results.md').read_text()}\nwritten: {output}/{written}")
    if rows[-1]["status"] == INTERRUPTED:
        print(resume_hint(output), file=sys.stderr)
    elif diverged := [r for r in rows if r["status"] == DIVERGED]:
        names = ", ".join(run_key(r["variant"], r["seed"], comparison.seeds) for r in diverged)
        lower = command_line(TrainArguments, learning_rate=lower_rate(diverged[0]["learning_rate"]))
        others = "; the table holds the others" if len(diverged) < len(rows) else ""
        raise TrainingDiverged(
            f"{names} diverged ({diverged[0]['reason']}){others}",
            f"a comparison trains its variants at one rate: run it again at a lower one, e.g. {lower}",
        )


def say_lock_note(folder: Path) -> None:
    """Take the comparison folder's lock (each variant's run takes its own too), and say what that did."""
    if note := take_lock(folder):
        print(note)


def read_record(folder: Path) -> dict[str, Any]:
    path = folder / RESULTS
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--resume: {folder} holds no comparison ({RESULTS}) to continue") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"--resume: cannot read {path}: {err}") from None
    if not isinstance(record, dict) or not {"settings", "variants", "rows"} <= record.keys():
        raise ValueError(f"--resume: {path} does not say which variants the comparison runs (an older ten wrote it)")
    return record


def resume_command(folder: Path) -> str:
    return f"ten compare --resume {folder}"


def resume_hint(folder: Path) -> str:
    return f"the comparison was interrupted; continue it with: {resume_command(folder)}"


# ---------------------------------------------------------------- running


def eval_curve(run_dir: Path) -> list[dict[str, float]]:
    return read_records(run_dir, event="eval")


def run_comparison(
    base: TrainArguments,
    names: list[str],
    output_dir: Path,
    done: dict[str, dict[str, Any]] | None = None,
    seeds: int = 1,
) -> list[dict[str, Any]]:
    """Train each variant at each seed in turn (runs in `done` are kept as they are) until all have run or one
    is interrupted (a signal: the trainer saves it and returns). Seed by seed, so that an interrupted comparison
    already holds every variant at the first seeds. The tables are rewritten after each run, the plot (a second
    or so) at the end."""
    done = done or {}
    rows: list[dict[str, Any]] = []
    runs = [(name, base.seed + i) for i in range(seeds) for name in names]
    try:
        for name, seed in runs:
            key = run_key(name, seed, seeds)
            if key in done:
                print(f"\n=== {key}: finished earlier, kept ===", flush=True)
                rows.append(done[key])
                continue
            print(f"\n=== {key} ===", flush=True)
            try:
                # An interrupted comparison left this run a checkpoint: continue from it.
                resume = any_in(output_dir / key / CHECKPOINTS)
                trainer = Trainer(variant_arguments(base, name, output_dir, resume, seed, seeds),
                                  tracker_group=tracker_group(output_dir),
                                  continued_by=resume_command(output_dir))  # fmt: skip
                write_record(rows, base, names, output_dir, seeds)  # --resume finds the comparison, even after a kill
                rows.append({**run_variant(trainer, name), "seed": seed})
            except TrainingDiverged as err:  # a row that says so; the comparison goes on with the others
                rows.append({"variant": name, "seed": seed, "status": DIVERGED, "reason": err.reason,
                             "learning_rate": trainer.plan.learning_rate})  # fmt: skip
            except KeyboardInterrupt:  # a second Ctrl-C, or one before the trainer listens: stop now, keep the table
                rows.append({"variant": name, "seed": seed, "status": INTERRUPTED})
                write_outputs(rows, base, output_dir, names, seeds=seeds)
                print(resume_hint(output_dir), file=sys.stderr)
                raise
            write_outputs(rows, base, output_dir, names, with_plot=False, seeds=seeds)  # a later kill keeps its rows
            if rows[-1]["status"] == INTERRUPTED:
                break
    except Exception:
        with contextlib.suppress(OSError):
            output_dir.rmdir()  # only if empty: a comparison whose first variant could not start leaves no folder
        raise
    write_plots(rows, output_dir, names, seeds)
    return rows


def tracker_group(folder: Path) -> str:
    """The group the --report_to trackers show a comparison's runs in: its folder's name, and a digest of where it
    is, so that two runs/compare of different projects stay apart and a resumed comparison keeps its group."""
    return f"{folder.name}-{hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:6]}"


def run_variant(trainer: Trainer, name: str) -> dict[str, Any]:
    """Train one variant (a new run, or the continuation of its interrupted one) and return its row."""
    try:
        result = trainer.train()
    except BaseException:
        trainer.close(wait_for_peers=False)  # as `ten train`: a peer may never arrive
        raise
    trainer.close()
    elapsed = trainer.state.elapsed_s
    # A run stopped by a signal has no final evaluation: it is marked, and --resume continues it.
    status = result.status if result.status in DONE and "val_ce" in result.eval else INTERRUPTED
    return {
        "variant": name, "status": status, "parameters": trainer.model.num_parameters(), "steps": result.step,
        "tokens": trainer.state.tokens_seen, "tokens_per_s": trainer.state.tokens_seen / max(elapsed, 1e-9),
        "wall_s": elapsed, **result.eval, "curve": eval_curve(trainer.output_dir),
        "data_changes": trainer.state.data_changes,  # --allow_data_change on --resume: the table says so
    }  # fmt: skip


# ---------------------------------------------------------------- reporting


def markdown_table(rows: list[dict[str, Any]]) -> str:
    best = min((r["val_ce"] for r in rows if "val_ce" in r), default=None)
    lines = [
        "| variant | parameters | val CE (nats) | bits/byte | perplexity | vs best | tokens/s | tokens | wall time "
        "| energy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    several_seeds = len({r.get("seed") for r in rows}) > 1
    for r in rows:
        r = {**r, "variant": r["variant"] + (f" (seed {r['seed']})" if several_seeds else "")}
        if "val_ce" not in r:  # interrupted or diverged: no final evaluation
            parameters = f"{r['parameters'] / 1e6:.2f} M" if "parameters" in r else "-"
            where = f" at step {r['steps']:,}" if "steps" in r else ""
            what = r["reason"] if r.get("status") == DIVERGED else f"interrupted{where}"
            lines.append(f"| {r['variant']} | {parameters} | {what} |" + " - |" * 7)
            continue
        bits = r.get("val_bits_per_byte", r["val_bits_per_token"])
        energy = f"{r['val_energy']:.3f}" if "val_energy" in r else "-"  # models without an energy loss
        lines.append(
            f"| {r['variant']} | {r['parameters'] / 1e6:.2f} M | {r['val_ce']:.4f} | {bits:.3f} | {r['val_ppl']:.2f} "
            f"| {100 * (r['val_ce'] / best - 1):+.1f}% | {r['tokens_per_s']:,.0f} | {tokens_text(r['tokens'])} "
            f"| {duration_text(r['wall_s'])} | {energy} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    with png(path, 1, 2, figsize=(12, 4.5)) as (_, (by_time, by_tokens)):
        for r in rows:
            curve = r.get("curve", [])
            label = r["variant"] + (" (interrupted)" if r.get("status") == INTERRUPTED else "")
            by_time.plot([c["elapsed_s"] / 60 for c in curve], [c["val_ce"] for c in curve], marker=".", label=label)
            by_tokens.plot([c["tokens"] / 1e6 for c in curve], [c["val_ce"] for c in curve], marker=".", label=label)
        for axis, label in ((by_time, "training time (minutes)"), (by_tokens, "tokens seen (millions)")):
            axis.set_xlabel(label)
            axis.set_ylabel("validation cross-entropy (nats/token)")
            axis.grid(alpha=0.3)
        by_time.legend()


def write_record(
    rows: list[dict[str, Any]], base: TrainArguments, names: list[str], output_dir: Path, seeds: int = 1
) -> None:
    settings = {k: v for k, v in base.to_dict().items() if v is not None}
    record = {"settings": settings, "variants": names, "seeds": seeds, "rows": rows}
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(output_dir / RESULTS, lambda path: path.write_text(json.dumps(record, indent=1) + "\n"))


def write_outputs(
    rows: list[dict[str, Any]],
    base: TrainArguments,
    output_dir: Path,
    names: list[str] | None = None,
    with_plot: bool = True,
    seeds: int = 1,
) -> None:
    names = names or list(dict.fromkeys(r["variant"] for r in rows))
    write_record(rows, base, names, output_dir, seeds)
    table = markdown_table(rows)
    finished = finished_runs(rows)
    if seeds > 1 and finished:  # mean and spread over the seeds, against the first variant
        table = spread.markdown(spread.summarize(finished), names[0]) + "\n" + table
    table += "".join(f"\n{line}\n" for line in data_change_lines(rows))
    atomic_write(output_dir / "results.md", lambda path: path.write_text(table))
    if with_plot:
        write_plots(rows, output_dir, names, seeds)


def data_change_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A line for each run that changed its data on a resume (--allow_data_change): its figures are not of one
    corpus, nor, against the runs that did not change, of the same one."""
    several_seeds = len({r.get("seed") for r in rows}) > 1
    lines = []
    for row in rows:
        name = row["variant"] + (f" (seed {row['seed']})" if several_seeds else "")
        for change in row.get("data_changes", ()):
            before, after = (DataIdentity.from_dict(change[key]) for key in ("before", "after"))
            described = f"from {before.describe()} to {after.describe()}" if before and after else "to other data"
            lines.append(f"{name}: its data changed at step {change['step']:,} (--allow_data_change), {described}.")
    return lines


def finished_runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "val_ce" in r and r.get("curve")]


def write_plots(rows: list[dict[str, Any]], output_dir: Path, names: list[str], seeds: int) -> None:
    plot(rows, output_dir / PLOT)
    finished = finished_runs(rows)
    if seeds > 1 and finished:  # each variant's mean and spread, against the first variant
        spread.plot(finished, names[0], output_dir / SEEDS_PLOT)


def token_budget_steps(tokens: int, base: TrainArguments) -> int:
    """--tokens as optimiser steps for the run's window and batch (the same for every variant)."""
    model = model_plan(base)
    args = step_arguments(base, model, set(), world_size=1)  # the accumulation --tokens_per_step sets
    seq_len, batch_size = batch_shape(args, model)
    return max(1, math.ceil(tokens / (seq_len * batch_size * args.gradient_accumulation)))
