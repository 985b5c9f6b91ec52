"""The `ten` command: it parses and dispatches; the work lives in the library.

The flags of train, compare, synthetic and bench are their settings dataclasses' fields (flags.py); the few flags
of the other commands are declared here.

A user's mistake ends in one line on stderr and exit code 2; set TEN_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from .experiments.bench import BenchSettings
from .experiments.compare import DEFAULT_VARIANTS, VARIANTS
from .experiments.synthetic import GridSettings
from .flags import add_device_flag, add_flags, non_negative_float, positive, random_seed, settings_from
from .training.arguments import MODES, TrainArguments


class UserError(Exception):
    """A mistake in what the user asked for: reported in one line, exit code 2."""


class CommandFailed(Exception):
    """The work failed, not the request (a crash half-way, after the checks): reported in one line, exit code 1."""


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

    trainer = Trainer(settings_from(TrainArguments, args), explicit)  # cleans up after itself if it fails
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
    model = load_model(checkpoint, device, getattr(torch, args.dtype)).eval()
    tokenizer = model_tokenizer(checkpoint, model.config.vocab_size)
    prompt = prompt_ids(tokenizer, args.prompt, args.prompt_file)
    ids = torch.as_tensor(prompt.astype("int64"), device=device).unsqueeze(0)
    out = model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed)  # fmt: skip
    print(tokenizer.decode(out[0]))


def prompt_ids(tokenizer: Any, prompt: str, prompt_file: str | None) -> Any:
    """The prompt's token ids, from --prompt or --prompt_file. The byte model reads any bytes as they are (a file's,
    or a command line's that is not UTF-8); another tokenizer needs UTF-8 text, else one line says where it is not."""
    import numpy as np

    if prompt_file is not None:
        try:
            raw = Path(prompt_file).expanduser().read_bytes()
        except OSError as err:
            raise UserError(f"--prompt_file {prompt_file}: {err.strerror or err}") from None
        where = f"--prompt_file {prompt_file}"
    else:
        raw, where = os.fsencode(prompt), "--prompt"  # the command line's own bytes (Python escapes non-UTF-8 ones)
    if not raw:
        raise UserError(f"{where} is empty: give at least one token")
    if getattr(tokenizer, "kind", None) == "byte":
        return np.frombuffer(raw, dtype=np.uint8).astype(np.uint16)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{where} is not UTF-8 text (byte {err.start}): this model's tokenizer reads text") from None
    return tokenizer.encode(text)


def cmd_export(args: argparse.Namespace, explicit: set[str]) -> None:
    from .hf import transformers_problem
    from .runs.lookup import find_checkpoint

    if problem := transformers_problem():
        raise UserError(problem)
    from .hf.export import export_hf, loading_code

    destination = export_hf(find_checkpoint(Path(args.checkpoint)), Path(args.hf), overwrite=args.overwrite)
    print(f"wrote {destination}: {loading_code(destination)}")


def cmd_prepare(args: argparse.Namespace, explicit: set[str]) -> None:
    from .data import prepare_token_files

    meta = prepare_token_files(args.dataset, args.tokenizer, Path(args.output_dir), streaming=args.streaming,
                               max_train_tokens=args.max_train_tokens, overwrite=args.overwrite)  # fmt: skip
    print(
        f"wrote {args.output_dir}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} validation tokens "
        f"({meta['dtype']}, vocabulary {meta['vocab_size']:,}); train with --tokenized_dir {args.output_dir}"
    )


def cmd_compare(args: argparse.Namespace, explicit: set[str]) -> None:
    from .experiments.compare import run_command

    run_command(settings_from(TrainArguments, args), args.variants, args.tokens, args.seeds, explicit)


def cmd_bench(args: argparse.Namespace, explicit: set[str]) -> None:
    from .device import resolve_device
    from .experiments.bench import run_command

    device = str(resolve_device(args.device))  # before the settings: a wrong --device is the first error, as always
    run_command(settings_from(BenchSettings, args, device=device), Path(args.output_dir))


def cmd_synthetic(args: argparse.Namespace, explicit: set[str]) -> None:
    from .device import resolve_device
    from .experiments.synthetic import plan_grid, run_synthetic

    grid = plan_grid(settings_from(GridSettings, args))
    output = Path(args.output_dir or f"runs/synthetic-{args.task}")
    table = run_synthetic(grid, resolve_device(args.device), output, log=lambda line: print(line, flush=True))
    print("\n" + table + f"\nwritten: {output}/results.md, results.json, accuracy.png")


