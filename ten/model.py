"""The network: token embedding, eigenstate blocks, final norm, tied LM head.

Also the loss (with energy regularisation), streaming through an explicit recurrent state,
generation, saving and loading, and the summaries users print.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .atomic import atomic_write
from .config import TemporalEigenstateConfig
from .modules.block import Block
from .sampling import check_sampling_args, sample_next_token

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class RecurrentState:
    """Everything the network carries from one call to the next: one entry per layer.

    Its size does not grow with the context, which is what makes each generated token O(1).
    """

    layers: list[Any] = field(default_factory=list)


class TemporalEigenstateNetwork(nn.Module):
    def __init__(self, config: TemporalEigenstateConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.gradient_checkpointing = False
        nn.init.normal_(self.embedding.weight, std=0.02)

    # ------------------------------------------------------------------ forward and loss

    def check_token_ids(self, ids: Tensor) -> None:
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"token ids must be an integer tensor, got {ids.dtype}")
        if ids.dim() != 2:
            raise ValueError(f"token ids must have shape (batch, time), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"token ids must be in [0, {self.config.vocab_size}), got values in "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )

    def _run(self, ids: Tensor, state: RecurrentState | None) -> tuple[Tensor, RecurrentState, Tensor]:
        """Logits, the new state, and the raw energy loss (mean over layers of E / K)."""
        x = self.dropout(self.embedding(ids.long()))
        new_state, energies = RecurrentState(), []
        for i, block in enumerate(self.blocks):
            layer_state = None if state is None else state.layers[i]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, layer_state, layer_energy = checkpoint(block, x, layer_state, use_reentrant=False)
            else:
                x, layer_state, layer_energy = block(x, layer_state)
            new_state.layers.append(layer_state)
            energies.append(layer_energy)
        logits = F.linear(self.final_norm(x), self.embedding.weight)  # head tied to the embedding
        energy_loss = torch.stack(energies).mean() / self.config.num_eigenstates
        return logits, new_state, energy_loss

    def forward(
        self, ids: Tensor, state: RecurrentState | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, RecurrentState]:
        """Logits (B, T, vocab). With ``return_state``, also the state to pass to the next call."""
        self.check_token_ids(ids)
        if state is not None and len(state.layers) != len(self.blocks):
            raise ValueError(f"state has {len(state.layers)} layers, the model {len(self.blocks)}")
        logits, new_state, _ = self._run(ids, state)
        return (logits, new_state) if return_state else logits

    def compute_loss(self, inputs: Tensor, targets: Tensor, return_dict: bool = False) -> Tensor | dict[str, Tensor]:
        """loss = ce_loss + energy_reg_weight * energy_loss; targets of -100 are ignored."""
        self.check_token_ids(inputs)
        if targets.shape != inputs.shape:
            raise ValueError(f"targets {tuple(targets.shape)} must match inputs {tuple(inputs.shape)}")
        logits, _, energy_loss = self._run(inputs, None)
        ce_loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten().long(), ignore_index=-100)
        loss = ce_loss + self.config.energy_reg_weight * energy_loss
        if not return_dict:
            return loss
        return {"loss": loss, "ce_loss": ce_loss, "energy_loss": energy_loss}

    # ------------------------------------------------------------------ generation

    @torch.no_grad()  # not inference_mode: the returned ids may feed a training step
    def generate(
        self,
        prompt_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Tensor:
        """Prompt plus ``max_new_tokens`` sampled tokens, (B, T + max_new_tokens).

        The prompt is read in one parallel pass; each new token then costs one recurrent step,
        whatever the length of the context. ``temperature=0`` is greedy.
        """
        check_sampling_args(temperature, top_k, top_p)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        ids = prompt_ids.unsqueeze(0) if prompt_ids.dim() == 1 else prompt_ids
        if ids.shape[-1] == 0:
            raise ValueError("the prompt must hold at least one token")
        self.check_token_ids(ids)
        ids = ids.long()
        generator = None
        if seed is not None:
            generator = torch.Generator(device=ids.device).manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            logits, state, _ = self._run(ids, None)
            new_tokens = []
            for _ in range(max_new_tokens):
                token = sample_next_token(logits[:, -1], temperature, top_k, top_p, generator)
                new_tokens.append(token)
                logits, state, _ = self._run(token, state)
        finally:
            self.train(was_training)
        return torch.cat([ids, *new_tokens], dim=1)

    # ------------------------------------------------------------------ saving and loading

    def save_pretrained(self, directory: str | Path) -> None:
        """config.json and model.safetensors, each written to a temporary name and renamed."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / CONFIG_FILE, lambda p: self.config.save(p))
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_model(self, str(p)))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> TemporalEigenstateNetwork:
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} holds no {name}: not a saved TEN model")
        config = TemporalEigenstateConfig.load(directory / CONFIG_FILE)
        model = cls(config)
        try:
            missing, unexpected = load_model(model, str(directory / WEIGHTS_FILE), strict=False, device=str(device))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise ValueError(f"{directory / WEIGHTS_FILE} is not a readable weights file: {err}") from err
        if missing or unexpected:
            raise ValueError(
                f"{directory / WEIGHTS_FILE} does not match its config: "
                f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
            )
        return model.to(device)

    # ------------------------------------------------------------------ reports

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

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

    def state_bytes_per_sequence(self) -> int:
        """Bytes of recurrent state one sequence carries: constant in its length."""
        cfg = self.config
        per_layer = cfg.num_eigenstates * 8  # complex64 eigenstates
        if cfg.use_hten:  # per scale: the open window's sum and the last window's output
            per_layer += len(cfg.hten_scales) * 2 * cfg.d_model * 4
        return per_layer * cfg.n_layers

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
            "  parameters by component:",
        ]
        width = max(len(k) for k in self.parameter_groups())
        for key, count in self.parameter_groups().items():
            lines.append(f"    {key:<{width}}  {count:>14,}  {100 * count / total:5.1f}%")
        lines += [
            f"  memory: weights {weight_bytes / 2**20:,.1f} MiB; training with AdamW "
            f"(weights, gradients, 2 moments) {4 * weight_bytes / 2**20:,.1f} MiB before activations",
            f"  recurrent state per sequence: {self.state_bytes_per_sequence() / 1024:,.1f} KiB, "
            "the same at any context length",
        ]
        return "\n".join(lines)

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
                        "coupling_deviation": float(core.coupling.norm()),
                    }
                )
        return report


__all__ = ["RecurrentState", "TemporalEigenstateNetwork"]
