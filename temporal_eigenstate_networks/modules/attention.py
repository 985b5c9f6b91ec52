"""Causal multi-head self-attention with rotary positions: the transformer baseline's mixer (every earlier
position, a growing KV cache) and sliding-window attention (the last W positions, a fixed ring buffer).

Attention itself is torch's scaled_dot_product_attention (flash / memory-efficient kernels where
the device has them), or FlexAttention's block-sparse kernel for a window where that was measured faster
(benchmarks/attention_window.py), and positions are rotary (RoPE, as in Llama), so the baseline is a modern
transformer layer, as fast as PyTorch makes attention, not a strawman.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .block import MixerOutput, SequenceMixer, describe

try:
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # torch < 2.5: scaled_dot_product_attention with a band mask serves every device
    flex_attention = None

ROPE_BASE = 10_000.0
# Device types where a window's prefill runs on FlexAttention: on CUDA it is the usual winner (it skips the blocks
# outside the band). Not the CPU: there it has no backward (training takes SDPA), and although its forward measured
# 1.1-2.9x faster than SDPA's band mask at T 256-2048 (benchmarks/attention_window.py), its first call at each new
# shape or window compiles for 3-7 s, more than a generate's prefill saves; kernel="flex" asks for it there.
FLEX_DEVICE_TYPES = frozenset({"cuda"})
KERNELS = ("auto", "sdpa", "flex")


def rotate(x: Tensor, start: int | Tensor) -> Tensor:
    """RoPE: rotate each pair (x_i, x_{i+D/2}) of (B, H, T, D) by angle (start + t) * base^(-2i/D).

    ``start`` may be a 0-d integer tensor: a compiled decoding step then takes the position as an input,
    not as a constant of its graph (one graph for every step)."""
    return rotate_at(x, start + torch.arange(x.shape[-2], device=x.device, dtype=torch.float32))


def rotate_at(x: Tensor, positions: Tensor) -> Tensor:
    """RoPE of (B, H, T, D) at ``positions`` (T,) float32; rotating twice adds the positions (a shift)."""
    if x.shape[-1] % 2:
        raise ValueError(f"rotary positions need an even head size, got {x.shape[-1]}")
    half = x.shape[-1] // 2
    inv_freq = ROPE_BASE ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions[:, None] * inv_freq
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def shift_keys(keys: Tensor, padding: int) -> Tensor:
    """Rotated keys (B, H, T, D) moved ``padding`` positions later: scores depend on position differences only,
    so a row read alone and then shifted scores as if read after ``padding`` positions."""
    if not padding:
        return keys
    return rotate_at(keys, torch.full((keys.shape[2],), float(padding), dtype=torch.float32, device=keys.device))


def own_keys(first: Tensor | None, key_positions: Tensor) -> Tensor | None:
    """(B, 1, 1, keys) bool: which keys are each row's own, at or after its first real position (before it: left
    padding); None where no row is padded."""
    if first is None:
        return None
    return (key_positions[None, :] >= first[:, None])[:, None, None, :]


def shifted_first(first: Tensor | None, padding: int, keys: Tensor) -> Tensor:
    """Each row of ``keys``' first real position after ``padding`` more positions in front (None: 0)."""
    if first is None:
        return torch.full((keys.shape[0],), padding, dtype=torch.long, device=keys.device)
    return first + padding


def first_mismatch(first: Any, batch: int) -> str | None:
    """Why a cache's ``first`` (None, or each row's first real position) does not fit ``batch`` rows."""
    if first is None or (torch.is_tensor(first) and tuple(first.shape) == (batch,)):
        return None
    return f"its first real positions must be None or of shape ({batch},), got {describe(first)}"


