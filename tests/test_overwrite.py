"""--overwrite never removes what the command reads: the run an export reads, the data a run trains on."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest

from temporal_eigenstate_networks.atomic import overlap
from temporal_eigenstate_networks.cli import main
from temporal_eigenstate_networks.training import TrainArguments, Trainer


def files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_overlap_names_how_two_paths_meet(tmp_path):
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "final"
    assert overlap(checkpoint, checkpoint) == "is"
    assert overlap(run, checkpoint) == "holds" and overlap(tmp_path, checkpoint) == "holds"
    assert overlap(checkpoint / "export", checkpoint) == "lies inside"
    assert overlap(run / "export", checkpoint) is None and overlap(tmp_path / "run-2", run) is None
    assert overlap(run / "checkpoints" / ".." / "checkpoints" / "final", checkpoint) == "is"  # resolved


@pytest.mark.skipif(find_spec("transformers") is None, reason="ten export needs transformers (the hf extra)")
def test_export_with_overwrite_onto_the_run_its_parent_or_its_checkpoint_removes_nothing(corpus, tmp_path, capsys):
    run = tmp_path / "runs" / "tiny"
    Trainer(TrainArguments(dataset=str(corpus), d_model=32, n_layers=1, num_eigenstates=8, max_seq_len=32,
                           batch_size=2, eval_batches=1, sample_tokens=0, max_steps=2, save_steps=1,
                           output_dir=str(run))).train()  # fmt: skip
    before = files_under(tmp_path)
    checkpoint = run / "checkpoints" / "final"
    for target, relation in ((run, "holds"), (run.parent, "holds"), (checkpoint, "is"), (checkpoint / "hf", "lies")):
        err = one_line_error(capsys, ["export", "--checkpoint", str(run), "--hf", str(target), "--overwrite"])
        assert f"--hf {target} {relation}" in err and "it reads" in err
    assert files_under(tmp_path) == before


def test_train_with_overwrite_never_deletes_its_own_data(tmp_path, capsys):
    run = tmp_path / "run"
    data = run / "checkpoints" / "corpus.txt"  # the data sits where --overwrite clears an earlier run
    data.parent.mkdir(parents=True)
    data.write_text("Now is the winter of our discontent made glorious summer by this sun of York.\n" * 60)
    argv = ["train", "--dataset", str(data), "--d_model", "32", "--n_layers", "1", "--num_eigenstates", "8",
            "--max_seq_len", "32", "--batch_size", "2", "--max_steps", "1", "--sample_tokens", "0",
            "--output_dir", str(run), "--overwrite"]  # fmt: skip
    err = one_line_error(capsys, argv)
    assert f"--overwrite would delete {run / 'checkpoints'}, which holds {data}" in err
    assert data.is_file()


@pytest.mark.skipif(find_spec("transformers") is None, reason="ten export needs transformers (the hf extra)")
def test_export_with_overwrite_replaces_an_export_but_never_another_run_or_checkpoint(corpus, tmp_path, capsys):
    runs = {}
    for name in ("one", "other"):
        runs[name] = tmp_path / name
        Trainer(TrainArguments(dataset=str(corpus), d_model=32, n_layers=1, num_eigenstates=8, max_seq_len=32,
                               batch_size=2, eval_batches=1, sample_tokens=0, max_steps=1,
                               output_dir=str(runs[name]))).train()  # fmt: skip
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    before = files_under(tmp_path)
    other = runs["other"]
    targets = [(other, "checkpoints, metrics.jsonl"), (other / "checkpoints" / "final", "optimizer.safetensors"),
               (tmp_path / "mine", "notes.txt")]  # fmt: skip
    for target, shown in targets:
        err = one_line_error(capsys, ["export", "--checkpoint", str(runs["one"]), "--hf", str(target), "--overwrite"])
        assert f"--hf {target} holds what ten export does not write ({shown}" in err
    assert files_under(tmp_path) == before
    export = ["export", "--checkpoint", str(runs["one"]), "--hf", str(tmp_path / "export")]
    assert main(export) == 0 and main([*export, "--overwrite"]) == 0  # its own folder: replaced


def test_prepare_with_overwrite_replaces_a_prepared_folder_but_never_other_files(corpus, tmp_path, capsys):
    prepared = tmp_path / "prepared"
    command = ["prepare", "--dataset", str(corpus), "--output_dir", str(prepared), "--overwrite"]
    assert main(command) == 0 and main(command) == 0
    (prepared / "notes.txt").write_text("keep")
    err = one_line_error(capsys, command)
    assert f"--output_dir {prepared} holds what ten prepare does not write (notes.txt)" in err
    assert (prepared / "notes.txt").read_text() == "keep" and (prepared / "train.bin").is_file()
