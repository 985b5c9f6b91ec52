"""Byte-level tokenizer: the default, because it needs no vocabulary file and round-trips any text exactly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .errors import DataError


class ByteTokenizer:
    """Text <-> UTF-8 bytes, one token per byte (vocab 256)."""

    vocab_size: int = 256
    name: str = "byte"

    def encode(self, text: str) -> np.ndarray:
        """Text -> 1-D uint16 token ids. uint16 (not uint8) so the ids share a dtype with token files."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        """Token ids -> text. A cut through a multi-byte character (e.g. a sampled prefix) becomes U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().reshape(-1).tolist()
        elif isinstance(ids, np.ndarray):
            ids = ids.reshape(-1).tolist()
        try:
            raw = bytes(int(i) for i in ids)
        except ValueError as err:
            raise DataError(f"byte tokenizer can only decode ids 0..255: {err}") from None
        return raw.decode("utf-8", errors="replace")
