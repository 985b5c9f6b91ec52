"""HTEN's fused pass (modules/hierarchical_fused.py) against the loop over scales it replaces (reference_forward)."""

import pytest
import torch

from temporal_eigenstate_networks import TemporalEigenstateConfig
from temporal_eigenstate_networks.modules import hierarchical_fused
from temporal_eigenstate_networks.modules.hierarchical import HierarchicalEigenstateLayer, ScaleState, scales_one_by_one

SCALE_SETS = [[1, 2, 4], [1, 3], [2, 3], [1, 2, 4, 8], [5]]
LENGTHS = [1, 2, 7, 37, 50]  # shorter than a window, and lengths no scale divides
SETTINGS = {
    "selective": {},
    "nonselective": {"selective": False},
    "nocoupling": {"coupling": False},
    "real": {"real_eigenvalues": True},
    "fixed": {"fixed_basis": True},
    "nogate": {"output_gate": False},
}


def layer(scales, **overrides) -> HierarchicalEigenstateLayer:
    values = dict(d_model=16, n_layers=1, num_eigenstates=4 * len(scales), num_heads=2, max_seq_len=64,
                  use_hten=True, hten_scales=scales, chunk_size=8, scan_backend="chunked")  # fmt: skip
    hten = HierarchicalEigenstateLayer(TemporalEigenstateConfig(**{**values, **overrides}))
    with torch.no_grad():  # away from the initialisation, so that every parameter matters
        for p in hten.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hten


def outputs_and_gradients(hten, forward, u):
    out = forward(u)
    loss = (out.y * torch.linspace(-1, 1, out.y.numel()).view_as(out.y)).sum() + out.aux_loss
    grads = torch.autograd.grad(loss, [u, *hten.parameters()], allow_unused=True, materialize_grads=True)
    return out, grads


def assert_states_close(actual: list[ScaleState], expected: list[ScaleState]) -> None:
    for a, e in zip(actual, expected, strict=True):
        assert a.window_count == e.window_count
        assert (a.eigenstates is None) == (e.eigenstates is None)
        if e.eigenstates is not None:
            torch.testing.assert_close(a.eigenstates, e.eigenstates, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.window_sum, e.window_sum, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.last_output, e.last_output, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scales", SCALE_SETS, ids=lambda s: ",".join(map(str, s)))
@pytest.mark.parametrize("length", LENGTHS)
def test_fused_equals_the_loop_over_scales_forward_and_gradients(scales, length):
    hten = layer(scales)
    u = torch.randn(3, length, 16, requires_grad=True)
    fused, fused_grads = outputs_and_gradients(hten, hten, u)
    reference, reference_grads = outputs_and_gradients(hten, hten.reference_forward, u)
    torch.testing.assert_close(fused.y, reference.y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.aux_loss, reference.aux_loss, rtol=1e-5, atol=1e-6)
    for a, e in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert_states_close(fused.state, reference.state)


@pytest.mark.parametrize("setting", SETTINGS.values(), ids=SETTINGS.keys())
def test_fused_equals_the_loop_for_every_layer_setting(setting):
    hten = layer([1, 2, 4], **setting)
    u = torch.randn(2, 29, 16, requires_grad=True)
    fused, fused_grads = outputs_and_gradients(hten, hten, u)
    reference, reference_grads = outputs_and_gradients(hten, hten.reference_forward, u)
    torch.testing.assert_close(fused.y, reference.y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.aux_loss, reference.aux_loss, rtol=1e-5, atol=1e-6)
    for a, e in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scales", [[1, 2, 4], [2, 3]], ids=lambda s: ",".join(map(str, s)))
def test_carried_state_in_pieces_equals_the_loop_and_the_whole(scales):
    """Pieces that end inside windows, and one shorter than a window: each piece's output and state as the
    reference gives them from the same state, and all pieces together as the whole sequence."""
    hten = layer(scales).eval()
    u = torch.randn(2, 41, 16)
    with torch.no_grad():
        whole = hten(u).y
        fused_state = reference_state = None
        pieces = []
        for start, stop in [(0, 1), (1, 6), (6, 7), (7, 20), (20, 41)]:
            fused = hten(u[:, start:stop], fused_state)
            reference = hten.reference_forward(u[:, start:stop], reference_state)
            torch.testing.assert_close(fused.y, reference.y, rtol=1e-5, atol=1e-6)
            assert_states_close(fused.state, reference.state)
            pieces.append(fused.y)
            fused_state, reference_state = fused.state, reference.state
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=1e-5, atol=1e-6)


