"""The transformers integration: same logits as the network, loading, generate from the state, bad input."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from temporal_eigenstate_networks import (  # noqa: E402
    TemporalEigenstateConfig,
    TemporalEigenstateNetwork,
    TransformerConfig,
    TransformerLM,
)
from temporal_eigenstate_networks.cli import main  # noqa: E402
from temporal_eigenstate_networks.data import ByteTokenizer, load_tokenizer, save_tokenizer  # noqa: E402
from temporal_eigenstate_networks.hf import SUPPORTED_TRANSFORMERS, register, transformers_problem  # noqa: E402
from temporal_eigenstate_networks.hf.configuration import TenConfig  # noqa: E402
from temporal_eigenstate_networks.hf.modeling import TenForCausalLM  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


# (use_hten, layer_pattern): the pure models, and hybrids with full (a) and sliding-window (w) attention
VARIANTS = {"ten": (False, None), "hten": (True, None), "ea": (False, "ea"), "ew": (False, "ew"), "hw": (True, "hw")}
HYBRIDS = ["ea", "ew", "hw"]
WINDOW = 6  # shorter than the prompts plus new tokens of the tests: a w layer's ring wraps


def tiny_config(hten: bool, layer_pattern: str | None = None) -> TemporalEigenstateConfig:
    return TemporalEigenstateConfig(d_model=32, n_layers=2, num_eigenstates=12, num_heads=2, max_seq_len=32,
                                    use_hten=hten, hten_scales=[1, 2, 4], scan_backend="chunked",
                                    layer_pattern=layer_pattern, attention_window=WINDOW,
                                    attention_heads=2)  # fmt: skip


def checkpoint_of(variant: str, folder):
    """A ten checkpoint folder as `ten train` writes it (model + tokenizer), and the network."""
    network = TemporalEigenstateNetwork(tiny_config(*VARIANTS[variant])).eval()
    network.save_pretrained(folder)
    save_tokenizer(ByteTokenizer(), folder)
    return folder, network


@pytest.fixture(params=list(VARIANTS))
def saved(request, tmp_path):
    """Every test that takes it runs for TEN, HTEN and the hybrids alike."""
    return checkpoint_of(request.param, tmp_path / "checkpoint")


@pytest.fixture
def saved_ten(tmp_path):
    return checkpoint_of("ten", tmp_path / "checkpoint")


@pytest.fixture
def hf_model(saved):
    folder, network = saved
    return AutoModelForCausalLM.from_pretrained(folder).eval(), network


def test_a_ten_folder_loads_with_the_auto_classes_and_gives_the_networks_logits(hf_model):
    model, network = hf_model
    assert isinstance(model, TenForCausalLM)
    ids = torch.randint(0, 256, (2, 23))
    torch.testing.assert_close(model(ids).logits, network(ids), rtol=0, atol=0)
    assert model.config.model_type == "ten"


def test_the_loss_of_labels_is_ten_compute_loss_of_the_shifted_inputs(hf_model):
    model, network = hf_model
    ids = torch.randint(0, 256, (2, 17))
    out = model(ids, labels=ids)
    expected = network.compute_loss(ids[:, :-1], ids[:, 1:], return_dict=True)
    # The network sees one more position here (the last input predicts nothing), so the energy term differs.
    torch.testing.assert_close(out.ce_loss, expected["ce_loss"])
    torch.testing.assert_close(out.loss, out.ce_loss + network.config.energy_reg_weight * out.energy_loss)


def test_save_pretrained_round_trips_through_ten_and_transformers(hf_model, tmp_path):
    model, network = hf_model
    model.save_pretrained(tmp_path / "hf")
    again = TemporalEigenstateNetwork.from_pretrained(tmp_path / "hf")
    for (name, a), (_, b) in zip(network.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert again.config == network.config  # a hybrid's layer_pattern, window and heads too
    assert AutoConfig.from_pretrained(tmp_path / "hf").to_ten() == network.config
    ids = torch.randint(0, 256, (2, 15))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_a_model_built_from_its_config_holds_the_network_and_saves_what_ten_loads(tmp_path):
    from safetensors import safe_open

    model = TenForCausalLM(TenConfig.from_ten(tiny_config(True)))
    assert isinstance(model.network, TemporalEigenstateNetwork) and "network.embedding.weight" in model.state_dict()
    model.save_pretrained(tmp_path / "hf")
    with safe_open(tmp_path / "hf" / "model.safetensors", framework="pt") as weights:
        assert set(weights.keys()) == set(model.network.state_dict())  # the network's own keys, as ten saves them
    again = TemporalEigenstateNetwork.from_pretrained(tmp_path / "hf")
    for (name, a), (_, b) in zip(model.network.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_the_tokenizer_of_a_checkpoint_loads_with_auto_tokenizer(saved):
    folder, _ = saved
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "Now is the winter — of our discontent\n"
    assert tokenizer(text)["input_ids"] == ByteTokenizer().encode(text).tolist()


# ---------------------------------------------------------------- generate


def forward_lengths(model):
    """Record the length of every forward call's input_ids."""
    lengths = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append((args[0] if args else kwargs["input_ids"]).shape[1]),
        with_kwargs=True,
    )
    return lengths


