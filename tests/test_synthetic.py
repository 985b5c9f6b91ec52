"""`ten synthetic`: the grid runs end to end, tests read long sequences through the state, bad settings are one line."""

import json

import torch

from temporal_eigenstate_networks.cli import main
from temporal_eigenstate_networks.data.synthetic_tasks import TASKS, accuracy
from temporal_eigenstate_networks.experiments.synthetic import (
    Cell,
    GridSettings,
    Result,
    best_of_sweep,
    build,
    plan_grid,
    score,
)


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ten synthetic: error: "), err
    return err


def test_bad_settings_end_in_one_line_before_training(capsys, tmp_path):
    mqar = ["synthetic", "--task", "mqar", "--output_dir", str(tmp_path / "out")]
    assert "needs seq_len >= 160" in one_line_error(capsys, [*mqar, "--num_kv_pairs", "40"])
    assert "vocab" in one_line_error(capsys, [*mqar, "--vocab_size", "6"])
    assert "unknown variant mamba" in one_line_error(capsys, [*mqar, "--variants", "mamba"])
    err = one_line_error(capsys, ["synthetic", "--task", "selective_copying", "--lengths", "20"])
    assert "seq_len" in err
    assert not (tmp_path / "out").exists()


def test_a_small_grid_writes_its_table_plot_and_every_row(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = ["synthetic", "--task", "induction_heads", "--variants", "ten,transformer", "--d_models", "16",
            "--lengths", "16", "--test_lengths", "16,64", "--learning_rates", "1e-3,3e-3", "--steps", "3",
            "--batch_size", "4", "--test_examples", "8", "--num_heads", "2", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 2 * 2 * 2  # variants x rates x test lengths
    assert {r["test_seq_len"] for r in rows} == {16, 64} and all(r["scored"] == 8 for r in rows)
    table = (out / "results.md").read_text()
    assert table.count("| ten |") == 2 and table.count("| transformer |") == 2  # the best rate of each model only
    assert (out / "accuracy.png").stat().st_size > 0
    ten_rows = [r for r in rows if r["variant"] == "ten"]
    assert {r["state_bytes_per_layer"] for r in ten_rows} == {16 * 8}  # K = d_model complex64, at any length


def test_the_grid_is_planned_from_the_settings_with_the_tasks_rules():
    settings = GridSettings(task="mqar", variants=["ten", "transformer"], d_models=[16, 32], learning_rates=[1e-3],
                            steps=2, batch_size=4, test_examples=8, lengths=[64], mlp=True, num_heads=2)  # fmt: skip
    grid = plan_grid(settings)
    assert [(c.variant, c.d_model) for c in grid.cells] == [(v, d) for d in (16, 32) for v in ("ten", "transformer")]
    cell = grid.cells[0]
    assert cell.options["num_kv_pairs"] is None  # a length given: Zoology's pairs for it
    assert cell.sizes == {"num_heads": 2, "mlp_hidden": None} and cell.test_seq_lens == (64,)
    assert grid.title.startswith("mqar (CPU settings; ")


def test_the_best_rate_is_chosen_by_accuracy_at_the_training_length():
    def row(rate, test_len, acc):
        return Result("mqar", "ten", 64, 64, test_len, rate, acc, 10, 512, 1000, 1.0, 1.0)

    rows = [row(1e-3, 64, 0.9), row(1e-3, 256, 0.1), row(3e-3, 64, 0.5), row(3e-3, 256, 0.8)]
    assert {r.learning_rate for r in best_of_sweep(rows)} == {1e-3}


def test_long_test_sequences_read_through_the_state_score_what_a_whole_forward_does():
    cell = Cell(task="mqar", variant="ten", d_model=16, train_seq_len=32, test_seq_lens=(128,), learning_rate=1e-3,
                options={"vocab_size": 160, "num_kv_pairs": 8}, sizes={"num_heads": 2}, test_examples=6)  # fmt: skip
    torch.manual_seed(0)
    model = build(cell, torch.device("cpu")).eval()
    streamed, scored = score(model, cell, 128, torch.device("cpu"))
    batch = TASKS["mqar"].generate(6, 128, seed=-1 % (1 << 62), **cell.options)
    with torch.no_grad():
        correct, total = accuracy(model(batch.inputs), batch.targets)
    assert scored == total == 6 * 8 and streamed == correct / total


def test_loss_by_position_reads_windows_longer_than_training(corpus, tmp_path, capsys):
    from .test_training import TINY

    run = tmp_path / "run"
    argv = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "2", "--selective_range", "0.5"]
    assert main([*argv, "--output_dir", str(run)]) == 0
    assert json.loads((run / "checkpoints" / "final" / "config.json").read_text())["selective_range"] == 0.5
    out = tmp_path / "positions"
    argv = ["positions", "--checkpoint", str(run), "--dataset", str(corpus), "--length", "128", "--sequences", "2",
            "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    (result,) = json.loads((out / "positions.json").read_text())
    assert result["train_length"] == 32 and len(result["loss"]) == 128
    assert "| 1-32 | 33-64 | 65-128 |" in (out / "positions.md").read_text()
    capsys.readouterr()
    argv[argv.index("128")] = "100000"
    assert main([*argv, "--overwrite"]) == 2
    assert "too few for one window" in capsys.readouterr().err


def test_positions_and_analyze_read_the_runs_own_data_and_never_replace_earlier_outputs(
    corpus, tmp_path, capsys, monkeypatch
):
    from .test_training import TINY

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(corpus), *TINY, "--max_steps", "1", "--output_dir", str(run)]) == 0
    for command, extra, output, names in (
        ("positions", ["--length", "64", "--sequences", "2"], "runs/positions", ("positions.md",)),
        ("analyze", ["--length", "32", "--sequences", "2"], "runs/analyze", ("analysis.md", "energy.png")),
    ):
        capsys.readouterr()
        argv = [command, "--checkpoint", str(run), *extra, "--device", "cpu"]
        assert main(argv) == 0 and main(argv) == 0  # the second call takes the next folder
        out = capsys.readouterr().out
        assert "corpus.txt" in out and "shakespeare" not in out.lower()  # the run's data, named
        first, second = tmp_path / output, tmp_path / f"{output}-2"
        assert all((first / name).is_file() and (second / name).is_file() for name in names)
        assert main([*argv, "--output_dir", str(first)]) == 2
        assert "holds an earlier" in capsys.readouterr().err
        assert main([*argv, "--output_dir", str(first), "--overwrite"]) == 0
        assert main([*argv, "--checkpoint", str(tmp_path / "missing")]) == 2
        assert not (tmp_path / f"{output}-3").exists()  # a failed call gives its folder back
