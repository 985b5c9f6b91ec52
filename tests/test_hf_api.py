"""transformers' API as the ecosystem uses it: half precision, the attention mask on every path, resize, hidden
states, activation checkpointing, shift_labels, torch.export, import order, and folders written before them."""

import json
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM  # noqa: E402
from transformers.modeling_layers import GradientCheckpointingLayer  # noqa: E402

from temporal_eigenstate_networks import (  # noqa: E402
    LanguageModel,
    TemporalEigenstateConfig,
    TemporalEigenstateNetwork,
)
from temporal_eigenstate_networks.cli import main  # noqa: E402
from temporal_eigenstate_networks.hf.configuration import TenConfig  # noqa: E402
from temporal_eigenstate_networks.hf.modeling import TenForCausalLM, TenModel  # noqa: E402

from .test_hf import VARIANTS, checkpoint_of, left_padded_batch, run_alone, tiny_config  # noqa: E402

HALF = [torch.bfloat16, torch.float16]
DYNAMICS = TemporalEigenstateNetwork.keep_float32
FOLDERS_BEFORE = Path(__file__).parent / "data" / "hf-folders-da533bf"


def built(variant: str) -> TenForCausalLM:
    return TenForCausalLM(TenConfig.from_ten(tiny_config(*VARIANTS[variant]))).eval()


@pytest.fixture(params=list(VARIANTS))
def variant(request):
    return request.param


# ---------------------------------------------------------------- half precision


@pytest.mark.parametrize("keyword, dtype", [("dtype", torch.bfloat16), ("dtype", torch.float16),
                                            ("torch_dtype", torch.bfloat16)])  # fmt: skip
def test_a_folder_loaded_in_half_precision_computes_and_generates_in_it(variant, keyword, dtype, tmp_path):
    folder, network = checkpoint_of(variant, tmp_path / "checkpoint")
    model = AutoModelForCausalLM.from_pretrained(folder, **{keyword: dtype}).eval()  # torch_dtype: the older name
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == (torch.float32 if name.rsplit(".", 1)[-1] in DYNAMICS else dtype), name
    ids = torch.randint(1, 256, (2, 11))
    out = model(ids)
    assert out.logits.dtype == dtype
    torch.testing.assert_close(out.logits.float(), network(ids), rtol=0, atol=0.05)  # half's rounding, not a bug
    for layer in out.cache.state.layers:  # the state accumulates in float32 whatever the weights' dtype
        for tensor in (getattr(layer, "eigenstates", layer), getattr(layer, "window_sum", layer)):
            if torch.is_tensor(tensor) and tensor.is_complex():
                assert tensor.dtype == torch.complex64
    generated = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 16) and torch.equal(generated[:, :11], ids)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_a_model_cast_with_to_computes_in_half_precision(dtype):
    model = built("hw").to(dtype)
    ids = torch.randint(1, 256, (2, 9))
    assert model(ids).logits.dtype == dtype
    assert model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (2, 12)


def test_a_model_builds_under_a_half_default_dtype_with_its_dynamics_in_float32():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # what from_pretrained(dtype=torch.float16) builds under
    try:
        model = built("hten")
    finally:
        torch.set_default_dtype(default)
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == (torch.float32 if name.rsplit(".", 1)[-1] in DYNAMICS else torch.float16), name
    assert model(torch.randint(1, 256, (1, 6))).logits.dtype == torch.float16


def test_a_folder_saved_in_bf16_loads_in_bf16_with_dtype_auto(tmp_path):
    folder, _ = checkpoint_of("ten", tmp_path / "checkpoint")
    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert model.network.embedding.weight.dtype == torch.bfloat16
    assert model.network.blocks[0].mixer.core.decay_logit.dtype == torch.float32


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_ten_loads_and_generates_in_half_precision(dtype, tmp_path, capsys):
    folder, network = checkpoint_of("hw", tmp_path / "checkpoint")
    model = LanguageModel.from_pretrained(folder, dtype=dtype)
    assert model.embedding.weight.dtype == dtype and model.blocks[0].mixer.scale_weights.dtype == torch.float32
    ids = torch.randint(1, 256, (2, 7))
    torch.testing.assert_close(model(ids).float(), network(ids), rtol=0, atol=0.05)
    assert model.generate(ids, 4, temperature=0).shape == (2, 11)
    assert main(["generate", "--checkpoint", str(folder), "--dtype", str(dtype).split(".")[-1], "--device", "cpu",
                 "--max_new_tokens", "4", "--temperature", "0", "--prompt", "ROMEO:"]) in (0, None)  # fmt: skip
    assert capsys.readouterr().out.startswith("ROMEO:")


