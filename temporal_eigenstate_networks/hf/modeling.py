"""`TenForCausalLM`: a TEN, HTEN or hybrid network as a transformers causal LM, generating from its state.

The network is the submodule `network`, run through its public API (`run`, `loss`, the input checks). Its
weights are saved under the network's own keys (embedding.weight, blocks.0..., final_norm.weight), as in every
`ten` checkpoint, so one model.safetensors serves both: transformers adds the prefix "network." when it loads
and removes it when it saves (the key mapping registered below).

`generate` reads the prompt in one parallel pass, then feeds one token per call through the state in `TenCache`
(no keys and values, no recomputation). A left-padded batch is read a group of equal padding at a time with the
padding cut off, so every row's state is the one its prompt alone gives; a hybrid's attention caches are then
shifted behind their padding, masked, so that the batch shares one position counter (cache.left_padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.utils import ModelOutput

from ..lm import LMOutput
from ..model import TemporalEigenstateNetwork
from . import register
from .cache import TenCache, concat_rows, left_padded, select_rows
from .configuration import TenConfig


@dataclass
class TenCausalLMOutput(ModelOutput):
    """loss (CE + energy_reg_weight * energy, when labels are given), its parts, logits, and the state."""

    loss: Tensor | None = None
    ce_loss: Tensor | None = None
    energy_loss: Tensor | None = None
    logits: Tensor | None = None
    cache: TenCache | None = None


class TenPreTrainedModel(PreTrainedModel):
    config_class = TenConfig
    config: TenConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _is_stateful = True  # no assisted generation: a recurrent state cannot be rolled back
    _no_split_modules = ["Block"]

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing: the network initialises itself when built, and a loaded checkpoint overwrites every weight."""


class TenForCausalLM(TenPreTrainedModel, GenerationMixin):
    def __init__(self, config: TenConfig) -> None:
        super().__init__(config)
        self.network = TemporalEigenstateNetwork(config.to_ten())
        self.post_init()

    # ------------------------------------------------------------------ transformers' hooks

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the forward pass makes its TenCache

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.network.embedding

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        self.network.embedding = value

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs) -> None:
        """transformers' activation checkpointing switches the network's own (each block, non-reentrant)."""
        self.network.gradient_checkpointing = enable

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        cache: TenCache | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool = True,
        **kwargs,
    ) -> dict:
        """Only the positions the state has not read: the prompt first, then each new token."""
        cache = cache if cache is not None else kwargs.get("past_key_values")
        if cache is not None and cache.seen_tokens:
            total = attention_mask.shape[1] if attention_mask is not None else input_ids.shape[1]
            new = total - cache.seen_tokens
            if new < 1:
                raise ValueError(
                    f"the cache has read {cache.seen_tokens} tokens and the input holds {total}: pass the sequence "
                    "with at least one token the cache has not read"
                )
            input_ids = input_ids[:, -new:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache, "use_cache": use_cache}

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: TenCache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> TenCausalLMOutput | tuple:
        """Logits (B, T, vocab); with ``labels`` (the inputs, -100 where ignored), the loss of predicting each
        next label; with ``use_cache``, the state after these positions, to continue from.

        ``attention_mask``: positions with 0 must be padding on the left (as for generation) when a state is
        kept; they are cut off, each row read as if alone. Padding on the right changes no logit of the real
        positions, so without a state any mask is accepted.
        """
        for name in ("inputs_embeds", "output_attentions", "output_hidden_states"):
            if kwargs.get(name):
                raise ValueError(f"TenForCausalLM does not support {name}")
        if input_ids is None:
            raise ValueError("TenForCausalLM needs input_ids")
        cache = cache if cache is not None else kwargs.get("past_key_values")
        use_cache = self.config.use_cache and not self.training if use_cache is None else use_cache
        if cache is None and use_cache:
            cache = TenCache()
        self.network.check_token_ids(input_ids)
        state = cache.state if cache is not None else None
        if state is None and attention_mask is not None and use_cache and not bool(attention_mask.all()):
            out = self._read_left_padded(input_ids, attention_mask)
        else:
            out = self.network.run(input_ids, state)
        if cache is not None and use_cache:
            cache.update(out.state, input_ids.shape[1])

        loss = ce_loss = None
        if labels is not None:  # position t predicts label t + 1, as in every transformers causal LM
            loss, ce_loss, _ = self.network.loss(out.logits[:, :-1], labels[:, 1:], out.aux_loss)
        output = TenCausalLMOutput(loss=loss, ce_loss=ce_loss, energy_loss=out.aux_loss, logits=out.logits,
                                   cache=cache if use_cache else None)  # fmt: skip
        return output if return_dict is not False else output.to_tuple()

    def _read_left_padded(self, ids: Tensor, mask: Tensor) -> LMOutput:
        """Each group of rows with the same padding read without it; logits of padding positions are 0."""
        batch, length = ids.shape
        padding = length - mask.long().sum(1)
        positions = torch.arange(length, device=mask.device)
        if not torch.equal(mask.bool(), positions >= padding.unsqueeze(1)):
            raise ValueError("the attention mask must pad on the left (zeros, then ones) when a state is kept")
        if int(padding.max()) == length:
            raise ValueError("every row needs at least one real token (a row of the attention mask is all zeros)")
        logits = None
        order, states, rows, aux_losses = [], [], [], []
        for pad in sorted(set(padding.tolist())):
            group = torch.nonzero(padding == pad).squeeze(1)
            out = self.network.run(ids[group, pad:])
            if logits is None:
                logits = out.logits.new_zeros(batch, length, out.logits.shape[-1])
            logits[group, pad:] = out.logits
            order.append(group)
            states.append(left_padded(out.state, pad))
            rows.append(len(group))
            if out.aux_loss is not None:
                aux_losses.append(out.aux_loss)
        state = concat_rows(states, rows, ids.device)
        state = select_rows(state, torch.argsort(torch.cat(order)))  # back to the rows' own order
        return LMOutput(logits, state, torch.stack(aux_losses).mean() if aux_losses else None)


# Checkpoints keep the network's own keys (what `LanguageModel.from_pretrained` reads): "network." is added to
# each key when transformers loads one and removed when it saves, for models loaded or built alike. Registered by
# model_type, which also covers the exported folders' trust_remote_code classes (they import this one).
register_checkpoint_conversion_mapping(
    TenConfig.model_type, [WeightRenaming(r"^(?!network\.)(.+)", r"network.\1")], overwrite=True
)
register()  # the Auto classes, where importing this module was what imported transformers
