"""lm-evaluation-harness on ten's local tasks: the task files, the builder of their data, `ten eval`.

The model is a tiny random TEN with the byte tokenizer; nothing here reaches the network.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from temporal_eigenstate_networks.atomic import WriteError
from temporal_eigenstate_networks.cli import main
from temporal_eigenstate_networks.data.corpus import (
    SHAKESPEARE_CACHE_NAME,
    SHAKESPEARE_TEXT_SHA256,
    cache_dir,
    sha256_file,
)
from temporal_eigenstate_networks.eval_tasks import build
from temporal_eigenstate_networks.hf import evaluate as harness

TASKS = ("ten_shakespeare_ppl", "ten_shakespeare_mc")
CONTEXT = 128  # tokens: an MC choice (the rest of a line, up to ~60 bytes) must fit beside some of its context
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# ---------------------------------------------------------------- fixtures


def fake_play(scenes: int = 100) -> str:
    """Text shaped like the corpus: speaker headings, speeches, stage directions, blank lines between."""
    blocks = []
    for scene in range(scenes):
        blocks.append(f"SCENE {scene}. A room in the castle")
        for speech in range(6):
            speaker = ("HAMLET.", "HORATIO.", "SIR TOBY.")[speech % 3]
            lines = [f"Line {k} of speech {speech} in scene {scene}, spoken with some care" for k in range(7)]
            blocks.append("\n".join([speaker, *lines]))
        blocks.append("[Exeunt.]")
    return "\n\n".join(blocks) + "\n"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf-datasets"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A ten checkpoint folder (2-layer TEN, byte tokenizer), as `ten train` writes its model and tokenizer."""
    pytest.importorskip("lm_eval")
    import torch

    from temporal_eigenstate_networks import TemporalEigenstateConfig, TemporalEigenstateNetwork
    from temporal_eigenstate_networks.data import ByteTokenizer, save_tokenizer

    folder = tmp_path_factory.mktemp("tiny-ten")
    torch.manual_seed(0)
    config = TemporalEigenstateConfig(d_model=32, n_layers=2, num_eigenstates=8, num_heads=2, max_seq_len=CONTEXT)
    TemporalEigenstateNetwork(config).save_pretrained(folder)
    save_tokenizer(ByteTokenizer(), folder)
    return folder


def fake_run(model: Path, root: Path, step: int = 10) -> Path:
    """A run folder as `ten train` leaves it, its checkpoint holding the tiny model's files."""
    run = root / "run"
    checkpoint = run / "checkpoints" / f"step-{step:07d}"
    shutil.copytree(model, checkpoint)
    for name in ("optimizer.safetensors", "rng.safetensors"):
        (checkpoint / name).write_bytes(b"")  # present, as find_checkpoint requires; never read here
    state = {"format": "ten-checkpoint", "version": 1, "step": step, "best_val_loss": 2.0,
             "args": {"dataset": "shakespeare", "tokenizer": "byte"},
             "optimizer": {"param_groups": [], "scalars": {}}}  # fmt: skip
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    (checkpoint / "tokenizer_meta.json").write_text(json.dumps({"kind": "byte", "name": "byte", "vocab_size": 256}))
    records = [{"event": "eval", "step": s, "val_ce": ce, "val_bits_per_byte": ce / math.log(2)}
               for s, ce in ((5, 3.0), (step, 1.5))]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [{"event": "train"}, *records]))
    return run


def cached_corpus() -> str | None:
    """The Shakespeare text when it is already cached here (never downloaded by the tests)."""
    path = cache_dir() / SHAKESPEARE_CACHE_NAME
    if not path.is_file() or sha256_file(path) != SHAKESPEARE_TEXT_SHA256:
        return None
    return path.read_text(encoding="utf-8")


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ---------------------------------------------------------------- the builder of the task data


def within_length(choice: str, gold: str) -> bool:
    """Within 20% or 5 characters of the gold's length; the builder in fact makes them equal."""
    return abs(len(choice) - len(gold)) <= max(0.2 * len(gold), 5)


