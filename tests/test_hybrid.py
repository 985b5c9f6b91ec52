"""Hybrids (design section 10): a layer_pattern of eigenstate (e, h) and attention (a, w) layers in one model.

The property tests every TEN variant passes (causality, streaming, gradients, parameter counts) run over hybrids
in test_model.py; this file tests what only a hybrid has."""

import re

import pytest
import torch

from temporal_eigenstate_networks import TemporalEigenstateConfig, TemporalEigenstateNetwork
from temporal_eigenstate_networks.lm import map_tensors
from temporal_eigenstate_networks.modules.attention import CausalSelfAttention, SlidingWindowAttention
from temporal_eigenstate_networks.modules.eigenstate import EigenstateLayer
from temporal_eigenstate_networks.modules.hierarchical import HierarchicalEigenstateLayer


def hybrid(pattern: str, n_layers: int = 2, **overrides) -> TemporalEigenstateNetwork:
    values = dict(vocab_size=64, d_model=32, n_layers=n_layers, num_eigenstates=8, num_heads=2, max_seq_len=64,
                  layer_pattern=pattern, attention_window=6, chunk_size=8)  # fmt: skip
    torch.manual_seed(0)
    return TemporalEigenstateNetwork(TemporalEigenstateConfig(**{**values, **overrides})).eval()


def carried_bytes(state) -> int:
    """Bytes of the per-row tensors of a state (of one row); a 0-d count is shared by the batch, not counted."""
    sizes = []
    map_tensors(state, lambda t: sizes.append(t.numel() * t.element_size() if t.dim() else 0) or t)
    return sum(sizes)


def test_the_pattern_repeats_to_n_layers_and_names_each_mixer():
    model = hybrid("eeea", n_layers=6)
    assert model.config.layer_kinds == "eeeaee"
    kinds = [type(block.mixer) for block in model.blocks]
    assert kinds == [EigenstateLayer] * 3 + [CausalSelfAttention] + [EigenstateLayer] * 2
    model = hybrid("hw", n_layers=3, use_hten=True, hten_scales=[1, 2])
    assert [type(b.mixer) for b in model.blocks] == [HierarchicalEigenstateLayer, SlidingWindowAttention,
                                                     HierarchicalEigenstateLayer]  # fmt: skip
    assert model.blocks[1].mixer.window == 6


def test_the_default_pattern_is_the_pure_model_as_before():
    plain = TemporalEigenstateConfig(vocab_size=64, d_model=32, n_layers=3, num_eigenstates=8, num_heads=2)
    assert plain.layer_pattern is None and plain.layer_kinds == "eee"
    hten = TemporalEigenstateConfig(vocab_size=64, d_model=32, n_layers=2, num_eigenstates=8, num_heads=2,
                                    use_hten=True, hten_scales=[1, 2])  # fmt: skip
    assert hten.layer_kinds == "hh"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"layer_pattern": "eqa"}, "layer_pattern must be letters from ehaw"),
    ({"layer_pattern": ""}, "layer_pattern must be letters from ehaw"),
    ({"layer_pattern": "ew", "attention_window": 0}, "attention_window must be an integer >= 1"),
    ({"layer_pattern": "ha"}, "an h layer .HTEN. needs HTEN scales"),
    ({"layer_pattern": "ea", "attention_heads": 3}, r"attention_heads \(3\) must divide d_model \(32\)"),
    ({"layer_pattern": "ea", "attention_heads": 32}, "heads of an even size"),
])  # fmt: skip
def test_bad_hybrid_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        hybrid(**{"pattern": overrides.pop("layer_pattern")}, **overrides)
    assert "\n" not in str(info.value)


def test_the_energy_loss_is_taken_over_the_eigenstate_layers_only():
    model = hybrid("eaew", n_layers=4)
    ids = torch.randint(0, 64, (2, 20))
    x, energies = model.embedding(ids), []
    for block in model.blocks:
        x, _, layer_loss = block(x)
        if layer_loss is not None:
            energies.append(layer_loss)
    assert len(energies) == 2  # the e layers; attention has no energy
    expected = torch.stack(energies).mean() / model.config.num_eigenstates
    out = model.compute_loss(ids[:, :-1], ids[:, 1:], return_dict=True)
    torch.testing.assert_close(model.run(ids).aux_loss, expected)
    assert set(out) == {"loss", "ce_loss", "energy_loss"}


def test_a_sliding_window_hybrid_keeps_a_fixed_state_and_full_attention_grows():
    windowed, full = hybrid("ew"), hybrid("ea")
    short, long = torch.randint(0, 64, (1, 9)), torch.randint(0, 64, (1, 300))
    fixed = [carried_bytes(windowed(ids, return_state=True)[1]) for ids in (short, long)]
    assert fixed[0] == fixed[1] == windowed.state_bytes(9) == windowed.state_bytes(300)
    assert windowed.state_bytes(10**6) == windowed.state_bytes(1)
    assert full.state_bytes(300) > full.state_bytes(9)
    assert "the same at any context length" in windowed.summary()
    assert "KV cache grows it by" in full.summary() and "layers: ea" in full.summary()


