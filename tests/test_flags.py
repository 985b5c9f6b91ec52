"""Settings declared once: the flags, their checks and the command line written back all come from the fields."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from temporal_eigenstate_networks import PRESETS
from temporal_eigenstate_networks.cli import add_train_flags, build_parser, main
from temporal_eigenstate_networks.experiments.bench import BenchSettings
from temporal_eigenstate_networks.experiments.synthetic import GridSettings
from temporal_eigenstate_networks.flags import DEVICE_HELP, comma_list, command_line, flags_of, settings_from
from temporal_eigenstate_networks.lm import ARCHITECTURES, config_fields
from temporal_eigenstate_networks.training import TrainArguments, resolve_run
from temporal_eigenstate_networks.training.arguments import MODEL_FIELDS, RESUMABLE_OVERRIDES
from temporal_eigenstate_networks.training.plan import MAX_WARMUP_FRACTION
from temporal_eigenstate_networks.training.presets import TRAINING_PRESETS


def train_parser(modes: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_train_flags(parser, modes)
    return parser


def parsed(argv: list[str]) -> TrainArguments:
    return TrainArguments.from_dict(vars(train_parser().parse_args(argv)))


def test_every_field_is_a_flag_with_the_fields_default():
    assert parsed([]) == TrainArguments()
    dests = {action.dest for action in train_parser()._actions} - {"help"}
    assert dests == {f.name for f in dataclasses.fields(TrainArguments)}
    assert not {"dry_run", "dry_samples", "benchmark"} & {a.dest for a in train_parser(modes=False)._actions}


def test_aliases_switches_and_bare_flags():
    args = parsed(["--lr", "1e-3", "--pretokenized", "tok", "--no_selective", "--no_compile", "--use_hten",
                   "--mixed_precision", "--resume"])  # fmt: skip
    assert (args.learning_rate, args.tokenized_dir, args.selective, args.compile, args.use_hten) == (
        1e-3,
        "tok",
        False,
        False,
        True,
    )
    assert (args.mixed_precision, args.resume) == ("auto", "")
    assert parsed(["--compile"]).compile is True and parsed(["--hten_scales", "1,2"]).hten_scales == [1, 2]


@pytest.mark.parametrize(
    "name, value, words, at_parse",
    [("learning_rate", 0.0, "a positive number", True), ("batch_size", -2, "a positive number or auto", True),
     ("weight_decay", -1.0, ">= 0", True), ("warmup_steps", -1, ">= 0", False),
     ("min_lr_ratio", 2.0, r"in \[0, 1\]", False), ("seed", -1, r"an integer in \[0, 2\*\*64 - 1\]", True),
     ("hourly_rate", -1.0, ">= 0", True)],
)  # fmt: skip
def test_a_bound_is_declared_once_and_checked_by_the_parser_and_validate(name, value, words, at_parse):
    if at_parse:
        with pytest.raises(argparse.ArgumentError, match=f"argument --{name}.*: must be"):
            train_parser().parse_args([f"--{name}", str(value)])
    else:  # validate() alone refuses it, in the words its users always saw
        assert getattr(train_parser().parse_args([f"--{name}", str(value)]), name) == value
    with pytest.raises(ValueError, match=f"--{name} must be {words}, got {value}"):
        TrainArguments(**{name: value}).validate()


@pytest.mark.parametrize(
    "flags, line",
    [(["--warmup_steps", "-1"], "ten train: error: --warmup_steps must be >= 0, got -1"),
     (["--warmup_steps", "x"],
      "ten train: error: argument --warmup_steps: invalid int value: 'x' (see ten train --help)"),
     (["--sample_tokens", "-3"], "ten train: error: --sample_tokens must be >= 0, got -3"),
     (["--min_lr_ratio", "2"], "ten train: error: --min_lr_ratio must be in [0, 1], got 2.0"),
     (["--min_lr_ratio", "-1"],
      "ten train: error: argument --min_lr_ratio: must be a finite number >= 0, got '-1' (see ten train --help)")],
)  # fmt: skip
def test_the_one_line_errors_of_bounds_that_validate_checks_stay_as_they_were(flags, line, capsys):
    try:
        code = main(["train", "--dry_run", *flags])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert (code, capsys.readouterr().err) == (2, line + "\n")


def test_choices_are_checked_for_library_callers_too():
    with pytest.raises(ValueError, match="--config must be nano, micro, small, medium, large or xlarge, got 'huge'"):
        TrainArguments(config="huge").validate()
    with pytest.raises(ValueError, match="--mixed_precision must be no, auto, bf16 or fp16, got 'x'"):
        TrainArguments(mixed_precision="x").validate()


def test_model_fields_are_the_settings_a_model_config_has():
    known = set().union(*(config_fields(name) for name in ARCHITECTURES))
    assert set(MODEL_FIELDS) == known & {f.name for f in dataclasses.fields(TrainArguments)}
    assert {"d_model", "selective", "fixed_basis", "hten_scales"} <= set(MODEL_FIELDS)
    assert not {"config", "model", "batch_size", "learning_rate"} & set(MODEL_FIELDS)
    assert {"max_steps", "resume", "device"} <= RESUMABLE_OVERRIDES and "learning_rate" not in RESUMABLE_OVERRIDES


def test_command_line_writes_values_back_as_the_flags_that_set_them():
    values = dict(learning_rate=6e-05, mixed_precision="no", resume="runs/nano/checkpoints/final", compile=False,
                  use_hten=True, hten_scales=[1, 2], gradient_checkpointing=True, seed=7)  # fmt: skip
    line = command_line(TrainArguments, **values)
    assert line.startswith("--learning_rate 6e-05 --mixed_precision no --resume runs/nano/checkpoints/final")
    assert dataclasses.replace(TrainArguments(), **values) == parsed(line.split())
    assert set(flags_of(TrainArguments)) == {f.name for f in dataclasses.fields(TrainArguments)}


def test_command_line_round_trips_switches_bare_flags_and_every_digit():
    values = dict(selective=False, output_gate=False, real_eigenvalues=True, resume="", learning_rate=1 / 3000,
                  min_lr_ratio=0.05, output_dir=None, streaming=False)  # fmt: skip
    line = command_line(TrainArguments, **values)
    switches = "--no_selective --no_output_gate --real_eigenvalues --resume"
    assert line == f"{switches} --learning_rate 0.0003333333333333333 --min_lr_ratio 0.05"
    assert dataclasses.replace(TrainArguments(), **values) == parsed(line.split())
    with pytest.raises(ValueError, match="no flag sets selective to True"):
        command_line(TrainArguments, selective=True)  # the preset's value is the flag left off, not a flag


def test_comma_list_strips_and_converts():
    assert comma_list(" a, b,c") == ["a", "b", "c"] and comma_list("1, 2", int) == [1, 2]
    assert comma_list("") == [""]
    with pytest.raises(ValueError):
        comma_list("1,x", int)


def test_the_warm_up_cap_is_worked_out_in_the_plan():
    plan = resolve_run(TrainArguments(warmup_steps=100, dry_run=True))
    assert plan.warmup_steps(None) == 100  # a budget-long run: capped at a fifth of its budget by the schedule
    assert plan.warmup_steps(1000) == 100 and plan.warmup_steps(50) == int(50 * MAX_WARMUP_FRACTION) == 10
    assert all(plan.warmup_steps(total) < total for total in range(1, 30))
    assert plan.learning_rate == plan.args.learning_rate == TRAINING_PRESETS["nano"].learning_rate


def test_the_training_presets_cover_the_model_presets():
    assert list(TRAINING_PRESETS) == list(PRESETS)
    assert "batch_size" not in PRESETS["nano"].model_fields()


def test_train_and_compare_offer_the_same_training_flags():
    commands = build_parser()._subparsers._group_actions[0].choices
    train = {a.dest for a in commands["train"]._actions}
    compare = {a.dest for a in commands["compare"]._actions}
    assert train - compare == {"dry_run", "dry_samples", "benchmark"}
    assert compare - train == {"variants", "tokens", "seeds"}


def subparser(name: str) -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize("command, settings", [("synthetic", GridSettings), ("bench", BenchSettings)])
def test_synthetic_and_bench_flags_are_their_settings_fields(command, settings):
    offered = {a.dest for a in subparser(command)._actions} - {"help", "device", "output_dir"}
    assert offered == set(flags_of(settings))  # every flag a field's, and the other way round
    devices = {a.help for name in ("generate", "bench", "eval", "synthetic", "positions", "analyze", "train")
               for a in subparser(name)._actions if a.dest == "device"}  # fmt: skip
    assert devices == {DEVICE_HELP}  # declared once


def test_settings_from_reads_lists_required_flags_and_the_library_s_own_words():
    args = subparser("synthetic").parse_args(["--task", "mqar", "--variants", "ten, hten", "--learning_rates", "1e-3"])
    grid = settings_from(GridSettings, args)
    assert (grid.task, grid.variants, grid.learning_rates, grid.d_models) == ("mqar", ["ten", "hten"], [1e-3], (64,))
    assert grid == GridSettings(task="mqar", variants=["ten", "hten"], learning_rates=[1e-3])
    bench = settings_from(BenchSettings, subparser("bench").parse_args(["--contexts", "8,16"]), device="cpu")
    assert bench == BenchSettings(contexts=(8, 16))  # the defaults as the dataclass has them
    with pytest.raises(ValueError, match="^--decode_batches: 2 given more than once$"):
        settings_from(BenchSettings, subparser("bench").parse_args(["--decode_batches", "2,2"]))


def test_a_library_caller_s_settings_are_checked_against_the_same_bounds():
    with pytest.raises(ValueError, match="--steps must be a positive number, got 0"):
        GridSettings(task="mqar", steps=0)
    with pytest.raises(ValueError, match="--task must be mqar, selective_copying or induction_heads"):
        GridSettings(task="nope")
    with pytest.raises(ValueError, match="--dtype must be float32, bf16 or fp16"):
        BenchSettings(dtype="fp8")
