"""Causal multi-head self-attention with rotary positions and a KV cache: the transformer baseline's mixer.

Attention itself is torch's scaled_dot_product_attention (flash / memory-efficient kernels where
the device has them), and positions are rotary (RoPE, as in Llama), so the baseline is a modern
transformer layer, as fast as PyTorch makes attention, not a strawman.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROPE_BASE = 10_000.0


def rotate(x: Tensor, start: int) -> Tensor:
    """RoPE: rotate each pair (x_i, x_{i+D/2}) of (B, H, T, D) by angle (start + t) * base^(-2i/D)."""
    half = x.shape[-1] // 2
    inv_freq = ROPE_BASE ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(start, start + x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


@dataclass
class KVCache:
    """Keys and values of every position so far, (B, heads, T, head_dim): grows by one per token."""

    keys: Tensor
    values: Tensor


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, residual_gain: float = 1.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout
        nn.init.normal_(self.qkv.weight, std=0.02)
        nn.init.normal_(self.out.weight, std=0.02 * residual_gain)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache, Tensor]:
        """(output, cache including these positions, zero energy): the mixer interface of a Block."""
        batch, length, width = x.shape
        q, k, v = (t.view(batch, length, self.num_heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        past = 0 if cache is None else cache.keys.shape[2]
        q, k = rotate(q, past), rotate(k, past)
        if cache is not None:
            k = torch.cat([cache.keys, k], dim=2)
            v = torch.cat([cache.values, v], dim=2)
        # With a cache, the new queries are the last `length` positions: mask only among themselves.
        if cache is None or length == 1:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=cache is None and length > 1, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            allowed = torch.ones(length, k.shape[2], dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        y = self.out(y.transpose(1, 2).reshape(batch, length, width))
        return y, KVCache(k, v), x.new_zeros(())
