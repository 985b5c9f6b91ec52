"""ten compare and ten bench on tiny sizes: they run, and write the tables, JSON and plots they promise."""

from __future__ import annotations

import json

import pytest

from ten.cli import main
from ten.experiments.bench import BenchSettings, growth, markdown, run_bench, write_outputs
from ten.experiments.compare import parse_variants, run_comparison
from ten.training import TrainArguments


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
    settings = BenchSettings(d_model=32, n_layers=1, num_eigenstates=8, lengths=(32, 64), tokens_per_batch=128,
                             contexts=(8, 16), decode_batches=(1, 2), new_tokens=2, reps=1,
                             weight_read_mib=1)  # fmt: skip
    results = run_bench(settings, log=lambda _: None)
    assert [r["T"] for r in results["lengths"]] == [32, 64]
    first = results["lengths"][0]
    assert first["ten"]["batch"] == first["transformer"]["batch"] == 4
    assert all(first[m]["train_step_ms"] > 0 and first[m]["tokens_per_s"] > 0 for m in ("ten", "transformer"))
    assert [(r["context"], r["batch"]) for r in results["generation"]] == [(8, 1), (16, 1), (8, 2), (16, 2)]
    assert growth(results, "ten", "forward_ms") is not None
    assert results["weight_reads"]["matvec_gbps"] > 0 and results["weight_reads"]["read_gbps"] > 0
    assert "step ratio" in markdown(results) and "batch-1 matmuls read weights" in markdown(results)
    assert all(first[m]["train_tflop"] > 0 and first[m]["train_tflops"] > 0 for m in ("ten", "transformer"))
    assert results["matmul_peak_tflops"] > 0 and "TEN MFU" in markdown(results) and "MFU: FLOPs counted" in markdown(
        results)
    write_outputs(results, tmp_path)
    assert (tmp_path / "bench_scaling.png").stat().st_size > 1000 and (tmp_path / "bench.json").is_file()
