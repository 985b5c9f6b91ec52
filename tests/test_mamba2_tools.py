"""ten bench, positions, synthetic scoring, export and eval of Mamba-2 (transformers' Mamba2ForCausalLM), tiny."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers", reason="Mamba-2 is transformers' Mamba2ForCausalLM (the hf extra)")
if not hasattr(transformers, "Mamba2ForCausalLM"):
    pytest.skip(f"transformers {transformers.__version__} has no Mamba2ForCausalLM", allow_module_level=True)

from temporal_eigenstate_networks.architectures import mamba2_sizes_like  # noqa: E402
from temporal_eigenstate_networks.cli import main  # noqa: E402
from temporal_eigenstate_networks.config import TemporalEigenstateConfig  # noqa: E402
from temporal_eigenstate_networks.data import load_token_data  # noqa: E402
from temporal_eigenstate_networks.experiments import bench  # noqa: E402
from temporal_eigenstate_networks.experiments.positions import validation_windows  # noqa: E402
from temporal_eigenstate_networks.experiments.synthetic import Cell, build, score  # noqa: E402
from temporal_eigenstate_networks.lm import LanguageModel  # noqa: E402

from .test_training import TINY  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
TRAIN_LENGTH = 32  # TINY's --max_seq_len


def train_run(corpus, output, *flags: str) -> None:
    argv = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "2", "--output_dir", str(output), *flags]
    if "--model" in flags:  # Mamba-2 has no eigenstates: its sizes follow TEN's (the sizing rule)
        argv[argv.index("--num_eigenstates") : argv.index("--num_eigenstates") + 2] = []
    assert main(argv) == 0


@pytest.fixture(scope="module")
def mamba2_run(tmp_path_factory):
    """A run folder of `ten train --model mamba2` (byte tokenizer), trained 2 steps at T = 32, and its corpus."""
    folder = tmp_path_factory.mktemp("mamba2")
    corpus = folder / "corpus.txt"
    corpus.write_text("Now is the winter of our discontent made glorious summer by this sun of York.\n" * 60)
    train_run(corpus, folder / "run", "--model", "mamba2")
    return folder / "run", corpus


def table_rows(markdown: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose header starts with `first_header`, as {column: cell}."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)))
    return rows


# ---------------------------------------------------------------- ten bench


def test_bench_measures_mamba2_beside_ten_and_the_transformer(tmp_path, capsys):
    argv = ["bench", "--d_model", "32", "--n_layers", "1", "--num_eigenstates", "8", "--lengths", "32",
            "--tokens_per_batch", "64", "--contexts", "8,64", "--new_tokens", "2", "--reps", "1", "--device", "cpu",
            "--output_dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["models"] == ["ten", "transformer", "mamba2"] and results["left_out"] is None
    # Sized like the TEN of these sizes by the rule ten train --model mamba2 follows.
    ten = TemporalEigenstateConfig(vocab_size=256, d_model=32, n_layers=1, num_eigenstates=8)
    sizes = results["mamba2_sizes"]
    assert {key: sizes[key] for key in ("expand", "state_size")} == mamba2_sizes_like(ten)
    assert results["parameters"]["ten"] == ten.parameter_count()

    measured = results["lengths"][0]["mamba2"]
    assert measured["train_step_ms"] > 0 and measured["forward_ms"] > 0 and measured["tokens_per_s"] > 0
    assert measured["train_tflop"] > 0 and measured["forward_peak_mib_b1"] is not None  # measured in its own process
    first, last = results["generation"]
    assert first["mamba2"] > 0 and last["mamba2"] > 0
    assert first["state_bytes"]["mamba2"] == last["state_bytes"]["mamba2"] > 0  # one size at any context
    assert last["state_bytes"]["transformer"] == 8 * first["state_bytes"]["transformer"]  # the KV cache grows

    table = (tmp_path / "bench.md").read_text()
    assert table in printed
    (row,) = table_rows(table, "T")
    ten_ms, mamba2_ms = results["lengths"][0]["ten"]["train_step_ms"], measured["train_step_ms"]
    assert row["Mamba-2 fwd ms"] == f"{measured['forward_ms']:,.1f}"
    assert row["Mamba-2 step ms"] == f"{mamba2_ms:,.1f}" and row["step TEN/Mamba-2"] == f"{ten_ms / mamba2_ms:.2f}"
    assert row["step TEN/attn"] != "-" and row["Mamba-2 tok/s"] == f"{measured['tokens_per_s']:,.0f}"
    decoding = table_rows(table, "context")
    assert [r["Mamba-2 ms/step"] for r in decoding] == [f"{first['mamba2']:.2f}", f"{last['mamba2']:.2f}"]
    assert decoding[1]["Mamba-2 / TEN"] == f"{last['mamba2'] / last['ten']:.2f}x"
    assert decoding[0]["Mamba-2 state KiB"] == decoding[1]["Mamba-2 state KiB"]
    assert "Mamba-2 left out" not in table and f"Mamba-2 {results['parameters']['mamba2']:,}" in table


def test_bench_sizes_mamba2_like_the_hybrid_ten_it_measures():
    """--layer_pattern makes TEN's column a hybrid; the transformer stays all attention, Mamba-2 matches the hybrid."""
    settings = bench.BenchSettings(d_model=64, n_layers=2, num_eigenstates=16, layer_pattern="ea")
    models = {name: bench.build(name, settings, 64, torch.device("cpu")) for name in bench.MODELS}
    assert models["ten"].config.layer_pattern == "ea" and not hasattr(models["transformer"].config, "layer_pattern")
    expected = mamba2_sizes_like(models["ten"].config)
    assert {key: getattr(models["mamba2"].config, key) for key in expected} == expected
    plain = mamba2_sizes_like(TemporalEigenstateConfig(vocab_size=256, d_model=64, n_layers=2, num_eigenstates=16))
    assert expected != plain  # the hybrid's attention layer changes the count Mamba-2 is matched to