def cmd_positions(args: argparse.Namespace, explicit: set[str]) -> None:
    from .device import resolve_device
    from .experiments.positions import OUTPUTS as POSITIONS_OUTPUTS
    from .experiments.positions import run_positions
    from .runs.folders import claim_results_dir, released_if_empty

    device = resolve_device(args.device)
    output = claim_results_dir(args.output_dir, Path("runs/positions"), POSITIONS_OUTPUTS, args.overwrite)
    with released_if_empty(output):
        table = run_positions(args.checkpoint, args.dataset, args.tokenizer, args.length, args.sequences,
                              args.batch_size, device, output, log=print)  # fmt: skip
    print("\n" + table + f"\nwritten: {output}/positions.md, positions.json, positions.png")


def cmd_analyze(args: argparse.Namespace, explicit: set[str]) -> None:
    from .device import resolve_device
    from .experiments.analyze import OUTPUTS as ANALYSIS_OUTPUTS
    from .experiments.analyze import check_length, run_analysis
    from .runs.folders import claim_results_dir, released_if_empty

    check_length(args.length)  # before a folder is claimed
    output = claim_results_dir(args.output_dir, Path("runs/analyze"), ANALYSIS_OUTPUTS, args.overwrite)
    device = resolve_device(args.device)
    with released_if_empty(output):
        title, table, pictures = run_analysis(Path(args.checkpoint), args.dataset, args.tokenizer, args.length,
                                              args.sequences, device, output)  # fmt: skip
    print(f"{title}\n\n{table}\n\nwritten: {output}/analysis.md, analysis.json, {', '.join(pictures)}")


def cmd_eval(args: argparse.Namespace, explicit: set[str]) -> None:
    from .hf import evaluate as harness
    from .runs.folders import check_output_file
    from .runs.lookup import find_checkpoint

    # Every check before anything slow: a misspelt task or an unwritable --output fails at once, not after hours.
    tasks = harness.parse_tasks(args.tasks)
    checkpoint = find_checkpoint(Path(args.checkpoint))
    output = args.output and check_output_file(args.output, args.overwrite, [(checkpoint, "checkpoint")])

    def save(results: dict[str, Any]) -> None:  # after each task: a later task's failure keeps the finished ones
        if output:
            harness.write_results(results, output)

    try:
        results = harness.evaluate(checkpoint, tasks, limit=args.limit, batch_size=args.batch_size,
                                   device=args.device, max_length=args.max_length, on_task=save)  # fmt: skip
    except harness.TaskFailed as failed:
        if not failed.done:
            raise CommandFailed(str(failed)) from failed
        print(harness.report(checkpoint, failed.finished, args.limit))
        kept = f"written: {output}" if output else "printed above"
        raise CommandFailed(f"{failed} (the results of {', '.join(failed.done)}, which finished: {kept})") from failed
    print(harness.report(checkpoint, results, args.limit))
    if output:
        print(f"written: {output}")


# ---------------------------------------------------------------- the parser and main


def settings_command(
    commands: Any, name: str, words: str, settings: type, run: Any, output: str | None, output_help: str | None = None
) -> None:
    """A command whose flags are a settings dataclass's fields, then --device and --output_dir."""
    command = commands.add_parser(name, help=words)
    add_flags(command, settings)
    add_device_flag(command)
    command.add_argument("--output_dir", default=output, help=output_help)
    command.set_defaults(run=run)


