"""The transformer baseline: causal, streams through its KV cache, and shares TEN's interface."""

from __future__ import annotations

import pytest
import torch

from temporal_eigenstate_networks import (
    LanguageModel,
    TemporalEigenstateConfig,
    TemporalEigenstateNetwork,
    TransformerConfig,
    TransformerLM,
)
from temporal_eigenstate_networks.lm import RecurrentState
from temporal_eigenstate_networks.modules.attention import rotate
from temporal_eigenstate_networks.modules.block import MixerOutput, SequenceMixer, is_no_weight_decay
from temporal_eigenstate_networks.training.optimizer import parameter_groups

from .conftest import relative_error


def tiny(dropout: float = 0.0) -> TransformerLM:
    return TransformerLM(TransformerConfig(vocab_size=64, d_model=32, n_layers=2, num_heads=2, dropout=dropout)).eval()


def tiny_ten(use_hten: bool) -> TemporalEigenstateNetwork:
    config = TemporalEigenstateConfig(vocab_size=64, d_model=32, n_layers=2, num_eigenstates=8, num_heads=2,
                                      use_hten=use_hten, hten_scales=[1, 2])  # fmt: skip
    return TemporalEigenstateNetwork(config).eval()


@pytest.mark.parametrize(
    ("make", "has_aux_loss"),
    [(tiny, False), (lambda: tiny_ten(False), True), (lambda: tiny_ten(True), True)],
    ids=["attention", "ten", "hten"],
)
def test_every_mixer_is_a_sequence_mixer_and_returns_a_mixer_output(make, has_aux_loss):
    model = make()
    u = torch.randn(2, 9, 32)
    for block in model.blocks:
        assert isinstance(block.mixer, SequenceMixer)
        with torch.no_grad():
            out = block.mixer(u)
            step = block.mixer(u[:, :1], out.state)  # the state it returns is what the next call takes
        assert isinstance(out, MixerOutput) and isinstance(step, MixerOutput)
        assert out.y.shape == u.shape and step.y.shape == (2, 1, 32)
        if has_aux_loss:
            assert out.aux_loss.shape == () and float(out.aux_loss) > 0
        else:
            assert out.aux_loss is None and step.aux_loss is None


MODELS = {"transformer": tiny, "ten": lambda: tiny_ten(False), "hten": lambda: tiny_ten(True)}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_state_of_another_batch_model_or_depth_is_one_clear_error(name):
    """Never broadcast (batch 1 over 4, or 4 from 1) nor an AttributeError: one ValueError naming the mismatch."""
    model = MODELS[name]()
    ids = torch.randint(0, 64, (4, 6))
    with torch.no_grad():
        _, state4 = model(ids, return_state=True)
        _, state1 = model(ids[:1], return_state=True)
        wrong = [(ids[:1, :1], state4), (ids[:, :1], state1), (ids[:, :3], state1)]  # one token: the fast path
        wrong += [(ids[:1, :1], MODELS[other]()(ids[:1], return_state=True)[1]) for other in MODELS if other != name]
        for x, state in wrong:
            with pytest.raises(ValueError, match=f"the state does not belong to this {type(model).__name__} and a "
                                                 f"batch of {x.shape[0]}: layer 0: "):  # fmt: skip
                model(x, state=state)
        with pytest.raises(ValueError, match="the state has 1 layers, this model 2"):
            model(ids[:, :1], state=RecurrentState(state4.layers[:1]))
        with pytest.raises(ValueError, match="state must be the RecurrentState"):
            model(ids[:, :1], state=state4.layers)
        model(ids[:, :1], state=state4)  # its own state of its own batch still streams


def test_rotary_keeps_norms_and_makes_scores_depend_on_the_offset_only():
    q, k = torch.randn(2, 3, 5, 16), torch.randn(2, 3, 5, 16)  # angles are float32: compare to its precision
    torch.testing.assert_close(rotate(q, 7).norm(dim=-1), q.norm(dim=-1))
    for m, n in [(0, 3), (11, 2), (100, 100)]:
        one = rotate(q[:, :, :1], m) @ rotate(k[:, :, :1], n).transpose(-1, -2)
        shifted = rotate(q[:, :, :1], m + 37) @ rotate(k[:, :, :1], n + 37).transpose(-1, -2)
        torch.testing.assert_close(one, shifted, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(rotate(q, 1), q)  # it does rotate
    with pytest.raises(ValueError, match="even head size, got 3"):
        rotate(q[..., :3], 0)
    with pytest.raises(ValueError, match="the head size d_model / num_heads = 3 must be even"):
        TransformerConfig(d_model=6, num_heads=2)


@pytest.mark.parametrize("mlp_hidden", [None, 0])
def test_parameter_count_from_the_config_is_the_built_models(mlp_hidden):
    config = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, num_heads=2, mlp_hidden=mlp_hidden)
    assert config.parameter_count() == TransformerLM(config).num_parameters()
    with pytest.raises(ValueError, match="parameters, more than the 1e\\+10"):
        TransformerConfig(d_model=10**6)