def test_builder_is_deterministic_and_gold_is_the_rest_of_the_line():
    text = fake_play()
    val = build.validation_text(text)
    first, second = build.build(text), build.build(text)
    assert first == second
    assert set(first) == {build.PPL_FILE, build.MC_FILE}

    items = build.multiple_choice_items(val, count=20)
    assert len(items) == 20
    for item in items:
        assert len(item["choices"]) == build.MC_CHOICES
        assert len({c.casefold() for c in item["choices"]}) == build.MC_CHOICES
        gold = item["choices"][item["label"]]
        whole = item["context"] + " " + gold  # lm-eval's context + target_delimiter + choice
        assert val[item["offset"] : item["offset"] + len(whole)] == whole
        assert val[item["offset"] + len(whole)] == "\n"  # the gold ends where the line ends
        context_lines = item["context"].split("\n")
        assert len(context_lines) == build.MC_CONTEXT_LINES + 1
        cut_line = context_lines[-1]  # the start of the line whose rest is asked for
        assert len(cut_line.split()) >= 2 and len(cut_line) <= len(cut_line + " " + gold) / 2
        assert not item["context"].endswith(" ") and all(c and not c[0].isspace() for c in item["choices"])
        distractors = [c for i, c in enumerate(item["choices"]) if i != item["label"]]
        assert all(" " + d + "\n" in val and "\n" not in d for d in distractors)  # rests of other lines
        assert all(within_length(d, gold) and len(d) == len(gold) for d in distractors)
    assert len({item["label"] for item in items}) > 1

    docs = build.perplexity_documents(val, count=5, min_chars=300, max_chars=900)
    assert len(docs) == 5
    for doc in docs:
        assert 300 <= len(doc["text"]) <= 900
        assert val[doc["offset"] : doc["offset"] + len(doc["text"])] == doc["text"]
        assert not doc["text"].startswith("\n") and not doc["text"].endswith("\n")


def test_builder_writes_and_checks(tmp_path):
    corpus = tmp_path / "play.txt"
    corpus.write_text(fake_play())
    out = tmp_path / "tasks"
    assert build.main(["--corpus", str(corpus), "--output_dir", str(out)]) == 0
    assert build.main(["--corpus", str(corpus), "--output_dir", str(out), "--check"]) == 0
    (out / build.MC_FILE).write_text("{}\n")
    assert build.main(["--corpus", str(corpus), "--output_dir", str(out), "--check"]) == 1


def test_committed_task_data_is_what_the_builder_writes():
    text = cached_corpus()
    if text is None:
        pytest.skip("the Shakespeare corpus is not cached here")
    for name, content in build.build(text).items():
        assert (harness.task_dir() / name).read_text(encoding="utf-8") == content, name


def test_committed_task_data_sizes():
    rows = {name: [json.loads(line) for line in (harness.task_dir() / name).read_text().splitlines()]
            for name in (build.PPL_FILE, build.MC_FILE)}  # fmt: skip
    assert 40 <= len(rows[build.PPL_FILE]) <= 100
    assert all(1000 <= len(doc["text"]) <= 3000 for doc in rows[build.PPL_FILE])
    assert len(rows[build.MC_FILE]) == 200
    assert all(0 <= item["label"] < 4 and len(item["choices"]) == 4 for item in rows[build.MC_FILE])
    for item in rows[build.MC_FILE]:
        gold = item["choices"][item["label"]]
        assert all(within_length(choice, gold) and len(choice) == len(gold) for choice in item["choices"])
        assert not item["context"].endswith((" ", "\n")) and not any(c[0].isspace() for c in item["choices"])


# ---------------------------------------------------------------- the tasks in lm-eval


def test_task_names_and_files():
    assert harness.task_names() == sorted(TASKS)
    assert harness.parse_tasks("ten_shakespeare_mc, ten_shakespeare_ppl") == list(reversed(TASKS))
    assert harness.parse_tasks(["ten_shakespeare_ppl", "ten_shakespeare_ppl"]) == ["ten_shakespeare_ppl"]
    with pytest.raises(ValueError, match="unknown task nope"):
        harness.parse_tasks("ten_shakespeare_ppl,nope")
    with pytest.raises(ValueError, match="comma-separated"):
        harness.parse_tasks("ten_shakespeare_ppl,")