def recomputed_logits(model, sequences, prompt_length):
    """Each step's next-token logits from the whole prefix, without any state."""
    with torch.no_grad():
        full = model(sequences, use_cache=False).logits
    return [full[:, t] for t in range(prompt_length - 1, sequences.shape[1] - 1)]


def test_generate_reads_the_prompt_once_then_one_token_per_step(hf_model):
    model, _ = hf_model
    lengths = forward_lengths(model)
    prompt = torch.randint(0, 256, (1, 9))
    out = model.generate(prompt, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    assert lengths == [9, 1, 1, 1, 1, 1]
    for step, expected in zip(out.logits, recomputed_logits(model, out.sequences, 9), strict=True):
        torch.testing.assert_close(step, expected, rtol=1e-5, atol=1e-5)


def test_greedy_generate_matches_ten_generate(hf_model):
    model, network = hf_model
    prompt = torch.randint(0, 256, (2, 7))
    out = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, network.generate(prompt, 8, temperature=0))


def test_sampling_with_the_state_equals_sampling_by_recomputation(hf_model):
    model, _ = hf_model
    prompt = torch.randint(0, 256, (2, 6))
    settings = dict(max_new_tokens=8, do_sample=True, temperature=0.9, top_k=50, top_p=0.95)
    torch.manual_seed(3)
    with_state = model.generate(prompt, **settings)
    torch.manual_seed(3)
    recomputed = model.generate(prompt, use_cache=False, **settings)
    assert torch.equal(with_state, recomputed)


def test_beam_search_with_the_state_equals_beam_search_by_recomputation(hf_model):
    model, _ = hf_model
    prompt = torch.randint(0, 256, (2, 6))
    settings = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False,
                    output_scores=True, return_dict_in_generate=True)  # fmt: skip
    lengths = forward_lengths(model)
    with_state = model.generate(prompt, **settings)
    assert lengths[0] == 6 and set(lengths[1:]) == {1}
    recomputed = model.generate(prompt, use_cache=False, **settings)
    assert torch.equal(with_state.sequences, recomputed.sequences)
    torch.testing.assert_close(with_state.sequences_scores, recomputed.sequences_scores)


def left_padded_batch(lengths):
    """Prompts of these lengths (no token 0) and the batch that holds them padded on the left with 0: (prompts,
    ids, attention mask)."""
    prompts = [torch.randint(1, 256, (n,)) for n in lengths]
    width = max(lengths)
    ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
    return prompts, ids, (ids != 0).long()