@dataclass
class KVCache:
    """Keys and values of every position so far, in buffers of (B, heads, capacity, head_dim).

    Appending writes in place and doubles the capacity when full, so a generated token costs one
    read of the cache, not a copy of it (what torch.cat would do). The cost per token still grows
    with the context: that is attention's, and what the benchmark measures. Writing in place means
    two continuations of one cache share its buffer: copy the cache to branch.

    Positions are shared by the batch. ``first`` (B,) marks left padding: a row's keys before its first real
    position are never attended to (None: no row is padded).
    """

    keys: Tensor
    values: Tensor
    length: int
    first: Tensor | None = None

    @classmethod
    def start(cls, keys: Tensor, values: Tensor) -> KVCache:
        """A full cache of the given positions: no copy (training never appends; the first append does)."""
        return cls(keys, values, keys.shape[2])

    def append(self, keys: Tensor, values: Tensor) -> KVCache:
        needed = self.length + keys.shape[2]
        buffers = self.keys, self.values
        if needed > self.keys.shape[2]:
            capacity = max(needed, 2 * self.keys.shape[2])
            buffers = tuple(b.new_empty(*b.shape[:2], capacity, b.shape[3]) for b in buffers)
            for new, old in zip(buffers, (self.keys, self.values), strict=True):
                new[:, :, : self.length] = old[:, :, : self.length]
        buffers[0][:, :, self.length : needed] = keys
        buffers[1][:, :, self.length : needed] = values
        return KVCache(buffers[0], buffers[1], needed, self.first)

    def contents(self) -> tuple[Tensor, Tensor]:
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def left_padded(self, padding: int) -> KVCache:
        """This cache after ``padding`` masked positions in front: what rows read without their left padding
        become, so that groups of rows with different padding share one length (to be joined)."""
        keys, values = self.contents()
        keys, values = (F.pad(t, (0, 0, padding, 0)) for t in (shift_keys(keys, padding), values))
        return KVCache(keys, values, self.length + padding, shifted_first(self.first, padding, keys))


class AttentionMixer(SequenceMixer):
    """What every attention mixer shares: one projection to rotary queries, keys and values, one out of the heads."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, residual_gain: float = 1.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.d_model = d_model
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout
        nn.init.normal_(self.qkv.weight, std=0.02)
        nn.init.normal_(self.out.weight, std=0.02 * residual_gain)

    def project(self, u: Tensor, start: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values (B, heads, T, head size) of u (B, T, d), the first at position ``start``."""
        batch, length, _ = u.shape
        q, k, v = (t.view(batch, length, self.num_heads, -1).transpose(1, 2) for t in self.qkv(u).chunk(3, dim=-1))
        return rotate(q, start), rotate(k, start), v

    def merge(self, y: Tensor) -> Tensor:
        """The heads' outputs (B, heads, T, head size) back to the residual stream's (B, T, d)."""
        batch, _, length, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(batch, length, self.d_model))

    def attention_dropout(self) -> float:
        return self.dropout if self.training else 0.0


