"""`TenModel` and `TenForCausalLM`: a TEN, HTEN or hybrid network as a transformers base model and causal LM.

Both hold the network as the submodule `network` (their base_model_prefix) and run it through its public API:
`hidden` (the network up to its head; with every_layer, transformers' hidden_states), `head`, `loss` (the one loss
`compute_loss` also takes) and the input checks. Its blocks are `TenDecoderLayer`s, Blocks that are transformers'
GradientCheckpointingLayer, so transformers' (and PEFT's) activation checkpointing finds them. The weights are
saved under the network's own keys (embedding.weight, blocks.0..., final_norm.weight), as in every `ten`
checkpoint, so one model.safetensors serves ten and both classes: transformers adds the prefix "network." when it
loads and removes it when it saves (the key mapping registered below).

The attention mask means the same on every path: a row's zeros are positions that are not there. Left padding is
cut off (each group of rows with equal padding is read without it, so every row gets what its tokens alone give,
with or without a state kept, in training too), right padding changes no real position of a causal model, and
neither predicts nor is predicted in the loss. `generate` reads the prompt in one parallel pass, then feeds one
token per call through the state in `TenCache` (no keys and values, no recomputation); a hybrid's attention caches
are shifted behind their padding, masked, so that the batch shares one position counter (cache.left_padded).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from ..lm import LossTerms
from ..model import TemporalEigenstateNetwork
from ..modules.block import Block
from ..stack import HiddenOutput
from . import register  # export: omit (transformers registers an export's classes from auto_map)
from .cache import TenCache, concat_rows, left_padded, select_rows
from .configuration import TenConfig

UNSUPPORTED_INPUTS = ("inputs_embeds", "output_attentions")  # no attention weights; the ids are the input


@dataclass
class TenModelOutput(ModelOutput):
    """The final norm's output, the state (with use_cache), each block's input and the final output
    (output_hidden_states), and the raw energy loss."""

    last_hidden_state: Tensor | None = None
    cache: TenCache | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    energy_loss: Tensor | None = None


@dataclass
class TenCausalLMOutput(ModelOutput):
    """loss (CE + energy_reg_weight * energy, when labels are given), its parts, logits, the state, and the hidden
    states (output_hidden_states)."""

    loss: Tensor | None = None
    ce_loss: Tensor | None = None
    energy_loss: Tensor | None = None
    logits: Tensor | None = None
    cache: TenCache | None = None
    hidden_states: tuple[Tensor, ...] | None = None


class TenDecoderLayer(GradientCheckpointingLayer, Block):
    """A Block as transformers' checkpointing layer: transformers wraps its forward (`mix`, unchanged) to recompute
    it through `_gradient_checkpointing_func`, which activation_checkpointing_enable sets with the kwargs it is
    given (use_reentrant ...). The same weights and computation as Block."""

    # Where ten's own switch (network.gradient_checkpointing) turns a layer on before transformers set a function.
    _gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any, Tensor | None]:
        return self.mix(x, state)


class TenPreTrainedModel(PreTrainedModel):
    config_class = TenConfig
    config: TenConfig
    base_model_prefix = "network"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _is_stateful = True  # no assisted generation: a recurrent state cannot be rolled back
    _no_split_modules = ["TenDecoderLayer"]
    # The loss is ten's mean over the counted targets (LanguageModel.loss), not a sum to divide by transformers'
    # num_items_in_batch: the Trainer scales it for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, config: TenConfig) -> None:
        super().__init__(config)
        self.network = TemporalEigenstateNetwork(config.to_ten(), block_class=TenDecoderLayer)
        # Loaded in bf16 or fp16 (from_pretrained(dtype=...)), the tensors that set the dynamics stay float32, as in
        # ten's own `cast` and as the network builds them: those of keep_float32 this model has (transformers
        # matches the names against the state dict's, and takes a name no tensor has for a typo).
        names = {name.rsplit(".", 1)[-1] for name in self.network.state_dict()}
        self._keep_in_fp32_modules_strict = sorted(names & TemporalEigenstateNetwork.keep_float32)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing: the network initialises itself when built, and a loaded checkpoint overwrites every weight."""

    def get_input_embeddings(self) -> nn.Embedding:
        return self.network.embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.network.replace_embedding(value)  # the tied head and the accepted ids follow

    def read(
        self,
        input_ids: Tensor | None,
        attention_mask: Tensor | None,
        cache: TenCache | None,
        use_cache: bool | None,
        output_hidden_states: bool | None,
        kwargs: dict[str, Any],
    ) -> tuple[HiddenOutput, TenCache | None]:
        """The network up to its head, from the cache's state; the cache updated (use_cache) or None."""
        for name in UNSUPPORTED_INPUTS:
            if kwargs.get(name) is not None and kwargs.get(name) is not False:
                raise ValueError(f"{type(self).__name__} does not support {name}")
        if input_ids is None:
            raise ValueError(f"{type(self).__name__} needs input_ids")
        cache = cache if cache is not None else kwargs.get("past_key_values")
        use_cache = self.config.use_cache and not self.training if use_cache is None else use_cache
        every_layer = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        if cache is None and use_cache:
            cache = TenCache()
        self.network.check_token_ids(input_ids)
        state = cache.state if cache is not None else None
        if state is None and attention_mask is not None:
            out = read_padded(self.network, input_ids, attention_mask, every_layer, keep_state=use_cache)
        else:  # after a state, the mask's zeros are padding the state has read past already
            out = self.network.hidden(input_ids, state, every_layer)
        if cache is not None and use_cache:
            cache.update(out.state, input_ids.shape[1])
        return out, cache if use_cache else None

    def returned(self, output: ModelOutput, return_dict: bool | None) -> ModelOutput | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()


