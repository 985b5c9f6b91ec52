"""The network TEN and the transformer baseline share: embedding, pre-norm blocks, final norm, tied head.

A model of this layout differs from another only in its sequence mixer (`make_mixer`): the eigenstate
recurrence (model.py) or causal attention (baselines/transformer.py), so comparisons isolate it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .lm import LanguageModel, LMOutput, RecurrentState
from .modules.block import Block, SequenceMixer


class MixerStack(LanguageModel):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        # GPT-2's scaling of the layers that write into the residual stream: 1 / sqrt(2 n_layers).
        gain = 1 / math.sqrt(2 * config.n_layers)
        self.blocks = nn.ModuleList(
            Block(config, self.make_mixer(config, layer, residual_gain=gain), residual_gain=gain)
            for layer in range(config.n_layers)
        )
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.gradient_checkpointing = False
        nn.init.normal_(self.embedding.weight, std=0.02)

    def make_mixer(self, config: Any, layer: int, residual_gain: float) -> SequenceMixer:
        """The sequence mixer of block ``layer``."""
        raise NotImplementedError

    def aux_loss_from(self, layer_losses: list[Tensor]) -> Tensor:
        """The model's aux loss from its layers' (those that have one): their mean."""
        return torch.stack(layer_losses).mean()

    def run(self, ids: Tensor, state: RecurrentState | None = None) -> LMOutput:
        x = self.dropout(self.embedding(ids.long()))
        new_state, layer_losses = RecurrentState(), []
        for i, block in enumerate(self.blocks):
            layer_state = None if state is None else state.layers[i]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, layer_state, layer_loss = checkpoint(block, x, layer_state, use_reentrant=False)
            else:
                x, layer_state, layer_loss = block(x, layer_state)
            new_state.layers.append(layer_state)
            if layer_loss is not None:
                layer_losses.append(layer_loss)
        logits = F.linear(self.final_norm(x), self.embedding.weight)  # head tied to the embedding
        return LMOutput(logits, new_state, self.aux_loss_from(layer_losses) if layer_losses else None)

    def check_state(self, state: Any, batch: int) -> None:
        if not isinstance(state, RecurrentState):
            raise ValueError(f"state must be the RecurrentState a call with return_state=True returned, "
                             f"got a {type(state).__name__}")  # fmt: skip
        if len(state.layers) != len(self.blocks):
            raise ValueError(f"the state has {len(state.layers)} layers, this model {len(self.blocks)}")
        for i, (block, layer_state) in enumerate(zip(self.blocks, state.layers, strict=True)):
            problem = block.mixer.state_mismatch(layer_state, batch)
            if problem:
                raise ValueError(
                    f"the state does not belong to this {type(self).__name__} and a batch of {batch}: "
                    f"layer {i}: {problem}"
                )

    def decoding_state(self, state: RecurrentState) -> RecurrentState:
        """Each mixer's state in its decoding form."""
        return RecurrentState([block.mixer.decoding_state(s) for block, s in zip(self.blocks, state.layers,
                                                                                  strict=True)])  # fmt: skip

    def state_bytes(self, context_length: int) -> int:
        return sum(block.mixer.state_bytes(context_length) for block in self.blocks)
