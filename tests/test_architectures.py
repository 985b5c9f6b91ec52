"""architectures.py: the one model factory (sizes or a config, for any registered architecture) and the
-hten label that run folders and tables share."""

from __future__ import annotations

import pytest
import torch

from temporal_eigenstate_networks import TemporalEigenstateConfig, TransformerConfig
from temporal_eigenstate_networks.architectures import build_model, hten_label
from temporal_eigenstate_networks.lm import ARCHITECTURES

CPU = torch.device("cpu")


@pytest.mark.parametrize("architecture", ["ten", "transformer"])
def test_build_model_gives_each_architecture_the_sizes_asked(architecture):
    model = build_model(architecture, CPU, vocab_size=97, d_model=48, n_layers=3, num_eigenstates=12,
                        max_seq_len=40)  # fmt: skip
    assert type(model) is ARCHITECTURES[architecture] and model.architecture == architecture
    config = model.config
    assert (config.vocab_size, config.d_model, config.n_layers, config.max_seq_len) == (97, 48, 3, 40)
    assert len(model.blocks) == 3 and model.embedding.weight.shape == (97, 48)
    assert next(model.parameters()).device == CPU
    if architecture == "ten":
        assert config.num_eigenstates == 12
    else:
        assert not hasattr(config, "num_eigenstates")  # TEN's size, not passed on


def test_build_model_passes_architecture_specific_options():
    assert build_model("ten", CPU, d_model=32, n_layers=1, num_eigenstates=8, selective=False).config.selective is False


def test_build_model_rejects_unknown_architectures_and_sizes():
    with pytest.raises(ValueError, match="unknown architecture 'mamba'"):
        build_model("mamba", CPU, d_model=32)
    with pytest.raises(ValueError, match="no architecture has the size"):
        build_model("transformer", CPU, d_model=32, n_layer=1)  # a typo is not silently dropped


def test_build_model_takes_a_config_or_sizes_not_both():
    config = TransformerConfig(vocab_size=64, d_model=32, n_layers=1)
    model = build_model("transformer", config=config)
    assert model.config is config and type(model) is ARCHITECTURES["transformer"]
    with pytest.raises(ValueError, match="a config or sizes, not both"):
        build_model("transformer", config=config, d_model=64)


def test_the_hten_label_is_the_same_fact_for_run_folders_and_tables():
    hten = TemporalEigenstateConfig(d_model=32, n_layers=1, num_eigenstates=8, use_hten=True, hten_scales=[1, 2])
    assert (hten_label(hten, "-"), hten_label(hten, "/")) == ("-hten", "/hten")
    assert hten_label(TemporalEigenstateConfig(d_model=32, n_layers=1, num_eigenstates=8), "-") == ""
    assert hten_label(TransformerConfig(d_model=32, n_layers=1), "/") == ""  # no use_hten at all
