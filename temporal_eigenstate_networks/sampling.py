"""Choosing the next token from logits: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sample_next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """logits (B, V) -> token ids (B, 1). temperature 0 picks the most likely token."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    # Shifted so that the largest is 0, and divided in float64, where every positive temperature is non-zero:
    # a tiny temperature sends the others to -inf (greedy in the limit), never a logit to +inf or 0/0 (NaN).
    logits = logits.double()
    logits = ((logits - logits.amax(-1, keepdim=True)) / temperature).float()
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop = cumulative - sorted_logits.softmax(-1) >= top_p
        drop[:, 0] = False  # also when top_p is below float32's smallest number (1e-300 compares as 0)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)