class TenModel(TenPreTrainedModel):
    """The network without its head: the final norm's output (B, T, d_model)."""

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        cache: TenCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> TenModelOutput | tuple:
        out, cache = self.read(input_ids, attention_mask, cache, use_cache, output_hidden_states, kwargs)
        output = TenModelOutput(last_hidden_state=out.hidden, cache=cache, hidden_states=out.layers,
                                energy_loss=out.aux_loss)  # fmt: skip
        return self.returned(output, return_dict)


class TenForCausalLM(TenPreTrainedModel, GenerationMixin):
    """The network with its head (tied to the embedding: no weights of its own)."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the forward pass makes its TenCache

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        cache: TenCache | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Only the positions the state has not read: the prompt first, then each new token. Other keyword arguments
        go on to forward as they came."""
        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        if cache is not None and cache.seen_tokens:
            total = attention_mask.shape[1] if attention_mask is not None else input_ids.shape[1]
            new = total - cache.seen_tokens
            if new < 1:
                raise ValueError(
                    f"the cache has read {cache.seen_tokens} tokens and the input holds {total}: pass the sequence "
                    "with at least one token the cache has not read"
                )
            input_ids = input_ids[:, -new:]
        return {**kwargs, "input_ids": input_ids, "attention_mask": attention_mask, "cache": cache,
                "use_cache": use_cache}  # fmt: skip

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        cache: TenCache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        shift_labels: Tensor | None = None,
        **kwargs: Any,
    ) -> TenCausalLMOutput | tuple:
        """Logits (B, T, vocab). With ``labels`` (the inputs, -100 where ignored), the loss of predicting each next
        label; with ``shift_labels``, of predicting shift_labels[t] at position t (the targets aligned already, as
        transformers' sequence parallelism hands them). With ``use_cache`` (the default in eval mode), the state after
        these positions, to continue from.

        ``attention_mask``: 1 for a token, 0 for padding, which may only come before a row's tokens (left) or after
        them (right), and only before them where a state is kept.
        """
        out, cache = self.read(input_ids, attention_mask, cache, use_cache, output_hidden_states, kwargs)
        logits = self.network.head(out.hidden)
        terms = self.loss_terms(logits, labels, shift_labels, attention_mask, out.aux_loss)
        output = TenCausalLMOutput(
            loss=terms.loss if terms else None, ce_loss=terms.ce_loss if terms else None, energy_loss=out.aux_loss,
            logits=logits, cache=cache, hidden_states=out.layers,
        )  # fmt: skip
        return self.returned(output, return_dict)

    def loss_terms(
        self,
        logits: Tensor,
        labels: Tensor | None,
        shift_labels: Tensor | None,
        attention_mask: Tensor | None,
        aux_loss: Tensor | None,
    ) -> LossTerms | None:
        """`LanguageModel.loss` of the targets: shift_labels as they are, else labels[t + 1] at each position t (as
        every transformers causal LM). A target is not counted where the predicting position or, for labels, the
        predicted one is padding: the row alone has neither."""
        if labels is None and shift_labels is None:
            return None
        # With a state, logits cover the new positions only: the mask's last ones.
        mask = None if attention_mask is None else attention_mask[:, -logits.shape[1] :].bool()
        if shift_labels is not None:
            targets, counted = shift_labels, mask
        else:
            logits, targets = logits[:, :-1], labels[:, 1:]
            counted = None if mask is None else mask[:, :-1] & mask[:, 1:]
        if counted is not None:
            targets = targets.masked_fill(~counted, -100)
        return self.network.loss(logits, targets, aux_loss)


