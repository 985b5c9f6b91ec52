"""A run's data is known by its content: recorded at the start, checked on resume, and prepared folders that
cannot be trusted are refused."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from temporal_eigenstate_networks.cli import main
from temporal_eigenstate_networks.data import load_token_data, prepare_token_files
from temporal_eigenstate_networks.data.errors import DataError
from temporal_eigenstate_networks.data.identity import DataIdentity, files_identity
from temporal_eigenstate_networks.experiments.compare import data_change_lines

from .test_overwrite import one_line_error
from .test_training import TINY

LINE = "Now is the winter of our discontent made glorious summer by this sun of York.\n"
OTHER = "But soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\n"


def state(run: Path) -> dict:
    return json.loads((run / "checkpoints" / "final" / "trainer_state.json").read_text())


def train(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(["train", *TINY, *argv]) == 0
    return capsys.readouterr().out


@pytest.fixture
def moved_run(tmp_path, monkeypatch, capsys) -> Path:
    """A run trained on ./data.txt in one folder, then moved to another folder holding another data.txt."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / "data.txt").write_text(LINE * 60)
    (second / "data.txt").write_text(OTHER * 60)
    monkeypatch.chdir(first)
    train(capsys, "--dataset", "data.txt", "--max_steps", "2", "--output_dir", "run")
    shutil.move(first / "run", second / "run")
    monkeypatch.chdir(second)
    return second / "run"


def test_a_run_records_what_it_trained_on(moved_run):
    data = state(moved_run)["data"]
    first = moved_run.parent.parent / "first" / "data.txt"
    assert data == files_identity("data.txt", "text", [first], first).to_dict()


def test_a_moved_run_reads_its_own_data_not_a_same_named_file(moved_run, capsys):
    out = train(capsys, "--resume", "run", "--max_steps", "3")
    assert state(moved_run)["step"] == 3
    assert f"data: {moved_run.parent.parent / 'first' / 'data.txt'}" in out  # the recorded place, named


def test_a_same_named_file_with_other_content_is_refused_naming_both(moved_run, capsys):
    (moved_run.parent.parent / "first" / "data.txt").unlink()  # the run's data is gone: only the other one is left
    err = one_line_error(capsys, ["train", "--resume", "run", "--max_steps", "3"])
    first, second = state(moved_run)["data"]["sha256"], hashlib.sha256(Path("data.txt").read_bytes()).hexdigest()
    assert first[:12] in err and second[:12] in err and str(Path("data.txt").resolve()) in err
    assert "--allow_data_change" in err and state(moved_run)["step"] == 2
    Path("data.txt").rename("elsewhere.txt")
    assert "no longer there, nor is data.txt here" in one_line_error(capsys, ["train", "--resume", "run"])


def test_the_same_content_under_another_path_resumes(moved_run, capsys):
    elsewhere = moved_run.parent / "copy.txt"
    shutil.move(moved_run.parent.parent / "first" / "data.txt", elsewhere)
    out = train(capsys, "--resume", "run", "--max_steps", "3", "--dataset", str(elsewhere))
    assert "the same content" in out and state(moved_run)["data"]["resolved"] == str(elsewhere.resolve())


def test_allow_data_change_continues_once_and_records_the_change(moved_run, capsys):
    before = state(moved_run)["data"]
    out = train(capsys, "--resume", "run", "--max_steps", "3", "--dataset", "data.txt", "--allow_data_change")
    saved = state(moved_run)
    assert "--allow_data_change: the run trained on" in out
    assert saved["data_changes"] == [{"step": 2, "before": before, "after": saved["data"]}]
    (moved_run.parent / "data.txt").write_text(LINE * 60)
    err = one_line_error(capsys, ["train", "--resume", "run", "--max_steps", "4"])  # checked again: the flag was once
    assert before["sha256"][:12] in err and saved["data"]["sha256"][:12] in err


def test_allow_data_change_without_resume_is_refused(tmp_path, capsys):
    err = one_line_error(capsys, ["train", "--allow_data_change", "--output_dir", str(tmp_path / "run")])
    assert "applies to a resumed run" in err


def test_a_run_saved_before_data_identity_resumes_with_a_note(moved_run, capsys):
    path = moved_run / "checkpoints" / "final" / "trainer_state.json"
    saved = json.loads(path.read_text())
    del saved["data"], saved["data_changes"]
    path.write_text(json.dumps(saved))
    out = train(capsys, "--resume", "run", "--max_steps", "3")
    assert "recorded no identity of its data" in out and state(moved_run)["data"]["given"] == "data.txt"


# ---------------------------------------------------------------- prepared folders


def test_prepare_refuses_a_folder_that_holds_files_and_replaces_it_whole_with_overwrite(corpus, tmp_path, capsys):
    prepared = tmp_path / "tokens"
    prepare_token_files(str(corpus), "byte", prepared)
    meta = json.loads((prepared / "meta.json").read_text())
    err = one_line_error(capsys, ["prepare", "--dataset", str(corpus), "--output_dir", str(prepared)])
    assert "not empty" in err and "--overwrite" in err
    (prepared / "train.u32").write_bytes(b"\0" * 8)  # as an earlier prepare with a large vocabulary left it
    other = tmp_path / "other.txt"
    other.write_text(OTHER * 60)
    assert main(["prepare", "--dataset", str(other), "--output_dir", str(prepared), "--overwrite"]) == 0
    assert not (prepared / "train.u32").exists()  # replaced whole, not written into
    assert json.loads((prepared / "meta.json").read_text())["sha256"] != meta["sha256"]