DATA_HELP = "validation text to read (default: the data the run trained on; Shakespeare for a model saved alone)"
TOKENIZER_HELP = "default: the run's (byte for a model saved alone)"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ten", description="Temporal Eigenstate Networks: train, sample, measure")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    train = commands.add_parser("train", help="train a model (on Shakespeare by default)")
    add_train_flags(train)
    train.set_defaults(run=cmd_train)

    generate = commands.add_parser("generate", help="sample text from a checkpoint")
    generate.add_argument("--checkpoint", required=True, help="a checkpoint folder or a run's --output_dir")
    prompt = generate.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="\n")
    prompt.add_argument("--prompt_file", help="the prompt from a file (the byte model reads its bytes as they are)")
    generate.add_argument("--max_new_tokens", type=int, default=200)
    generate.add_argument("--temperature", type=non_negative_float, default=0.8, help="0 is greedy")
    generate.add_argument("--top_k", type=positive(int))
    generate.add_argument("--top_p", type=positive(float))
    generate.add_argument("--seed", type=random_seed)
    generate.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                          help="the weights' precision (bfloat16 or float16 on a GPU; a recurrence's dynamics and "
                               "state stay float32)")  # fmt: skip
    add_device_flag(generate)
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

    settings_command(commands, "bench", "TEN vs the transformer baseline and Mamba-2: time, memory, generation",
                     BenchSettings, cmd_bench, "runs/bench")  # fmt: skip

    export_help = ("a folder transformers loads without this package (TEN: its code copied in, trust_remote_code; "
                   "Mamba-2: transformers' own class)")  # fmt: skip
    export = commands.add_parser(
        "export",
        help=export_help,
        description=f"Write {export_help}. A TEN folder holds the package's own modules the model needs, copied at "
        "export time; it loads, generates and saves with torch and transformers alone, and ten's commands read it "
        "as a checkpoint.",
    )
    export.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint folder, a run's --output_dir, or a save_pretrained or exported folder (a byte model's "
        "needs no tokenizer files)",
    )
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
    add_device_flag(evaluate)
    evaluate.add_argument(
        "--max_length", type=positive(int), help="the harness's context window (default: the model config's)"
    )
    evaluate.add_argument("--output", help="write lm-eval's results as JSON to this file (after each task)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    evaluate.set_defaults(run=cmd_eval)

    settings_command(commands, "synthetic", "recall tasks (MQAR, selective copying, induction heads)", GridSettings,
                     cmd_synthetic, None, "default: runs/synthetic-TASK")  # fmt: skip

    positions = commands.add_parser("positions", help="validation loss by position, past the training length")
    positions.add_argument(
        "--checkpoint", action="append", required=True, help="a checkpoint or run folder (repeat for several models)"
    )
    positions.add_argument("--dataset", help=DATA_HELP)
    positions.add_argument("--tokenizer", help=TOKENIZER_HELP)
    positions.add_argument("--length", type=positive(int), default=4096, help="window length (tokens)")
    positions.add_argument("--sequences", type=positive(int), default=16, help="windows to average over")
    positions.add_argument("--batch_size", type=positive(int), default=1)
    add_device_flag(positions)
    positions.add_argument("--output_dir", help="default: runs/positions, or the next free runs/positions-N")
    positions.add_argument("--overwrite", action="store_true", help="replace the outputs in an --output_dir")
    positions.set_defaults(run=cmd_positions)

    analyze = commands.add_parser("analyze", help="a TEN checkpoint's eigenvalues, timescales, coupling and energy")
    analyze.add_argument("--checkpoint", required=True, help="a checkpoint or run folder")
    analyze.add_argument("--dataset", help=DATA_HELP)
    analyze.add_argument("--tokenizer", help=TOKENIZER_HELP)
    analyze.add_argument("--length", type=positive(int), help="tokens per window, >= 17 (default 4 x max_seq_len)")
    analyze.add_argument("--sequences", type=positive(int), default=8, help="windows (default %(default)s)")
    add_device_flag(analyze)
    analyze.add_argument("--output_dir", help="default: runs/analyze, or the next free runs/analyze-N")
    analyze.add_argument("--overwrite", action="store_true", help="replace the outputs in an --output_dir")
    analyze.set_defaults(run=cmd_analyze)

    prepare = commands.add_parser("prepare", help="tokenize a corpus into token files for --tokenized_dir")
    prepare.add_argument("--dataset", default="shakespeare")
    prepare.add_argument("--tokenizer", default="byte")
    prepare.add_argument("--output_dir", required=True)
    prepare.add_argument("--max_train_tokens", type=positive(int))
    prepare.add_argument("--streaming", action="store_true")
    prepare.add_argument("--overwrite", action="store_true", help="replace an --output_dir that holds files")
    prepare.set_defaults(run=cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    from safetensors import SafetensorError

    from .atomic import WriteError, write_failure
    from .data import DataError
    from .training import TrainingDiverged

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    if unknown:  # said by the command's parser: "ten train: error: ... (see ten train --help)"
        subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    prefix = f"ten {args.command}"
    try:
        args.run(args, explicit_flags(subparser, argv))
    except (UserError, DataError, ValueError, FileNotFoundError, PermissionError) as err:
        if os.environ.get("TEN_DEBUG"):
            raise
        print(f"{prefix}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except (TrainingDiverged, WriteError, CommandFailed) as err:  # not the user's mistake: exit code 1
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