def test_changing_later_tokens_leaves_earlier_logits_unchanged():
    model = tiny()
    ids = torch.randint(0, 64, (2, 40))
    changed = ids.clone()
    changed[:, 25:] = torch.randint(0, 64, (2, 15))
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :25], b[:, :25])
    assert not torch.allclose(a[:, 25:], b[:, 25:])


def test_the_kv_cache_streams_whole_in_pieces_and_token_by_token():
    model = tiny()
    ids = torch.randint(0, 64, (2, 30))
    with torch.no_grad():
        whole = model(ids)
        logits, state = model(ids[:, :11], return_state=True)
        rest, _ = model(ids[:, 11:], state=state, return_state=True)
        pieces = torch.cat([logits, rest], dim=1)
        state, steps = None, []
        for t in range(ids.shape[1]):
            step, state = model(ids[:, t : t + 1], state=state, return_state=True)
            steps.append(step)
    assert relative_error(pieces, whole) < 1e-5
    assert relative_error(torch.cat(steps, dim=1), whole) < 1e-5


def test_loss_has_no_aux_term_and_ignores_minus_100():
    model = tiny()
    ids = torch.randint(0, 64, (2, 16))
    targets = ids.roll(-1, dims=1)
    targets[:, -1] = -100
    with torch.no_grad():
        out = model.compute_loss(ids, targets, return_dict=True)
        logits = model(ids)
    assert set(out) == {"loss", "ce_loss"} and torch.equal(out["loss"], out["ce_loss"])
    assert model.aux_loss_name is None and model.aux_loss_weight == 0.0
    with torch.no_grad():
        assert torch.equal(model.compute_loss(ids, targets), out["ce_loss"])
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, :-1].flatten())
    assert float(out["ce_loss"]) == pytest.approx(float(expected), rel=1e-6)


def test_save_load_and_architecture_dispatch(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    loaded = LanguageModel.from_pretrained(tmp_path)
    assert isinstance(loaded, TransformerLM)
    ids = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded.eval()(ids))
    with pytest.raises(ValueError, match="holds a 'transformer' model, not a TemporalEigenstateNetwork"):
        TemporalEigenstateNetwork.from_pretrained(tmp_path)


def test_generate_is_deterministic_with_a_seed_and_matches_greedy_full_recompute():
    model = tiny()
    prompt = torch.randint(0, 64, (1, 5))
    first, second = (model.generate(prompt, 8, temperature=0.9, seed=1) for _ in range(2))
    assert torch.equal(first, second)
    greedy = model.generate(prompt, 6, temperature=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(6):  # without the cache: the whole sequence each time
            ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(greedy, ids)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TransformerConfig(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="n_layers"):
        TransformerConfig(n_layers=0)
    with pytest.raises(ValueError, match="norm_eps"):
        TransformerConfig(norm_eps=0.0)
    with pytest.raises(ValueError, match="vocab_size"):
        TransformerConfig(vocab_size=True)


def test_state_bytes_grow_linearly_and_are_the_kv_cache():
    model = tiny()
    assert model.state_bytes(0) == 0 and model.state_bytes(300) == 300 * model.state_bytes(1) > 0

    def cache_bytes(state):
        return sum(t.numel() * t.element_size() for cache in state.layers for t in cache.contents())

    ids = torch.randint(0, 64, (1, 23))
    with torch.no_grad():
        _, state = model(ids[:, :17], return_state=True)
        assert cache_bytes(state) == model.state_bytes(17)
        _, state = model(ids[:, 17:], state=state, return_state=True)  # appended: the buffers have spare room
    assert cache_bytes(state) == model.state_bytes(23)
    assert f"KV cache per sequence: {model.state_bytes(1) / 1024:,.1f} KiB per token" in model.summary()


def test_no_weight_decay_only_on_one_dimensional_parameters():
    model = tiny()
    decay, no_decay = parameter_groups(model, 0.1)
    assert not any(is_no_weight_decay(p) for p in model.parameters())  # attention tags nothing
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in model.parameters() if p.dim() < 2}
    assert {id(p) for p in decay["params"]} == {id(p) for p in model.parameters() if p.dim() >= 2}