# ---------------------------------------------------------------- the attention mask on every path


def padded_and_alone(model, lengths, use_cache):
    """The logits of a left-padded batch and of each prompt alone."""
    prompts, ids, mask = left_padded_batch(lengths)
    batch = model(ids, attention_mask=mask, use_cache=use_cache)
    alone = [model(prompt.unsqueeze(0), use_cache=use_cache) for prompt in prompts]
    return prompts, ids, mask, batch, alone


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_left_padded_batch_gives_each_row_what_it_gives_alone_in_logits_and_loss(variant, use_cache, mode):
    model = built(variant).train(mode == "train")
    if mode == "train" and use_cache:
        pytest.skip("a state is kept in eval mode only (use_cache has no meaning while training)")
    prompts, ids, mask, batch, alone = padded_and_alone(model, (4, 9, 6), use_cache)
    width = ids.shape[1]
    for row, (prompt, out) in enumerate(zip(prompts, alone, strict=True)):
        torch.testing.assert_close(batch.logits[row, width - len(prompt) :], out.logits[0], rtol=1e-5, atol=1e-5)
        assert not batch.logits[row, : width - len(prompt)].any()  # padding positions have no prediction

    # The loss: each row's targets counted once, as if the rows were one batch of their own lengths.
    losses = model(ids, attention_mask=mask, labels=ids, use_cache=use_cache)
    rows = [model(p.unsqueeze(0), labels=p.unsqueeze(0), use_cache=use_cache) for p in prompts]
    targets = torch.tensor([len(p) - 1 for p in prompts], dtype=torch.float32)
    ce = sum(r.ce_loss * n for r, n in zip(rows, targets, strict=True)) / targets.sum()
    energy = sum(r.energy_loss * len(p) for r, p in zip(rows, prompts, strict=True)) / sum(map(len, prompts))
    torch.testing.assert_close(losses.ce_loss, ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses.energy_loss, energy, rtol=1e-5, atol=1e-7)


def test_generating_from_a_left_padded_batch_without_the_cache_continues_each_row_as_alone(variant):
    model = built(variant)
    prompts, ids, mask = left_padded_batch((5, 8, 11))
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    recomputed = model.generate(ids, attention_mask=mask, use_cache=False, **settings)
    assert torch.equal(recomputed, model.generate(ids, attention_mask=mask, **settings))
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt.unsqueeze(0), use_cache=False, **settings)
        assert torch.equal(recomputed[row, ids.shape[1] :], alone[0, len(prompt) :])


def test_a_right_padded_batch_keeps_its_rows_and_counts_no_padding_in_the_loss():
    model = built("ea").train()
    ids = torch.randint(1, 256, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    out = model(ids, attention_mask=mask, labels=ids)
    alone = model(ids[1:, :6], labels=ids[1:, :6])
    torch.testing.assert_close(out.logits[1, :6], alone.logits[0])
    first = model(ids[:1], labels=ids[:1])
    torch.testing.assert_close(out.ce_loss, (first.ce_loss * 9 + alone.ce_loss * 5) / 14)


def test_a_mask_with_a_hole_is_refused_in_one_line():
    ids = torch.randint(1, 256, (1, 6))
    with pytest.raises(ValueError, match="zeros only before them"):
        built("ten")(ids, attention_mask=torch.tensor([[1, 1, 0, 1, 1, 1]]), use_cache=False)


# ---------------------------------------------------------------- resize, hidden states, shift_labels


def test_resized_token_embeddings_accept_the_new_ids_and_save_and_load(variant, tmp_path):
    model = built(variant)
    model.resize_token_embeddings(256 + 7)
    ids = torch.tensor([[5, 256, 262, 40]])
    assert model(ids).logits.shape == (1, 4, 263)
    assert model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0).shape == (1, 6)
    model.save_pretrained(tmp_path / "resized")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "resized").eval()
    torch.testing.assert_close(again(ids).logits, model(ids).logits)
    assert LanguageModel.from_pretrained(tmp_path / "resized").config.vocab_size == 263  # and ten reads it


