"""The Temporal Eigenstate Network: the shared network (stack.py) with eigenstate mixers.

TEN or HTEN layers as the config says; the energy loss is normalised per eigenstate; the reports
users print (summary, parameter groups, eigenstate analysis) live here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .config import TemporalEigenstateConfig
from .lm import RecurrentState
from .modules.attention import CausalSelfAttention, SlidingWindowAttention
from .modules.block import SequenceMixer
from .modules.eigenstate import EigenstateLayer
from .modules.hierarchical import HierarchicalEigenstateLayer
from .stack import MixerStack


class TemporalEigenstateNetwork(MixerStack):
    architecture = "ten"
    config_class = TemporalEigenstateConfig
    config: TemporalEigenstateConfig
    aux_loss_name = "energy_loss"
    # The eigenvalues' decay logits and frequencies, the coupling, HTEN's scale weights: in bf16 a decay logit of 6
    # is 6 +- 0.03, which moves a memory of 400 tokens by 10.
    keep_float32 = frozenset({"decay_logit", "frequency", "coupling", "scale_weights"})

    def make_mixer(self, config: TemporalEigenstateConfig, layer: int, residual_gain: float) -> SequenceMixer:
        """The layer's letter in layer_pattern: e, h (the eigenstate layers), a or w (attention, for hybrids)."""
        kind = config.layer_kinds[layer]
        if kind == "e":
            return EigenstateLayer(config, residual_gain=residual_gain)
        if kind == "h":
            return HierarchicalEigenstateLayer(config, residual_gain=residual_gain)
        heads = config.heads_of_attention
        if kind == "a":
            return CausalSelfAttention(config.d_model, heads, config.dropout, residual_gain)
        return SlidingWindowAttention(config.d_model, heads, config.attention_window, config.dropout, residual_gain)

    def aux_loss_from(self, layer_losses: list[Tensor]) -> Tensor:
        """Mean over the eigenstate layers (the only ones with an energy) of sum_k |c_k|^2 / K: the raw energy,
        comparable across model sizes."""
        return torch.stack(layer_losses).mean() / self.config.num_eigenstates

    @property
    def aux_loss_weight(self) -> float:
        """energy_reg_weight: the energy loss's weight in ``loss``."""
        return self.config.energy_reg_weight

    # ------------------------------------------------------------------ reports

    def parameter_groups(self) -> dict[str, int]:
        """Parameters by component, counted from the built model."""
        groups = {"embedding (tied LM head)": self.embedding.weight.numel()}
        for name, param in self.named_parameters():
            if name.startswith("embedding"):
                continue
            if ".mixer." in name:
                if ".gate." in name:
                    key = "mixer output gates"
                elif ".in_proj." in name or ".out_proj." in name or ".selection." in name:
                    key = "mixer projections (W_in, W_sel, W_out)"
                else:
                    key = "eigenvalues, coupling, scale weights"
            elif ".mlp." in name:
                key = "MLPs (SwiGLU)"
            else:
                key = "layer norms"
            groups[key] = groups.get(key, 0) + param.numel()
        return groups

    def summary(self) -> str:
        cfg = self.config
        total = self.num_parameters()
        weight_bytes = sum(p.numel() * p.element_size() for p in self.parameters())
        lines = [
            f"TemporalEigenstateNetwork: {total:,} parameters ({total / 1e6:.2f} M)",
            f"  d_model={cfg.d_model}  n_layers={cfg.n_layers}  num_eigenstates={cfg.num_eigenstates}  "
            f"num_heads={cfg.num_heads}  max_seq_len={cfg.max_seq_len}  vocab_size={cfg.vocab_size}",
            f"  selective={cfg.selective}  scan_backend={cfg.scan_backend}  chunk_size={cfg.chunk_size}",
            f"  HTEN: {'scales ' + ','.join(map(str, cfg.hten_scales)) if cfg.use_hten else 'off'}",
            f"  energy_reg_weight={cfg.energy_reg_weight:g}",
        ]
        if set(cfg.layer_kinds) & set("aw"):
            window = f", window {cfg.attention_window:,} tokens" if "w" in cfg.layer_kinds else ""
            lines.append(
                f"  layers: {cfg.layer_kinds} (e/h: eigenstates, a: attention, w: sliding-window "
                f"attention; {cfg.heads_of_attention} attention head(s){window}; energy over e/h only)"
            )
        ablations = [name for name, on in (("no output gate (g = 1)", not cfg.output_gate),
                                           ("no coupling (R = I)", not cfg.coupling),
                                           ("real eigenvalues (w = 0 or pi)", cfg.real_eigenvalues),
                                           ("fixed basis (a, w frozen)", cfg.fixed_basis)) if on]  # fmt: skip
        if ablations:
            lines.append(f"  ablations: {', '.join(ablations)}")
        lines.append("  parameters by component:")
        width = max(len(k) for k in self.parameter_groups())
        for key, count in self.parameter_groups().items():
            lines.append(f"    {key:<{width}}  {count:>14,}  {100 * count / total:5.1f}%")
        lines += [
            f"  memory: weights {weight_bytes / 2**20:,.1f} MiB; training with AdamW "
            f"(weights, gradients, 2 moments) {4 * weight_bytes / 2**20:,.1f} MiB before activations",
            self.state_line(),
        ]
        return "\n".join(lines)

    def state_line(self) -> str:
        """What one sequence's state costs: fixed, unless full attention layers keep every key and value."""
        at_window = self.state_bytes(self.config.max_seq_len)
        growth = self.state_bytes(self.config.max_seq_len + 1) - at_window
        if not growth:
            return f"  recurrent state per sequence: {at_window / 1024:,.1f} KiB, the same at any context length"
        return (
            f"  state per sequence after {self.config.max_seq_len:,} tokens: {at_window / 1024:,.1f} KiB; the "
            f"attention layers' KV cache grows it by {growth / 1024:,.1f} KiB per token of context"
        )

    @torch.no_grad()
    def eigenstate_analysis(self) -> list[dict[str, Any]]:
        """Per layer and scale: |lam|, frequency, memory timescale and |R - I| (base eigenvalues)."""
        report = []
        for layer, block in enumerate(self.blocks):
            for scale, core in block.mixer.cores():
                lam = core.eigenvalues()
                magnitude = lam.abs()
                report.append(
                    {
                        "layer": layer,
                        "scale": scale,
                        "magnitude": magnitude.cpu(),
                        "frequency": torch.remainder(lam.angle(), 2 * torch.pi).cpu(),
                        "timescale": (1 / (1 - magnitude)).cpu(),
                        "coupling_deviation": 0.0 if core.coupling is None else float(core.coupling.norm()),
                    }
                )
        return report


__all__ = ["RecurrentState", "TemporalEigenstateNetwork"]
