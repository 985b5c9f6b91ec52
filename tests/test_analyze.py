"""ten analyze: the figures that test the paper's spectral claim, on planted eigenvalues and a tiny checkpoint."""

import json
import math

import numpy as np
import pytest
import torch

from temporal_eigenstate_networks import (
    TemporalEigenstateConfig,
    TemporalEigenstateNetwork,
    TransformerConfig,
    TransformerLM,
)
from temporal_eigenstate_networks.cli import main
from temporal_eigenstate_networks.experiments.analyze import analyze, lag_responses, spearman
from temporal_eigenstate_networks.modules.eigenstate import MIN_DECAY, EigenstateCore


def planted_core(magnitudes, frequencies):
    """A time-invariant core without coupling whose base eigenvalues are exactly the ones given."""
    core = EigenstateCore(8, len(magnitudes), 1, 64, selective=False, coupling=False)
    with torch.no_grad():
        m = torch.tensor(magnitudes, dtype=torch.float64)
        core.decay_logit.copy_(torch.logit((m - MIN_DECAY) / (1 - MIN_DECAY)))
        core.frequency.copy_(torch.tensor(frequencies))
    return core


def test_a_changed_input_fades_by_lam_squared_per_step():
    core = planted_core([0.5, 0.9, 0.99], [0.0, 1.0, 3.0])
    u = torch.randn(6, 1, 8).expand(6, 40, 8)  # each sequence one input throughout: each lag swaps the same pair
    response = lag_responses(core, u, [1, 2, 3])
    # c(T) - c'(T) = lam^lag (beta - beta'): the squared change shrinks by |lam|^2 per step of lag
    torch.testing.assert_close(response[1] / response[0], torch.tensor([0.25, 0.81, 0.9801]), rtol=1e-4, atol=0)
    torch.testing.assert_close(response[2] / response[1], torch.tensor([0.25, 0.81, 0.9801]), rtol=1e-4, atol=0)


def test_spearman_sees_the_order_not_the_scale():
    x = np.array([0.1, 0.5, 1.0, 2.0, 3.0])
    assert spearman(x, np.exp(-x)) == pytest.approx(-1.0)
    assert spearman(x, x**3) == pytest.approx(1.0)


def test_the_report_detects_a_planted_spectrum():
    """Low frequencies given long memories: the correlation is negative and the low half responds far back."""
    config = TemporalEigenstateConfig(vocab_size=32, d_model=8, n_layers=1, num_eigenstates=8, num_heads=1,
                                      max_seq_len=64, selective=False, coupling=False)  # fmt: skip
    model = TemporalEigenstateNetwork(config)
    frequencies = torch.linspace(0.1, 3.0, 8)
    magnitudes = torch.linspace(0.99, 0.5, 8)  # the lowest frequency remembers longest
    core = model.blocks[0].mixer.core
    with torch.no_grad():
        core.frequency.copy_(frequencies)
        core.decay_logit.copy_(torch.logit((magnitudes - MIN_DECAY) / (1 - MIN_DECAY)))
    (report,) = analyze(model, torch.randint(0, 32, (4, 64)))
    assert report.frequency_timescale_correlation == pytest.approx(-1.0)
    assert report.far_near_ratio_low > 100 * report.far_near_ratio_high
    assert report.coupling_distance == 0 and report.selective_magnitude_spread == 0
    assert np.allclose(report.magnitude, magnitudes.numpy(), atol=1e-6)
    assert np.allclose(report.timescale, 1 / (1 - magnitudes.double().numpy()), rtol=1e-3)


@pytest.mark.parametrize("use_hten", [False, True])
def test_ten_analyze_writes_plots_and_figures(tmp_path, corpus, use_hten, capsys):
    config = TemporalEigenstateConfig(vocab_size=256, d_model=16, n_layers=2, num_eigenstates=8, num_heads=2,
                                      max_seq_len=16, use_hten=use_hten, hten_scales=[1, 2])  # fmt: skip
    TemporalEigenstateNetwork(config).save_pretrained(tmp_path / "model")
    out = tmp_path / "analysis"
    args = ["analyze", "--checkpoint", str(tmp_path / "model"), "--dataset", str(corpus), "--sequences", "2",
            "--device", "cpu", "--output_dir", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "analysis.json").read_text())
    assert report["length"] == 64  # 4 x max_seq_len
    cores = report["cores"]
    assert [(c["layer"], c["scale"]) for c in cores] == [(layer, s) for layer in (0, 1) for s in config.scales]
    for c in cores:
        assert len(c["timescale"]) == config.eigenstates_per_scale and c["selective_phase_spread"] > 0
        assert math.isfinite(c["frequency_timescale_correlation"]) and c["lags"][0] == 1
    for name in ("eigenvalues.png", "timescales.png", "energy.png", "lag_response.png", "analysis.md"):
        assert (out / name).stat().st_size > 0
    assert "corr(abs w, timescale)" in capsys.readouterr().out


def test_ten_analyze_refuses_what_it_cannot_read(tmp_path, corpus, capsys):
    attention = TransformerLM(TransformerConfig(vocab_size=256, d_model=16, n_layers=1, num_heads=2, max_seq_len=16))
    attention.save_pretrained(tmp_path / "attention")
    (tmp_path / "file").write_text("")
    args = ["--dataset", str(corpus), "--device", "cpu", "--output_dir"]
    assert main(["analyze", "--checkpoint", str(tmp_path / "attention"), *args, str(tmp_path / "a")]) == 2
    assert "only TEN has eigenstates" in capsys.readouterr().err
    assert main(["analyze", "--checkpoint", str(tmp_path / "attention"), *args, str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["analyze", "--checkpoint", str(tmp_path / "nothing"), *args, str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("length", ["2", "4", "16"])
def test_a_window_too_short_for_far_lags_is_one_line_before_anything_is_written(tmp_path, corpus, capsys, length):
    config = TemporalEigenstateConfig(vocab_size=256, d_model=16, n_layers=1, num_eigenstates=8, num_heads=2,
                                      max_seq_len=16)  # fmt: skip
    TemporalEigenstateNetwork(config).save_pretrained(tmp_path / "model")
    out = tmp_path / "analysis"
    args = ["analyze", "--checkpoint", str(tmp_path / "model"), "--dataset", str(corpus), "--length", length,
            "--device", "cpu", "--output_dir", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--length {length} is too short to tell far lags from near ones" in err
    assert not out.exists()
