"""Sliding-window attention: what each position sees, streaming through its ring buffer, a state that does not
grow, one compiled decoding step for every step, and the states and windows it refuses."""

from __future__ import annotations

import pytest
import torch

from temporal_eigenstate_networks.modules import attention
from temporal_eigenstate_networks.modules.attention import (
    CausalSelfAttention,
    KVCache,
    SlidingWindowAttention,
    WindowCache,
    rotate,
)

D, HEADS, BATCH = 16, 2, 3


def window_layer(window: int, **kwargs) -> SlidingWindowAttention:
    return SlidingWindowAttention(D, HEADS, window, **kwargs).eval()


def reference(layer: SlidingWindowAttention, u: torch.Tensor) -> torch.Tensor:
    """The definition, not a kernel: every pair scored, those outside t-W+1..t at -inf, then the softmax."""
    batch, length, _ = u.shape
    q, k, v = (x.view(batch, length, HEADS, -1).transpose(1, 2) for x in layer.qkv(u).chunk(3, dim=-1))
    q, k = rotate(q, 0), rotate(k, 0)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / q.shape[-1] ** 0.5
    offset = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    scores = scores.masked_fill((offset < 0) | (offset >= layer.window), float("-inf"))
    y = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(dim=-1), v)
    return layer.out(y.transpose(1, 2).reshape(batch, length, D))


def stream(layer: SlidingWindowAttention, u: torch.Tensor, pieces: list[int]) -> tuple[torch.Tensor, WindowCache]:
    """u read in pieces of these lengths, each from the state the last one left: (outputs, last state)."""
    assert sum(pieces) == u.shape[1]
    outputs, state, start = [], None, 0
    for piece in pieces:
        out = layer(u[:, start : start + piece], state)
        outputs.append(out.y)
        state, start = out.state, start + piece
    return torch.cat(outputs, dim=1), state


@pytest.mark.parametrize("window", [1, 3, 9, 20], ids=lambda w: f"W{w}")
def test_values_and_gradients_match_the_masked_softmax_over_all_pairs(window):
    layer = window_layer(window).double()
    u = torch.randn(2, 9, D, dtype=torch.float64, requires_grad=True)
    got, expected = layer(u).y, reference(layer, u)
    torch.testing.assert_close(got, expected)
    weights = torch.randn_like(expected)  # a random cotangent: every output's gradient counts
    grads = torch.autograd.grad((got * weights).sum(), [u, *layer.parameters()])
    expected_grads = torch.autograd.grad((expected * weights).sum(), [u, *layer.parameters()])
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)


def test_flex_attention_computes_the_same_window_on_the_cpu():
    """The kernel CUDA takes: forward only here (FlexAttention has no CPU backward); compiles once (seconds)."""
    layer = window_layer(5, kernel="flex")
    u = torch.randn(2, 37, D)
    with torch.no_grad():
        torch.testing.assert_close(layer(u).y, reference(layer, u), rtol=1e-4, atol=1e-6)
    assert layer.kernel == "flex"  # it ran, rather than falling back