def test_task_yamls_load_in_lm_eval(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager, get_task_dict

    monkeypatch.chdir(tmp_path)  # data files are found beside the YAMLs, not in the working directory
    manager = TaskManager(include_path=str(harness.task_dir()), include_defaults=False)
    assert set(TASKS) <= set(manager.all_tasks)
    if hasattr(manager, "load"):  # lm-eval 0.4.12 on; get_task_dict, deprecated there, before
        loaded = manager.load(list(TASKS))["tasks"]
    else:
        loaded = get_task_dict(list(TASKS), manager)
    ppl, mc = loaded["ten_shakespeare_ppl"], loaded["ten_shakespeare_mc"]
    assert ppl.OUTPUT_TYPE == "loglikelihood_rolling" and mc.OUTPUT_TYPE == "multiple_choice"
    docs = list(ppl.test_docs())
    assert len(docs) == 60 and ppl.doc_to_target(docs[0]) == docs[0]["text"]
    items = list(mc.test_docs())
    assert len(items) == 200
    item = items[0]
    assert mc.doc_to_text(item) == item["context"] and mc.doc_to_choice(item) == item["choices"]
    assert mc.doc_to_target(item) == item["label"]
    requests = mc.construct_requests(doc=item, ctx=mc.fewshot_context(item, 0), metadata=("ten_shakespeare_mc", 0, 1))
    conditional = [(item["context"], " " + choice) for choice in item["choices"]]
    unconditional = [("", " " + choice) for choice in item["choices"]]  # for acc_mutual_info
    assert [r.arguments for r in requests] == conditional + unconditional


# ---------------------------------------------------------------- running them


def test_python_api_runs_both_tasks(tiny_model):
    results = harness.evaluate(tiny_model, TASKS, limit=2, batch_size=4, device="cpu")
    ppl, mc = results["results"]["ten_shakespeare_ppl"], results["results"]["ten_shakespeare_mc"]
    for key in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert finite(ppl[key]), key
    assert 6.0 < ppl["bits_per_byte,none"] < 10.0  # a random 256-token model: about 8 bits per byte
    for key in ("acc,none", "acc_norm,none", "acc_mutual_info,none"):
        assert finite(mc[key]) and 0.0 <= mc[key] <= 1.0, key
    rows = harness.metric_rows(results)
    named = {(row.task, row.metric) for row in rows}
    assert {("ten_shakespeare_ppl", "bits_per_byte"), ("ten_shakespeare_mc", "acc")} <= named
    table = harness.format_table(rows)
    assert table.splitlines()[0].split() == ["task", "metric", "value"] and "bits_per_byte" in table


def test_lm_eval_command_runs_a_local_task_on_an_exported_model(tiny_model, tmp_path):
    """The ordinary command, in a process that never imports ten itself: the exported folder's code does."""
    command = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or shutil.which("lm_eval")
    if command is None:
        pytest.skip("the lm_eval command is not installed")
    exported = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(tiny_model), "--hf", str(exported)]) == 0
    env = {**os.environ, **OFFLINE, "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}
    done = subprocess.run(
        [command, "--model", "hf", "--model_args", f"pretrained={exported},trust_remote_code=True", "--include_path",
         str(harness.task_dir()), "--tasks", "ten_shakespeare_ppl", "--limit", "2", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ten_shakespeare_ppl" in done.stdout and "bits_per_byte" in done.stdout


def test_ten_eval_on_a_run_folder_compares_with_training(tiny_model, tmp_path, capsys):
    run = fake_run(tiny_model, tmp_path)
    output = tmp_path / "results.json"
    argv = ["eval", "--checkpoint", str(run), "--tasks", "ten_shakespeare_ppl", "--limit", "2", "--device", "cpu",
            "--batch_size", "2", "--output", str(output)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "step-0000010" in out and "bits_per_byte" in out
    assert "ten validation (trained on shakespeare): ce 1.5000 nats/token" in out
    assert f"{1.5 / math.log(2):.4f} bits/byte" in out
    assert "harness ten_shakespeare_ppl: bits_per_byte" in out
    assert finite(json.loads(output.read_text())["results"]["ten_shakespeare_ppl"]["bits_per_byte,none"])


def test_ten_eval_s_report_and_json_come_from_the_library(tmp_path):
    results = {"results": {"task": {"acc,none": 0.5, "acc_stderr,none": 0.1}}, "when": Path("x")}
    report = harness.report(tmp_path, results, limit=2)  # no run around it: no validation figures
    assert report.startswith(f"\n{tmp_path} (at most 2 documents per task)\n") and "0.5000 ± 0.1000" in report
    harness.write_results(results, tmp_path / "out" / "results.json")
    assert json.loads((tmp_path / "out" / "results.json").read_text())["when"] == "x"  # not JSON: its text
    (tmp_path / "a-file").write_text("")
    with pytest.raises(WriteError, match="^cannot write --output .*a-file/results.json: "):
        harness.write_results(results, tmp_path / "a-file" / "results.json")


# ---------------------------------------------------------------- ten's validation figures


def test_ten_validation_figures(tiny_model, tmp_path):
    run = fake_run(tiny_model, tmp_path)
    checkpoint = run / "checkpoints" / "step-0000010"
    found = harness.ten_validation(checkpoint)
    assert (found.step, found.ce, found.dataset) == (10, 1.5, "shakespeare")
    assert found.bits_per_byte == pytest.approx(1.5 / math.log(2)) and "metrics.jsonl" in found.source

    (run / "metrics.jsonl").unlink()  # no record of the step: the best loss of trainer_state.json
    found = harness.ten_validation(checkpoint)
    assert found.ce == 2.0 and found.bits_per_byte == pytest.approx(2.0 / math.log(2))
    assert "trainer_state.json" in found.source
    assert harness.ten_validation(tiny_model) is None  # not a training checkpoint


# ---------------------------------------------------------------- `ten eval` mistakes: one line, exit 2


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ten eval: error: "), err
    return err


def test_ten_eval_bad_input(tiny_model, tmp_path, capsys, monkeypatch):
    err = one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "missing"), "--device", "cpu"])
    assert f"{tmp_path / 'missing'} does not exist" in err
    err = one_line_error(capsys, ["eval", "--checkpoint", str(tiny_model), "--tasks", "hellaswag", "--device", "cpu"])
    assert "unknown task hellaswag" in err and "ten_shakespeare_ppl" in err

    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text("{}")
    err = one_line_error(capsys, ["eval", "--checkpoint", str(not_a_model), "--device", "cpu"])
    assert "cannot load" in err

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    err = one_line_error(capsys, ["eval", "--checkpoint", str(tiny_model), "--device", "cpu"])
    assert "pip install 'temporal-eigenstate-networks[hf]'" in err


# ---------------------------------------------------------------- `ten eval`: every check first, finished tasks kept


@pytest.fixture
def evaluations(monkeypatch):
    """lm-eval's simple_evaluate, counted: the tasks it was asked to evaluate, in order (it still runs)."""
    lm_eval = pytest.importorskip("lm_eval")
    asked, real = [], lm_eval.simple_evaluate

    def counted(*args, **kwargs):
        asked.append(list(kwargs["tasks"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", counted)
    return asked


def refused(capsys, argv) -> str:
    """The last stderr line of a `ten eval` refused with exit code 2 (libraries may log lines above it)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("ten eval: error: "), err
    return err


def test_ten_eval_checks_its_output_before_evaluating(tiny_model, tmp_path, capsys, evaluations):
    eval_argv = ["eval", "--checkpoint", str(tiny_model), "--limit", "1", "--device", "cpu"]
    earlier = tmp_path / "results.json"
    earlier.write_text("earlier results\n")
    err = refused(capsys, [*eval_argv, "--output", str(earlier)])
    assert f"--output {earlier} exists" in err and "--overwrite" in err
    assert earlier.read_text() == "earlier results\n"

    assert "is a folder" in refused(capsys, [*eval_argv, "--output", str(tmp_path)])
    inside = tiny_model / "results.json"
    assert "lies inside the checkpoint" in refused(capsys, [*eval_argv, "--output", str(inside)])
    assert not inside.exists()
    (tmp_path / "a-file").write_text("")
    err = refused(capsys, [*eval_argv, "--output", str(tmp_path / "a-file" / "results.json")])
    assert "cannot be written" in err
    assert evaluations == []  # nothing was evaluated

    assert main([*eval_argv, "--tasks", "ten_shakespeare_ppl", "--output", str(earlier), "--overwrite"]) == 0
    assert list(json.loads(earlier.read_text())["results"]) == ["ten_shakespeare_ppl"]


def test_ten_eval_checks_every_task_before_evaluating_any(tiny_model, tmp_path, capsys, evaluations, monkeypatch):
    argv = ["eval", "--checkpoint", str(tiny_model), "--limit", "2", "--device", "cpu"]
    # The first task (rolling perplexity) reads any length; the second's answers need more than 8 tokens.
    err = refused(capsys, [*argv, "--max_length", "8"])
    assert "task ten_shakespeare_mc scores answers of up to" in err and "pass --max_length" in err
    assert evaluations == []

    tasks = tmp_path / "tasks"  # the tasks, the second's data missing
    shutil.copytree(harness.task_dir(), tasks)
    (tasks / "ten_shakespeare_mc.jsonl").unlink()
    monkeypatch.setattr(harness, "task_dir", lambda: tasks)
    err = refused(capsys, [*argv, "--output", str(tmp_path / "results.json")])
    assert "task ten_shakespeare_mc cannot read its data" in err
    assert evaluations == [] and not (tmp_path / "results.json").exists()


def test_ten_eval_keeps_the_finished_tasks_when_a_later_one_fails(tiny_model, tmp_path, capsys, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    real = lm_eval.simple_evaluate

    def second_fails(*args, **kwargs):
        if kwargs["tasks"] == ["ten_shakespeare_mc"]:
            raise RuntimeError("out of memory\nmore detail")
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", second_fails)
    output = tmp_path / "results.json"
    argv = ["eval", "--checkpoint", str(tiny_model), "--limit", "2", "--device", "cpu", "--output", str(output)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    err = captured.err.splitlines()[-1]
    assert err == (f"ten eval: error: task ten_shakespeare_mc failed: RuntimeError: out of memory (the results of "
                   f"ten_shakespeare_ppl, which finished: written: {output})")  # fmt: skip
    assert "ten_shakespeare_ppl  bits_per_byte" in captured.out  # the finished task's table
    results = json.loads(output.read_text())["results"]
    assert list(results) == ["ten_shakespeare_ppl"] and finite(results["ten_shakespeare_ppl"]["bits_per_byte,none"])
