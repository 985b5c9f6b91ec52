"""Model-level behaviour of every variant: causality, streaming, gradients, energy, loss, I/O."""

import json
import math
import re

import pytest
import torch

from temporal_eigenstate_networks import PRESETS, TemporalEigenstateConfig, TemporalEigenstateNetwork, lm
from temporal_eigenstate_networks.cli import main
from temporal_eigenstate_networks.config import MAX_PARAMETERS
from temporal_eigenstate_networks.modules.block import is_no_weight_decay
from temporal_eigenstate_networks.modules.eigenstate import MIN_DECAY, EigenstateCore, energy
from temporal_eigenstate_networks.training.optimizer import parameter_groups
from temporal_eigenstate_networks.training.presets import TRAINING_PRESETS

from .conftest import relative_error

VARIANTS = [
    # (use_hten, hten_scales, selective, backend)
    *[(False, [1], sel, b) for sel in (True, False) for b in ("sequential", "chunked", "auto")],
    (False, [1], False, "fft"),
    *[(True, [1, 2, 4], sel, b) for sel in (True, False) for b in ("sequential", "chunked", "auto")],
    (True, [1, 2, 4], False, "fft"),
    (True, [2, 3], True, "chunked"),  # no unit scale, windows out of phase with each other
]
# The paper's ablations (a fifth element: config overrides), each on TEN and on HTEN.
ABLATIONS = {
    "nogate": {"output_gate": False},
    "nocoupling": {"coupling": False},
    "onehead": {"num_heads": 1},  # one full K x K coupling
    "real": {"real_eigenvalues": True},
    "fixed": {"fixed_basis": True},
}
VARIANTS += [(h, [1, 2, 4] if h else [1], True, "chunked", ablation) for ablation in ABLATIONS.values()
             for h in (False, True)]  # fmt: skip
# Hybrids (design section 10): attention layers among the eigenstate layers; windows shorter than the tests'
# sequences, so the ring buffer wraps many times.
HYBRIDS = {
    "ea": {"layer_pattern": "ea"},
    "ew": {"layer_pattern": "ew", "attention_window": 5},
    "wea": {"layer_pattern": "wea", "n_layers": 3, "attention_window": 7},
}
VARIANTS += [(False, [1], True, "chunked", hybrid) for hybrid in HYBRIDS.values()]
VARIANTS += [(True, [1, 2, 4], True, "chunked", {"layer_pattern": "hw", "attention_window": 6})]
OVERRIDES = {**ABLATIONS, **HYBRIDS, "hw": VARIANTS[-1][4]}
IDS = [
    f"{'hten' + ''.join(map(str, v[1])) if v[0] else 'ten'}-{'sel' if v[2] else 'lti'}-{v[3]}"
    + "".join(f"-{name}" for name, overrides in OVERRIDES.items() if v[4:] and v[4] == overrides)
    for v in VARIANTS
]


def small_config(use_hten=False, hten_scales=(1, 2, 4), selective=True, backend="auto", **overrides):
    values = dict(
        vocab_size=64,
        d_model=32,
        n_layers=2,
        num_eigenstates=12 if len(hten_scales) == 3 else 8,
        num_heads=2,
        max_seq_len=64,
        selective=selective,
        use_hten=use_hten,
        hten_scales=list(hten_scales),
        scan_backend=backend,
        chunk_size=8,
    )
    return TemporalEigenstateConfig(**{**values, **overrides})


def variant_config(variant, **overrides):
    use_hten, scales, selective, backend, *ablation = variant
    return small_config(use_hten, scales, selective, backend, **{**overrides, **(ablation[0] if ablation else {})})