def test_hidden_states_are_each_blocks_input_then_the_final_output(variant):
    model = built(variant)
    ids = torch.randint(1, 256, (2, 7))
    out = model(ids, output_hidden_states=True)
    layers = model.network.config.n_layers
    assert len(out.hidden_states) == layers + 1 and all(h.shape == (2, 7, 32) for h in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[0], model.network.embedding(ids))
    torch.testing.assert_close(model.network.head(out.hidden_states[-1]), out.logits)
    base = TenModel(model.config).eval()
    base.load_state_dict(model.state_dict())
    base_out = base(ids, output_hidden_states=True)
    torch.testing.assert_close(base_out.last_hidden_state, out.hidden_states[-1])
    assert model(ids).hidden_states is None


def test_generate_returns_the_hidden_states_of_every_step(variant):
    model = built(variant)
    prompt = torch.randint(1, 256, (2, 6))
    for settings in (dict(do_sample=False), dict(num_beams=2, do_sample=False)):
        out = model.generate(prompt, max_new_tokens=3, return_dict_in_generate=True, output_hidden_states=True,
                             pad_token_id=0, **settings)  # fmt: skip
        assert len(out.hidden_states) == 3  # one tuple per new token: the prompt's positions, then one at a time
        assert [h.shape[1] for h in out.hidden_states[0]] == [6] * 3 and out.hidden_states[1][0].shape[1] == 1
        assert out.hidden_states[0][0].shape[0] == 2 * settings.get("num_beams", 1)


def test_shift_labels_are_the_targets_as_given(variant):
    model = built(variant).train()
    ids = torch.randint(1, 256, (2, 8))
    shifted = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    from_labels = model(ids, labels=ids).loss
    torch.testing.assert_close(model(ids, shift_labels=shifted).loss, from_labels)
    torch.testing.assert_close(model(ids, labels=torch.zeros_like(ids), shift_labels=shifted).loss, from_labels)
    assert not torch.equal(model(ids, shift_labels=ids).loss, from_labels)


def test_prepare_inputs_for_generation_passes_other_arguments_on_to_forward():
    inputs = built("ten").prepare_inputs_for_generation(torch.ones(1, 3, dtype=torch.long), shift_labels=None, marker=7)
    assert inputs["marker"] == 7 and "shift_labels" in inputs and inputs["input_ids"].shape == (1, 3)


# ---------------------------------------------------------------- activation checkpointing


def checkpointing(model, on: bool, **kwargs):
    """transformers' switch under its name of this version (activation_* from 5.24, gradient_* before)."""
    name = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if on:
            getattr(model, f"{name}_checkpointing_enable")(**{f"{name}_checkpointing_kwargs": kwargs} if kwargs else {})
        else:
            getattr(model, f"{name}_checkpointing_disable")()
        return getattr(model, f"is_{name}_checkpointing")


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_switches_every_block_and_recomputes_them_with_the_kwargs_given(use_reentrant):
    model = built("hw").train()
    assert all(isinstance(block, GradientCheckpointingLayer) for block in model.network.blocks)  # PEFT finds them
    ids = torch.randint(1, 256, (2, 12))

    def gradients():
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    assert not checkpointing(model, False) and not model.network.gradient_checkpointing
    assert checkpointing(model, True, use_reentrant=use_reentrant)
    assert model.network.gradient_checkpointing and all(block.gradient_checkpointing for block in model.network.blocks)
    recomputed = []
    for block in model.network.blocks:
        # The mixer, not the block: the recomputation calls the block's forward itself, without its hooks.
        block.mixer.register_forward_pre_hook(lambda *_: recomputed.append(torch.is_grad_enabled()))
        assert block._gradient_checkpointing_func.keywords["use_reentrant"] is use_reentrant  # transformers' partial
    for a, b in zip(plain, gradients(), strict=True):
        torch.testing.assert_close(a, b)
    assert len(recomputed) == 2 * len(model.network.blocks)  # forward, then again in the backward pass
    assert not checkpointing(model, False) and not any(b.gradient_checkpointing for b in model.network.blocks)