# ---------------------------------------------------------------- ten positions, ten synthetic


def loss_through_the_state(model: LanguageModel, windows: torch.Tensor, piece: int) -> np.ndarray:
    """Each position's mean cross-entropy, the windows read a training length at a time through the state."""
    total = torch.zeros(windows.shape[1] - 1, dtype=torch.float64)
    with torch.no_grad():
        state = None
        for start in range(0, windows.shape[1] - 1, piece):
            inputs = windows[:, start : start + piece]
            logits, state = model(inputs, state=state, return_state=True)
            targets = windows[:, start + 1 : start + 1 + inputs.shape[1]]
            total[start : start + inputs.shape[1]] = F.cross_entropy(logits.transpose(1, 2), targets,
                                                                     reduction="none").sum(0).double()  # fmt: skip
    return (total / len(windows)).numpy()


def test_positions_reads_a_mamba2_checkpoint_to_4x_its_training_length(mamba2_run, tmp_path, capsys):
    """Beside a TEN run, as a comparison uses it: one pass over each window, which for Mamba-2 is what reading it
    through its state a training length at a time gives."""
    run, corpus = mamba2_run
    train_run(corpus, tmp_path / "ten")
    out = tmp_path / "positions"
    argv = ["positions", "--checkpoint", str(tmp_path / "ten"), "--checkpoint", str(run), "--dataset", str(corpus),
            "--length", "128", "--sequences", "2", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    ten, mamba2 = json.loads((out / "positions.json").read_text())
    assert ten["name"] == "ten (ten)" and mamba2["name"] == "mamba2 (run)"
    assert mamba2["train_length"] == TRAIN_LENGTH and len(mamba2["loss"]) == 128
    assert "| mamba2 (run) | 32 |" in (out / "positions.md").read_text()

    model = LanguageModel.from_pretrained(run / "checkpoints" / "final").eval()
    windows = validation_windows(load_token_data(str(corpus), "byte").val, 128, 2)
    np.testing.assert_allclose(mamba2["loss"], loss_through_the_state(model, windows, TRAIN_LENGTH), atol=1e-4)


def test_synthetic_scores_mamba2_through_its_state_as_a_whole_forward():
    """Test sequences longer than training are read a training length at a time through Mamba-2's state (as TEN's):
    the same accuracy as one forward over the whole sequence."""
    from temporal_eigenstate_networks.data.synthetic_tasks import TASKS, accuracy

    cell = Cell(task="mqar", variant="mamba2", d_model=16, train_seq_len=32, test_seq_lens=(128,), learning_rate=1e-3,
                options={"vocab_size": 160, "num_kv_pairs": 8}, test_examples=6)  # fmt: skip
    model = build(cell, torch.device("cpu")).eval()
    assert model.architecture == "mamba2"
    streamed, scored = score(model, cell, 128, torch.device("cpu"))
    batch = TASKS["mqar"].generate(6, 128, seed=-1 % (1 << 62), **cell.options)
    with torch.no_grad():
        correct, total = accuracy(model(batch.inputs), batch.targets)
    assert scored == total == 6 * 8 and streamed == correct / total


# ---------------------------------------------------------------- ten export, ten eval


def run_alone(script: str, folder) -> str:
    """A Python script in a fresh interpreter in ``folder`` where ten cannot be imported: its stdout."""
    blocked = "import sys\nsys.modules['temporal_eigenstate_networks'] = None  # as if ten were not installed\n"
    done = subprocess.run([sys.executable, "-c", blocked + script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **OFFLINE}, cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_mamba2_export_is_transformers_own_folder_and_generates_what_ten_generates(mamba2_run, tmp_path, capsys):
    """Byte and BPE checkpoints: Mamba2ForCausalLM's own folder plus the tokenizer, loaded by AutoModelForCausalLM
    and AutoTokenizer without ten or trust_remote_code; greedy generate gives LanguageModel.generate's tokens."""
    run, corpus = mamba2_run
    train_run(corpus, tmp_path / "bpe-run", "--model", "mamba2", "--tokenizer", "bpe:300")
    text = "Now is the winter"
    capsys.readouterr()
    for name, checkpoint in (("byte", run), ("bpe", tmp_path / "bpe-run")):
        assert main(["export", "--checkpoint", str(checkpoint), "--hf", str(tmp_path / name)]) == 0
        assert capsys.readouterr().out == f"wrote {tmp_path / name}: AutoModelForCausalLM.from_pretrained(" \
                                          f"{str(tmp_path / name)!r})\n"  # fmt: skip
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["model_type"] == "mamba2" and config["architectures"] == ["Mamba2ForCausalLM"]
        assert "auto_map" not in config and not list((tmp_path / name).glob("*.py"))
        assert config["max_position_embeddings"] == TRAIN_LENGTH  # lm-eval's window, as TEN's export gives it
        model = LanguageModel.from_pretrained(checkpoint / "checkpoints" / "final")
        from temporal_eigenstate_networks.data import load_tokenizer

        prompt = torch.as_tensor(load_tokenizer(checkpoint / "checkpoints" / "final").encode(text).astype("int64"))
        prompt = torch.stack([prompt, prompt.flip(0)])  # two rows, no padding
        torch.save(prompt, tmp_path / f"{name}-prompt.pt")
        torch.save(model.generate(prompt, 12, temperature=0), tmp_path / f"{name}-expected.pt")
    script = (
        "import torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "for name in ('byte', 'bpe'):\n"
        "    model = AutoModelForCausalLM.from_pretrained(name).eval()\n"
        f"    assert AutoTokenizer.from_pretrained(name)({text!r})['input_ids'] == "
        "torch.load(name + '-prompt.pt')[0].tolist()\n"
        "    model.generation_config.eos_token_id = None  # the export's eos is byte 0: a random model may choose it\n"
        "    out = model.generate(torch.load(name + '-prompt.pt'), max_new_tokens=12, do_sample=False)\n"
        "    assert torch.equal(out, torch.load(name + '-expected.pt')), (name, out)\n"
        "    print('ok', name, type(model).__name__)\n"
    )
    assert run_alone(script, tmp_path).split() == ["ok", "byte", "Mamba2ForCausalLM", "ok", "bpe", "Mamba2ForCausalLM"]


def test_a_mamba2_checkpoint_is_not_served_by_tens_transformers_class_but_its_export_is(mamba2_run):
    checkpoint = mamba2_run[0] / "checkpoints" / "final"
    with pytest.raises(ValueError, match="`ten export` writes it as transformers' Mamba2ForCausalLM"):
        transformers.AutoModelForCausalLM.from_pretrained(checkpoint)


def test_ten_eval_evaluates_a_mamba2_checkpoint_as_its_export(mamba2_run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("lm_eval", reason="ten eval runs lm-evaluation-harness (the hf extra)")
    from temporal_eigenstate_networks.hf import evaluate as harness

    windows = []
    load = harness.load_harness_model
    monkeypatch.setattr(harness, "load_harness_model", lambda *a, **k: windows.append(lm := load(*a, **k)) or lm)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the export is written, then removed
    run = mamba2_run[0]
    assert main(["eval", "--checkpoint", str(run), "--tasks", "ten_shakespeare_ppl", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "ten_shakespeare_ppl  bits_per_byte" in out and "ten validation (trained on" in out
    (lm,) = windows
    assert type(lm.model).__name__ == "Mamba2ForCausalLM" and lm.max_length == TRAIN_LENGTH  # TEN's window
    assert list(tmp_path.iterdir()) == []  # the temporary export is gone