def make_model(variant, **overrides):
    model = TemporalEigenstateNetwork(variant_config(variant, **overrides))
    # Move away from the initialisation so every parameter matters (coupling, gate, selection).
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_causal(variant):
    model = make_model(variant)
    ids = torch.randint(0, 64, (2, 41))
    logits = model(ids)
    for t in (0, 5, 17, 39):
        changed = ids.clone()
        changed[:, t + 1 :] = torch.randint(0, 64, changed[:, t + 1 :].shape)
        torch.testing.assert_close(model(changed)[:, : t + 1], logits[:, : t + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_streaming_matches_whole(variant):
    model = make_model(variant)
    ids = torch.randint(0, 64, (2, 37))
    whole = model(ids)

    pieces, state = [], None
    for start, stop in [(0, 5), (5, 6), (6, 19), (19, 37)]:  # boundaries inside HTEN windows
        logits, state = model(ids[:, start:stop], state=state, return_state=True)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, atol=1e-5, rtol=1e-5)

    steps, state = [], None
    for t in range(ids.shape[1]):
        logits, state = model(ids[:, t : t + 1], state=state, return_state=True)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_gradient_reaches_first_token_of_1000(variant):
    model = TemporalEigenstateNetwork(variant_config(variant, max_seq_len=1024))
    ids = torch.randint(0, 64, (1, 1000))
    embedded = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        embedded["x"] = output

    model.embedding.register_forward_hook(keep)
    logits = model(ids)
    torch.nn.functional.cross_entropy(logits[:, -1], ids[:, -1]).backward()
    first_token_grad = embedded["x"].grad[0, 0]
    assert first_token_grad.abs().sum() > 0
    assert torch.isfinite(first_token_grad).all()


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_energy_bound(variant):
    """sqrt(E(t)) <= sqrt(E(0)) + sum_{s<=t} ||beta(s)||, for every eigenstate core."""
    model = make_model(variant)
    with torch.no_grad():  # push some eigenvalues to the edge of the unit circle
        for block in model.blocks:
            for _, core in block.mixer.cores():
                core.decay_logit[::2] = 40.0
    u = 3 * torch.randn(2, 50, 32)
    for block in model.blocks:
        for _, core in block.mixer.cores():
            _, states = core(u)
            beta = torch.view_as_complex(core.in_proj(u).unflatten(-1, (-1, 2)))
            beta_norm = torch.view_as_real(beta).square().sum((-1, -2)).sqrt()
            root_energy = energy(states).sqrt()
            bound = root_energy[:, :1] + beta_norm.cumsum(1) - beta_norm[:, :1]
            assert (root_energy <= bound * (1 + 1e-5)).all()
            lam = core.eigenvalues(u)
            assert (lam.abs() < 1).all() and (lam.abs() >= MIN_DECAY - 1e-6).all()


def test_eigenvalues_stay_inside_for_any_parameters():
    model = make_model((False, [1], True, "chunked"))
    core = model.blocks[0].mixer.core
    with torch.no_grad():
        core.decay_logit.copy_(torch.tensor([1e6, -1e6, 0.0, 30.0, -30.0, 1e30, 17.0, 16.0]))
        core.selection.weight.mul_(1e4)
    magnitude = core.eigenvalues(torch.randn(2, 9, 32)).abs()
    assert (magnitude < 1).all() and (magnitude >= MIN_DECAY - 1e-6).all()


@pytest.mark.parametrize("use_hten", [False, True])
def test_loss_decomposition_and_ignore_index(use_hten):
    model = make_model((use_hten, [1, 2, 4], True, "auto"), energy_reg_weight=0.37)
    inputs = torch.randint(0, 64, (3, 20))
    targets = torch.randint(0, 64, (3, 20))
    targets[1, 5:] = -100
    out = model.compute_loss(inputs, targets, return_dict=True)
    assert set(out) == {"loss", "ce_loss", "energy_loss"}
    torch.testing.assert_close(out["loss"], out["ce_loss"] + 0.37 * out["energy_loss"])
    torch.testing.assert_close(model.compute_loss(inputs, targets), out["loss"])

    keep = targets != -100
    expected_ce = torch.nn.functional.cross_entropy(model(inputs)[keep], targets[keep])
    torch.testing.assert_close(out["ce_loss"], expected_ce)

    assert model.aux_loss_weight == 0.37  # the model's energy_reg_weight is its aux loss weight
    model.config.energy_reg_weight = 0.0  # energy_loss is the raw value, independent of the weight
    unweighted = model.compute_loss(inputs, targets, return_dict=True)
    torch.testing.assert_close(unweighted["energy_loss"], out["energy_loss"])
    torch.testing.assert_close(unweighted["loss"], unweighted["ce_loss"])
    assert out["energy_loss"] > 0


def test_run_is_the_pass_that_forward_compute_loss_and_step_share():
    model = make_model((True, [1, 2, 4], True, "chunked"), energy_reg_weight=0.2).eval()
    ids = torch.randint(0, 64, (2, 11))
    out = model.run(ids[:, :-1])
    assert torch.equal(out.logits, model(ids[:, :-1])) and out.aux_loss is not None
    terms = model.loss(out.logits, ids[:, 1:], out.aux_loss)
    expected = model.compute_loss(ids[:, :-1], ids[:, 1:], return_dict=True)
    torch.testing.assert_close(list(terms), [expected["loss"], expected["ce_loss"], expected["energy_loss"]])
    logits, _ = model.step(ids[:, -1:], out.state)
    torch.testing.assert_close(logits[:, -1], model(ids)[:, -1], rtol=1e-5, atol=1e-5)
    assert model.loss(out.logits, torch.full_like(ids[:, 1:], -100)).ce_loss == 0  # nothing counted: 0, not NaN


def test_energy_loss_is_mean_energy_per_eigenstate():
    model = make_model((False, [1], True, "chunked"))
    inputs = torch.randint(0, 64, (2, 16))
    x, per_layer = model.embedding(inputs), []
    for block in model.blocks:
        _, states = block.mixer.core(block.mixer_norm(x))
        per_layer.append(energy(states).mean() / model.config.num_eigenstates)
        x, _, _ = block(x)
    out = model.compute_loss(inputs, inputs, return_dict=True)
    torch.testing.assert_close(out["energy_loss"], torch.stack(per_layer).mean())


def test_readout_couples_few_states_like_it_folds_the_coupling_into_the_weight():
    core = make_model((False, [1], True, "chunked")).blocks[0].mixer.core
    with torch.no_grad():
        core.coupling.normal_(0, 0.3)  # far from the identity, so a wrong R shows
    states = torch.randn(3, 40, core.num_eigenstates, dtype=torch.complex64)  # 120 rows: the folded weight
    assert states[..., 0].numel() >= core.out_proj.out_features
    with torch.no_grad():
        whole = core.readout(states)
        one_by_one = torch.cat([core.readout(states[:, t : t + 1]) for t in range(states.shape[1])], dim=1)
        pairs = torch.view_as_real(states @ core.coupling_matrix().T.to(states.dtype)).flatten(-2)
        reference = core.out_proj(pairs)
    assert relative_error(one_by_one, whole) < 1e-5
    assert relative_error(whole, reference) < 1e-5


def test_autocast_bf16_keeps_state_in_float32():
    model = make_model((True, [1, 2, 4], True, "chunked"))
    ids = torch.randint(0, 64, (2, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.compute_loss(ids, ids, return_dict=True)
        _, state = model(ids, return_state=True)
    assert torch.isfinite(out["loss"])
    assert state.layers[0][0].eigenstates.dtype == torch.complex64
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = make_model((True, [1, 2, 4], True, "chunked")).train()
    ids = torch.randint(0, 64, (2, 24))
    model.compute_loss(ids, ids).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model.compute_loss(ids, ids).backward()
    for a, b in zip(plain, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("use_hten", [False, True])
def test_save_and_load_round_trip(tmp_path, use_hten):
    model = make_model((use_hten, [1, 2, 4], True, "auto"))
    ids = torch.randint(0, 64, (2, 19))
    model.save_pretrained(tmp_path / "m")
    loaded = TemporalEigenstateNetwork.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    assert torch.equal(loaded(ids), model(ids))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved model"):
        TemporalEigenstateNetwork.from_pretrained(tmp_path)
    model = make_model((False, [1], True, "auto"))
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable weights file"):
        TemporalEigenstateNetwork.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid JSON config"):
        TemporalEigenstateNetwork.from_pretrained(tmp_path / "m")
    for key, value, message in [("d_model", "32", "d_model must be an integer, got '32'"),
                                ("selective_range", "0.1", "selective_range must be a number, got '0.1'"),
                                ("hten_scales", 3, "hten_scales must be a list of integers, got 3"),
                                ("mlp_hidden", 1.5, "mlp_hidden must be an integer or null, got 1.5")]:  # fmt: skip
        (tmp_path / "m" / "config.json").write_text(json.dumps({**model.config.to_dict(), key: value}))
        with pytest.raises(ValueError, match=f"config.json: {re.escape(message)}"):
            TemporalEigenstateNetwork.from_pretrained(tmp_path / "m")


def test_the_one_token_step_checks_the_state_shape_as_the_scan_does():
    core = make_model((False, [1], True, "auto")).blocks[0].mixer.core
    u = torch.randn(4, 1, 32)
    with pytest.raises(ValueError, match=r"initial_state must have shape \(B, K\) = \(4, 8\), got \(1, 8\)"):
        core(u, torch.zeros(1, 8, dtype=torch.complex64))  # would broadcast to batch 4
    with pytest.raises(ValueError, match=r"= \(1, 8\), got \(4, 8\)"):
        core(u[:1], torch.zeros(4, 8, dtype=torch.complex64))  # would return batch 4 from batch 1


def test_loading_checks_the_weights_shapes_before_building(tmp_path, monkeypatch):
    model = make_model((True, [1, 2, 4], True, "auto"))
    model.save_pretrained(tmp_path / "m")
    config_file = tmp_path / "m" / "config.json"
    values = json.loads(config_file.read_text())
    # A config far larger than its weights: refused from the file's header, before any memory is allocated.
    config_file.write_text(json.dumps({**values, "d_model": 8000}))
    with pytest.raises(ValueError, match=r"does not match config.json: embedding.weight has shape \(64, 32\) in the "
                                         r"weights, \(64, 8000\) by the config"):  # fmt: skip
        TemporalEigenstateNetwork.from_pretrained(tmp_path / "m")
    config_file.write_text(json.dumps({**values, "mlp_hidden": 0}))  # no MLPs: the weights hold more
    with pytest.raises(ValueError, match=r"the weights hold blocks.0.mlp.down.weight, which the config has no place"):
        TemporalEigenstateNetwork.from_pretrained(tmp_path / "m")

    # A large model (here: any) is built on the meta device, initialising nothing; a small one is built as usual.
    # Either way every parameter comes from the file, the no-weight-decay tags survive, and the random state is
    # as it was.
    values.pop("selective_range")  # a field added later: older configs lack it and keep its default
    config_file.write_text(json.dumps(values))
    real_reset = EigenstateCore.reset_parameters
    ids = torch.randint(0, 64, (2, 9))
    tagged = [name for name, p in model.named_parameters() if is_no_weight_decay(p)]
    initialised = []
    monkeypatch.setattr(EigenstateCore, "reset_parameters",
                        lambda core: initialised.append(core.frequency.device) or real_reset(core))  # fmt: skip
    for limit, built_on in ((0, "meta"), (lm.EAGER_BUILD_LIMIT, "cpu")):
        monkeypatch.setattr(lm, "EAGER_BUILD_LIMIT", limit)
        initialised.clear()
        random_state = torch.random.get_rng_state()
        loaded = TemporalEigenstateNetwork.from_pretrained(tmp_path / "m")
        assert torch.equal(torch.random.get_rng_state(), random_state)
        assert initialised and all(device.type == built_on for device in initialised)
        assert torch.equal(loaded.eval()(ids), model(ids)) and loaded.config.selective_range == 0.1
        assert tagged and tagged == [name for name, p in loaded.named_parameters() if is_no_weight_decay(p)]


@pytest.mark.parametrize("field", ["norm_eps", "selective", "hten_scales"])
def test_a_config_field_missing_from_config_json_is_an_error_naming_it(tmp_path, field):
    model = make_model((False, [1], True, "auto"))
    model.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    del values[field]
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match=f"config.json lacks the config field {field}$"):
        TemporalEigenstateNetwork.from_pretrained(tmp_path)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)  # the ablations remove parameters: each counted
@pytest.mark.parametrize("mlp_hidden", [None, 0, 40])
def test_parameter_count_from_the_config_is_the_built_models(variant, mlp_hidden):
    model = make_model(variant, mlp_hidden=mlp_hidden, num_heads=4)
    assert model.config.parameter_count() == model.num_parameters()


@pytest.mark.parametrize("use_hten", [False, True])
def test_generate(use_hten):
    model = make_model((use_hten, [1, 2, 4], True, "auto"))
    prompt = torch.randint(0, 64, (2, 7))
    first = model.generate(prompt, max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    again = model.generate(prompt, max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    other = model.generate(prompt, max_new_tokens=12, temperature=0.9, seed=4)
    assert first.shape == (2, 19) and torch.equal(first[:, :7], prompt)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)

    greedy = model.generate(prompt[0], max_new_tokens=10, temperature=0)
    logits = model(greedy[:, :-1])
    assert torch.equal(logits[0, 6:].argmax(-1), greedy[0, 7:])  # each token is the argmax given the prefix


@pytest.mark.parametrize("name", list(ABLATIONS))
@pytest.mark.parametrize("use_hten", [False, True])
def test_each_ablation_generates_and_changes_what_it_names(name, use_hten):
    variant = (use_hten, [1, 2, 4] if use_hten else [1], True, "chunked", ABLATIONS[name])
    model = make_model(variant)
    greedy = model.generate(torch.randint(0, 64, (1, 7)), max_new_tokens=9, temperature=0)
    assert torch.equal(model(greedy[:, :-1])[0, 6:].argmax(-1), greedy[0, 7:])

    full = TemporalEigenstateNetwork(variant_config(variant[:4]))
    cores = [core for block in model.blocks for _, core in block.mixer.cores()]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if name == "nogate":
        assert all(block.mixer.gate is None for block in model.blocks) and not any(".gate." in n for n in trainable)
        assert model.num_parameters() < full.num_parameters()
    if name == "nocoupling":
        assert all(torch.equal(core.coupling_matrix(), torch.eye(core.num_eigenstates)) for core in cores)
        assert not any("coupling" in n for n in trainable)
    if name == "onehead":
        assert all(core.coupling.shape == (1, core.num_eigenstates, core.num_eigenstates) for core in cores)
    if name == "real":
        ids = torch.randint(0, 64, (2, 11))
        u = model.embedding(ids)
        for core in cores:
            lam = core.eigenvalues(u)  # selective: only |lam| moves with the input
            assert lam.imag.abs().max() < 1e-6 and ((lam.real > 0) == (torch.arange(lam.shape[-1]) % 2 == 0)).all()
        assert not any("frequency" in n for n in trainable)
    if name == "fixed":
        assert not any("decay_logit" in n or "frequency" in n for n in trainable)
        before = [core.eigenvalues().clone() for core in cores]
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        ids = torch.randint(0, 64, (2, 12))
        model.train()
        model.compute_loss(ids[:, :-1], ids[:, 1:]).backward()
        optimizer.step()
        assert all(torch.equal(core.eigenvalues(), b) for core, b in zip(cores, before, strict=True))


@pytest.mark.parametrize("name", ["fixed", "real", "nocoupling"])
def test_an_ablation_saves_and_loads(tmp_path, name):
    model = make_model((False, [1], True, "chunked", ABLATIONS[name]))
    model.save_pretrained(tmp_path / "m")
    loaded = TemporalEigenstateNetwork.from_pretrained(tmp_path / "m")
    assert getattr(loaded.config, next(iter(ABLATIONS[name]))) == next(iter(ABLATIONS[name].values()))
    ids = torch.randint(0, 64, (1, 9))
    assert torch.equal(loaded.eval()(ids), model(ids))  # frozen eigenvalues (buffers) travel with the weights


def test_contradictory_ablations_are_refused():
    with pytest.raises(ValueError, match="real_eigenvalues and fixed_basis"):
        small_config(real_eigenvalues=True, fixed_basis=True)
    with pytest.raises(ValueError, match="coupling must be true or false"):
        small_config(coupling="no")


def test_temperatures_and_top_p_below_float32s_range_are_greedy():
    model = make_model((False, [1], True, "auto"))
    prompt = torch.randint(0, 64, (2, 5))
    greedy = model.generate(prompt, 8, temperature=0)
    for options in (dict(temperature=1e-45), dict(temperature=1e-300), dict(top_p=1e-300), dict(top_p=1e-50)):
        assert torch.equal(model.generate(prompt, 8, seed=0, **options), greedy), options


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_command_on_a_save_pretrained_folder(tmp_path, capsys):
    """No tokenizer saved: bytes when the vocabulary is 256, else one line saying what is missing."""
    TemporalEigenstateNetwork(small_config(vocab_size=256)).save_pretrained(tmp_path / "bytes")
    make_model((False, [1], True, "auto")).save_pretrained(tmp_path / "other")  # a vocabulary of 64
    argv = ["generate", "--checkpoint", str(tmp_path / "bytes"), "--prompt", "Now", "--max_new_tokens", "4",
            "--temperature", "1e-45", "--top_p", "1e-300"]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and out.startswith("Now"), err
    for argv, message in [
        (["--checkpoint", str(tmp_path / "other")], "has no tokenizer (tokenizer_meta.json) and a vocabulary of 64"),
        (["--checkpoint", str(tmp_path / "bytes"), "--device", "cpu:0"], "expected auto, cpu, cuda or cuda:N"),
        (["--checkpoint", str(tmp_path / "bytes"), "--seed", "-1"], "argument --seed: must be an integer"),
        (["--checkpoint", str(tmp_path / "bytes"), "--temp", "0"], "unrecognized arguments: --temp"),
    ]:
        code, _, err = run_cli(["generate", "--max_new_tokens", "2", *argv], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)


def test_top_k_one_is_greedy():
    model = make_model((False, [1], True, "auto"))
    prompt = torch.randint(0, 64, (1, 5))
    assert torch.equal(
        model.generate(prompt, 8, temperature=1.0, top_k=1, seed=0), model.generate(prompt, 8, temperature=0)
    )


@pytest.mark.parametrize("use_hten", [False, True])
def test_state_size_does_not_grow_with_context(use_hten):
    model = make_model((use_hten, [1, 2, 4], True, "auto"))

    def carried_bytes(length):
        _, state = model(torch.randint(0, 64, (1, length)), return_state=True)
        tensors = []
        for layer in state.layers:
            for item in layer if isinstance(layer, list) else [layer]:
                tensors += [item] if torch.is_tensor(item) else [item.eigenstates, item.window_sum, item.last_output]
        return sum(t.numel() * t.element_size() for t in tensors)

    assert carried_bytes(9) == carried_bytes(300) == model.state_bytes(9) == model.state_bytes(300)
    assert model.state_bytes(10**6) == model.state_bytes(1) > 0


@pytest.mark.parametrize("use_hten", [False, True])
def test_no_weight_decay_exactly_on_tagged_and_one_dimensional_parameters(use_hten):
    model = make_model((use_hten, [1, 2, 4], True, "auto")).double()  # the tags survive a conversion
    names = {id(p): name for name, p in model.named_parameters()}
    tagged = {name for name, p in model.named_parameters() if is_no_weight_decay(p)}
    dynamics = ("decay_logit", "frequency", "coupling", "scale_weights")  # where the layers tag them
    assert tagged == {name for name in names.values() if name.rsplit(".", 1)[-1] in dynamics}
    assert any("scale_weights" in name for name in tagged) == use_hten
    one_dimensional = {name for name, p in model.named_parameters() if p.dim() < 2}
    decay, no_decay = parameter_groups(model, 0.1)
    assert {names[id(p)] for p in no_decay["params"]} == tagged | one_dimensional
    assert {names[id(p)] for p in decay["params"]} == set(names.values()) - tagged - one_dimensional


def test_bad_token_ids():
    model = make_model((False, [1], True, "auto"))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 64\)"):
        model(torch.tensor([[1, 64]]))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 64\)"):
        model.compute_loss(torch.tensor([[-1, 2]]), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.tensor([[1]]), 3, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(torch.tensor([[1]]), 3, top_p=1.5)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0, got 2.5"):
        model.generate(torch.tensor([[1]]), 2.5)
    with pytest.raises(ValueError, match="top_k must be an integer >= 1, got 2.5"):
        model.generate(torch.tensor([[1]]), 3, top_k=2.5)
    for empty in (torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"token ids must not be empty, got shape"):
            model(empty)
        with pytest.raises(ValueError, match=r"token ids must not be empty"):
            model.compute_loss(empty, empty)


def test_loss_targets_out_of_range_or_all_ignored():
    model = make_model((False, [1], True, "auto")).train()
    inputs = torch.randint(0, 64, (2, 6))
    for bad in (64, -1, -101):
        targets = inputs.clone()
        targets[1, 3] = bad
        with pytest.raises(ValueError, match=rf"targets must be token ids in \[0, 64\) or -100 \(ignored\), got {bad}"):
            model.compute_loss(inputs, targets)
    with pytest.raises(TypeError, match="integer"):
        model.compute_loss(inputs, inputs.float())
    with pytest.warns(UserWarning, match="every target is -100"):
        out = model.compute_loss(inputs, torch.full_like(inputs, -100), return_dict=True)
    assert float(out["ce_loss"].detach()) == 0.0 and torch.isfinite(out["loss"])  # not the NaN of a mean over nothing
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(use_hten=True, hten_scales=[1, 2, 2]), "distinct"),
        (dict(use_hten=True, hten_scales=[0, 2]), "hten_scales"),
        (dict(use_hten=True, hten_scales=[]), "hten_scales"),
        (dict(use_hten=True, hten_scales=[1, 2.5]), "hten_scales"),
        (dict(use_hten=True, hten_scales=[1, 2, 4], num_eigenstates=16), "divisible by the number of hten_scales"),
        (dict(num_eigenstates=12, num_heads=5), "divisible by num_heads"),
        (dict(energy_reg_weight=-0.1), "energy_reg_weight"),
        (dict(energy_reg_weight=float("nan")), "energy_reg_weight"),
        (dict(energy_reg_weight=float("inf")), "energy_reg_weight"),
        (dict(scan_backend="magic"), "scan_backend"),
        (dict(scan_backend="fft", selective=True), "fft"),
        (dict(d_model=0), "d_model"),
        (dict(n_layers=-1), "n_layers"),
        (dict(vocab_size=2.5), "vocab_size"),
        (dict(max_seq_len=0), "max_seq_len"),
        (dict(dropout=1.0), "dropout"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(chunk_size=1000), "chunk_size"),
        (dict(selective="no"), "selective must be true or false"),  # a non-empty string is truthy
        (dict(use_hten="yes"), "use_hten must be true or false"),
        (dict(norm_eps=0), "norm_eps"),
        (dict(norm_eps=-1e-5), "norm_eps"),
        (dict(dropout="0.1"), "dropout"),
        (dict(d_model=True), "d_model"),
        (dict(mlp_hidden=True), "mlp_hidden"),
        (dict(selective_range="0.1"), "selective_range"),
        (dict(hten_scales=4), "hten_scales"),
        (dict(d_model=10**7), r"3\.6e\+15 parameters, more than the 1e\+10"),  # refused before any allocation
        (dict(vocab_size=10**8, d_model=512), "parameters"),
    ],
)
def test_config_errors(overrides, field):
    with pytest.raises(ValueError, match=field):
        TemporalEigenstateConfig(**{"num_eigenstates": 12, "num_heads": 2, **overrides})


