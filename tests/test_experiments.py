"""ten compare and ten bench on tiny sizes: they run, and write the tables, JSON and plots they promise."""

from __future__ import annotations

import errno
import json
import re
import signal
from pathlib import Path

import pytest
import torch

from temporal_eigenstate_networks.cli import main
from temporal_eigenstate_networks.experiments import bench, compare
from temporal_eigenstate_networks.experiments.bench import (
    BenchSettings,
    growth,
    markdown,
    peak_memory_mib,
    run_bench,
    write_outputs,
)
from temporal_eigenstate_networks.experiments.compare import parse_variants, run_comparison
from temporal_eigenstate_networks.training import TrainArguments, Trainer, TrainingDiverged
from temporal_eigenstate_networks.training import checkpoint as checkpoint_module


def test_compare_trains_each_variant_on_the_same_budget_and_tabulates(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Friends, Romans, countrymen, lend me your ears; I come to bury Caesar.\n" * 80)
    base = TrainArguments(dataset=str(corpus), d_model=32, n_layers=1, num_eigenstates=16, max_seq_len=32,
                          batch_size=2, max_steps=4, eval_steps=2, eval_batches=1, sample_tokens=0)  # fmt: skip
    rows = run_comparison(base, ["ten", "transformer"], tmp_path / "cmp")
    assert [r["variant"] for r in rows] == ["ten", "transformer"]
    assert all(r["steps"] == 4 and r["tokens"] == 4 * 2 * 32 for r in rows)
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "| ten |" in table and "| transformer |" in table
    assert table.splitlines()[-1].endswith("| - |")  # attention has no energy: none reported, not a zero
    saved = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert [c["step"] for c in saved["rows"][0]["curve"]] == [2, 4]  # every --eval_steps; 4 is also the end
    assert (tmp_path / "cmp" / "validation_loss.png").stat().st_size > 1000


def test_compare_needs_one_budget_and_known_variants(capsys):
    assert main(["compare", "--max_steps", "2"]) == 2
    assert "--time_budget MINUTES or --tokens N" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown nope"):
        parse_variants("ten,nope")


def test_bench_measures_both_models_side_by_side(tmp_path):
    settings = BenchSettings(models=("ten", "transformer"), d_model=32, n_layers=1, num_eigenstates=8,
                             lengths=(32, 64), tokens_per_batch=128, contexts=(8, 16), decode_batches=(1, 2),
                             new_tokens=2, reps=1, weight_read_mib=1)  # fmt: skip
    results = run_bench(settings, log=lambda _: None)
    assert [r["T"] for r in results["lengths"]] == [32, 64]
    first = results["lengths"][0]
    assert first["ten"]["batch"] == first["transformer"]["batch"] == 4
    assert all(first[m]["train_step_ms"] > 0 and first[m]["tokens_per_s"] > 0 for m in ("ten", "transformer"))
    assert [(r["context"], r["batch"]) for r in results["generation"]] == [(8, 1), (16, 1), (8, 2), (16, 2)]
    assert growth(results, "ten", "forward_ms") is not None
    assert results["weight_reads"]["matvec_gbps"] > 0 and results["weight_reads"]["read_gbps"] > 0
    assert "step TEN/attn" in markdown(results) and "batch-1 matmuls" in markdown(results)
    assert "Mamba-2" not in markdown(results)  # not asked for: no column, no note
    assert all(first[m]["train_tflop"] > 0 and first[m]["train_tflops"] > 0 for m in ("ten", "transformer"))
    assert results["matmul_peak_tflops"] > 0 and "TEN MFU" in markdown(results)
    # on a quiet machine the note says how MFU is read; on a busy one the peak may not settle, and it says why not
    note = "MFU: unreliable, not given: " if results.get("matmul_peak_unreliable") else "MFU: FLOPs counted"
    assert note in markdown(results)
    write_outputs(results, tmp_path)
    assert (tmp_path / "bench_scaling.png").stat().st_size > 1000 and (tmp_path / "bench.json").is_file()


TINY_COMPARE = [
    "--d_model",
    "32",
    "--n_layers",
    "1",
    "--num_eigenstates",
    "16",
    "--max_seq_len",
    "32",
    "--batch_size",
    "2",
    "--eval_steps",
    "1",
    "--eval_batches",
    "1",
    "--sample_tokens",
    "0",
    "--tokens",
    "128",
]  # 2 steps


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("Friends, Romans, countrymen, lend me your ears; I come to bury Caesar.\n" * 80)
    return path


def starts(run_dir) -> int:
    return sum(json.loads(line)["event"] == "start" for line in (run_dir / "metrics.jsonl").read_text().splitlines())


def test_compare_never_replaces_an_earlier_comparison(corpus, tmp_path, monkeypatch, capsys):
    """ten train's rule: the default folder is numbered, an --output_dir holding one is refused unless --overwrite."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(compare, "plot", lambda rows, path: path.write_bytes(b""))  # the slow part, tested above
    command = ["compare", "--dataset", str(corpus), *TINY_COMPARE, "--variants", "ten"]
    assert main(command) == 0 and main(command) == 0
    assert (tmp_path / "runs/compare/results.md").is_file() and (tmp_path / "runs/compare-2/results.md").is_file()
    first = (tmp_path / "runs/compare/ten/metrics.jsonl").read_text()
    capsys.readouterr()
    assert main([*command, "--output_dir", "runs/compare"]) == 2
    err = capsys.readouterr().err
    assert "runs/compare holds an earlier comparison" in err and err.count("\n") == 1
    assert (tmp_path / "runs/compare/ten/metrics.jsonl").read_text() == first  # untouched
    assert main([*command, "--output_dir", "runs/compare", "--overwrite"]) == 0
    assert starts(tmp_path / "runs/compare/ten") == 1  # started over, not appended to


def test_an_interrupted_comparison_keeps_its_table_and_resumes(corpus, tmp_path, monkeypatch, capsys):
    original_step = Trainer.train_step

    def step_then_signal(self):
        values = original_step(self)
        if self.output_dir.name == "transformer" and self.state.step == 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C: the trainer stops at this step boundary and saves
        return values

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    output = tmp_path / "cmp"
    command = ["compare", "--dataset", str(corpus), *TINY_COMPARE, "--output_dir", str(output),
               "--variants", "ten,transformer,ten-nonselective"]  # fmt: skip
    assert main(command) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[-1] == f"the comparison was interrupted; continue it with: ten compare --resume {output}"
    # Only the comparison's hint: the variant's run says where it saved, not how to continue it on its own.
    assert f"checkpoint: {output / 'transformer' / 'checkpoints' / 'step-0000001'}\n" in out
    assert "ten train" not in out + err and (out + err).count("continue") == 1
    table = (output / "results.md").read_text()
    assert "| transformer | 0.02 M | interrupted at step 1 |" in table and "| ten | 0.02 M | 5." in table
    assert "ten-nonselective" not in table and not (output / "ten-nonselective").exists()  # the rest did not run
    assert (output / "validation_loss.png").is_file()
    kept = (output / "ten" / "metrics.jsonl").read_text()

    monkeypatch.setattr(Trainer, "train_step", original_step)
    assert main(["compare", "--resume", str(output)]) == 0  # the settings and variants are the comparison's
    rows = json.loads((output / "results.json").read_text())["rows"]
    assert [(r["variant"], r["status"], r["steps"]) for r in rows] == [
        ("ten", "finished", 2),
        ("transformer", "finished", 2),
        ("ten-nonselective", "finished", 2),
    ]
    assert (output / "ten" / "metrics.jsonl").read_text() == kept  # finished: kept as it was
    assert starts(output / "transformer") == 2  # resumed from its checkpoint, not started over
    assert "interrupted" not in (output / "results.md").read_text()
    capsys.readouterr()
    assert main(["compare", "--resume", str(output), "--d_model", "64"]) == 2
    assert "--d_model 64 differs" in capsys.readouterr().err
    assert main(["compare", "--resume", str(output), "--seeds", "2"]) == 2  # its folders carry no seed
    assert "a comparison of one seed names its runs without it" in capsys.readouterr().err


def test_a_variant_that_cannot_save_names_the_comparison_s_resume(corpus, tmp_path, monkeypatch, capsys):
    real_save_file = checkpoint_module.save_file

    def full_disk_for_the_transformer(tensors, path, *args, **kwargs):  # at its end: it has a `best` by then
        if "transformer" in str(path) and "final" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save_file(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk_for_the_transformer)
    output = tmp_path / "cmp"
    command = ["compare", "--dataset", str(corpus), *TINY_COMPARE, "--output_dir", str(output),
               "--variants", "ten,transformer"]  # fmt: skip
    assert main(command) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("ten compare: error: ") and "No space left on device" in last
    assert last.endswith(f"continue with: ten compare --resume {output}") and "ten train" not in last


def test_compare_flags_that_do_not_apply_are_one_line(corpus, capsys):
    for flag in ("--dry_run", "--benchmark"):
        with pytest.raises(SystemExit) as exit_:
            main(["compare", "--dataset", str(corpus), *TINY_COMPARE, flag])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"unrecognized arguments: {flag}" in err and err.count("\n") == 1
    assert main(["compare", "--dataset", str(corpus), *TINY_COMPARE, "--variants", "ten,ten"]) == 2
    err = capsys.readouterr().err
    assert "--variants: ten given more than once" in err and err.count("\n") == 1


def fake_bench(monkeypatch, fits: dict[str, int], error: Exception, generation_fits: int | None = None) -> None:
    """Measuring functions that run out of memory (raise `error`) at lengths >= fits[model], the rest instant."""

    def measure_length(model, length, settings, device):
        if length >= fits[model.architecture]:
            raise error
        return {
            "T": length,
            "batch": 1,
            "train_tflop": 1e-6,
            "forward_ms": 1.0 * length,
            "train_step_ms": 3.0 * length,
            "tokens_per_s": 1e3,
            "train_tflops": 1e-3,
            "train_peak_mib": 1.0,
            "forward_peak_mib_b1": 0.5 * length,
        }

    def measure_generation(model, context, batch, settings, device):
        if generation_fits is not None and model.architecture == "transformer" and context >= generation_fits:
            raise error
        return 0.5

    monkeypatch.setattr(bench, "measure_length", measure_length)
    monkeypatch.setattr(bench, "warm_up", lambda model, length, settings, device: measure_length(model, length, 0, 0))
    monkeypatch.setattr(bench, "measure_generation", measure_generation)
    monkeypatch.setattr(bench, "matmul_peak_tflops", lambda settings, device: 1.0)
    monkeypatch.setattr(bench, "weight_read_rates", lambda settings, device: {"matvec_gbps": 1.0, "read_gbps": 2.0})


TINY_BENCH = ["--d_model", "16", "--n_layers", "1", "--num_eigenstates", "4", "--contexts", "8,16", "--device", "cpu",
              "--models", "ten,transformer"]  # fmt: skip


@pytest.mark.parametrize("lengths, fits, error, out_of_memory", [
    ("8,16,32", {"ten": 32, "transformer": 16}, torch.OutOfMemoryError("CUDA out of memory"),
     [[], ["transformer"], ["ten"]]),
    ("8,16", {"ten": 16, "transformer": 16},
     RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1099511627776 bytes."),
     [[], ["ten", "transformer"]]),  # both at one length
    ("64", {"ten": 64, "transformer": 64},
     RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8000000000008 bytes."),
     [["ten", "transformer"]]),  # the only length
])  # fmt: skip
def test_bench_writes_out_of_memory_rows(tmp_path, monkeypatch, capsys, lengths, fits, error, out_of_memory):
    fake_bench(monkeypatch, fits, error, generation_fits=16)
    assert main(["bench", *TINY_BENCH, "--lengths", lengths, "--output_dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    assert [r["out_of_memory"] for r in results["lengths"]] == out_of_memory
    assert [r["transformer"] for r in results["generation"]] == [0.5, None]
    table = (tmp_path / "bench.md").read_text()
    assert table.count(" OOM ") == 5 * sum(map(len, out_of_memory)) + 1  # 5 cells a length, 1 of generation
    assert (tmp_path / "bench_scaling.png").is_file()


def test_bench_checks_its_output_and_lengths_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("measured before checking"))
    taken = tmp_path / "a-file"
    taken.write_text("")
    for flags, message in [(["--output_dir", str(taken)], f"--output_dir {taken} cannot be written"),
                           (["--lengths", "16,16"], "--lengths: 16 given more than once"),
                           (["--contexts", "8,x"], "--contexts: expected comma-separated"),
                           (["--models", "ten,mamba"], "--models: expected comma-separated names from ten, "
                                                       "transformer, mamba2, got 'ten,mamba'"),
                           (["--models", "ten,ten"], "--models: ten given more than once")]:  # fmt: skip
        assert main(["bench", "--output_dir", str(tmp_path / "out"), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists()  # a refused command leaves no folder behind


def test_bench_without_transformers_leaves_mamba2_out_in_one_line(tmp_path, monkeypatch, capsys):
    """Where transformers' Mamba2ForCausalLM is missing, bench measures TEN and the transformer as before and says
    why Mamba-2 is not there, with the install command; asked for by --models, it is a one-line error."""
    monkeypatch.setattr(bench, "mamba2_available", lambda: False)
    fake_bench(monkeypatch, {"ten": 64, "transformer": 64}, MemoryError())
    argv = ["bench", *TINY_BENCH[:-2], "--lengths", "8", "--output_dir", str(tmp_path)]
    assert main(argv) == 0
    left_out = "Mamba-2 left out: it is transformers' Mamba2ForCausalLM, not installed here (pip install "
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(left_out) and "[hf]" in out.splitlines()[0]
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["models"] == ["ten", "transformer"] and "mamba2" not in results["lengths"][0]
    table = (tmp_path / "bench.md").read_text()
    assert left_out in table and "Mamba-2 fwd ms" not in table and "| TEN fwd ms | attn fwd ms |" in table
    assert main([*argv, "--models", "ten,mamba2"]) == 2
    err = capsys.readouterr().err
    assert "--models mamba2 is transformers' Mamba2ForCausalLM, which is not installed here: pip install" in err
    assert err.count("\n") == 1


def test_compare_runs_every_variant_at_every_seed_and_reports_the_spread(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare, "plot", lambda rows, path: path.write_bytes(b""))
    output = tmp_path / "cmp"
    command = ["compare", "--dataset", str(corpus), *TINY_COMPARE, "--output_dir", str(output),
               "--variants", "full,no-gate", "--seeds", "2", "--seed", "7"]  # fmt: skip
    assert main(command) == 0
    record = json.loads((output / "results.json").read_text())
    assert record["seeds"] == 2
    assert [(r["variant"], r["seed"]) for r in record["rows"]] == [("full", 7), ("no-gate", 7), ("full", 8),
                                                                   ("no-gate", 8)]  # fmt: skip
    for key in ("full-seed7", "full-seed8", "no-gate-seed7", "no-gate-seed8"):
        assert (output / key / "checkpoints" / "final").is_dir()
    full = [r for r in record["rows"] if r["variant"] == "full"]
    assert full[0]["val_ce"] != full[1]["val_ce"]  # the seeds differ
    no_gate = next(r for r in record["rows"] if r["variant"] == "no-gate")
    assert no_gate["parameters"] < full[0]["parameters"]  # no W_g
    table = (output / "results.md").read_text()
    assert "mean ± std (min..max) over seeds" in table and "| no-gate |" in table and "| 16.7 |" in table
    assert "| full (seed 8) |" in table
    assert (output / "seeds.png").read_bytes().startswith(b"\x89PNG")  # each variant's mean and spread
    assert capsys.readouterr().out.rstrip().endswith("validation_loss.png, seeds.png")  # the written line
    assert main(["compare", "--resume", str(output)]) == 0  # all four finished: kept, none trains again
    assert capsys.readouterr().out.count("finished earlier, kept") == 4
    assert main(["compare", "--resume", str(output), "--seeds", "3"]) == 0  # a third seed: two new runs
    assert capsys.readouterr().out.count("finished earlier, kept") == 4
    record = json.loads((output / "results.json").read_text())
    assert record["seeds"] == 3
    assert [(r["variant"], r["seed"]) for r in record["rows"][4:]] == [("full", 9), ("no-gate", 9)]
    assert re.search(r"\| full \| [\d.]+ M \| 3 \|", (output / "results.md").read_text())  # 3 seeds summarised
    assert main(["compare", "--resume", str(output), "--seeds", "2"]) == 2
    assert "--seeds 2 is fewer than the comparison's 3" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--seeds", "0"], "argument --seeds: must be positive"),
    (["--variants", "one-head", "--no_output_gate"], "--no_output_gate is what variant one-head sets"),
    (["--variants", "full", "--no_coupling"], "--no_coupling is what variant full sets"),
    (["--variants", "ten,transformer", "--model", "ten"], "--model is what variant transformer sets"),
    (["--variants", "ablations,full"], "--variants: full given more than once"),
    (["--variants", "ablations", "--num_heads", "2"], "variant no-coupling: --num_heads only partitions the coupling"),
])  # fmt: skip
def test_compare_refuses_contradictory_ablations(corpus, capsys, extra, message):
    code = None
    try:
        code = main(["compare", "--dataset", str(corpus), *TINY_COMPARE, *extra])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_train_refuses_contradictory_ablations(corpus, capsys):
    base = ["train", "--dataset", str(corpus), "--dry_run"]
    for extra, message in ((["--no_coupling", "--num_heads", "2"], "means nothing with --no_coupling"),
                           (["--real_eigenvalues", "--fixed_basis"], "choose one"),
                           (["--no_selective", "--selective_range", "0.2"], "--no_selective turns off")):  # fmt: skip
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_bench_cpu_memory_is_the_pass_not_the_code_it_loads():
    """A tiny model's forward and backward need well under a MiB; the scan operator's first call imports
    torch._dynamo (~150 MiB of code), which bench once counted as TEN's activations."""
    settings = BenchSettings(models=("ten",), d_model=32, n_layers=1, num_eigenstates=8)
    assert peak_memory_mib("ten", settings, 64, 2, train=True) < 32


def test_a_diverged_variant_is_a_row_and_the_comparison_goes_on(corpus, tmp_path, capsys, monkeypatch):
    """A variant that diverges costs its own row, not the others' results; the command then fails in one line
    that names it and advises a lower rate for the whole comparison (its variants share one), not ten train."""
    output = tmp_path / "diverged"
    command = ["compare", "--dataset", str(corpus), *TINY_COMPARE, "--variants", "ten,transformer",
               "--output_dir", str(output)]  # fmt: skip
    real = compare.Trainer

    def ten_diverges(args, **kwargs):
        trainer = real(args, **kwargs)
        if Path(args.output_dir).name == "ten":
            trainer.train = lambda: (_ for _ in ()).throw(TrainingDiverged("the loss became nan at step 1", "advice"))
        return trainer

    monkeypatch.setattr(compare, "Trainer", ten_diverges)
    assert main(command) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == ("ten compare: error: ten diverged (the loss became nan at step 1); the table holds the others; a "
                     "comparison trains its variants at one rate: run it again at a lower one, e.g. --learning_rate "
                     "6e-05")  # fmt: skip
    table = (output / "results.md").read_text()
    assert "| ten | - | the loss became nan at step 1 |" in table and "| transformer | 0.0" in table
    assert main(["compare", "--resume", str(output)]) == 1  # kept as it was: it would diverge again
    assert "=== ten: finished earlier, kept ===" in capsys.readouterr().out