def test_prepare_never_overwrites_the_corpus_it_reads(tmp_path, capsys):
    prepared = tmp_path / "tokens"
    prepared.mkdir()
    inside = prepared / "corpus.txt"
    inside.write_text(LINE * 60)
    err = one_line_error(capsys, ["prepare", "--dataset", str(inside), "--output_dir", str(prepared), "--overwrite"])
    assert "holds the dataset" in err and inside.read_text() == LINE * 60


def test_meta_records_the_hash_of_the_files_as_written(corpus, tmp_path):
    prepared = tmp_path / "tokens"
    meta = prepare_token_files(str(corpus), "byte", prepared)
    files = [prepared / "train.bin", prepared / "val.bin"]
    hashed = files_identity(str(prepared), "prepared", files, prepared)
    assert (meta["bytes"], meta["sha256"]) == (hashed.bytes, hashed.sha256)
    assert load_token_data("", tokenized_dir=prepared).identity == hashed
    del meta["bytes"], meta["sha256"]  # a folder prepared before ten recorded them: hashed when read
    (prepared / "meta.json").write_text(json.dumps(meta))
    assert load_token_data("", tokenized_dir=prepared).identity == hashed


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_token_file_that_disagrees_with_meta_is_refused(corpus, tmp_path, split):
    prepared = tmp_path / "tokens"
    prepare_token_files(str(corpus), "byte", prepared)
    file = prepared / f"{split}.bin"
    file.write_bytes(file.read_bytes()[:-4])  # an even cut: still whole uint16 tokens
    with pytest.raises(DataError, match=rf"{split}\.bin has .* bytes, but meta\.json gives"):
        load_token_data("", tokenized_dir=prepared)


def test_a_run_resumed_on_a_folder_prepared_again_from_other_text_is_refused(corpus, tmp_path, capsys):
    prepared, run = tmp_path / "tokens", tmp_path / "run"
    prepare_token_files(str(corpus), "byte", prepared)
    train(capsys, "--tokenized_dir", str(prepared), "--max_steps", "2", "--output_dir", str(run))
    other = tmp_path / "other.txt"
    other.write_text(OTHER * 60)
    prepare_token_files(str(other), "byte", prepared, overwrite=True)
    err = one_line_error(capsys, ["train", "--resume", str(run), "--max_steps", "3"])
    assert "the run trained on" in err and state(run)["step"] == 2


def test_a_short_validation_split_names_the_prepared_folder(corpus, tmp_path, capsys):
    prepared = tmp_path / "tokens"
    prepare_token_files(str(corpus), "byte", prepared)
    meta = json.loads((prepared / "meta.json").read_text())
    (prepared / "val.bin").write_bytes((prepared / "val.bin").read_bytes()[:20])
    meta["val_tokens"], meta["sha256"] = 10, "0" * 64
    (prepared / "meta.json").write_text(json.dumps(meta))
    argv = ["train", *TINY, "--tokenized_dir", str(prepared), "--output_dir", str(tmp_path / "run")]
    err = one_line_error(capsys, argv)
    assert f"validation split of --tokenized_dir {prepared}" in err and "shakespeare" not in err


def test_positions_reads_a_moved_run_on_its_own_data_and_refuses_changed_data(moved_run, capsys):
    capsys.readouterr()
    argv = ["positions", "--checkpoint", "run", "--length", "64", "--sequences", "1", "--output_dir", "positions"]
    assert main(argv) == 0
    first = moved_run.parent.parent / "first" / "data.txt"
    assert str(first) in capsys.readouterr().out  # not ./data.txt, which is other text
    first.write_text(OTHER * 60)
    err = one_line_error(capsys, [*argv, "--overwrite"])
    assert "trained on data.txt" in err and "give the text to read with --dataset" in err


def test_a_comparison_table_says_which_run_changed_its_data():
    before = DataIdentity("d.txt", "text", "/x/d.txt", 12, "a" * 64).to_dict()
    after = DataIdentity("d.txt", "text", "/x/d.txt", 20, "b" * 64).to_dict()
    rows = [
        {"variant": "ten", "seed": 42},
        {"variant": "transformer", "seed": 42, "data_changes": [{"step": 1500, "before": before, "after": after}]},
    ]
    assert data_change_lines(rows) == [
        "transformer: its data changed at step 1,500 (--allow_data_change), from d.txt (/x/d.txt, 12 bytes, sha256 "
        "aaaaaaaaaaaa) to d.txt (/x/d.txt, 20 bytes, sha256 bbbbbbbbbbbb)."
    ]
    assert data_change_lines([{**rows[1], "seed": 43}, rows[0]])[0].startswith("transformer (seed 43): ")
    assert data_change_lines(rows[:1]) == []  # a run from before data identity, or one that kept its data