def test_from_preset_and_unknown_preset():
    cfg = TemporalEigenstateConfig.from_preset("nano", vocab_size=256, use_hten=True)
    assert (cfg.d_model, cfg.n_layers, cfg.num_eigenstates, cfg.max_seq_len) == (512, 4, 64, 512)
    assert cfg.use_hten and cfg.hten_scales == [1, 2, 4, 8] and cfg.energy_reg_weight == 0.01
    TemporalEigenstateNetwork(TemporalEigenstateConfig(d_model=32, n_layers=1, use_hten=True))  # defaults fit
    with pytest.raises(ValueError, match="unknown preset 'tiny'"):
        TemporalEigenstateConfig.from_preset("tiny")
    with pytest.raises(ValueError, match="unknown config fields: colour"):
        TemporalEigenstateConfig.from_dict({"colour": 1})


DESIGN_TABLE = {  # the design's section 6, verbatim
    "nano": (512, 4, 64, 8, 512, False, None, 0.01),
    "micro": (768, 6, 96, 16, 1024, False, None, 0.01),
    "small": (1024, 8, 128, 16, 1024, False, None, 0.01),
    "medium": (1280, 12, 160, 16, 1024, False, None, 0.01),
    "large": (1536, 16, 192, 8, 1024, True, (1, 2, 4), 0.02),
    "xlarge": (2048, 20, 256, 8, 2048, True, (1, 2, 4, 8), 0.02),
}


