"""ten bench, positions, synthetic scoring, export and eval of Mamba-2 (transformers' Mamba2ForCausalLM), tiny."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="Mamba-2 is transformers' Mamba2ForCausalLM (the hf extra)")
if not hasattr(transformers, "Mamba2ForCausalLM"):
    pytest.skip(f"transformers {transformers.__version__} has no Mamba2ForCausalLM", allow_module_level=True)

from temporal_eigenstate_networks.architectures import mamba2_sizes_like  # noqa: E402
from temporal_eigenstate_networks.cli import main  # noqa: E402
from temporal_eigenstate_networks.config import TemporalEigenstateConfig  # noqa: E402
from temporal_eigenstate_networks.experiments import bench  # noqa: E402

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
