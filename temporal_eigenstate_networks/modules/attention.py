"""Causal multi-head self-attention with rotary positions and a KV cache: the transformer baseline's mixer.

Attention itself is torch's scaled_dot_product_attention (flash / memory-efficient kernels where
the device has them), and positions are rotary (RoPE, as in Llama), so the baseline is a modern
transformer layer, as fast as PyTorch makes attention, not a strawman.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .block import MixerOutput, SequenceMixer, describe

ROPE_BASE = 10_000.0


def rotate(x: Tensor, start: int | Tensor) -> Tensor:
    """RoPE: rotate each pair (x_i, x_{i+D/2}) of (B, H, T, D) by angle (start + t) * base^(-2i/D).

    ``start`` may be a 0-d integer tensor: a compiled decoding step then takes the position as an input,
    not as a constant of its graph (one graph for every step)."""
    if x.shape[-1] % 2:
        raise ValueError(f"rotary positions need an even head size, got {x.shape[-1]}")
    half = x.shape[-1] // 2
    inv_freq = ROPE_BASE ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = (start + torch.arange(x.shape[-2], device=x.device, dtype=torch.float32))[:, None] * inv_freq
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


@dataclass
class KVCache:
    """Keys and values of every position so far, in buffers of (B, heads, capacity, head_dim).

    Appending writes in place and doubles the capacity when full, so a generated token costs one
    read of the cache, not a copy of it (what torch.cat would do). The cost per token still grows
    with the context: that is attention's, and what the benchmark measures. Writing in place means
    two continuations of one cache share its buffer: copy the cache to branch.
    """

    keys: Tensor
    values: Tensor
    length: int

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
        return KVCache(buffers[0], buffers[1], needed)

    def contents(self) -> tuple[Tensor, Tensor]:
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]


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
        if not past or length == 1:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=not past and length > 1, dropout_p=self.attention_dropout()
            )
        else:
            allowed = torch.ones(length, k.shape[2], dtype=torch.bool, device=u.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return MixerOutput(self.merge(y), cache, None)

    def state_mismatch(self, state: Any, batch: int) -> str | None:
        shape = (batch, self.num_heads, self.d_model // self.num_heads)
        if isinstance(state, KVCache) and (state.keys.shape[0], state.keys.shape[1], state.keys.shape[3]) == shape:
            return None
        got = f"keys of shape {tuple(state.keys.shape)}" if isinstance(state, KVCache) else describe(state)
        return f"an attention layer's state must be a KVCache of (batch, heads, ., head size) {shape}, got {got}"

    def state_bytes(self, context_length: int) -> int:
        """The KV cache: a float32 key and value of d_model numbers per position of the context."""
        return 2 * self.d_model * torch.float32.itemsize * context_length