@pytest.mark.parametrize("name", list(DESIGN_TABLE))
def test_presets_build_on_meta_and_match_the_summary(name):
    d, layers, k, batch, seq, hten, scales, weight = DESIGN_TABLE[name]
    preset = PRESETS[name]
    batch_size = TRAINING_PRESETS[name].batch_size  # the training side of the preset
    assert (preset.d_model, preset.n_layers, preset.num_eigenstates, batch_size) == (d, layers, k, batch)
    assert (preset.max_seq_len, preset.use_hten, preset.energy_reg_weight) == (seq, hten, weight)
    if scales:
        assert preset.hten_scales == scales
    with torch.device("meta"):
        model = TemporalEigenstateNetwork(TemporalEigenstateConfig.from_preset(name))
    count = sum(p.numel() for p in model.parameters())
    assert model.config.parameter_count() == count < MAX_PARAMETERS / 10  # the bound is far from any preset
    # The analytic count of what the model holds: embedding, per block 2 norms, mixer, SwiGLU.
    hidden = 64 * math.ceil(8 * d / 3 / 64)
    n_scales = len(scales) if hten else 1
    per_scale_k = k // n_scales
    mixer = n_scales * (2 * per_scale_k * d * 3 + 2 * per_scale_k + 4 * (per_scale_k // 4) ** 2)
    mixer += d * d + d + (n_scales if hten else 0)
    block = 4 * d + mixer + 3 * d * hidden
    assert count == 256 * d + layers * block + 2 * d
    assert model.num_parameters() == count
    assert f"{count:,} parameters" in model.summary()
    assert f"energy_reg_weight={weight:g}" in model.summary()
    assert ("scales " + ",".join(map(str, scales))) in model.summary() if hten else "HTEN: off" in model.summary()


def test_initial_timescales_spread_from_one_token_to_max_seq_len():
    model = TemporalEigenstateNetwork(small_config(use_hten=True, num_eigenstates=48, num_heads=4, max_seq_len=512))
    for entry in model.eigenstate_analysis():
        timescale = entry["timescale"].double()
        longest = 512 / entry["scale"]
        assert timescale.min() == pytest.approx(1.5, rel=1e-3)
        assert timescale.max() == pytest.approx(longest, rel=1e-2)
        for head in timescale.view(4, -1):  # every head spans the range
            assert head.max() / head.min() > (longest / 1.5) ** 0.5
        assert entry["coupling_deviation"] < 0.1
        frequency = entry["frequency"].double()
        k = frequency.numel()
        torch.testing.assert_close(frequency, 2 * math.pi * torch.arange(k, dtype=torch.float64) / k, atol=1e-5, rtol=0)


def test_summary_reports_components():
    model = TemporalEigenstateNetwork(small_config(use_hten=True))
    text = model.summary()
    for part in ("embedding (tied LM head)", "MLPs (SwiGLU)", "HTEN: scales 1,2,4", "recurrent state per sequence"):
        assert part in text
    assert f"recurrent state per sequence: {model.state_bytes(1) / 1024:,.1f} KiB" in text
    assert relative_error(torch.tensor(1.0), torch.tensor(1.0)) == 0
