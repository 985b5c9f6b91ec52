"""Every setting of a training run, with its default: the one place the CLI and the trainer read them from.

Each field declares its flag too (help, bound, choices, spelling: see flags.py): `ten train` and `ten
compare` build their flags from these fields, and validate() checks the same declared bounds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import PRESETS
from ..flags import FRACTION, MAX_SEED, NON_NEGATIVE, POSITIVE, SEED, check_fields, setting
from ..lm import ARCHITECTURES
from ..ops import SCAN_BACKENDS

__all__ = ["MAX_SEED", "MODEL_FIELDS", "MODE_FIELDS", "RESUMABLE_OVERRIDES", "TrainArguments"]

# Settings a resumed run may change; the rest define the run and must match its checkpoint.
RESUMABLE_OVERRIDES = frozenset(
    {"max_steps", "epochs", "time_budget", "save_steps", "eval_steps", "eval_batches", "output_dir", "overwrite",
     "hourly_rate", "device", "keep_checkpoints", "sample_tokens", "compile", "resume", "dry_run", "dry_samples",
     "benchmark"}
)  # fmt: skip
DEVICE_HELP = "auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class TrainArguments:
    # The model: a preset, then any of these overrides (None keeps the preset's value). A field that an
    # architecture's config also has is such an override (MODEL_FIELDS).
    config: str = setting("nano", "preset (default %(default)s)", choices=PRESETS)
    model: str = setting("ten", "architecture: TEN, or the attention baseline of the same size (default %(default)s)",
                         choices=ARCHITECTURES)  # fmt: skip
    use_hten: bool | None = setting(None, "hierarchical multi-scale TEN")
    hten_scales: list[int] | None = setting(None, "HTEN scales, e.g. 1,2,4")
    energy_reg_weight: float | None = setting(None, "weight of the energy loss", bound=NON_NEGATIVE)
    max_seq_len: int | None = setting(None, "training window T", bound=POSITIVE)
    d_model: int | None = setting(None, bound=POSITIVE)
    n_layers: int | None = setting(None, bound=POSITIVE)
    num_eigenstates: int | None = setting(None, "K eigenstates per layer", bound=POSITIVE)
    num_heads: int | None = setting(None, "eigenstate heads (blocks of the coupling)", bound=POSITIVE)
    selective: bool | None = setting(
        None, switches={"--no_selective": (False, "eigenvalues independent of the input (time-invariant)")}
    )
    selective_range: float | None = setting(
        None, "bound on the selective change of decay logit and phase (default 0.1)", bound=NON_NEGATIVE
    )
    dropout: float | None = setting(None, bound=NON_NEGATIVE)
    scan_backend: str | None = setting(None, choices=SCAN_BACKENDS)
    output_gate: bool | None = setting(None, switches={"--no_output_gate": (False, "no output gate: g = 1")})
    coupling: bool | None = setting(None, switches={"--no_coupling": (False, "no resonance coupling: R = I")})
    real_eigenvalues: bool | None = setting(None, "frequencies fixed at 0 or pi (no rotation, no selective phase)")
    fixed_basis: bool | None = setting(None, "eigenvalue magnitudes and frequencies frozen at their initial values")
    # optimisation
    epochs: float | None = setting(None, "passes over the training split (default 1, or as many as --time_budget "
                                   "allows)", bound=POSITIVE)  # fmt: skip
    max_steps: int | None = setting(None, "optimiser steps (overrides --epochs)", bound=POSITIVE)
    learning_rate: float | None = setting(None, "peak (default: the preset's)", bound=POSITIVE, aliases=("--lr",))
    # Its parser refuses < 0 only; > 1 is validate()'s to refuse, with the message it always had.
    min_lr_ratio: float = setting(0.1, "final lr / peak lr", bound=FRACTION, parse_bound=NON_NEGATIVE)
    weight_decay: float = setting(0.1, bound=NON_NEGATIVE)
    warmup_steps: int = setting(100, bound=NON_NEGATIVE, parse_bound=None)  # parsed as a plain int, as before
    batch_size: int | None = setting(None, "sequences per micro-batch (default: the preset's)", bound=POSITIVE)
    gradient_accumulation: int = setting(1, bound=POSITIVE)
    grad_clip: float = setting(1.0, "0 turns clipping off", bound=NON_NEGATIVE)
    mixed_precision: str = setting("no", "bf16 autocast where supported, else fp16 + scaler on GPUs (flag alone: "
                                   "auto)", choices=("no", "auto", "bf16", "fp16"), bare="auto")  # fmt: skip
    gradient_checkpointing: bool = setting(False, "recompute layers in backward")
    # None: on CUDA only (on a CPU it costs minutes and gains nothing measured)
    compile: bool | None = setting(None, switches={
        "--compile": (True, "torch.compile the training step (default: on CUDA only, where it is faster)"),
        "--no_compile": (False, "never torch.compile"),
    })  # fmt: skip
    use_8bit_optim: bool = setting(False, "bitsandbytes 8-bit AdamW (CUDA)")
    seed: int = setting(42, bound=SEED)
    device: str = setting("auto", DEVICE_HELP)
    time_budget: float | None = setting(None, "minutes for the whole run, final evaluation and checkpoint included; "
                                        "with no --epochs or --max_steps the schedule ends with it",
                                        bound=POSITIVE)  # fmt: skip
    # data
    dataset: str = setting("shakespeare", "shakespeare (built in), a text file or folder, a token file (.bin/.u32), "
                           "or a hub name (wikitext-103, tinystories, finewebedu, pg19, openwebtext, imdb, ag_news)")
    tokenizer: str = setting("byte", "byte (default), bpe:N, or a hub tokenizer name")
    subset_size: int | None = setting(None, "train on the first N windows of the corpus", bound=POSITIVE)
    streaming: bool = setting(False, "stream a hub dataset instead of downloading it all")
    tokenized_dir: str | None = setting(None, "a folder from `ten prepare`", aliases=("--pretokenized",))
    # output
    output_dir: str | None = setting(None, "metrics.jsonl and checkpoints/ (default runs/<config>[-hten], numbered)")
    save_steps: int = setting(500, bound=POSITIVE)
    eval_steps: int = setting(250, bound=POSITIVE)
    eval_batches: int = setting(20, bound=POSITIVE)
    keep_checkpoints: int = setting(2, "step-N ones kept", bound=POSITIVE)
    resume: str | None = setting(None, "continue a run: its latest checkpoint, or PATH", bare="")  # "": the latest
    overwrite: bool = setting(False, "start over in an --output_dir that holds a run")
    hourly_rate: float | None = setting(None, "$/hour of the machine: show the cost so far", bound=NON_NEGATIVE)
    sample_tokens: int = setting(200, "tokens sampled at the end", bound=NON_NEGATIVE, parse_bound=None)
    # other modes
    dry_run: bool = setting(False, "summary and the loss of real windows; no training")
    dry_samples: int = setting(2, bound=POSITIVE)
    benchmark: bool = setting(False, "time training steps and generation; no training")

    # The flags' argument groups: the field each one opens -> its title.
    flag_groups: ClassVar[dict[str, str]] = {
        "config": "model (a preset, then overrides)",
        "output_gate": "ablations of TEN (the paper's; docs/RESULTS.md measures each)",
        "epochs": "optimisation",
        "dataset": "data",
        "output_dir": "output",
        "dry_run": "other modes",
    }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainArguments:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def validate(self) -> None:
        """Raise ValueError naming the first setting a run cannot start with: outside its declared bound or
        choices (the parser checks the same), or contradicting another."""
        check_fields(self)
        contradictions = [
            (self.coupling is False and self.num_heads is not None,
             "--num_heads only partitions the coupling into heads: it means nothing with --no_coupling"),
            (self.selective is False and self.selective_range is not None,
             "--selective_range bounds the selective modulation that --no_selective turns off"),
        ]  # fmt: skip
        for contradicts, message in contradictions:
            if contradicts:
                raise ValueError(message)


def model_fields() -> tuple[str, ...]:
    """The settings some architecture's config also has, in field order: each overrides the preset's model."""
    configs = {f.name for model in ARCHITECTURES.values() for f in dataclasses.fields(model.config_class)}
    return tuple(f.name for f in dataclasses.fields(TrainArguments) if f.name in configs)


# The settings that override a preset's model: each applies to the architectures whose config has it.
MODEL_FIELDS = model_fields()
MODE_FIELDS = ("dry_run", "dry_samples", "benchmark")  # `ten train`'s alone: `ten compare` trains