def test_a_left_padded_batch_generates_what_each_prompt_does_alone(hf_model):
    """Prompts of 5, 8 and 11 tokens: for HTEN, rows at different positions of their windows; for a hybrid's
    attention, rows whose keys sit at different positions (a w layer's ring wraps)."""
    model, _ = hf_model
    prompts, ids, mask = left_padded_batch((5, 8, 11))
    width = ids.shape[1]
    settings = dict(max_new_tokens=7, do_sample=False, output_logits=True, return_dict_in_generate=True,
                    pad_token_id=0)  # fmt: skip
    batch = model.generate(ids, attention_mask=mask, **settings)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt.unsqueeze(0), **settings)
        assert torch.equal(batch.sequences[row, width:], alone.sequences[0, len(prompt) :])
        for step_batch, step_alone in zip(batch.logits, alone.logits, strict=True):
            torch.testing.assert_close(step_batch[row], step_alone[0], rtol=1e-5, atol=1e-5)


def test_left_padded_beam_search_finds_the_beams_of_each_prompt_alone(hf_model):
    """Beams reorder a padded state's rows (select_rows): its padding, masked, must follow each row."""
    model, _ = hf_model
    prompts, ids, mask = left_padded_batch((4, 9))
    settings = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=0,
                    output_scores=True, return_dict_in_generate=True)  # fmt: skip
    batch = model.generate(ids, attention_mask=mask, **settings)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt.unsqueeze(0), **settings)
        rows = slice(2 * row, 2 * row + 2)
        assert torch.equal(batch.sequences[rows, ids.shape[1] :], alone.sequences[:, len(prompt) :])
        torch.testing.assert_close(batch.sequences_scores[rows], alone.sequences_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pattern", HYBRIDS)
def test_a_hybrids_attention_masks_each_rows_padding_and_a_window_keeps_its_size(pattern):
    model = TenForCausalLM(TenConfig.from_ten(tiny_config(*VARIANTS[pattern]))).eval()
    _, ids, mask = left_padded_batch((3, 10, 7))
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                         return_dict_in_generate=True)  # fmt: skip
    attention = out.cache.state.layers[1]
    assert attention.first.tolist() == [7, 0, 3]  # each row's padding: masked, the batch's positions shared
    assert int(attention.length) == out.cache.seen_tokens == 14
    if pattern.endswith("w"):
        assert attention.keys.shape == (3, 2, WINDOW, 16)  # the ring: its fixed size, padded or not


