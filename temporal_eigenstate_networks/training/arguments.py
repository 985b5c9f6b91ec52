"""Every setting of a training run, with its default: the one place the CLI and the trainer read them from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Settings a resumed run may change; the rest define the run and must match its checkpoint.
RESUMABLE_OVERRIDES = frozenset(
    {"max_steps", "epochs", "time_budget", "save_steps", "eval_steps", "eval_batches", "output_dir", "overwrite",
     "hourly_rate", "device", "keep_checkpoints", "sample_tokens", "compile", "resume", "dry_run", "dry_samples",
     "benchmark"}
)  # fmt: skip
MAX_SEED = 2**64 - 1  # torch's generators take seeds up to this; numpy's none below 0
# The settings that override a preset's model: each applies to the architectures whose config has it.
MODEL_FIELDS = ("use_hten", "hten_scales", "energy_reg_weight", "max_seq_len", "d_model", "n_layers",
                "num_eigenstates", "num_heads", "selective", "selective_range", "dropout", "scan_backend",
                "output_gate", "coupling", "real_eigenvalues", "fixed_basis")  # fmt: skip


@dataclass(frozen=True)
class TrainArguments:
    # model: a preset, then any of these overrides (None keeps the preset's value)
    config: str = "nano"
    model: str = "ten"
    use_hten: bool | None = None
    hten_scales: list[int] | None = None
    energy_reg_weight: float | None = None
    max_seq_len: int | None = None
    d_model: int | None = None
    n_layers: int | None = None
    num_eigenstates: int | None = None
    num_heads: int | None = None
    selective: bool | None = None
    selective_range: float | None = None
    dropout: float | None = None
    scan_backend: str | None = None
    output_gate: bool | None = None  # the paper's ablations (TemporalEigenstateConfig)
    coupling: bool | None = None
    real_eigenvalues: bool | None = None
    fixed_basis: bool | None = None
    # optimisation
    epochs: float | None = None  # None: one epoch, or as many steps as --time_budget allows
    max_steps: int | None = None
    learning_rate: float | None = None  # None: the preset's
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    warmup_steps: int = 100
    batch_size: int | None = None  # None: the preset's
    gradient_accumulation: int = 1
    grad_clip: float = 1.0
    mixed_precision: str = "no"  # no | auto | bf16 | fp16
    gradient_checkpointing: bool = False
    compile: bool | None = None  # None: on CUDA only (on a CPU it costs minutes and gains nothing measured)
    use_8bit_optim: bool = False
    seed: int = 42
    device: str = "auto"
    time_budget: float | None = None  # minutes of wall time for the whole run, final evaluation included
    # data
    dataset: str = "shakespeare"
    tokenizer: str = "byte"
    subset_size: int | None = None  # training windows of max_seq_len tokens
    streaming: bool = False
    tokenized_dir: str | None = None
    # output
    output_dir: str | None = None  # None: runs/<config>[-hten], numbered -2, -3... when taken
    save_steps: int = 500
    eval_steps: int = 250
    eval_batches: int = 20
    keep_checkpoints: int = 2
    resume: str | None = None  # "" = the latest checkpoint in output_dir
    overwrite: bool = False  # start over in an output_dir that holds an earlier run
    hourly_rate: float | None = None
    sample_tokens: int = 200
    # other modes
    dry_run: bool = False
    dry_samples: int = 2
    benchmark: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainArguments:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def validate(self) -> None:
        """Raise ValueError naming the first setting a run cannot start with."""
        always = ("gradient_accumulation", "save_steps", "eval_steps", "eval_batches", "dry_samples",
                  "keep_checkpoints")  # fmt: skip
        when_given = ("epochs", "learning_rate", "batch_size", "max_steps", "max_seq_len", "subset_size",
                      "time_budget", "d_model", "n_layers", "num_eigenstates", "num_heads")  # fmt: skip
        positive = {name: getattr(self, name) for name in always}
        positive.update({name: getattr(self, name) for name in when_given if getattr(self, name) is not None})
        for name, value in positive.items():
            if not value > 0 or value != value or value == float("inf"):
                raise ValueError(f"--{name} must be a positive number, got {value}")
        for name in ("weight_decay", "warmup_steps", "sample_tokens", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed must be an integer in [0, 2**64 - 1], got {self.seed}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"--min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.mixed_precision not in ("no", "auto", "bf16", "fp16"):
            raise ValueError(f"--mixed_precision must be no, auto, bf16 or fp16, got {self.mixed_precision!r}")
        contradictions = [
            (self.coupling is False and self.num_heads is not None,
             "--num_heads only partitions the coupling into heads: it means nothing with --no_coupling"),
            (self.selective is False and self.selective_range is not None,
             "--selective_range bounds the selective modulation that --no_selective turns off"),
        ]  # fmt: skip
        for contradicts, message in contradictions:
            if contradicts:
                raise ValueError(message)
        if self.hourly_rate is not None and not self.hourly_rate >= 0:
            raise ValueError(f"--hourly_rate must be >= 0, got {self.hourly_rate}")