def test_tens_own_switch_checkpoints_the_transformers_model_too():
    model = built("ten").train()
    ids = torch.randint(1, 256, (2, 12))
    model(ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.network.gradient_checkpointing = True
    model(ids, labels=ids).loss.backward()
    for a, p in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)


# ---------------------------------------------------------------- config, export, import order, old folders


def test_a_config_with_no_arguments_is_tens_default_model():
    config = TenConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (512, 4, 256)
    assert TenConfig(hidden_size=64).d_model == 64
    assert config.to_ten() == TemporalEigenstateConfig()


def test_torch_export_takes_and_returns_the_cache(variant):
    model = built(variant)
    ids = torch.randint(1, 256, (2, 9))
    exported = torch.export.export(model, (ids,)).module()
    out = exported(ids)
    torch.testing.assert_close(out.logits, model(ids).logits)
    assert out.cache.seen_tokens == 9

    class Step(torch.nn.Module):  # one token on from a state: the cache as an input
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, token, cache):
            return self.model(token, cache=cache).logits

    with torch.no_grad():
        prefix = model(ids[:, :8]).cache
    step = torch.export.export(Step(model), (ids[:, 8:], prefix)).module()
    with torch.no_grad():
        prefix = model(ids[:, :8]).cache  # the exported call updated the first one
    torch.testing.assert_close(step(ids[:, 8:], prefix), model(ids).logits[:, 8:], rtol=1e-5, atol=1e-5)


FIRST_IMPORTS = ["temporal_eigenstate_networks.hf.configuration", "temporal_eigenstate_networks.hf.modeling",
                 "temporal_eigenstate_networks"]  # fmt: skip


@pytest.mark.parametrize("first", FIRST_IMPORTS)
def test_any_import_order_registers_the_auto_classes(first, tmp_path):
    script = (
        f"import {first}\n"
        "from transformers import AutoConfig, AutoModel, AutoModelForCausalLM\n"
        "from temporal_eigenstate_networks.hf.modeling import TenConfig, TenForCausalLM, TenModel\n"
        "print(AutoConfig.for_model('ten').__class__ is TenConfig, AutoModel._model_mapping[TenConfig] is TenModel,\n"
        "      AutoModelForCausalLM._model_mapping[TenConfig] is TenForCausalLM)\n"
    )
    assert run_alone(script, tmp_path).split() == ["True"] * 3


def test_folders_written_before_these_changes_load_and_compute_what_they_did(tmp_path):
    """tests/data/hf-folders-da533bf: a tiny HTEN + sliding-window hybrid as `ten export` and transformers'
    save_pretrained wrote it at commit da533bf, with the logits and greedy tokens that code gave."""
    expected = load_file(FOLDERS_BEFORE / "expected.safetensors")
    ids = expected["ids"]
    for folder in ("export", "saved"):
        model = AutoModelForCausalLM.from_pretrained(FOLDERS_BEFORE / folder).eval()
        torch.testing.assert_close(model(ids).logits, expected["logits"])
        generated = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert torch.equal(generated, expected["generated"])
    torch.testing.assert_close(LanguageModel.from_pretrained(FOLDERS_BEFORE / "saved")(ids), expected["logits"])
    assert AutoModel.from_pretrained(FOLDERS_BEFORE / "saved").config.layer_pattern == "hw"
    assert json.loads((FOLDERS_BEFORE / "export" / "config.json").read_text())["auto_map"]
    script = (
        "import torch\n"
        "from safetensors.torch import load_file\n"
        "from transformers import AutoModelForCausalLM\n"
        f"expected = load_file({str(FOLDERS_BEFORE / 'expected.safetensors')!r})\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(FOLDERS_BEFORE / 'export')!r}, trust_remote_code=True)\n"
        "torch.testing.assert_close(model(expected['ids']).logits, expected['logits'])\n"
        "print(type(model).__name__)\n"
    )
    assert run_alone(script, tmp_path).split() == ["TenForCausalLM"]
    assert AutoConfig.from_pretrained(FOLDERS_BEFORE / "saved").to_ten().hten_scales == [1, 2, 3]
