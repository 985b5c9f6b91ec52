"""The recurrent state as transformers' `generate` carries it: one object, updated in place, reordered for beams.

A TEN state is a fixed number of eigenstates per layer, not keys and values per position, so it is not one of
transformers' `Cache` classes: `TenCache` offers just the attributes `generate` reads. A hybrid's attention layers
keep their own caches in it, with positions shared by the batch and each row's left padding masked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ..lm import RecurrentState, map_tensors
from ..modules.attention import KVCache, WindowCache
from ..modules.hierarchical import ScaleState


def select_rows(state: Any, index: Tensor) -> Any:
    """The state of the batch rows ``index`` (beam search's reordering): every per-row tensor indexed on dim 0;
    a 0-d tensor (a window's token count) is the batch's, kept."""
    return map_tensors(state, lambda t: t.index_select(0, index.to(t.device)) if t.dim() else t)


def left_padded(state: RecurrentState, padding: int) -> RecurrentState:
    """The state of rows read without their ``padding`` left-padding positions, as if those had been read first
    and masked: the attention caches move to the batch's shared positions (the recurrent layers read no padding
    and need nothing). Groups of rows with different padding then agree on every count, and join."""
    return RecurrentState([layer.left_padded(padding) if isinstance(layer, KVCache | WindowCache) else layer
                           for layer in state.layers])  # fmt: skip


def concat_rows(parts: list[Any], rows: list[int], device: torch.device) -> Any:
    """One state from the states of consecutive groups of rows (``rows[i]`` rows each).

    A count the groups disagree on (how far each row is into an HTEN window) becomes a per-row tensor; a part
    with no tensor yet (None: HTEN before its first window) counts as zeros, the empty state.
    """
    present = [p for p in parts if p is not None]
    if not present:
        return None
    first = present[0]
    if torch.is_tensor(first) and not first.dim():  # shared by the batch: `left_padded` made the groups agree
        if not all(torch.equal(p, first) for p in parts):
            raise ValueError("the groups' states disagree on a count the batch shares: align them with left_padded")
        return first
    if torch.is_tensor(first):
        sizes = zip(parts, rows, strict=True)
        return torch.cat([p if p is not None else first.new_zeros(n, *first.shape[1:]) for p, n in sizes])
    if isinstance(first, list):
        return [concat_rows([p[i] for p in parts], rows, device) for i in range(len(first))]
    if dataclasses.is_dataclass(first):
        return dataclasses.replace(first, **{f.name: concat_rows([getattr(p, f.name) for p in parts], rows, device)
                                             for f in dataclasses.fields(first)})  # fmt: skip
    if all(p == first for p in parts):
        return first
    return torch.cat([torch.full((n,), p, dtype=torch.long, device=device) for p, n in zip(parts, rows, strict=True)])


@dataclasses.dataclass
class TenCache:
    """What `generate` hands from one forward call to the next: the model's state and how many tokens it holds.

    ``seen_tokens`` counts every position fed so far, padding included, so a call that passes the whole sequence
    (as `generate` does) is cut to the positions the state has not read. A pytree (register_pytrees), so that
    torch.export takes and returns it.
    """

    state: RecurrentState | None = None
    seen_tokens: int = 0

    is_linear = (True,)  # no per-position keys and values: transformers' generate does not slice by their length
    is_compileable = False
    is_croppable = False  # a recurrent state cannot be rolled back (no assisted generation)

    def __repr__(self) -> str:
        return f"TenCache(seen_tokens={self.seen_tokens})"

    def update(self, state: RecurrentState, new_tokens: int) -> None:
        self.state = state
        self.seen_tokens += new_tokens

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: Tensor) -> None:
        if self.state is not None:
            self.state = select_rows(self.state, beam_idx)

    def batch_select_indices(self, indices: Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            rows = next(_tensors(self.state)).shape[0]
            self.reorder_cache(torch.arange(rows).repeat_interleave(repeats))


def register_pytrees() -> None:
    """The cache and every dataclass a state holds as pytrees (their fields the children): torch.export flattens a
    model's inputs and outputs, so it can only take and return what it knows how to take apart. Once."""
    for cls in (TenCache, RecurrentState, ScaleState, KVCache, WindowCache):
        try:
            torch.export.register_dataclass(cls, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")
        except ValueError as err:  # registered already (a second import of this module under another name)
            if "already registered" not in str(err):
                raise


def _tensors(state: Any) -> Iterator[Tensor]:
    if torch.is_tensor(state):
        yield state
    elif isinstance(state, list):
        for item in state:
            yield from _tensors(item)
    elif dataclasses.is_dataclass(state):
        for f in dataclasses.fields(state):
            yield from _tensors(getattr(state, f.name))


register_pytrees()