def test_one_token_steps_from_a_fused_prefill_continue_it():
    """The decoding step (rows at their own window positions, the loop's _scale_step) from a fused prompt."""
    hten = layer([1, 2, 4]).eval()
    u = torch.randn(2, 23, 16)
    with torch.no_grad():
        whole = hten(u).y
        prompt = hten(u[:, :10])
        state = hten.decoding_state(prompt.state)
        steps = []
        for t in range(10, 23):
            out = hten(u[:, t : t + 1], state)
            steps.append(out.y)
            state = out.state
    torch.testing.assert_close(torch.cat([prompt.y, *steps], 1), whole, rtol=1e-5, atol=1e-6)


def test_no_position_sees_a_later_input():
    hten = layer([1, 2, 4])
    u = torch.randn(1, 30, 16, requires_grad=True)
    y = hten(u).y
    for t in (0, 3, 4, 11, 29):
        (grad,) = torch.autograd.grad(y[0, t].sum(), u, retain_graph=True)
        assert (grad[0, t + 1 :] == 0).all()
        assert grad[0, : t + 1].abs().max() > 0


def test_the_scales_run_as_one_scan(monkeypatch):
    calls = []
    real_scan = hierarchical_fused.scan

    def counting_scan(*args, **kwargs):
        calls.append(args[1].shape)
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(hierarchical_fused, "scan", counting_scan)
    hten = layer([1, 2, 4, 8])
    hten(torch.randn(2, 37, 16))
    assert calls == [(2, 37, 16)]  # every scale's 4 eigenstates at the input's length


def test_fft_backend_takes_the_loop():
    """The fused eigenvalues vary in time (held between windows), which the fft backend cannot scan."""
    hten = layer([1, 2], selective=False, scan_backend="fft")
    u = torch.randn(2, 19, 16)
    torch.testing.assert_close(hten(u).y, hten.reference_forward(u).y, rtol=0, atol=0)
    torch.testing.assert_close(hten(u).y, layer_like(hten, scan_backend="chunked")(u).y, rtol=1e-5, atol=1e-6)


def layer_like(hten: HierarchicalEigenstateLayer, **overrides) -> HierarchicalEigenstateLayer:
    """A layer of the same weights with other settings."""
    other = layer(hten.scales, selective=hten.scale_cores[0].selective, **overrides)
    other.load_state_dict(hten.state_dict())
    return other


def test_fused_under_bf16_autocast_is_close_to_the_loop():
    hten = layer([1, 2, 4])
    u = torch.randn(2, 33, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, reference = hten(u), hten.reference_forward(u)
    assert fused.y.dtype == reference.y.dtype
    assert fused.state[0].last_output.dtype == reference.state[0].last_output.dtype
    torch.testing.assert_close(fused.y, reference.y, rtol=0.05, atol=0.02)


def test_scales_one_by_one_runs_the_cores_as_modules_for_hooks():
    """The eigenstate analysis hooks each core for its input; the fused pass runs no core as a module."""
    hten = layer([1, 2, 4])
    seen = []
    for core in hten.scale_cores:
        core.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    u = torch.randn(2, 12, 16)
    hten(u)
    assert seen == []
    with scales_one_by_one(torch.nn.Sequential(hten)):
        torch.testing.assert_close(hten(u).y, hten.reference_forward(u).y, rtol=0, atol=0)
    assert seen == [12, 6, 3] * 2 and hten.fused  # the model, then the reference


@pytest.mark.parametrize("length", [7, 50])
def test_fused_on_the_triton_scan_equals_the_loop(length):
    """On a GPU `auto` takes the Triton kernel, which then scans the fused eigenvalues (held between windows);
    here under Triton's interpreter: forward and gradients against the loop over scales on the chunked scan."""
    from temporal_eigenstate_networks.ops import triton_available

    if not triton_available():
        pytest.skip("triton is not installed")
    reference = layer([1, 2, 4])
    fused = layer_like(reference, scan_backend="triton")
    u = torch.randn(2, length, 16, requires_grad=True)
    got, got_grads = outputs_and_gradients(fused, fused, u)
    expected, expected_grads = outputs_and_gradients(reference, reference.reference_forward, u)
    torch.testing.assert_close(got.y, expected.y, rtol=1e-4, atol=1e-5)
    for a, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
