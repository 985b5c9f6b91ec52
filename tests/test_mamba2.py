"""The Mamba-2 peer (transformers' Mamba2ForCausalLM): sized like TEN, the state, generation, checkpoints and resume,
the comparison tables, and the one-line errors."""

from __future__ import annotations

import importlib.machinery
import json
import signal
import sys
import types
from importlib.util import find_spec

import pytest
import torch
from safetensors.torch import load_file

from temporal_eigenstate_networks.architectures import build_model
from temporal_eigenstate_networks.baselines import mamba2_config
from temporal_eigenstate_networks.baselines.mamba2_config import Mamba2LMConfig
from temporal_eigenstate_networks.cli import main
from temporal_eigenstate_networks.config import TemporalEigenstateConfig
from temporal_eigenstate_networks.experiments.compare import run_comparison
from temporal_eigenstate_networks.lm import LanguageModel
from temporal_eigenstate_networks.training import TrainArguments, Trainer

from .test_overwrite import one_line_error

needs_transformers = pytest.mark.skipif(
    find_spec("transformers") is None, reason="mamba2 is transformers' Mamba2ForCausalLM: the hf extra is not installed"
)
TINY = dict(d_model=32, n_layers=2, max_seq_len=32, vocab_size=50)


def tiny_mamba2(**sizes) -> LanguageModel:
    torch.manual_seed(0)
    return build_model("mamba2", **{**TINY, **sizes}).eval()


# ---------------------------------------------------------------- sized like TEN


@needs_transformers
@pytest.mark.parametrize(
    "sizes",
    [
        dict(d_model=256, n_layers=4, num_eigenstates=64, max_seq_len=256),  # the main job's TEN
        dict(d_model=64, n_layers=2, num_eigenstates=64, mlp_hidden=0, vocab_size=8192),  # MQAR's 2-layer models
        dict(d_model=128, n_layers=2, num_eigenstates=128, mlp_hidden=0, vocab_size=16),  # tiny vocabulary
        dict(d_model=512, n_layers=4, num_eigenstates=64),  # the nano preset
    ],
    ids=["main-job", "mqar", "copying", "nano"],
)
def test_mamba2_has_tens_parameters_within_ten_percent(sizes):
    ten, mamba2 = (build_model(name, device="meta", **sizes) for name in ("ten", "mamba2"))  # nothing allocated
    assert mamba2.config.d_model == ten.config.d_model and mamba2.config.n_layers == ten.config.n_layers
    assert mamba2.config.vocab_size == ten.config.vocab_size
    assert abs(mamba2.num_parameters() / ten.num_parameters() - 1) <= 0.10
    assert ten.num_parameters() == TemporalEigenstateConfig(**sizes).parameter_count()


@needs_transformers
def test_the_rule_keeps_mamba2s_state_size_where_it_can_and_explicit_sizes_win():
    main_job = dict(d_model=256, n_layers=4, num_eigenstates=64, max_seq_len=256)
    config = build_model("mamba2", device="meta", **main_job).config
    assert (config.expand, config.state_size, config.head_dim, config.num_heads) == (3, 128, 64, 12)
    given = build_model("mamba2", device="meta", **main_job, expand=2, state_size=16).config
    assert (given.expand, given.state_size) == (2, 16)


@needs_transformers
@pytest.mark.parametrize("sizes", [{}, dict(expand=3, state_size=16), dict(expand=2, head_dim=16, d_model=48)])
def test_parameter_count_and_state_bytes_from_the_config_are_the_built_models(sizes):
    model = tiny_mamba2(**sizes)
    assert model.config.parameter_count() == model.num_parameters()
    _, state = model(torch.randint(0, 50, (1, 9)), return_state=True)
    cache = state.layers[0]
    held = sum(layer.conv_states[0].nbytes + layer.recurrent_states[0].nbytes for layer in cache.layers)
    assert model.state_bytes(9) == model.state_bytes(10_000) == held  # fixed size, float32, one sequence


# ---------------------------------------------------------------- the state and generation


