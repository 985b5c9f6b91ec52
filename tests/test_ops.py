"""Every backend against the sequential reference: values, gradients, edge cases."""

import pytest
import torch

from temporal_eigenstate_networks.ops import MAX_CHUNK_SIZE, MIN_DECAY, scan, scan_chunked, scan_fft, scan_sequential
from temporal_eigenstate_networks.ops.common import as_3d

from .conftest import relative_error

TOLERANCE = {torch.complex64: 1e-5, torch.complex128: 1e-10}


def random_lam(shape, dtype, low=MIN_DECAY, high=1.0):
    magnitude = low + (high - low) * torch.rand(shape, dtype=torch.float64)
    angle = (2 * torch.rand(shape, dtype=torch.float64) - 1) * torch.pi
    return torch.polar(magnitude, angle).to(dtype)


def make_inputs(batch, length, k, selective, dtype, with_state, **lam_range):
    lam = random_lam((batch, length, k) if selective else (k,), dtype, **lam_range)
    beta = torch.randn(batch, length, k, dtype=dtype)
    initial = torch.randn(batch, k, dtype=dtype) if with_state else None
    return lam, beta, initial


def gradients(fn, lam, beta, initial, cotangent):
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in (lam, beta, initial)]
    fn(*leaves).backward(cotangent)
    return [x.grad for x in leaves if x is not None]


FAST_BACKENDS = [
    ("chunked", True),
    ("chunked", False),
    ("fft", False),
    ("auto", True),
    ("auto", False),
]


def run_backend(name):
    return lambda lam, beta, initial: scan(lam, beta, initial, backend=name)


