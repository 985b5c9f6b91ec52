"""Language-model batches: random windows of T+1 tokens from one token stream (design section 7)."""

from __future__ import annotations

import numpy as np
import torch

from .errors import DataError

VALIDATION_FRACTION = 0.1


def split_train_val(tokens: np.ndarray, val_fraction: float = VALIDATION_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """First (1 - val_fraction) of the stream for training, the rest for validation: no shuffling, no leak."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(tokens) * (1.0 - val_fraction))
    return tokens[:cut], tokens[cut:]


class WindowSampler:
    """Draws `batch_size` windows of `seq_len + 1` tokens; inputs are the first T, targets the last T.

    Batch number i is a pure function of (seed, rank, i), so the data position of a run is one
    integer: a resumed run draws the same batches, and each data-parallel rank draws its own.
    Windows start anywhere in the stream, so one epoch means len(tokens) // (batch_size * seq_len) batches.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0, rank: int = 0) -> None:
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
        if len(tokens) < seq_len + 1:
            raise DataError(f"the token stream has {len(tokens):,} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number `index`: (inputs, targets), each (batch_size, seq_len) int64."""
        rng = np.random.default_rng((self.seed, self.rank, index))
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)
        windows = np.stack([np.asarray(self.tokens[s : s + self.seq_len + 1], dtype=np.int64) for s in starts])
        windows = torch.from_numpy(windows)
        return windows[:, :-1], windows[:, 1:]


def sequential_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None):
    """Non-overlapping (inputs, targets) windows in order, each (1, T): a deterministic evaluation pass."""
    count = (len(tokens) - 1) // seq_len
    if count < 1:
        raise DataError(f"the token stream has {len(tokens):,} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    if max_windows is not None:
        count = min(count, max_windows)
    for i in range(count):
        window = torch.from_numpy(np.asarray(tokens[i * seq_len : (i + 1) * seq_len + 1], dtype=np.int64))
        yield window[None, :-1], window[None, 1:]