def padding_of(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's left and right padding (B,) of an attention mask that is zeros, ones, zeros; one ValueError for
    any other mask."""
    real = mask.bool()
    left = (~real).long().cumprod(1).sum(1)
    tokens = real.long().sum(1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(real, (positions >= left[:, None]) & (positions < (left + tokens)[:, None])):
        raise ValueError("the attention mask must be ones with zeros only before them (left padding) or after them "
                         "(right padding)")  # fmt: skip
    if bool((tokens == 0).any()):
        raise ValueError("every row needs at least one real token (a row of the attention mask is all zeros)")
    return left, mask.shape[1] - left - tokens


def read_padded(network: TemporalEigenstateNetwork, ids: Tensor, mask: Tensor, every_layer: bool,
                keep_state: bool) -> HiddenOutput:  # fmt: skip
    """`network.hidden` of a padded batch, each row as if alone: groups of rows with equal left padding are read
    without it (their outputs at padding positions are 0); right padding is read, as it changes no real position.
    ``keep_state``: also the state to continue from, where right padding would have been read into it."""
    if bool(mask.bool().all()):
        return network.hidden(ids, None, every_layer)
    left, right = padding_of(mask)
    if keep_state and bool(right.any()):
        raise ValueError("the attention mask must pad on the left (zeros, then ones) when a state is kept")
    if not bool(left.any()):
        return network.hidden(ids, None, every_layer)
    groups = [(int(pad), torch.nonzero(left == pad).squeeze(1)) for pad in sorted(set(left.tolist()))]
    outputs = [network.hidden(ids[rows, pad:], None, every_layer) for pad, rows in groups]
    return HiddenOutput(
        hidden=scatter_rows([out.hidden for out in outputs], groups, ids.shape[1]),
        state=joined_state(outputs, groups, ids.device) if keep_state else None,
        aux_loss=weighted_aux_loss(outputs, groups, ids.shape[1]),
        layers=None if not every_layer else tuple(scatter_rows(list(layer), groups, ids.shape[1])
                                                  for layer in zip(*(out.layers for out in outputs), strict=True)),
    )  # fmt: skip


def scatter_rows(parts: list[Tensor], groups: list[tuple[int, Tensor]], length: int) -> Tensor:
    """(B, length, ...) from each group's (rows, length - pad, ...), zeros at the padding (differentiable)."""
    first = parts[0]
    batch = sum(len(rows) for _, rows in groups)
    whole = first.new_zeros(batch, length, *first.shape[2:])
    for part, (pad, rows) in zip(parts, groups, strict=True):
        whole = whole.index_put((rows,), nn.functional.pad(part, (0, 0) * (part.dim() - 2) + (pad, 0)))
    return whole


def joined_state(outputs: list[HiddenOutput], groups: list[tuple[int, Tensor]], device: torch.device) -> Any:
    """The groups' states as one batch's, in the rows' own order; the attention caches moved behind their padding."""
    states = [left_padded(out.state, pad) for out, (pad, _) in zip(outputs, groups, strict=True)]
    state = concat_rows(states, [len(rows) for _, rows in groups], device)
    return select_rows(state, torch.argsort(torch.cat([rows for _, rows in groups])))


def weighted_aux_loss(outputs: list[HiddenOutput], groups: list[tuple[int, Tensor]], length: int) -> Tensor | None:
    """The groups' aux losses (each a mean over its rows and positions) as one mean over every real position."""
    if outputs[0].aux_loss is None:
        return None
    weights = [len(rows) * (length - pad) for pad, rows in groups]
    return sum(out.aux_loss * weight for out, weight in zip(outputs, weights, strict=True)) / sum(weights)


# Checkpoints keep the network's own keys (what `LanguageModel.from_pretrained` reads): "network." is added to
# each key when transformers loads one and removed when it saves, for models loaded or built alike. Registered by
# model_type: an export's copy of this module (its trust_remote_code classes) registers the same mapping.
register_checkpoint_conversion_mapping(
    TenConfig.model_type, [WeightRenaming(r"^(?!network\.)(.+)", r"network.\1")], overwrite=True
)
IMPORTED = True  # register() reads it: before this line, this module is still being imported
register()  # export: omit. The Auto classes, where importing this module was what imported transformers