@needs_transformers
def test_reading_in_pieces_or_token_by_token_equals_reading_whole_and_leaves_the_state_passed_in():
    model, ids = tiny_mamba2(), torch.randint(0, 50, (2, 40))
    with torch.no_grad():
        whole = model(ids)
        first, state = model(ids[:, :17], return_state=True)
        rest, _ = model(ids[:, 17:], state=state, return_state=True)
        again, _ = model(ids[:, 17:], state=state, return_state=True)  # the same state, not the one rest updated
        torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(again, rest, atol=0, rtol=0)
        state, pieces = None, []
        for t in range(ids.shape[1]):
            logits, state = model(ids[:, t : t + 1], state=state, return_state=True)
            pieces.append(logits)
        torch.testing.assert_close(torch.cat(pieces, 1), whole, atol=1e-5, rtol=1e-5)


@needs_transformers
def test_changing_later_tokens_leaves_earlier_logits_unchanged():
    model, ids = tiny_mamba2(), torch.randint(0, 50, (1, 24))
    changed = ids.clone()
    changed[:, 15:] = (changed[:, 15:] + 1) % 50
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[:, :15], model(changed)[:, :15], atol=0, rtol=0)


@needs_transformers
def test_generate_through_the_cache_equals_greedy_recomputation_and_a_seed_repeats():
    model, prompt = tiny_mamba2(), torch.randint(0, 50, (2, 5))
    generated = model.generate(prompt, 12, temperature=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(12):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, ids)
    sampled = [model.generate(prompt, 8, temperature=1.0, top_k=10, seed=3) for _ in range(2)]
    assert torch.equal(*sampled)


@needs_transformers
def test_another_models_state_is_one_clear_error():
    model, ids = tiny_mamba2(), torch.randint(0, 50, (2, 6))
    ten = build_model("ten", **TINY, num_eigenstates=8)
    _, ten_state = ten(ids, return_state=True)
    with pytest.raises(ValueError, match="RecurrentState a call of this Mamba2LM returned"):
        model(ids, state=ten_state)
    _, state = model(ids, return_state=True)
    with pytest.raises(ValueError, match="holds 2 sequences, the input 1"):
        model(ids[:1], state=state)
    with pytest.raises(ValueError, match="the state has 2 layers, this model 3"):
        tiny_mamba2(n_layers=3)(ids, state=state)


@needs_transformers
def test_gradients_reach_the_first_token_and_checkpointing_keeps_them():
    model, ids = tiny_mamba2().train(), torch.randint(0, 50, (2, 20))
    embedded = []
    hook = model.network.backbone.embeddings.register_forward_hook(
        lambda module, args, out: embedded.append(out.retain_grad() or out)
    )
    model.compute_loss(ids[:, :-1], ids[:, 1:]).backward()
    hook.remove()
    assert embedded[0].grad[:, 0].abs().sum() > 0  # the last position's loss reaches the first token
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model.compute_loss(ids[:, :-1], ids[:, 1:]).backward()
    assert model.gradient_checkpointing
    for before, param in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(param.grad, before, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- checkpoints, training, resume


@needs_transformers
def test_save_and_load_keep_the_tied_head_and_the_logits(tmp_path):
    model, ids = tiny_mamba2(), torch.randint(0, 50, (2, 12))
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert len(saved) == len(model.state_dict()) - 1  # the head is the embedding: stored once
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == "mamba2"
    loaded = LanguageModel.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "Mamba2LM"
    assert loaded.network.lm_head.weight is loaded.network.backbone.embeddings.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)