def test_generation_continues_from_the_returned_state(hf_model):
    """The returned state holds all but the last token: continuing feeds that token plus the new ones."""
    model, _ = hf_model
    prompt = torch.randint(0, 256, (1, 6))
    first = model.generate(prompt, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert first.cache.seen_tokens == first.sequences.shape[1] - 1
    follow_up = torch.cat([first.sequences, torch.randint(0, 256, (1, 3))], dim=1)
    lengths = forward_lengths(model)
    continued = model.generate(follow_up, cache=first.cache, max_new_tokens=4, do_sample=False)
    assert lengths == [4, 1, 1, 1]
    assert torch.equal(continued, model.generate(follow_up, max_new_tokens=4, do_sample=False))


def test_a_right_padded_batch_keeps_the_logits_of_its_real_positions(hf_model):
    model, _ = hf_model
    ids = torch.randint(1, 256, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    torch.testing.assert_close(model(ids, attention_mask=mask, use_cache=False).logits[1, :6],
                               model(ids[1:, :6]).logits[0])  # fmt: skip
    with pytest.raises(ValueError, match="pad on the left"):
        model(ids, attention_mask=mask, use_cache=True)


# ---------------------------------------------------------------- export and bad input


def test_an_exported_folder_loads_with_trust_remote_code_alone(saved_ten, tmp_path):
    folder, network = saved_ten
    assert main(["export", "--checkpoint", str(folder), "--hf", str(tmp_path / "export")]) == 0
    ids = torch.randint(0, 256, (1, 12))
    torch.save(network(ids).detach(), tmp_path / "expected.pt")
    torch.save(ids, tmp_path / "ids.pt")
    script = (
        "import torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'export')!r}, trust_remote_code=True)\n"
        f"ids = torch.load({str(tmp_path / 'ids.pt')!r})\n"
        f"torch.testing.assert_close(model(ids).logits, torch.load({str(tmp_path / 'expected.pt')!r}))\n"
        "print('ok', type(model).__name__)\n"
    )
    assert "ok TenForCausalLM" in run_alone(script, tmp_path)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_ten.TenForCausalLM"


def run_alone(script: str, folder) -> str:
    """Run a Python script in a fresh interpreter (nothing of ten imported first) in ``folder``: its stdout."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **OFFLINE}, cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_exported_hybrids_generate_from_their_state_what_ten_generate_does(tmp_path):
    """ea, ew and hw exported, then loaded with trust_remote_code alone (one interpreter for the three): greedy
    generate through TenCache gives LanguageModel.generate's tokens, 12 new ones after 7 (past the window)."""
    prompt = torch.randint(0, 256, (2, 7))
    torch.save(prompt, tmp_path / "prompt.pt")
    for pattern in HYBRIDS:
        folder, network = checkpoint_of(pattern, tmp_path / pattern)
        assert main(["export", "--checkpoint", str(folder), "--hf", str(tmp_path / f"{pattern}-hf")]) == 0
        torch.save(network.generate(prompt, 12, temperature=0), tmp_path / f"{pattern}.pt")
    script = (
        "import torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "prompt = torch.load('prompt.pt')\n"
        f"for pattern in {HYBRIDS!r}:\n"
        "    model = AutoModelForCausalLM.from_pretrained(pattern + '-hf', trust_remote_code=True)\n"
        "    model.generation_config.eos_token_id = None  # the export's eos is byte 0: a random model may choose it\n"
        "    out = model.generate(prompt, max_new_tokens=12, do_sample=False, return_dict_in_generate=True)\n"
        "    assert type(out.cache).__name__ == 'TenCache' and out.cache.seen_tokens == 18, out.cache\n"
        "    assert torch.equal(out.sequences, torch.load(pattern + '.pt')), pattern\n"
        "    print('ok', pattern, model.config.layer_pattern)\n"
    )
    assert run_alone(script, tmp_path).split() == [word for p in HYBRIDS for word in ("ok", p, p)]


def test_the_modeling_module_imports_first_and_registers_the_auto_classes(tmp_path):
    """Importing it imports transformers, whose import hook registers ten's classes: not before they exist."""
    script = (
        "from temporal_eigenstate_networks.hf.modeling import TenConfig, TenForCausalLM\n"
        "from transformers import AutoModelForCausalLM\n"
        "print(AutoModelForCausalLM._model_mapping[TenConfig] is TenForCausalLM)\n"
    )
    assert run_alone(script, tmp_path).split() == ["True"]


def one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_export_refuses_bad_folders_in_one_line(saved_ten, tmp_path, capsys):
    folder, _ = saved_ten
    out = str(tmp_path / "out")
    missing = ["export", "--checkpoint", str(tmp_path / "nothing"), "--hf", out]
    assert "does not exist" in one_line_error(capsys, missing)

    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}))
    (other / "model.safetensors").write_bytes(b"")
    assert "'gpt2' model" in one_line_error(capsys, ["export", "--checkpoint", str(other), "--hf", out])

    (folder / "tokenizer_meta.json").write_text("{}")  # garbled (none at all: tests/test_hf_export.py)
    assert "tokenizer meta file" in one_line_error(capsys, ["export", "--checkpoint", str(folder), "--hf", out])

    baseline = tmp_path / "transformer"
    TransformerLM(TransformerConfig(d_model=16, n_layers=1, num_heads=2)).save_pretrained(baseline)
    save_tokenizer(ByteTokenizer(), baseline)
    assert "baseline" in one_line_error(capsys, ["export", "--checkpoint", str(baseline), "--hf", out])
    with pytest.raises(ValueError, match="serves TEN and HTEN"):
        AutoModelForCausalLM.from_pretrained(baseline)


