"""`--compile`: the training step through torch.compile (inductor, on the CPU here) trains like eager.

The scan is a torch custom operator (ops/chunked.py, ops/triton.py): the compiler sees it as one op with a fake
implementation and a registered backward, so the whole step is one graph. Compilation takes tens of seconds per
model on 2 cores, so the models are tiny and the runs 3 steps long.
"""

import pytest
import torch

from temporal_eigenstate_networks.training import Trainer

from .test_runs import weights
from .test_training import records, tiny_arguments

VARIANTS = {"ten": {}, "hten": {"use_hten": True, "hten_scales": [1, 2]},
            "transformer": {"model": "transformer", "num_eigenstates": None}}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compiled_training_matches_eager(corpus, tmp_path, variant):
    losses, final = {}, {}
    for compiled in (False, True):
        output = tmp_path / f"compiled-{compiled}"
        args = tiny_arguments(corpus, output, max_steps=3, compile=compiled, **VARIANTS[variant])
        trainer = Trainer(args)
        assert isinstance(trainer.objective, torch._dynamo.eval_frame.OptimizedModule) == compiled
        trainer.train()
        losses[compiled] = [r["loss"] for r in records(output) if r["event"] == "train"]
        final[compiled] = weights(output / "checkpoints" / "final")
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    for name, value in final[False].items():
        torch.testing.assert_close(final[True][name], value, rtol=1e-4, atol=1e-6, msg=name)


COMPILED_LAYERS = {"ten": {}, "hten": {"use_hten": True, "hten_scales": [1, 2]}, "nonselective": {"selective": False},
                   "hybrid": {"layer_pattern": "ew", "attention_window": 4}}  # fmt: skip


@pytest.mark.parametrize("variant", list(COMPILED_LAYERS))
def test_the_whole_training_step_is_one_graph(variant):
    """fullgraph=True makes any graph break an error; aot_eager traces the backward through the registered
    autograd and the fake implementations, as inductor does, without its code generation."""
    from temporal_eigenstate_networks import TemporalEigenstateConfig, TemporalEigenstateNetwork

    config = TemporalEigenstateConfig(vocab_size=64, d_model=16, n_layers=2, num_eigenstates=8, num_heads=2,
                                      max_seq_len=16, **COMPILED_LAYERS[variant])  # fmt: skip
    model = TemporalEigenstateNetwork(config)
    inputs, targets = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))

    def loss() -> torch.Tensor:
        return model.compute_loss(inputs, targets, return_dict=True)["loss"]

    def loss_and_gradients(loss_fn) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        value = loss_fn()  # the backward graph is AOTAutograd's, compiled with the forward
        return value, torch.autograd.grad(value, list(model.parameters()))

    torch._dynamo.reset()
    compiled_loss, compiled_grads = loss_and_gradients(torch.compile(loss, fullgraph=True, backend="aot_eager"))
    loss, grads = loss_and_gradients(loss)
    torch.testing.assert_close(compiled_loss, loss)
    for compiled, eager in zip(compiled_grads, grads, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)


def test_compilation_is_on_cuda_only_unless_asked(corpus, tmp_path):
    trainer = Trainer(tiny_arguments(corpus, tmp_path / "run", max_steps=1, device="cpu"))
    assert trainer.objective is not None and not isinstance(trainer.objective, torch._dynamo.eval_frame.OptimizedModule)


@pytest.mark.parametrize("use_hten", [False, True])
def test_a_compiled_decode_step_generates_what_eager_does(use_hten):
    from temporal_eigenstate_networks import TemporalEigenstateConfig, TemporalEigenstateNetwork

    config = TemporalEigenstateConfig(vocab_size=64, d_model=16, n_layers=1, num_eigenstates=8, num_heads=2,
                                      max_seq_len=16, use_hten=use_hten, hten_scales=[1, 2])  # fmt: skip
    model = TemporalEigenstateNetwork(config).eval()
    prompt = torch.randint(0, 64, (2, 5))
    eager = model.generate(prompt, 9, temperature=0, compile_step=False)
    compiled = model.generate(prompt, 9, temperature=0, compile_step=True)
    assert model._compiled_step is not None and torch.equal(compiled, eager)
    with torch.no_grad():  # per-step logits, not only the argmax: a lost state would show here
        _, state = model(prompt, return_state=True)
        logits, _ = model.decode_step(compiled=True)(eager[:, 5:6], state)
        expected = model(eager[:, :6])[:, -1:]
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("use_hten", [False, True])
def test_one_decode_graph_serves_every_prompt_length_and_window_position(use_hten):
    """Batch 1 keeps the prompt's stride in the prefill state, and HTEN's window position is an int: either
    would compile the step again (on a GPU, tens of seconds each)."""
    from torch._dynamo.utils import counters

    from temporal_eigenstate_networks import TemporalEigenstateConfig, TemporalEigenstateNetwork

    config = TemporalEigenstateConfig(vocab_size=64, d_model=16, n_layers=1, num_eigenstates=12, num_heads=2,
                                      max_seq_len=32, use_hten=use_hten, hten_scales=[1, 2, 4])  # fmt: skip
    model = TemporalEigenstateNetwork(config).eval()
    torch._dynamo.reset()
    counters.clear()
    for length in (1, 3, 6, 11):  # HTEN: before its first 4-window and at each point of it
        prompt = torch.randint(0, 64, (1, length))
        eager = model.generate(prompt, 7, temperature=0, compile_step=False)
        assert torch.equal(model.generate(prompt, 7, temperature=0, compile_step=True), eager)
    assert counters["stats"]["unique_graphs"] == 1


def test_a_growing_kv_cache_is_never_compiled():
    from temporal_eigenstate_networks import TransformerConfig, TransformerLM

    model = TransformerLM(TransformerConfig(vocab_size=64, d_model=32, n_layers=1, max_seq_len=16))
    assert model.decode_step(compiled=True) == model.step and model._compiled_step is None


def test_a_step_that_fails_to_compile_decodes_eagerly(monkeypatch):
    from temporal_eigenstate_networks import TemporalEigenstateConfig, TemporalEigenstateNetwork

    model = TemporalEigenstateNetwork(TemporalEigenstateConfig(vocab_size=64, d_model=16, n_layers=1, num_eigenstates=8,
                                                               num_heads=2, max_seq_len=16))  # fmt: skip

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: broken)
    prompt = torch.randint(0, 64, (1, 4))
    with pytest.warns(UserWarning, match="decoding eagerly.*no compiler here"):
        compiled = model.generate(prompt, 5, temperature=0, compile_step=True)
    assert torch.equal(compiled, model.generate(prompt, 5, temperature=0, compile_step=False))
    assert len(calls) == 1  # tried once, then every step eager without trying again