@pytest.mark.parametrize("pattern", ["ew", "ea"])
def test_greedy_generation_is_what_recomputing_every_prefix_gives(pattern):
    model = hybrid(pattern)
    prompt = torch.randint(0, 64, (2, 5))
    out = model.generate(prompt, 14, temperature=0)  # past the window of 6
    ids = prompt
    for _ in range(14):
        ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, ids)


def test_a_hybrid_saves_loads_and_reports_only_its_eigenstate_layers(tmp_path):
    model = hybrid("wea", n_layers=3)
    model.save_pretrained(tmp_path)
    loaded = TemporalEigenstateNetwork.from_pretrained(tmp_path)
    assert loaded.config.layer_pattern == "wea" and loaded.config.attention_window == 6
    ids = torch.randint(0, 64, (2, 30))
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    assert [row["layer"] for row in loaded.eigenstate_analysis()] == [1]


def test_analyze_reads_the_eigenstate_layers_of_a_hybrid_and_refuses_one_without():
    from temporal_eigenstate_networks.experiments.analyze import analyze

    ids = torch.randint(0, 64, (2, 40))
    assert [(r.layer, r.scale) for r in analyze(hybrid("aew", n_layers=3), ids)] == [(1, 1)]
    with pytest.raises(ValueError, match="layer_pattern 'aw' has no eigenstate layer"):
        analyze(hybrid("aw"), ids)


HYBRID_RUN = [
    "--d_model",
    "32",
    "--n_layers",
    "2",
    "--num_eigenstates",
    "8",
    "--max_seq_len",
    "32",
    "--batch_size",
    "2",
    "--eval_batches",
    "1",
    "--sample_tokens",
    "0",
    "--layer_pattern",
    "ew",
    "--attention_window",
    "8",
]


def test_train_resume_and_generate_a_hybrid_from_the_command_line(corpus, tmp_path, capsys):
    from temporal_eigenstate_networks.cli import main

    run = tmp_path / "run"
    assert main(["train", "--dataset", str(corpus), *HYBRID_RUN, "--max_steps", "2", "--output_dir", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--max_steps", "4"]) == 0  # the saved run's pattern
    loaded = TemporalEigenstateNetwork.from_pretrained(run / "checkpoints" / "final")
    assert loaded.config.layer_kinds == "ew" and loaded.config.attention_window == 8
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(run), "--prompt", "Now", "--max_new_tokens", "20", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("Now")
    # A resumed run keeps its layers, as every model setting.
    assert main(["train", "--resume", str(run), "--max_steps", "6", "--layer_pattern", "ea"]) == 2
    assert "--layer_pattern ea differs from the resumed run's ew" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--layer_pattern", "eqa"], "layer_pattern must be letters from ehaw"),
    (["--layer_pattern", ""], "layer_pattern must be letters from ehaw"),
    (["--layer_pattern", "ew", "--attention_window", "0"], "argument --attention_window: must be positive"),
    (["--layer_pattern", "ha"], "an h layer .HTEN. needs HTEN scales"),
    (["--layer_pattern", "aw", "--num_eigenstates", "16"], "has no eigenstate layer .e or h., so --num_eigenstates"),
    (["--model", "transformer", "--layer_pattern", "ea"], "--layer_pattern does not apply to --model transformer"),
])  # fmt: skip
def test_bad_hybrid_flags_are_one_line_errors_with_exit_2(flags, message, capsys):
    from temporal_eigenstate_networks.cli import main

    try:
        code = main(["train", "--dry_run", *flags])
    except SystemExit as stop:  # argparse's own checks exit from inside the parser
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and re.search(message, err)


def test_compare_offers_the_hybrids_and_refuses_a_pattern_for_every_variant_where_one_sets_its_own():
    from temporal_eigenstate_networks.experiments.compare import DEFAULT_VARIANTS, check_variants, parse_variants
    from temporal_eigenstate_networks.training import TrainArguments

    assert parse_variants("ten,ten-hybrid,ten-swa") == ["ten", "ten-hybrid", "ten-swa"]
    assert "ten-hybrid" not in DEFAULT_VARIANTS  # the default comparison is what it was
    base = TrainArguments(layer_pattern="ew", d_model=32, n_layers=2, num_eigenstates=8, max_seq_len=32)
    check_variants(base, ["ten", "transformer"], typed={"layer_pattern"})  # the TEN variant takes it
    with pytest.raises(ValueError, match="--layer_pattern is what variant ten-swa sets"):
        check_variants(base, ["ten", "ten-swa"], typed={"layer_pattern"})


def test_bench_measures_ten_as_the_hybrid_asked_for_and_checks_it_first():
    from temporal_eigenstate_networks.experiments.bench import BenchSettings, build

    settings = BenchSettings(d_model=32, n_layers=2, num_eigenstates=8, layer_pattern="ew", attention_window=8)
    ten, transformer = (build(name, settings, 64, torch.device("cpu")) for name in ("ten", "transformer"))
    assert ten.config.layer_kinds == "ew" and ten.blocks[1].mixer.window == 8
    assert transformer.config.n_layers == 2  # all attention, as always
    with pytest.raises(ValueError, match="layer_pattern must be letters"):
        BenchSettings(layer_pattern="xq")