class CausalSelfAttention(AttentionMixer):
    """Every earlier position visible; its state is a growing KVCache."""

    def forward(self, u: Tensor, state: KVCache | None = None) -> MixerOutput:
        """The output and, as state, the cache including these positions; attention has no aux loss."""
        length = u.shape[1]
        past = 0 if state is None else state.length
        q, k, v = self.project(u, past)
        cache = KVCache.start(k, v) if state is None else state.append(k, v)
        if past:
            k, v = cache.contents()
        # After a cache, the new queries are the last `length` positions: mask only among themselves.
        if not past or (length == 1 and cache.first is None):
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=not past and length > 1, dropout_p=self.attention_dropout()
            )
        else:
            allowed = torch.ones(length, k.shape[2], dtype=torch.bool, device=u.device).tril(diagonal=past)
            padded = own_keys(cache.first, torch.arange(k.shape[2], device=u.device))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed if padded is None else allowed & padded)
        return MixerOutput(self.merge(y), cache, None)

    def state_mismatch(self, state: Any, batch: int) -> str | None:
        shape = (batch, self.num_heads, self.d_model // self.num_heads)
        if isinstance(state, KVCache) and (state.keys.shape[0], state.keys.shape[1], state.keys.shape[3]) == shape:
            return first_mismatch(state.first, batch)
        got = f"keys of shape {tuple(state.keys.shape)}" if isinstance(state, KVCache) else describe(state)
        return f"an attention layer's state must be a KVCache of (batch, heads, ., head size) {shape}, got {got}"

    def state_bytes(self, context_length: int) -> int:
        """The KV cache: a float32 key and value of d_model numbers per position of the context."""
        return 2 * self.d_model * torch.float32.itemsize * context_length


def in_window(query_positions: Tensor, key_positions: Tensor, window: int) -> Tensor:
    """(queries, keys) bool: which keys each query sees, those at t-window+1..t of its position t (none negative)."""
    offset = query_positions[:, None] - key_positions[None, :]
    return (offset >= 0) & (offset < window) & (key_positions[None, :] >= 0)


@functools.lru_cache(maxsize=16)
def window_block_mask(length: int, window: int, device: torch.device) -> BlockMask:
    """FlexAttention's block mask of a causal window over ``length`` positions (cached: building it scans every
    block pair, and a training run asks for the same one every step)."""

    def visible(batch: Tensor, head: Tensor, query: Tensor, key: Tensor) -> Tensor:
        return (key <= query) & (query - key < window)

    return create_block_mask(visible, None, None, length, length, device=device)


@functools.lru_cache(maxsize=1)
def compiled_flex_attention() -> Any:
    """flex_attention through torch.compile: uncompiled it computes every score, the dense reference. Shapes
    become dynamic after a second length (prompts of many lengths would otherwise compile each)."""
    return torch.compile(flex_attention)


@dataclass
class WindowCache:
    """The keys and values of the last ``window`` positions, in a ring of (B, heads, window, head size).

    Position p sits in slot p % window, so which position a slot holds follows from ``length`` alone; keys are
    stored rotated, so attention needs no order of the slots. The shapes never change and ``length`` is a 0-d
    tensor: one compiled decoding step serves every step. Writing makes new buffers rather than overwriting
    (a compiled step then mutates none of its inputs, and one state can be continued twice). ``first`` marks
    left padding as in KVCache; (B,), so the state stays a fixed size.
    """

    keys: Tensor
    values: Tensor
    length: Tensor  # 0-d int64: tokens read so far, shared by the batch
    first: Tensor | None = None  # (B,) int64: each row's first real position; None: 0

    @classmethod
    def empty(cls, like: Tensor, window: int) -> WindowCache:
        """No position yet, buffers of ``like``'s (B, heads, ., head size), dtype and device."""
        buffer = like.new_zeros(*like.shape[:2], window, like.shape[3])
        return cls(buffer, buffer.clone(), torch.zeros((), dtype=torch.long, device=like.device))

    @property
    def window(self) -> int:
        return self.keys.shape[2]

    def positions(self) -> Tensor:
        """(window,) the position each slot holds: the last one below ``length`` in its residue class (negative:
        none yet)."""
        last = self.length - 1
        return last - torch.remainder(last - torch.arange(self.window, device=self.keys.device), self.window)

    def write(self, keys: Tensor, values: Tensor) -> WindowCache:
        """The cache after reading these positions (B, heads, L, head size): their last ``window`` written."""
        count = keys.shape[2]
        kept = min(count, self.window)  # slots of the kept ones are distinct, so index_copy has no collision
        slots = torch.remainder(self.length + count - kept + torch.arange(kept, device=keys.device), self.window)
        buffers = (old.index_copy(2, slots, new[:, :, count - kept :].to(old.dtype))
                   for old, new in ((self.keys, keys), (self.values, values)))  # fmt: skip
        return WindowCache(*buffers, self.length + count, self.first)

    def left_padded(self, padding: int) -> WindowCache:
        """As KVCache.left_padded: each position ``padding`` later, so into slot (p + padding) % window."""
        keys, values = (torch.roll(t, padding, dims=2) for t in (shift_keys(self.keys, padding), self.values))
        return WindowCache(keys, values, self.length + padding, shifted_first(self.first, padding, keys))


class SlidingWindowAttention(AttentionMixer):
    """Causal attention over a window: position t sees t-window+1..t, ``window`` positions counting t itself.

    Rotary positions are absolute (tokens read before), as in CausalSelfAttention; with a window at least the
    sequence's length the two compute the same thing. The state is a WindowCache of fixed size. ``kernel``
    chooses a prefill's kernel: "auto" (FlexAttention on FLEX_DEVICE_TYPES, else SDPA with a band mask), or
    either one.
    """

    def __init__(self, d_model: int, num_heads: int, window: int, dropout: float = 0.0, residual_gain: float = 1.0,
                 kernel: str = "auto") -> None:  # fmt: skip
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"the attention window must be a whole number of positions, at least 1, got {window!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        super().__init__(d_model, num_heads, dropout, residual_gain)
        self.window = window
        self.kernel = kernel

    def extra_repr(self) -> str:
        return f"window={self.window}, kernel={self.kernel}"

    def forward(self, u: Tensor, state: WindowCache | None = None) -> MixerOutput:
        """The output and, as state, the ring after these positions; attention has no aux loss."""
        if state is None:
            q, k, v = self.project(u, 0)
            y, state = self._attend_alone(q, k, v), WindowCache.empty(k, self.window)
        else:
            q, k, v = self.project(u, state.length)
            y = self._attend_after(q, k, v, state)
        return MixerOutput(self.merge(y), state.write(k, v), None)

    def _attend_alone(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """A prefill or training: the window among these positions only, on the kernel chosen for the device."""
        length = q.shape[2]
        if length <= self.window:  # the window holds every earlier position: plain causal attention
            return F.scaled_dot_product_attention(q, k, v, is_causal=length > 1, dropout_p=self.attention_dropout())
        if self._uses_flex(q):
            try:
                return compiled_flex_attention()(q, k, v, block_mask=window_block_mask(length, self.window, q.device))
            except Exception as err:  # noqa: BLE001  (SDPA computes the same thing)
                warnings.warn(f"sliding-window attention falls back to SDPA: FlexAttention failed "
                              f"({type(err).__name__}: {err})", stacklevel=2)  # fmt: skip
                self.kernel = "sdpa"
        positions = torch.arange(length, device=q.device)
        mask = in_window(positions, positions, self.window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.attention_dropout())

    def _uses_flex(self, q: Tensor) -> bool:
        if flex_attention is None or self.attention_dropout() or self.kernel == "sdpa":  # flex has no dropout
            return False
        if q.requires_grad and q.device.type == "cpu":  # flex has no backward on the CPU (torch 2.13)
            return False
        return self.kernel == "flex" or q.device.type in FLEX_DEVICE_TYPES

    def _attend_after(self, q: Tensor, k: Tensor, v: Tensor, state: WindowCache) -> Tensor:
        """After a state, any number of new positions: the ring's and the new keys, masked by position. Tensor
        operations only (no sync, no int from the state), so a one-token step compiles to one graph."""
        new_positions = state.length + torch.arange(q.shape[2], device=q.device)
        key_positions = torch.cat([state.positions(), new_positions])
        mask = in_window(new_positions, key_positions, self.window)
        if state.first is not None:
            mask = mask & own_keys(state.first, key_positions)
        keys, values = (torch.cat([old.to(new.dtype), new], dim=2) for old, new in ((state.keys, k), (state.values, v)))
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=self.attention_dropout())

    def state_mismatch(self, state: Any, batch: int) -> str | None:
        shape = (batch, self.num_heads, self.window, self.d_model // self.num_heads)
        if isinstance(state, WindowCache):
            got = (tuple(state.keys.shape), tuple(state.values.shape), describe(state.length))
            if got[:2] == (shape, shape) and torch.is_tensor(state.length) and state.length.shape == ():
                return first_mismatch(state.first, batch)
            got = f"keys {got[0]}, values {got[1]}, length {got[2]}"
        else:
            got = describe(state)
        return (f"a sliding-window attention layer's state must be a WindowCache of (batch, heads, window, head size) "
                f"{shape} and a 0-d length, got {got}")  # fmt: skip

    def state_bytes(self, context_length: int) -> int:
        """The ring: a float32 key and value of d_model numbers per slot, ``window`` slots whatever the context
        (allocated whole from the first token, so a short context too; the shared token count not counted)."""
        return 2 * self.d_model * torch.float32.itemsize * self.window
