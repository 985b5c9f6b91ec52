"""The fused Triton backend against the sequential reference, run by Triton's interpreter on the CPU.

The interpreter costs milliseconds per program per time step, so these cases stay short (T <= 128);
they cover what differs between kernels: selective and time-invariant lam, lam shared over the
batch, an initial state or none, T and K that are not powers of two, B = 1, one chunk and several
(the interpreter's chunks are 32 steps), the last one ragged.
"""

import re

import pytest
import torch

import temporal_eigenstate_networks.ops as ops
from temporal_eigenstate_networks import TemporalEigenstateConfig, TemporalEigenstateNetwork
from temporal_eigenstate_networks.distribution import install_hint
from temporal_eigenstate_networks.ops import scan, scan_sequential
from temporal_eigenstate_networks.ops.common import as_3d

from .conftest import relative_error
from .test_ops import gradients, make_inputs, random_lam

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not ops.triton_available(), reason="triton is not installed")


def run_triton(lam, beta, initial):
    return scan(lam, beta, initial, backend="triton")


def check_against_sequential(lam, beta, initial, tolerance=1e-5):
    expected = scan_sequential(lam, beta, initial)
    actual = run_triton(lam, beta, initial)
    assert actual.dtype == torch.complex64 and actual.shape == expected.shape
    assert relative_error(actual, expected) <= tolerance
    cotangent = torch.randn_like(expected)
    for got, want in zip(gradients(run_triton, lam, beta, initial, cotangent),
                         gradients(scan_sequential, lam, beta, initial, cotangent), strict=True):  # fmt: skip
        assert got.dtype == want.dtype and relative_error(got, want) <= tolerance


@pytest.mark.parametrize("selective", [True, False])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("batch,length,k", [(1, 77, 12), (2, 128, 16)])
def test_values_and_gradients_match_sequential(selective, with_state, batch, length, k):
    check_against_sequential(*make_inputs(batch, length, k, selective, torch.complex64, with_state))


def test_lam_shared_over_the_batch_and_a_single_step():
    lam, beta, initial = make_inputs(3, 40, 5, True, torch.complex64, True)  # two chunks of the interpreter's 32
    check_against_sequential(lam[:1], beta, initial)  # (1, T, K): the same lam for every row
    check_against_sequential(lam[:, :1], beta[:, :1], initial)  # T = 1


def test_extreme_decay_and_large_inputs_stay_exact():
    lam, beta, initial = make_inputs(2, 100, 8, True, torch.complex64, True)
    lam = torch.polar(torch.full(lam.shape, 1 - 2.4e-7), lam.angle())
    check_against_sequential(lam, beta * 1e3, initial)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_half_precision_inputs_accumulate_in_float32():
    lam, beta, initial = make_inputs(2, 40, 8, True, torch.complex64, True)
    lam16, beta16 = lam.to(torch.complex32), beta.to(torch.complex32)
    expected = scan_sequential(lam16.to(torch.complex64), beta16.to(torch.complex64), initial)
    actual = run_triton(lam16, beta16, initial)
    assert actual.dtype == torch.complex64 and relative_error(actual, expected) <= 1e-5


def test_causal_to_the_bit():
    lam, beta, _ = make_inputs(2, 50, 8, True, torch.complex64, False)
    before = run_triton(lam, beta, None)
    lam2, beta2 = lam.clone(), beta.clone()
    lam2[:, 30:], beta2[:, 30:] = random_lam(lam2[:, 30:].shape, torch.complex64), torch.randn_like(beta2[:, 30:])
    assert torch.equal(run_triton(lam2, beta2, None)[:, :30], before[:, :30])


@pytest.mark.parametrize("use_hten", [False, True])
def test_a_model_on_the_triton_backend_matches_chunked(use_hten):
    config = TemporalEigenstateConfig(vocab_size=64, d_model=16, n_layers=1, num_eigenstates=8, num_heads=2,
                                      max_seq_len=24, use_hten=use_hten, hten_scales=[1, 2])  # fmt: skip
    ids = torch.randint(0, 64, (2, 24))
    chunked = TemporalEigenstateNetwork(config)
    fused = TemporalEigenstateNetwork(TemporalEigenstateConfig(**{**config.to_dict(), "scan_backend": "triton"}))
    fused.load_state_dict(chunked.state_dict())
    with torch.no_grad():
        assert relative_error(fused(ids), chunked(ids)) <= 1e-5
    fused.compute_loss(ids[:, :-1], ids[:, 1:]).backward()
    chunked.compute_loss(ids[:, :-1], ids[:, 1:]).backward()
    for (name, a), b in zip(fused.named_parameters(), chunked.parameters(), strict=True):
        assert relative_error(a.grad, b.grad) <= 1e-4, name


def test_auto_takes_the_fused_kernel_on_a_gpu_only():
    assert ops.resolve_backend("auto", torch.device("cpu")) == "chunked"
    assert ops.resolve_backend("auto", torch.device("cuda", 0)) == "triton"
    assert ops.resolve_backend("sequential", torch.device("cuda", 0)) == "sequential"


def test_cpu_tensors_without_the_interpreter_are_a_clear_error(monkeypatch):
    import temporal_eigenstate_networks.ops.triton as fused

    monkeypatch.setattr(fused, "INTERPRETED", False)
    lam, beta, _ = make_inputs(1, 4, 4, True, torch.complex64, False)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        run_triton(lam, beta, None)


def test_a_missing_triton_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(ops, "triton_available", lambda: False)
    lam, beta, _ = make_inputs(1, 4, 4, True, torch.complex64, False)
    with pytest.raises(ValueError, match=re.escape(install_hint("gpu"))):
        run_triton(lam, beta, None)
    assert ops.resolve_backend("auto", torch.device("cuda", 0)) == "chunked"


def test_one_pass_over_the_sequence_where_rows_fill_the_gpu(monkeypatch):
    import types

    import temporal_eigenstate_networks.ops.triton as fused

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(
        multi_processor_count=2))  # fmt: skip
    cuda = torch.device("cuda", 0)
    assert fused.chunk_length(8, 16, 5000, cuda) == 5000  # 8 programs fill 2 SMs: read the inputs once
    assert fused.chunk_length(1, 16, 5000, cuda) == fused.CHUNK  # too few: chunks in parallel
    assert fused.chunk_length(8, 16, 5000, torch.device("cpu")) == fused.CHUNK
    monkeypatch.setattr(fused, "chunk_length", lambda batch, k_size, length, device: length)
    check_against_sequential(*make_inputs(2, 77, 12, True, torch.complex64, True))


@pytest.mark.parametrize("selective,with_state", [(True, True), (False, False)])
def test_the_fused_operator_is_registered_whole(selective, with_state):
    """torch.library.opcheck: schema, fake implementation and registered backward agree with the kernels."""
    lam, beta, state = make_inputs(2, 40, 5, selective, torch.complex64, with_state)
    lam, beta, state = (None if x is None else x.requires_grad_() for x in (as_3d(lam), beta, state))
    from temporal_eigenstate_networks.ops.triton import triton_scan_op  # registered when first imported

    torch.library.opcheck(triton_scan_op, (lam, beta, state))