@needs_transformers
def test_train_save_resume_reaches_the_same_weights_as_an_uninterrupted_run(corpus, tmp_path, monkeypatch):
    def arguments(output, **more) -> TrainArguments:
        return TrainArguments(model="mamba2", dataset=str(corpus), d_model=32, n_layers=2, max_seq_len=32,
                              batch_size=2, eval_batches=1, sample_tokens=0, output_dir=str(output), eval_steps=1000,
                              save_steps=1000, max_steps=6, **more)  # fmt: skip

    straight = Trainer(arguments(tmp_path / "a")).train()
    original_step = Trainer.train_step

    def step_then_signal(self):
        values = original_step(self)
        if self.state.step == 3:
            signal.raise_signal(signal.SIGTERM)
        return values

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    first = Trainer(arguments(tmp_path / "b")).train()
    assert first.status == "stopped" and first.step == 3
    monkeypatch.setattr(Trainer, "train_step", original_step)
    resumed = Trainer(arguments(tmp_path / "b", resume="")).train()
    assert resumed.status == "finished" and resumed.step == 6
    a, b = (load_file(str(run.checkpoint / "model.safetensors")) for run in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- the comparison tables


@needs_transformers
def test_compare_tabulates_mamba2_sized_like_the_comparisons_ten(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Friends, Romans, countrymen, lend me your ears; I come to bury Caesar.\n" * 80)
    base = TrainArguments(dataset=str(corpus), d_model=32, n_layers=2, num_eigenstates=16, max_seq_len=32,
                          batch_size=2, max_steps=2, eval_steps=2, eval_batches=1, sample_tokens=0)  # fmt: skip
    rows = run_comparison(base, ["ten", "mamba2"], tmp_path / "cmp")
    assert [r["variant"] for r in rows] == ["ten", "mamba2"]
    assert "| mamba2 |" in (tmp_path / "cmp" / "results.md").read_text()
    ten_parameters = TemporalEigenstateConfig(d_model=32, n_layers=2, num_eigenstates=16, vocab_size=256)
    assert abs(rows[1]["parameters"] / ten_parameters.parameter_count() - 1) <= 0.10
    assert rows[0]["parameters"] == ten_parameters.parameter_count()


@needs_transformers
def test_synthetic_tabulates_mamba2(tmp_path):
    out = tmp_path / "grid"
    argv = ["synthetic", "--task", "mqar", "--variants", "ten,mamba2", "--d_models", "32", "--lengths", "64",
            "--learning_rates", "3e-3", "--steps", "2", "--batch_size", "4", "--test_examples", "8",
            "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())
    mamba2 = [r for r in rows if r["variant"] == "mamba2"]
    assert len(mamba2) == 1 and mamba2[0]["scored"] > 0
    assert "| mamba2 |" in (out / "results.md").read_text()
    ten = next(r for r in rows if r["variant"] == "ten")
    assert abs(mamba2[0]["parameters"] / ten["parameters"] - 1) <= 0.10  # sized like the cell's TEN
    assert mamba2[0]["state_bytes_per_layer"] > ten["state_bytes_per_layer"]  # N = 128 per channel against K


# ---------------------------------------------------------------- one line for a mistake


@needs_transformers
def test_ten_only_flags_with_mamba2_are_one_line(capsys, corpus):
    err = one_line_error(capsys, ["train", "--model", "mamba2", "--num_eigenstates", "8", "--dry_run"])
    assert "--num_eigenstates does not apply to --model mamba2" in err
    err = one_line_error(capsys, ["train", "--model", "ten", "--expand", "3", "--dry_run"])
    assert "--expand does not apply to --model ten" in err


def test_mamba2_without_transformers_names_the_install_command(capsys, monkeypatch):
    real = mamba2_config.find_spec
    monkeypatch.setattr(mamba2_config, "find_spec", lambda name: None if name == "transformers" else real(name))
    err = one_line_error(capsys, ["train", "--model", "mamba2", "--dry_run"])
    assert "pip install 'temporal-eigenstate-networks[hf]'" in err
    err = one_line_error(capsys, ["synthetic", "--task", "mqar", "--variants", "mamba2"])
    assert "pip install 'temporal-eigenstate-networks[hf]'" in err


def test_a_transformers_without_mamba2_is_one_line(capsys, monkeypatch):
    older = types.ModuleType("transformers")  # a version from before Mamba-2 (4.44)
    older.__version__, older.__spec__ = "4.40.0", importlib.machinery.ModuleSpec("transformers", None)
    monkeypatch.setitem(sys.modules, "transformers", older)
    err = one_line_error(capsys, ["train", "--model", "mamba2", "--dry_run"])
    assert "transformers 4.40.0 has no Mamba2ForCausalLM: pip install 'temporal-eigenstate-networks[hf]'" in err


def test_a_config_of_bad_sizes_names_the_field():
    with pytest.raises(ValueError, match="expand must be a positive integer"):
        Mamba2LMConfig(expand=0)
    with pytest.raises(ValueError, match=r"head_dim must divide expand \* d_model \(64\)"):
        Mamba2LMConfig(d_model=32, head_dim=48)
