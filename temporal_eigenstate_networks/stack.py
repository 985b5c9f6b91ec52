"""The network TEN and the transformer baseline share: embedding, pre-norm blocks, final norm, tied head.

A model of this layout differs from another only in its sequence mixer (`make_mixer`): the eigenstate
recurrence (model.py) or causal attention (baselines/transformer.py), so comparisons isolate it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lm import LanguageModel, LMOutput, RecurrentState
from .modules.block import Block, SequenceMixer


class HiddenOutput(NamedTuple):
    """What `MixerStack.hidden` gives: the network up to its head."""

    hidden: Tensor  # (B, T, d): the final norm's output, which the head reads
    state: RecurrentState  # after these positions, as LMOutput's
    aux_loss: Tensor | None  # as LMOutput's
    # With every_layer: the residual stream entering each block, then `hidden` (n_layers + 1 tensors of (B, T, d),
    # transformers' hidden_states); else None.
    layers: tuple[Tensor, ...] | None = None


class MixerStack(LanguageModel):
    def __init__(self, config: Any, block_class: type[Block] = Block) -> None:
        """``block_class``: Block or a subclass that adds behaviour but no weights (transformers' checkpointing
        layer, hf/modeling.py): the same checkpoints load either way."""
        super().__init__(config)
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        # GPT-2's scaling of the layers that write into the residual stream: 1 / sqrt(2 n_layers).
        gain = 1 / math.sqrt(2 * config.n_layers)
        self.blocks = nn.ModuleList(
            block_class(config, self.make_mixer(config, layer, residual_gain=gain), residual_gain=gain)
            for layer in range(config.n_layers)
        )
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        nn.init.normal_(self.embedding.weight, std=0.02)

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the blocks are recomputed in the backward pass (Block.gradient_checkpointing): all or none."""
        return any(block.gradient_checkpointing for block in self.blocks)

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        for block in self.blocks:
            block.gradient_checkpointing = on

    def make_mixer(self, config: Any, layer: int, residual_gain: float) -> SequenceMixer:
        """The sequence mixer of block ``layer``."""
        raise NotImplementedError

    def aux_loss_from(self, layer_losses: list[Tensor]) -> Tensor:
        """The model's aux loss from its layers' (those that have one): their mean."""
        return torch.stack(layer_losses).mean()

    def run(self, ids: Tensor, state: RecurrentState | None = None) -> LMOutput:
        out = self.hidden(ids, state)
        return LMOutput(self.head(out.hidden), out.state, out.aux_loss)

    def hidden(self, ids: Tensor, state: RecurrentState | None = None, every_layer: bool = False) -> HiddenOutput:
        """`run` without the head (transformers' base model reads this); unchecked as `run`. ``every_layer``: also
        the residual stream entering each block (transformers' output_hidden_states)."""
        x = self.dropout(self.embedding(ids.long()))
        new_state, layer_losses, layers = RecurrentState(), [], []
        for i, block in enumerate(self.blocks):
            if every_layer:
                layers.append(x)
            x, layer_state, layer_loss = block(x, None if state is None else state.layers[i])
            new_state.layers.append(layer_state)
            if layer_loss is not None:
                layer_losses.append(layer_loss)
        x = self.final_norm(x)
        aux_loss = self.aux_loss_from(layer_losses) if layer_losses else None
        return HiddenOutput(x, new_state, aux_loss, (*layers, x) if every_layer else None)

    def head(self, hidden: Tensor) -> Tensor:
        """Logits (B, T, vocab) of the final norm's output: the head is tied to the embedding."""
        return F.linear(hidden, self.embedding.weight)

    def replace_embedding(self, embedding: nn.Embedding) -> None:
        """Use ``embedding`` (of another vocabulary size: transformers' resize_token_embeddings) as the embedding and
        the tied head; the config's vocab_size follows, so the new ids are accepted."""
        self.embedding = embedding
        self.config.vocab_size = embedding.num_embeddings

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
