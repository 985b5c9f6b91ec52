"""The `ten` command: user mistakes end in one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import pytest

from ten.cli import main


def test_demo_runs_on_a_local_text_file(tmp_path, capsys):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("All the world's a stage, and all the men and women merely players. " * 200)
    assert main(["demo", "--dataset", str(corpus), "--max_new_tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "untrained loss" in out and "parameters" in out


def test_missing_dataset_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["demo", "--dataset", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ten demo: error: unknown dataset") and err.count("\n") == 1


def test_unknown_flag_exits_2():
    with pytest.raises(SystemExit) as info:
        main(["demo", "--no_such_flag"])
    assert info.value.code == 2
