"""The Mamba-2 peer: transformers' `Mamba2ForCausalLM`, unmodified, behind ten's model interface.

What a user choosing a linear-time model compares TEN with first. It is someone else's implementation, so
it shares nothing with TEN but the interface: `run` through an explicit state (transformers' cache), the
loss, generation, safetensors checkpoints. transformers runs mamba_ssm's kernels where mamba_ssm is
installed (CUDA), else its own PyTorch path; `kernels()` says which.
"""

from __future__ import annotations

import copy
import logging
import textwrap
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from typing import Any

import torch
from torch import Tensor

from ..lm import LanguageModel, LMOutput, RecurrentState
from .mamba2_config import SIZING_RULE, Mamba2LMConfig, require_transformers_mamba2


def kernels() -> str:
    """Which path transformers' Mamba-2 takes on this machine (it picks when its module is imported)."""
    if find_spec("mamba_ssm") is None:
        return "transformers' PyTorch path (mamba_ssm is not installed)"
    try:
        return f"mamba_ssm {version('mamba_ssm')}'s kernels (CUDA)"
    except PackageNotFoundError:
        return "mamba_ssm's kernels (CUDA)"


def copied_cache(cache: Any) -> Any:
    """A transformers cache whose tensors are copies (clone: gradients still flow to the original), held in
    copies of its layers' dicts and lists; deepcopy refuses tensors that carry a graph."""

    def copied(value: Any) -> Any:
        if torch.is_tensor(value):
            return value.clone()
        if isinstance(value, dict):
            return {key: copied(item) for key, item in value.items()}
        if isinstance(value, list):
            return [copied(item) for item in value]
        return value

    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        new_layer = copy.copy(layer)
        new_layer.__dict__.update({name: copied(value) for name, value in vars(layer).items()})
        new.layers.append(new_layer)
    return new


class Mamba2LM(LanguageModel):
    """The state is transformers' cache (one per model, in `RecurrentState.layers[0]`): each layer's
    convolution window and SSM state, the same size at any context."""

    architecture = "mamba2"
    config_class = Mamba2LMConfig
    config: Mamba2LMConfig

    def __init__(self, config: Mamba2LMConfig) -> None:
        super().__init__(config)
        require_transformers_mamba2()
        from transformers import Mamba2ForCausalLM

        # transformers warns once per function that it falls back to PyTorch; the run's header says so instead.
        logging.getLogger("transformers.integrations.hub_kernels").setLevel(logging.ERROR)
        self.network = Mamba2ForCausalLM(config.transformers_config())
        self._checkpointing = False

    # ------------------------------------------------------------------ the pass and its state

    def run(self, ids: Tensor, state: RecurrentState | None = None) -> LMOutput:
        """As every model's. transformers updates its cache in place, so a state passed in is copied first:
        the caller's stays the state it was. A training pass with gradients keeps no state (transformers'
        training path, mamba_ssm's fused kernel where installed, returns none): its state is empty."""
        return self._pass(ids, None if state is None else copied_cache(state.layers[0]))

    def step(self, token: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        """One decoding step; generate owns ``state``, so transformers updates it in place (no copy)."""
        out = self._pass(token, state.layers[0])
        return out.logits, out.state

    def _pass(self, ids: Tensor, cache: Any) -> LMOutput:
        keep_state = cache is not None or not (self.training and torch.is_grad_enabled())
        out = self.network(input_ids=ids.long(), cache=cache, use_cache=keep_state, return_dict=True)
        return LMOutput(out.logits, RecurrentState([out.cache] if keep_state else []), None)

    def check_state(self, state: Any, batch: int) -> None:
        from transformers.cache_utils import Cache

        if not (isinstance(state, RecurrentState) and len(state.layers) == 1 and isinstance(state.layers[0], Cache)):
            raise ValueError("state must be the RecurrentState a call of this Mamba2LM returned with return_state=True "
                             "(in eval mode or without gradients: a training pass keeps none)")  # fmt: skip
        cache = state.layers[0]
        if len(cache.layers) != self.config.n_layers:
            raise ValueError(f"the state has {len(cache.layers)} layers, this model {self.config.n_layers}")
        held = [t for layer in cache.layers for t in getattr(layer, "recurrent_states", {}).values() if t is not None]
        rows = held[0].shape[0] if held else batch
        if rows != batch:
            raise ValueError(f"the state holds {rows} sequences, the input {batch}")

    def decode_step(self, compiled: bool = False) -> Any:
        """Always the eager step: transformers' cache is its own object, which ten's compiled step does not
        take apart (on CUDA, mamba_ssm's fused update kernel serves each token)."""
        return self.step

    def state_bytes(self, context_length: int) -> int:
        return self.config.state_bytes()

    # ------------------------------------------------------------------ what ten asks of every model

    @property
    def gradient_checkpointing(self) -> bool:
        return self._checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        """transformers' own activation checkpointing, per block."""
        # activation_checkpointing_*: transformers >= 5.24's names; gradient_checkpointing_*: the older ones.
        prefix = "activation" if hasattr(self.network, "activation_checkpointing_enable") else "gradient"
        if on:
            getattr(self.network, f"{prefix}_checkpointing_enable")({"use_reentrant": False})
        else:
            getattr(self.network, f"{prefix}_checkpointing_disable")()
        self._checkpointing = bool(on)

    def _apply(self, fn: Any, recurse: bool = True) -> Mamba2LM:
        """Every move and cast (.to, .to_empty, .half): one that replaces the parameters (to or from the meta
        device) unties the head from the embedding, so it is tied again."""
        super()._apply(fn, recurse)
        self.network.tie_weights()
        return self

    def summary(self) -> str:
        cfg, total = self.config, self.num_parameters()
        return "\n".join([
            f"Mamba2 (transformers' Mamba2ForCausalLM, unmodified): {total:,} parameters ({total / 1e6:.2f} M)",
            f"  d_model={cfg.d_model}  n_layers={cfg.n_layers}  expand={cfg.expand}  state_size={cfg.state_size}  "
            f"head_dim={cfg.head_dim} ({cfg.num_heads} heads)  vocab_size={cfg.vocab_size}",
            textwrap.fill(f"sized like TEN: {SIZING_RULE}", 110, initial_indent="  ", subsequent_indent="    "),
            f"  kernels: {kernels()}",
            f"  state per sequence: {self.state_bytes(1) / 1024:,.1f} KiB, the same at any context",
        ])  # fmt: skip