@pytest.mark.parametrize("backend,selective", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("length", [1, 7, 32, 77, 300])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_sequential(backend, selective, dtype, length, with_state):
    lam, beta, initial = make_inputs(3, length, 16, selective, dtype, with_state)
    expected = scan_sequential(lam, beta, initial)
    actual = scan(lam, beta, initial, backend=backend)
    assert actual.dtype == dtype
    assert relative_error(actual, expected) <= TOLERANCE[dtype]

    cotangent = torch.randn_like(expected)
    for got, want in zip(
        gradients(run_backend(backend), lam, beta, initial, cotangent),
        gradients(scan_sequential, lam, beta, initial, cotangent),
        strict=True,
    ):
        assert relative_error(got, want) <= TOLERANCE[dtype]


@pytest.mark.parametrize("backend,selective", [("chunked", True), ("chunked", False), ("fft", False)])
def test_gradcheck_float64(backend, selective):
    lam, beta, initial = make_inputs(2, 11, 3, selective, torch.complex128, with_state=True)
    inputs = tuple(x.requires_grad_() for x in (lam, beta, initial))
    fn = scan_fft if backend == "fft" else (lambda lam, beta, c0: scan_chunked(lam, beta, c0, chunk_size=4))
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("chunk_size", [1, 5, MAX_CHUNK_SIZE])
def test_chunk_sizes(chunk_size):
    lam, beta, initial = make_inputs(2, 101, 8, True, torch.complex64, True)
    expected = scan_sequential(lam, beta, initial)
    assert relative_error(scan_chunked(lam, beta, initial, chunk_size), expected) <= 1e-5


@pytest.mark.parametrize("magnitude", [MIN_DECAY, 1 - 2.4e-7])
@pytest.mark.parametrize("selective", [True, False])
def test_extreme_decay_stays_exact(magnitude, selective):
    """The fastest decay the model can reach, at the largest chunk, and the slowest."""
    lam, beta, initial = make_inputs(2, 4 * MAX_CHUNK_SIZE + 3, 8, selective, torch.complex64, True)
    lam = torch.polar(torch.full(lam.shape, magnitude), lam.angle())
    beta = beta * 1e3  # large inputs: nothing may overflow
    expected = scan_sequential(lam, beta, initial)
    actual = scan_chunked(lam, beta, initial, MAX_CHUNK_SIZE)
    assert torch.isfinite(torch.view_as_real(actual)).all()
    assert relative_error(actual, expected) <= 1e-5
    cotangent = torch.randn_like(expected)
    for got, want in zip(
        gradients(lambda *a: scan_chunked(*a, chunk_size=MAX_CHUNK_SIZE), lam, beta, initial, cotangent),
        gradients(scan_sequential, lam, beta, initial, cotangent),
        strict=True,
    ):
        assert relative_error(got, want) <= 1e-5


def test_chunked_is_causal_to_the_bit():
    lam, beta, _ = make_inputs(2, 70, 8, True, torch.complex64, False)
    before = scan_chunked(lam, beta)
    lam2, beta2 = lam.clone(), beta.clone()
    lam2[:, 40:], beta2[:, 40:] = random_lam(lam2[:, 40:].shape, torch.complex64), torch.randn_like(beta2[:, 40:])
    assert torch.equal(scan_chunked(lam2, beta2)[:, :40], before[:, :40])


def test_long_sequence_gradient_reaches_the_start():
    """Nothing is detached between chunks: the last state depends on the first input."""
    lam = torch.polar(torch.full((64,), 0.999), torch.zeros(64)).to(torch.complex64)
    beta = torch.randn(1, 1000, 64, dtype=torch.complex64, requires_grad=True)
    scan_chunked(lam, beta)[:, -1].abs().sum().backward()
    assert beta.grad[:, 0].abs().min() > 0


def test_errors():
    lam, beta, initial = make_inputs(2, 5, 4, True, torch.complex64, True)
    with pytest.raises(ValueError, match="backend must be one of"):
        scan(lam, beta, backend="cuda-magic")
    with pytest.raises(ValueError, match="time-invariant"):
        scan_fft(lam, beta)
    with pytest.raises(ValueError, match="chunk_size"):
        scan_chunked(lam, beta, chunk_size=MAX_CHUNK_SIZE + 1)
    with pytest.raises(ValueError, match="initial_state"):
        scan_chunked(lam, beta, initial[:, :2])
    with pytest.raises(ValueError, match="broadcast"):
        scan_chunked(lam[:, :, :3], beta)
    with pytest.raises(TypeError, match="complex"):
        scan_chunked(lam.abs(), beta)


@pytest.mark.parametrize("selective", [True, False])
@pytest.mark.parametrize("with_state", [False, True])
def test_cpu_batch_blocks_match_sequential(monkeypatch, selective, with_state):
    """The CPU path runs large batches in blocks; blocks of 2 rows (with a ragged last one) change nothing."""
    import temporal_eigenstate_networks.ops.chunked as chunked

    monkeypatch.setattr(chunked, "CPU_BLOCK_ELEMENTS", 2 * 50 * 8)
    lam, beta, initial = make_inputs(5, 50, 8, selective, torch.complex128, with_state)
    assert len(chunked.batch_blocks(beta)) == 3
    expected = scan_sequential(lam, beta, initial)
    assert relative_error(scan_chunked(lam, beta, initial), expected) <= 1e-12
    cotangent = torch.randn_like(expected)
    for got, want in zip(
        gradients(scan_chunked, lam, beta, initial, cotangent),
        gradients(scan_sequential, lam, beta, initial, cotangent),
        strict=True,
    ):
        assert relative_error(got, want) <= 1e-10


@pytest.mark.parametrize("selective", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_the_chunked_operator_is_registered_whole(selective, with_state):
    """torch.library.opcheck: the schema, the fake (shape-only) implementation torch.compile traces with, and the
    registered backward agree with the real op."""
    lam, beta, state = make_inputs(2, 12, 3, selective, torch.complex64, with_state)
    lam, beta, state = (None if x is None else x.requires_grad_() for x in (as_3d(lam), beta, state))
    torch.library.opcheck(torch.ops.ten.chunked_scan.default, (lam, beta, state, 4))