def test_an_unsupported_transformers_version_is_one_line(saved_ten, tmp_path, capsys, monkeypatch):
    folder, _ = saved_ten
    monkeypatch.setattr("temporal_eigenstate_networks.hf.metadata.version", lambda name: "5.3.0")
    assert "transformers 5.3.0 is installed" in transformers_problem()
    assert ">=5.24" in one_line_error(capsys, ["export", "--checkpoint", str(folder), "--hf", str(tmp_path / "o")])


@pytest.mark.parametrize("version", ["5.24.0", "5.24.3", "5.25.0", "5.25.1"])
def test_every_version_of_the_supported_range_registers(version, monkeypatch):
    monkeypatch.setattr("temporal_eigenstate_networks.hf.metadata.version", lambda name: version)
    assert transformers_problem() is None and register()


def test_the_supported_range_is_the_hf_extras():
    """Written twice (pyproject.toml's extras, hf.SUPPORTED_TRANSFORMERS): the same range."""
    text = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    in_code = tuple(".".join(map(str, version)) for version in SUPPORTED_TRANSFORMERS)
    assert set(re.findall(r'"transformers>=([\d.]+),<([\d.]+)"', text)) == {in_code}


def test_training_through_transformers_gives_the_same_gradients_with_activation_checkpointing(hf_model):
    model, _ = hf_model
    ids = torch.randint(0, 256, (2, 16))

    def gradients():
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    model.train()
    plain = gradients()
    model.activation_checkpointing_enable()
    assert model.network.gradient_checkpointing and model(input_ids=ids).cache is None  # no state kept in training
    for a, b in zip(plain, gradients(), strict=True):
        torch.testing.assert_close(a, b)
    model.activation_checkpointing_disable()
    model.eval()


def test_a_checkpoint_of_ten_train_with_a_bpe_tokenizer_loads_and_generates(corpus, tmp_path):
    from .test_training import TINY

    run = tmp_path / "run"
    argv = ["train", "--dataset", str(corpus), *TINY, "--max_steps", "2", "--tokenizer", "bpe:300", "--use_hten",
            "--hten_scales", "1,2", "--output_dir", str(run)]  # fmt: skip
    assert main(argv) == 0
    checkpoint = run / "checkpoints" / "final"
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ten_tokenizer = load_tokenizer(checkpoint)
    text = "Now is the winter of our discontent"
    assert tokenizer(text)["input_ids"] == ten_tokenizer.encode(text).tolist()
    batch = tokenizer([text, "Now"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    alone = model.generate(tokenizer(["Now"], return_tensors="pt")["input_ids"], max_new_tokens=5, do_sample=False)
    assert torch.equal(out[1, -5:], alone[0, -5:])


def test_an_export_onto_a_full_disk_is_one_line_and_leaves_nothing_behind(saved_ten, tmp_path, capsys, monkeypatch):
    import errno

    folder, _ = saved_ten

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("temporal_eigenstate_networks.hf.export.save_tokenizer", full)
    assert main(["export", "--checkpoint", str(folder), "--hf", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no export, no staging folder


def test_an_export_first_puts_back_or_removes_what_a_killed_export_of_its_folder_left(saved_ten, tmp_path, capsys):
    folder, _ = saved_ten
    out = tmp_path / "out"
    assert main(["export", "--checkpoint", str(folder), "--hf", str(out)]) == 0
    out.rename(tmp_path / ".old-out-99999")  # killed between the renames: the older export is set aside
    (tmp_path / ".tmp-out-99998").mkdir()  # and a new one never moved in
    (tmp_path / ".tmp-other-99999").mkdir()  # another folder's: let be
    assert "is not empty" in one_line_error(capsys, ["export", "--checkpoint", str(folder), "--hf", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-other-99999", "checkpoint", "out"]
    assert main(["export", "--checkpoint", str(folder), "--hf", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-other-99999", "checkpoint", "out"]