def test_a_failing_flex_attention_warns_and_falls_back_to_sdpa(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no flex here")

    monkeypatch.setattr(attention, "compiled_flex_attention", lambda: broken)
    layer, u = window_layer(4, kernel="flex"), torch.randn(2, 11, D)
    with torch.no_grad(), pytest.warns(UserWarning, match="falls back to SDPA.*no flex here"):
        y = layer(u).y
    torch.testing.assert_close(y, reference(layer, u).detach())
    assert layer.kernel == "sdpa"


@pytest.mark.parametrize("extra", [0, 5], ids=["W=T", "W>T"])
def test_a_window_as_long_as_the_sequence_is_causal_attention_with_the_same_weights(extra):
    u = torch.randn(BATCH, 12, D)
    causal = CausalSelfAttention(D, HEADS).eval()
    layer = window_layer(12 + extra)
    layer.load_state_dict(causal.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(layer(u).y, causal(u).y)
        # streaming too: a prefill, then one token, then three, each from the state
        windowed, _ = stream(layer, u, [8, 1, 3])
        cache_out = causal(u[:, :8])
        one = causal(u[:, 8:9], cache_out.state)
        three = causal(u[:, 9:], one.state)
        torch.testing.assert_close(windowed, torch.cat([cache_out.y, one.y, three.y], dim=1))


def test_changing_later_tokens_never_changes_earlier_outputs():
    layer, u = window_layer(4), torch.randn(BATCH, 15, D)
    with torch.no_grad():
        before = layer(u).y
        for t in (0, 3, 4, 9, 14):
            changed = u.clone()
            changed[:, t + 1 :] = torch.randn_like(changed[:, t + 1 :])
            torch.testing.assert_close(layer(changed).y[:, : t + 1], before[:, : t + 1], rtol=0, atol=0)


WINDOW = 4
LENGTH = 4 * WINDOW + 7  # more than four windows' worth


@pytest.mark.parametrize(
    "pieces",
    [[1] * LENGTH, [3] * 7 + [2], [WINDOW + 2] * 3 + [5], [2, 1, WINDOW + 2, 3, 1, WINDOW, 1, WINDOW + 1]],
    ids=["L=1", "L=3", "L=W+2", "mixed"],
)
def test_reading_in_pieces_gives_the_outputs_and_state_of_reading_whole(pieces):
    layer, u = window_layer(WINDOW), torch.randn(BATCH, LENGTH, D)
    with torch.no_grad():
        whole = layer(u)
        streamed, state = stream(layer, u, pieces)
    torch.testing.assert_close(streamed, whole.y)
    assert int(state.length) == int(whole.state.length) == LENGTH
    torch.testing.assert_close(state.keys, whole.state.keys)
    torch.testing.assert_close(state.values, whole.state.values)


def test_a_state_is_not_changed_by_continuing_from_it():
    layer, u = window_layer(WINDOW), torch.randn(BATCH, 9, D)
    with torch.no_grad():
        state = layer(u[:, :6]).state
        kept = (state.keys.clone(), state.values.clone(), state.length.clone())
        first, second = layer(u[:, 6:], state).y, layer(u[:, 6:], state).y
    assert torch.equal(first, second)
    assert all(torch.equal(a, b) for a, b in zip(kept, (state.keys, state.values, state.length), strict=True))


def test_the_state_does_not_grow_with_the_context():
    layer = window_layer(WINDOW)
    fixed = 2 * D * torch.float32.itemsize * WINDOW
    assert {layer.state_bytes(n) for n in (0, 1, WINDOW - 1, WINDOW, 4 * WINDOW, 16 * WINDOW, 10**6)} == {fixed}
    shape = (BATCH, HEADS, WINDOW, D // HEADS)
    with torch.no_grad():
        for windows in (1, 4, 16):
            state = layer(torch.randn(BATCH, windows * WINDOW, D)).state
            state = layer(torch.randn(BATCH, 1, D), state).state  # and a step after it
            assert state.keys.shape == state.values.shape == shape and state.length.shape == ()
            assert (state.keys.numel() + state.values.numel()) * state.keys.element_size() == BATCH * fixed
            assert layer.state_mismatch(state, BATCH) is None


def scrambled_padding(cache: KVCache | WindowCache) -> KVCache | WindowCache:
    """The cache with random keys and values wherever a position before a row's first real one is held."""
    positions = torch.arange(cache.length) if isinstance(cache, KVCache) else cache.positions()
    keys, values = cache.keys.clone(), cache.values.clone()
    for row, first in enumerate(cache.first.tolist()):
        slots = torch.nonzero(positions < first).squeeze(1)
        keys[row, :, slots], values[row, :, slots] = torch.randn(2, HEADS, len(slots), D // HEADS) * 10
    return type(cache)(keys, values, cache.length, cache.first)


@pytest.mark.parametrize("padding", [0, 1, WINDOW + 1, 3 * WINDOW + 2])
@pytest.mark.parametrize("prompt", [3, WINDOW + 3])
@pytest.mark.parametrize("make", [lambda: CausalSelfAttention(D, HEADS).eval(), lambda: window_layer(WINDOW)],
                         ids=["KVCache", "WindowCache"])  # fmt: skip
def test_a_cache_moved_behind_masked_padding_continues_as_it_would_have(make, prompt, padding):
    """left_padded (how rows read without their padding join a batch): the positions move, what they hold is
    never seen again, and the outputs of the steps after are those of the cache as read."""
    layer, u = make(), torch.randn(BATCH, prompt + 2 * WINDOW, D)
    with torch.no_grad():
        state = layer(u[:, :prompt]).state
        moved = scrambled_padding(state.left_padded(padding))
        assert int(moved.length) == prompt + padding and moved.first.tolist() == [padding] * BATCH
        assert layer.state_mismatch(moved, BATCH) is None and moved.keys.shape[2] == state.keys.shape[2] + (
            0 if isinstance(state, WindowCache) else padding
        )  # a ring keeps its size
        for piece in (1, 3, 1, 2 * WINDOW - 5):
            start = int(state.length) if isinstance(state, WindowCache) else state.length
            expected, got = layer(u[:, start : start + piece], state), layer(u[:, start : start + piece], moved)
            torch.testing.assert_close(got.y, expected.y, rtol=1e-5, atol=1e-6)
            state, moved = expected.state, got.state


def decoding_form(layer: SlidingWindowAttention, state: WindowCache) -> list[tuple]:
    decoding = layer.decoding_state(state)
    return [(tuple(t.shape), t.dtype, t.stride()) for t in (decoding.keys, decoding.values, decoding.length)]


def test_one_compiled_step_serves_every_step_and_computes_the_eager_outputs():
    """torch.compile (inductor on the CPU, dynamic=False as lm.py compiles) of a one-token step: the eager outputs
    over 2W steps after prompts shorter and longer than the window, from one graph (compiling takes ~10 s)."""
    from torch._dynamo.utils import counters

    layer = window_layer(WINDOW)

    def step(token: torch.Tensor, state: WindowCache) -> tuple[torch.Tensor, WindowCache]:
        out = layer(token, state)
        return out.y, out.state

    compiled = torch.compile(step, dynamic=False)
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        for prompt in (1, WINDOW + 3):
            u = torch.randn(BATCH, prompt + 2 * WINDOW, D)
            eager = compiled_state = layer(u[:, :prompt]).state
            forms = {str(decoding_form(layer, eager))}
            for t in range(prompt, u.shape[1]):
                token = u[:, t : t + 1].contiguous()  # a slice's strides differ per prompt: lm.py makes them standard
                y, eager = step(token, eager)
                y_compiled, compiled_state = compiled(token, layer.decoding_state(compiled_state))
                torch.testing.assert_close(y_compiled, y, rtol=1e-5, atol=1e-6)
                forms.add(str(decoding_form(layer, eager)))
            torch.testing.assert_close(compiled_state.keys, eager.keys, rtol=1e-5, atol=1e-6)
            assert int(compiled_state.length) == u.shape[1] and len(forms) == 1
    assert counters["stats"]["unique_graphs"] == 1


def test_bf16_autocast_runs_on_the_cpu_and_stays_finite():
    layer, u = window_layer(WINDOW), torch.randn(BATCH, 3 * WINDOW + 1, D)
    with torch.no_grad():
        float_state = layer(u[:, :5]).state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            whole = layer(u)
            _, state = stream(layer, u, [5, 1, WINDOW + 2, 1])
            after_float = layer(u[:, 5:6], float_state)  # a float32 state read under autocast
    assert whole.y.dtype == torch.bfloat16 and torch.isfinite(whole.y).all()
    assert torch.isfinite(after_float.y).all() and torch.isfinite(state.keys).all()
    assert state.keys.shape == (BATCH, HEADS, WINDOW, D // HEADS)


@pytest.mark.parametrize("window", [0, -3, 2.5, None])
def test_a_window_below_one_position_is_refused_in_one_line(window):
    with pytest.raises(ValueError, match=r"^the attention window must be a whole number of positions, at least 1, "
                                         r"got [^\n]+$"):  # fmt: skip
        SlidingWindowAttention(D, HEADS, window)


def test_an_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel must be one of auto, sdpa, flex, got 'triton'"):
        SlidingWindowAttention(D, HEADS, 4, kernel="triton")


def test_a_state_of_another_kind_batch_heads_or_window_is_refused_in_one_line():
    layer = window_layer(WINDOW)
    u = torch.randn(BATCH, 6, D)
    with torch.no_grad():
        own = layer(u).state
        foreign = {
            "a KV cache": CausalSelfAttention(D, HEADS)(u).state,
            "another batch": layer(u[:2]).state,
            "other heads": SlidingWindowAttention(D, 4, WINDOW)(u).state,
            "another window": window_layer(WINDOW + 1)(u).state,
            "an int length": WindowCache(own.keys, own.values, 6),
            "None": None,
        }
    assert isinstance(foreign["a KV cache"], KVCache) and layer.state_mismatch(own, BATCH) is None
    expected = (f"a sliding-window attention layer's state must be a WindowCache of (batch, heads, window, head size) "
                f"{(BATCH, HEADS, WINDOW, D // HEADS)} and a 0-d length, got ")  # fmt: skip
    for what, state in foreign.items():
        message = layer.state_mismatch(state, BATCH)
        assert message.startswith(expected) and "\n" not in message, what
    assert "got a KVCache" in layer.state_mismatch(foreign["a KV cache"], BATCH)
    assert "keys (2, 2, 4, 8)" in layer.state_mismatch(foreign["another batch"], BATCH)
