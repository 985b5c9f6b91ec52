"""The `ten` command. Every subcommand's flags live here; the work lives in the library.

A user's mistake ends in one line on stderr and exit code 2; set TEN_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from .experiments.compare import DEFAULT_VARIANTS, VARIANTS
from .flags import add_flags, float_list, integer_list, non_negative_float, positive, random_seed
from .training.arguments import MODES, TrainArguments


class UserError(Exception):
    """A mistake in what the user asked for: reported in one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is one `--help` away), and no abbreviations.

    An abbreviated flag (--max_step for --max_steps) would be parsed, but not seen by `explicit_flags`, so a
    resumed run would ignore it: every flag must be typed in full.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------- ten train


def add_train_flags(parser: argparse.ArgumentParser, modes: bool = True) -> None:
    """The flags of TrainArguments' fields. `modes`: offer --dry_run and --benchmark (`ten compare` trains, so it
    has neither)."""
    add_flags(parser, TrainArguments, leave_out=() if modes else (MODES,))


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the flags the user typed (so a resumed run knows what was asked to change)."""
    typed = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
    return {a.dest for a in parser._actions if typed.intersection(a.option_strings)}


def cmd_train(args: argparse.Namespace, explicit: set[str]) -> None:
    from .training import Trainer
    from .training.modes import benchmark, dry_run

    values = {k: v for k, v in vars(args).items() if k not in ("command", "run")}
    trainer = Trainer(TrainArguments.from_dict(values), explicit)  # cleans up after itself if it fails
    try:
        if args.dry_run:
            dry_run(trainer)
        elif args.benchmark:
            benchmark(trainer)
        else:
            trainer.train()
    except BaseException:
        trainer.close(wait_for_peers=False)  # a peer may never arrive: do not wait for it
        raise
    trainer.close()


# ---------------------------------------------------------------- ten generate, ten prepare


def cmd_generate(args: argparse.Namespace, explicit: set[str]) -> None:
    import torch

    from .data import model_tokenizer
    from .device import resolve_device
    from .runs.checkpoint import load_model
    from .runs.lookup import find_checkpoint

    checkpoint = find_checkpoint(Path(args.checkpoint))
    device = resolve_device(args.device)
    model = load_model(checkpoint, device).eval()
    tokenizer = model_tokenizer(checkpoint, model.config.vocab_size)
    prompt = tokenizer.encode(args.prompt)
    if len(prompt) == 0:
        raise UserError("--prompt must not be empty")
    ids = torch.as_tensor(prompt.astype("int64"), device=device).unsqueeze(0)
    out = model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed)  # fmt: skip
    print(tokenizer.decode(out[0]))


def cmd_export(args: argparse.Namespace, explicit: set[str]) -> None:
    from .hf import transformers_problem
    from .runs.lookup import find_checkpoint

    if problem := transformers_problem():
        raise UserError(problem)
    from .hf.export import export_hf

    destination = export_hf(find_checkpoint(Path(args.checkpoint)), Path(args.hf), overwrite=args.overwrite)
    print(f"wrote {destination}: AutoModelForCausalLM.from_pretrained({str(destination)!r}, trust_remote_code=True)")


def cmd_prepare(args: argparse.Namespace, explicit: set[str]) -> None:
    from .data import prepare_token_files

    meta = prepare_token_files(args.dataset, args.tokenizer, Path(args.output_dir), streaming=args.streaming,
                               max_train_tokens=args.max_train_tokens)  # fmt: skip
    print(
        f"wrote {args.output_dir}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} validation tokens "
        f"({meta['dtype']}, vocabulary {meta['vocab_size']:,}); train with --tokenized_dir {args.output_dir}"
    )


def cmd_compare(args: argparse.Namespace, explicit: set[str]) -> None:
    from .experiments.compare import (
        INTERRUPTED,
        OUTPUTS,
        new_comparison,
        resume_hint,
        resumed_comparison,
        run_comparison,
    )

    values = {k: v for k, v in vars(args).items() if k not in ("command", "run", "variants", "tokens", "seeds")}
    train_args = TrainArguments.from_dict(values)
    if args.resume is not None:
        variants = args.variants if "variants" in explicit else None
        seeds = args.seeds if "seeds" in explicit else None  # more seeds: the comparison grows
        comparison = resumed_comparison(train_args, variants, args.tokens, explicit & set(values), seeds)
    else:
        comparison = new_comparison(train_args, args.variants, args.tokens, args.seeds, explicit & set(values))
    output = comparison.folder
    rows = run_comparison(comparison.base, comparison.names, output, comparison.done, comparison.seeds)
    written = ", ".join(name for name in OUTPUTS if (output / name).exists())
    print(f"\n{(output / 'results.md').read_text()}\nwritten: {output}/{written}")
    if rows[-1]["status"] == INTERRUPTED:
        print(resume_hint(output), file=sys.stderr)


def cmd_bench(args: argparse.Namespace, explicit: set[str]) -> None:
    from .device import resolve_device
    from .experiments.bench import BenchSettings, growth, markdown, parse_lengths, run_bench, write_outputs
    from .runs.folders import check_writable

    device = str(resolve_device(args.device))
    output = Path(args.output_dir)
    settings = BenchSettings(
        d_model=args.d_model, n_layers=args.n_layers, num_eigenstates=args.num_eigenstates,
        lengths=parse_lengths(args.lengths), contexts=parse_lengths(args.contexts, "--contexts"),
        decode_batches=parse_lengths(args.decode_batches, "--decode_batches"),
        tokens_per_batch=args.tokens_per_batch,
        new_tokens=args.new_tokens, reps=args.reps, max_step_seconds=args.max_step_seconds, device=device,
        dtype=args.dtype,
    )  # fmt: skip
    check_writable(output)  # before any measuring (and after the flags): a folder that cannot be written loses it all
    results = run_bench(settings)
    write_outputs(results, output)
    exponents = {name: growth(results, name, "forward_peak_mib_b1") for name in ("ten", "transformer")}
    print("\n" + markdown(results))
    if measured := [f"{n} p = {e:.2f}" for n, e in exponents.items() if e is not None]:  # two lengths or more
        print("forward peak memory ~ T^p: " + ", ".join(measured))
    print(f"written: {output}/bench.md, bench.json, bench_scaling.png")


def cmd_synthetic(args: argparse.Namespace, explicit: set[str]) -> None:
    import dataclasses

    from .device import resolve_device
    from .experiments.synthetic import GridSettings, plan_grid, run_synthetic

    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(GridSettings)}
    grid = plan_grid(GridSettings(**{**values, "variants": [v.strip() for v in args.variants.split(",")]}))
    device = resolve_device(args.device)
    output = Path(args.output_dir or f"runs/synthetic-{args.task}")
    table = run_synthetic(grid, device, output, log=lambda line: print(line, flush=True))
    print("\n" + table + f"\nwritten: {output}/results.md, results.json, accuracy.png")


def cmd_positions(args: argparse.Namespace, explicit: set[str]) -> None:
    from .device import resolve_device
    from .experiments.positions import run_positions

    device = resolve_device(args.device)
    output = Path(args.output_dir)
    table = run_positions(args.checkpoint, args.dataset, args.tokenizer, args.length, args.sequences, args.batch_size,
                          device, output, log=print)  # fmt: skip
    print("\n" + table + f"\nwritten: {output}/positions.md, positions.json, positions.png")


def cmd_analyze(args: argparse.Namespace, explicit: set[str]) -> None:
    from .device import resolve_device
    from .experiments.analyze import run_analysis

    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output_dir {output} is a file")
    device = resolve_device(args.device)
    title, table, pictures = run_analysis(Path(args.checkpoint), args.dataset, args.tokenizer, args.length,
                                          args.sequences, device, output)  # fmt: skip
    print(f"{title}\n\n{table}\n\nwritten: {output}/analysis.md, analysis.json, {', '.join(pictures)}")


def cmd_eval(args: argparse.Namespace, explicit: set[str]) -> None:
    import json

    from .atomic import WriteError, atomic_open, write_failure
    from .device import resolve_device
    from .hf import evaluate as harness
    from .runs.lookup import find_checkpoint

    tasks = harness.parse_tasks(args.tasks)  # before anything slow: a misspelt task fails at once
    checkpoint = find_checkpoint(Path(args.checkpoint))
    device = str(resolve_device(args.device))
    results = harness.evaluate(checkpoint, tasks, limit=args.limit, batch_size=args.batch_size, device=device,
                               max_length=args.max_length)  # fmt: skip
    rows = harness.metric_rows(results)
    print(f"\n{checkpoint}" + (f" (at most {args.limit} documents per task)" if args.limit else ""))
    print(harness.format_table(rows))
    validation = harness.ten_validation(checkpoint)
    if validation is not None:
        print("\n" + "\n".join(harness.comparison_lines(validation, rows)))
    if args.output:
        try:
            with atomic_open(Path(args.output)) as handle:
                handle.write((json.dumps(results, indent=2, default=str) + "\n").encode("utf-8"))
        except OSError as err:
            raise WriteError(f"cannot write --output {args.output}: {write_failure(err)}") from err
        print(f"written: {args.output}")


# ---------------------------------------------------------------- the parser and main


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ten", description="Temporal Eigenstate Networks: train, sample, measure")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    train = commands.add_parser("train", help="train a model (on Shakespeare by default)")
    add_train_flags(train)
    train.set_defaults(run=cmd_train)

    generate = commands.add_parser("generate", help="sample text from a checkpoint")
    generate.add_argument("--checkpoint", required=True, help="a checkpoint folder or a run's --output_dir")
    generate.add_argument("--prompt", default="\n")
    generate.add_argument("--max_new_tokens", type=int, default=200)
    generate.add_argument("--temperature", type=non_negative_float, default=0.8, help="0 is greedy")
    generate.add_argument("--top_k", type=positive(int))
    generate.add_argument("--top_p", type=positive(float))
    generate.add_argument("--seed", type=random_seed)
    generate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    generate.set_defaults(run=cmd_generate)

    compare = commands.add_parser("compare", help="train variants on the same data and budget; table and plot")
    add_train_flags(compare, modes=False)
    compare.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                         help=f"comma-separated, from: {', '.join(VARIANTS)}; or 'ablations', the paper's table "
                              f"(default: {','.join(DEFAULT_VARIANTS)})")  # fmt: skip
    compare.add_argument("--tokens", type=positive(int), help="training tokens per variant (instead of --time_budget)")
    compare.add_argument("--seeds", type=positive(int), default=1,
                         help="runs per variant (--seed, --seed + 1, ...): table: mean and spread; "
                              "with --resume, more seeds for every variant")  # fmt: skip
    compare.set_defaults(run=cmd_compare)

    bench = commands.add_parser("bench", help="TEN vs the transformer baseline: time, memory, generation")
    bench.add_argument("--d_model", type=positive(int), default=512)
    bench.add_argument("--n_layers", type=positive(int), default=4)
    bench.add_argument("--num_eigenstates", type=positive(int), default=64)
    bench.add_argument("--lengths", default="256,512,1024,2048,4096,8192,16384", help="sequence lengths T")
    bench.add_argument("--tokens_per_batch", type=positive(int), default=8192, help="batch = this / T (at least 1)")
    bench.add_argument("--contexts", default="128,1024,8192", help="contexts for per-token generation time")
    bench.add_argument("--decode_batches", default="1", help="batch sizes for generation time, e.g. 1,16")
    bench.add_argument("--new_tokens", type=positive(int), default=32)
    bench.add_argument("--reps", type=positive(int), default=3)
    bench.add_argument("--max_step_seconds", type=positive(float), default=60.0, help="stop growing T past this")
    bench.add_argument("--dtype", choices=["float32", "bf16", "fp16"], default="float32", help="autocast dtype")
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    bench.add_argument("--output_dir", default="runs/bench")
    bench.set_defaults(run=cmd_bench)

    export = commands.add_parser("export", help="a folder transformers loads on its own (trust_remote_code)")
    export.add_argument("--checkpoint", required=True, help="a checkpoint folder or a run's --output_dir")
    export.add_argument("--hf", required=True, metavar="DIR", help="the folder to write")
    export.add_argument("--overwrite", action="store_true", help="replace DIR if it is not empty")
    export.set_defaults(run=cmd_export)

    evaluate = commands.add_parser("eval", help="lm-evaluation-harness on a model folder, with ten's local tasks")
    evaluate.add_argument(
        "--checkpoint",
        required=True,
        help="a folder transformers loads (an exported model, a checkpoint) or a run's --output_dir",
    )
    evaluate.add_argument(
        "--tasks",
        default="ten_shakespeare_ppl,ten_shakespeare_mc",
        help="comma-separated, from: ten_shakespeare_ppl, ten_shakespeare_mc (default: both)",
    )
    evaluate.add_argument("--limit", type=positive(int), help="at most N documents per task")
    evaluate.add_argument("--batch_size", type=positive(int), default=1)
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument(
        "--max_length", type=positive(int), help="the harness's context window (default: the model config's)"
    )
    evaluate.add_argument("--output", help="write lm-eval's results as JSON to this file")
    evaluate.set_defaults(run=cmd_eval)

    synthetic = commands.add_parser("synthetic", help="recall tasks (MQAR, selective copying, induction heads)")
    synthetic.add_argument("--task", required=True, choices=["mqar", "selective_copying", "induction_heads"])
    synthetic.add_argument(
        "--variants",
        default="ten,hten,transformer",
        help="comma-separated, from: ten, ten-noselective, hten, transformer, ten-hybrid (ea), ten-swa (ew)",
    )
    synthetic.add_argument("--d_models", type=integer_list, default=[64], help="widths, e.g. 64,128,256")
    synthetic.add_argument("--lengths", type=integer_list, help="training lengths (default: the task's)")
    synthetic.add_argument("--test_lengths", type=integer_list, help="test lengths (default: the training length; "
                           "induction_heads: 64 ... 64x)")  # fmt: skip
    synthetic.add_argument(
        "--learning_rates", type=float_list, default=[1e-3, 3e-3], help="the sweep: each cell reports its best rate"
    )
    synthetic.add_argument("--steps", type=positive(int), default=400)
    synthetic.add_argument("--batch_size", type=positive(int), default=32)
    synthetic.add_argument("--test_examples", type=positive(int), default=256)
    synthetic.add_argument("--vocab_size", type=positive(int), help="the task's data vocabulary")
    synthetic.add_argument("--num_kv_pairs", type=positive(int), help="MQAR (default: Zoology's for the length)")
    synthetic.add_argument("--num_tokens", type=positive(int), help="selective copying: tokens to copy")
    synthetic.add_argument("--num_eigenstates", type=positive(int), help="TEN/HTEN (default: d_model)")
    synthetic.add_argument("--num_heads", type=positive(int))
    synthetic.add_argument("--selective_range", type=non_negative_float, help="TEN's |da|, |dw| bound (default 0.1)")
    synthetic.add_argument("--n_layers", type=positive(int), help="default 2")
    synthetic.add_argument("--layer_pattern", help="TEN variants' layers: e, h, a (attention), w (window), e.g. ea")
    synthetic.add_argument("--attention_window", type=positive(int), help="w layers' window (default 256)")
    synthetic.add_argument("--attention_heads", type=positive(int), help="a/w layers' heads (default d_model / 64)")
    synthetic.add_argument("--mlp", action="store_true", help="keep an MLP in each block (default: mixers only)")
    synthetic.add_argument("--paper", action="store_true", help="the papers' settings (for a GPU)")
    synthetic.add_argument("--seed", type=random_seed, default=0)
    synthetic.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    synthetic.add_argument("--output_dir", help="default: runs/synthetic-TASK")
    synthetic.set_defaults(run=cmd_synthetic)

    positions = commands.add_parser("positions", help="validation loss by position, past the training length")
    positions.add_argument(
        "--checkpoint", action="append", required=True, help="a checkpoint or run folder (repeat for several models)"
    )
    positions.add_argument("--dataset", default="shakespeare")
    positions.add_argument("--tokenizer", default="byte")
    positions.add_argument("--length", type=positive(int), default=4096, help="window length (tokens)")
    positions.add_argument("--sequences", type=positive(int), default=16, help="windows to average over")
    positions.add_argument("--batch_size", type=positive(int), default=1)
    positions.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    positions.add_argument("--output_dir", default="runs/positions")
    positions.set_defaults(run=cmd_positions)

    analyze = commands.add_parser("analyze", help="a TEN checkpoint's eigenvalues, timescales, coupling and energy")
    analyze.add_argument("--checkpoint", required=True, help="a checkpoint or run folder")
    analyze.add_argument("--dataset", default="shakespeare", help="validation text to read (default %(default)s)")
    analyze.add_argument("--tokenizer", default="byte")
    analyze.add_argument("--length", type=positive(int), help="tokens per window (default 4 x max_seq_len)")
    analyze.add_argument("--sequences", type=positive(int), default=8, help="windows (default %(default)s)")
    analyze.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    analyze.add_argument("--output_dir", default="runs/analyze")
    analyze.set_defaults(run=cmd_analyze)

    prepare = commands.add_parser("prepare", help="tokenize a corpus into token files for --tokenized_dir")
    prepare.add_argument("--dataset", default="shakespeare")
    prepare.add_argument("--tokenizer", default="byte")
    prepare.add_argument("--output_dir", required=True)
    prepare.add_argument("--max_train_tokens", type=positive(int))
    prepare.add_argument("--streaming", action="store_true")
    prepare.set_defaults(run=cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    from safetensors import SafetensorError

    from .atomic import WriteError, write_failure
    from .data import DataError
    from .training import TrainingDiverged

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    prefix = f"ten {args.command}"
    try:
        args.run(args, explicit_flags(subparser, argv))
    except (UserError, DataError, ValueError, FileNotFoundError, PermissionError) as err:
        if os.environ.get("TEN_DEBUG"):
            raise
        print(f"{prefix}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except (TrainingDiverged, WriteError) as err:  # not the user's mistake: exit code 1
        if os.environ.get("TEN_DEBUG"):
            raise
        print(f"{prefix}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except (OSError, SafetensorError) as err:  # the file system failed (a full disk): not the user's mistake
        if os.environ.get("TEN_DEBUG"):
            raise
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"{prefix}: error: {where}{write_failure(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
