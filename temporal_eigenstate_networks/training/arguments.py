"""Every setting of a training run, declared once: its default, flag, help, bounds and choices (see flags.py).

The CLI's `ten train` and `ten compare` flags are generated from these fields, and the trainer reads them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import PRESETS
from ..flags import DEVICE_HELP, NON_NEGATIVE, POSITIVE, SEED, UNIT_INTERVAL, check_settings, flags_of, setting
from ..lm import ARCHITECTURES, config_fields
from ..ops import SCAN_BACKENDS
from ..runs.trackers import TRACKERS, check_report_to

# The flags' sections of --help, in order.
MODEL = "model (a preset, then overrides)"
ABLATIONS = "ablations of TEN (the paper's; docs/RESULTS.md measures each)"
HYBRIDS = "hybrids: attention layers among TEN's (design section 10)"
MAMBA2 = "Mamba-2 (--model mamba2; default: expand and state size sized like TEN's parameter count)"
OPTIMISATION = "optimisation"
DATA = "data"
OUTPUT = "output"
MODES = "other modes"  # not offered by `ten compare`, which trains
AUTO_BATCH = "auto"  # --batch_size auto: found on the device (training/batch_search.py)


@dataclass(frozen=True)
class TrainArguments:
    # model: a preset, then any of these overrides (None keeps the preset's value)
    config: str = setting("nano", "preset (default %(default)s)", group=MODEL, choices=tuple(PRESETS))
    model: str = setting("ten", "architecture: TEN, the attention baseline or Mamba-2 (transformers', the hf extra) "
                         "of the same size (default %(default)s)",
                         group=MODEL, choices=tuple(ARCHITECTURES))  # fmt: skip
    use_hten: bool | None = setting(None, group=MODEL, on="hierarchical multi-scale TEN")
    hten_scales: list[int] | None = setting(None, "HTEN scales, e.g. 1,2,4", group=MODEL)
    energy_reg_weight: float | None = setting(None, "weight of the energy loss", group=MODEL, bound=NON_NEGATIVE)
    max_seq_len: int | None = setting(None, "training window T", group=MODEL, bound=POSITIVE)
    d_model: int | None = setting(None, group=MODEL, bound=POSITIVE)
    n_layers: int | None = setting(None, group=MODEL, bound=POSITIVE)
    num_eigenstates: int | None = setting(None, "K eigenstates per layer", group=MODEL, bound=POSITIVE)
    num_heads: int | None = setting(None, "eigenstate heads (blocks of the coupling)", group=MODEL, bound=POSITIVE)
    selective: bool | None = setting(None, group=MODEL, off="eigenvalues independent of the input (time-invariant)")
    selective_range: float | None = setting(
        None, "bound on the selective change of decay logit and phase (default 0.1)", group=MODEL, bound=NON_NEGATIVE
    )
    dropout: float | None = setting(None, group=MODEL, bound=NON_NEGATIVE)
    scan_backend: str | None = setting(None, group=MODEL, choices=tuple(SCAN_BACKENDS))
    mlp_hidden: int | None = setting(None, "SwiGLU width (default 8/3 d_model rounded up to 64; 0: no MLP)",
                                     group=MODEL, bound=NON_NEGATIVE)  # fmt: skip
    # the paper's ablations (TemporalEigenstateConfig)
    output_gate: bool | None = setting(None, group=ABLATIONS, off="no output gate: g = 1")
    coupling: bool | None = setting(None, group=ABLATIONS, off="no resonance coupling: R = I")
    real_eigenvalues: bool | None = setting(
        None, group=ABLATIONS, on="frequencies fixed at 0 or pi (no rotation, no selective phase)"
    )
    fixed_basis: bool | None = setting(
        None, group=ABLATIONS, on="eigenvalue magnitudes and frequencies frozen at their initial values"
    )
    # hybrids (TemporalEigenstateConfig)
    layer_pattern: str | None = setting(
        None, "each layer's mixer, repeated to --n_layers: e TEN, h HTEN, a attention, w sliding-window attention, "
        "e.g. eeea (default: every layer e, or h with --use_hten)", group=HYBRIDS,
    )  # fmt: skip
    attention_window: int | None = setting(None, "tokens a w layer sees, itself included (default 256)",
                                           group=HYBRIDS, bound=POSITIVE)  # fmt: skip
    attention_heads: int | None = setting(None, "heads of the a and w layers (default d_model / 64)", group=HYBRIDS,
                                          bound=POSITIVE)  # fmt: skip
    # Mamba-2 (Mamba2LMConfig)
    expand: int | None = setting(None, "inner width / d_model", group=MAMBA2, bound=POSITIVE)
    state_size: int | None = setting(None, "N, the SSM state per head and channel", group=MAMBA2, bound=POSITIVE)
    head_dim: int | None = setting(None, "numbers per head (default 64, or what divides expand * d_model)",
                                   group=MAMBA2, bound=POSITIVE)  # fmt: skip
    # optimisation
    epochs: float | None = setting(None, "passes over the training split (default 1, or as many as --time_budget "
                                   "allows)", group=OPTIMISATION, bound=POSITIVE, resumable=True)  # fmt: skip
    max_steps: int | None = setting(None, "optimiser steps (overrides --epochs)", group=OPTIMISATION, bound=POSITIVE,
                                    resumable=True)  # fmt: skip
    learning_rate: float | None = setting(None, "peak (default: the preset's)", group=OPTIMISATION, bound=POSITIVE,
                                          aliases=("--lr",))  # fmt: skip
    min_lr_ratio: float = setting(0.1, "final lr / peak lr", group=OPTIMISATION, bound=UNIT_INTERVAL,
                                  parse_bound=NON_NEGATIVE)  # fmt: skip
    weight_decay: float = setting(0.1, group=OPTIMISATION, bound=NON_NEGATIVE)
    warmup_steps: int = setting(100, group=OPTIMISATION, bound=NON_NEGATIVE, parse_bound=None)
    batch_size: int | str | None = setting(
        None, "sequences per micro-batch (default: the preset's), or auto: the largest that fits in memory at the "
        "window, found once at the start (tried on CUDA, estimated on a CPU), with the accumulation that reaches "
        "--tokens_per_step", group=OPTIMISATION, bound=POSITIVE, also=(AUTO_BATCH,),
    )  # fmt: skip
    gradient_accumulation: int = setting(1, group=OPTIMISATION, bound=POSITIVE)
    tokens_per_step: int | None = setting(
        None, "tokens per optimiser step (all processes): sets --gradient_accumulation (default with --batch_size "
        "auto: the preset's)", group=OPTIMISATION, bound=POSITIVE,
    )  # fmt: skip
    grad_clip: float = setting(1.0, "0 turns clipping off", group=OPTIMISATION, bound=NON_NEGATIVE)
    mixed_precision: str = setting(
        "no", "bf16 autocast where supported, else fp16 + scaler on GPUs (flag alone: auto)", group=OPTIMISATION,
        choices=("no", "auto", "bf16", "fp16"), bare="auto",
    )  # fmt: skip
    gradient_checkpointing: bool = setting(False, "recompute layers in backward", group=OPTIMISATION)
    # None: on CUDA only (on a CPU it costs minutes and gains nothing measured)
    compile: bool | None = setting(
        None, group=OPTIMISATION, resumable=True, off="never torch.compile",
        on="torch.compile the training step (default: on CUDA only, where it is faster)",
    )  # fmt: skip
    use_8bit_optim: bool = setting(False, "bitsandbytes 8-bit AdamW (CUDA)", group=OPTIMISATION)
    seed: int = setting(42, group=OPTIMISATION, bound=SEED)
    device: str = setting("auto", DEVICE_HELP, group=OPTIMISATION, resumable=True)
    time_budget: float | None = setting(None, "minutes for the whole run, final evaluation and checkpoint included; "
                                        "with no --epochs or --max_steps the schedule ends with it",
                                        group=OPTIMISATION, bound=POSITIVE, resumable=True)  # fmt: skip
    # data
    dataset: str = setting("shakespeare", "shakespeare (built in), a text file or folder, a token file "
                           "(.bin/.u32/.npy), or a hub name (wikitext-103, tinystories, finewebedu, pg19, openwebtext, "
                           "imdb, ag_news)",
                           group=DATA, resumable=True)  # fmt: skip
    tokenizer: str = setting("byte", "byte (default), bpe:N, or a hub tokenizer name", group=DATA)
    subset_size: int | None = setting(None, "train on the first N windows of the corpus", group=DATA, bound=POSITIVE)
    streaming: bool = setting(False, "stream a hub dataset instead of downloading it all", group=DATA)
    tokenized_dir: str | None = setting(None, "a folder from `ten prepare`", group=DATA, aliases=("--pretokenized",),
                                        resumable=True)  # fmt: skip
    # A resumed run checks its data by content (data/identity.py); this lets it continue on other data, once.
    allow_data_change: bool = setting(False, "with --resume: continue on data that differs from what the run "
                                      "trained on (the run records the change)", group=DATA,
                                      resumable=True)  # fmt: skip
    # output
    output_dir: str | None = setting(None, "metrics.jsonl and checkpoints/ (default runs/<config>[-hten], numbered)",
                                     group=OUTPUT, resumable=True)  # fmt: skip
    save_steps: int = setting(500, group=OUTPUT, bound=POSITIVE, resumable=True)
    eval_steps: int = setting(250, group=OUTPUT, bound=POSITIVE, resumable=True)
    eval_batches: int = setting(20, group=OUTPUT, bound=POSITIVE, resumable=True)
    keep_checkpoints: int = setting(2, "step-N ones kept", group=OUTPUT, bound=POSITIVE, resumable=True)
    # "" (the flag alone) = the latest checkpoint in output_dir
    resume: str | None = setting(None, "continue a run: its latest checkpoint, or PATH", group=OUTPUT, bare="",
                                 resumable=True)  # fmt: skip
    overwrite: bool = setting(False, "start over in an --output_dir that holds a run", group=OUTPUT, resumable=True)
    hourly_rate: float | None = setting(None, "$/hour of the machine: show the cost so far", group=OUTPUT,
                                        bound=NON_NEGATIVE, resumable=True)  # fmt: skip
    sample_tokens: int = setting(200, "tokens sampled at the end", group=OUTPUT, bound=NON_NEGATIVE, parse_bound=None,
                                 resumable=True)  # fmt: skip
    # None or ["none"]: no tracker. A resumed run keeps its trackers unless given again.
    report_to: list[str] | None = setting(
        None, f"where else to watch the run, comma-separated: {', '.join(TRACKERS)} or none (default none). Each "
        "gets every metrics.jsonl record at its step, the run plan and the model summary; each is an extra of "
        "that name. W&B runs offline unless you are logged in; a resumed run continues the same tracker runs",
        group=OUTPUT, resumable=True,
    )  # fmt: skip
    # other modes
    dry_run: bool = setting(False, "summary and the loss of real windows; no training", group=MODES, resumable=True)
    dry_samples: int = setting(2, group=MODES, bound=POSITIVE, resumable=True)
    benchmark: bool = setting(False, "time training steps and generation; no training", group=MODES, resumable=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainArguments:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def validate(self) -> None:
        """Raise ValueError naming the first setting a run cannot start with: a bound or choice its field declares
        (the parser checks the same), then the rules between settings."""
        check_settings(self)
        check_report_to(self.report_to)
        contradictions = [
            (self.coupling is False and self.num_heads is not None,
             "--num_heads only partitions the coupling into heads: it means nothing with --no_coupling"),
            (self.selective is False and self.selective_range is not None,
             "--selective_range bounds the selective modulation that --no_selective turns off"),
            (self.allow_data_change and self.resume is None,
             "--allow_data_change applies to a resumed run: give it with --resume"),
        ]  # fmt: skip
        for contradicts, message in contradictions:
            if contradicts:
                raise ValueError(message)


# Settings a resumed run may change; the rest define the run and must match its checkpoint.
RESUMABLE_OVERRIDES = frozenset(name for name, flag in flags_of(TrainArguments).items() if flag.resumable)
# The settings that override a preset's model: those some architecture's config has.
MODEL_FIELDS = tuple(name for name in flags_of(TrainArguments) if any(name in config_fields(a) for a in ARCHITECTURES))
