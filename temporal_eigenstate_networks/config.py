"""Model configuration, the presets of the original training script, and their validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .jsontypes import field_type_problem
from .modules.block import default_mlp_width
from .ops import MAX_CHUNK_SIZE, SCAN_BACKENDS


@dataclass(frozen=True)
class Preset:
    """A model size of the design's section 6; its batch size and learning rate are training.presets'."""

    d_model: int
    n_layers: int
    num_eigenstates: int
    max_seq_len: int
    use_hten: bool
    hten_scales: tuple[int, ...]
    energy_reg_weight: float

    def model_fields(self) -> dict[str, Any]:
        """The preset's values, the model config's fields they set."""
        return dataclasses.asdict(self)


# The design's section 6. It gives no scales to the presets without HTEN; for `use_hten=True` on
# them we take 1,2,4,8, which divides their K into equal parts (64 / 3 would not).
DEFAULT_HTEN_SCALES = (1, 2, 4, 8)
LAYER_KINDS = "ehaw"  # the mixers a layer_pattern names (design section 10)
DEFAULT_ATTENTION_WINDOW = 256  # tokens a w layer sees: local context, as Griffin's and Samba's local attention
HEAD_SIZE = 64  # numbers per attention head where the head count is not given (the transformer baseline's)
PRESETS: dict[str, Preset] = {
    "nano": Preset(512, 4, 64, 512, False, DEFAULT_HTEN_SCALES, 0.01),
    "micro": Preset(768, 6, 96, 1024, False, DEFAULT_HTEN_SCALES, 0.01),
    "small": Preset(1024, 8, 128, 1024, False, DEFAULT_HTEN_SCALES, 0.01),
    "medium": Preset(1280, 12, 160, 1024, False, DEFAULT_HTEN_SCALES, 0.01),
    "large": Preset(1536, 16, 192, 1024, True, (1, 2, 4), 0.02),
    "xlarge": Preset(2048, 20, 256, 2048, True, (1, 2, 4, 8), 0.02),
}


ConfigT = TypeVar("ConfigT", bound="ConfigDict")

# No config builds a model of more parameters: 16 bytes each to train (float32 weights, gradients and two AdamW
# moments), 160 GB at this bound, more than any one GPU holds, and data-parallel training keeps a whole copy on
# each. xlarge has 0.8 B. An absurd size (d_model=10**7) is refused here, not after allocating gigabytes.
MAX_PARAMETERS = 10**10


def is_integer(value: Any) -> bool:
    """An int and not a bool (JSON's true is not a size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_shared_fields(config: Any, sizes: tuple[str, ...]) -> None:
    """The checks both model configs share: positive integer sizes, dropout, norm_eps, mlp_hidden."""
    for name in sizes:
        value = getattr(config, name)
        if not is_integer(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (is_finite_number(config.dropout) and 0.0 <= config.dropout < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout!r}")
    if not (is_finite_number(config.norm_eps) and config.norm_eps > 0):
        raise ValueError(f"norm_eps must be a finite number > 0, got {config.norm_eps!r}")
    if config.mlp_hidden is not None and not (is_integer(config.mlp_hidden) and config.mlp_hidden >= 0):
        raise ValueError(f"mlp_hidden must be an integer >= 0 (0: no MLP) or None, got {config.mlp_hidden!r}")


def default_attention_heads(d_model: int) -> int:
    """Attention heads where none are given: one per 64 numbers of d_model, at least one."""
    return max(1, d_model // HEAD_SIZE)


def check_parameter_count(count: int, fields: str) -> None:
    """Refuse a model of more than MAX_PARAMETERS before anything is allocated."""
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"this config makes a model of {count:.3g} parameters, more than the {MAX_PARAMETERS:.0e} this library "
            f"builds: check {fields}"
        )


class ConfigDict:
    """A dataclass config <-> the dict of its config.json; unknown keys are an error, not ignored."""

    # Fields added after checkpoints were first written, whose default is what the model did before them:
    # a config.json without one keeps the default (load_config); any other missing field is an error.
    added_later: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[ConfigT], values: dict[str, Any]) -> ConfigT:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        if problem := field_type_problem(values, cls):
            raise ValueError(problem)
        return cls(**values)


@dataclass
class TemporalEigenstateConfig(ConfigDict):
    vocab_size: int = 256
    d_model: int = 512
    n_layers: int = 4
    num_eigenstates: int = 64  # K, complex eigenstates per layer (split over scales in HTEN)
    num_heads: int = 4  # eigenstate heads: the coupling R is block-diagonal over them
    max_seq_len: int = 512  # training window; sets the slowest initial memory, not a hard limit
    dropout: float = 0.0
    selective: bool = True  # input-dependent eigenvalue perturbations (da, dw)
    selective_range: float = 0.1  # |da|, |dw| <= this (decay logit and phase)
    use_hten: bool = False
    hten_scales: list[int] = field(default_factory=lambda: list(DEFAULT_HTEN_SCALES))
    energy_reg_weight: float = 0.01
    scan_backend: str = "auto"
    chunk_size: int = 32
    mlp_hidden: int | None = None  # SwiGLU width; None: 8/3 d rounded up to a multiple of 64; 0: no MLP
    coupling_init: float = 0.01  # eps in R = I + eps M
    # The paper's ablations, all off by default (docs/RESULTS.md measures each).
    output_gate: bool = True  # False: g = 1, the layer's output ungated
    coupling: bool = True  # False: R = I, the eigenstates read out independently
    real_eigenvalues: bool = False  # w fixed at 0 or pi, no dw: decaying (and sign-flipping) states, no rotation
    fixed_basis: bool = False  # a and w frozen at their initial values (the Fourier basis), not learned
    norm_eps: float = 1e-5
    # Hybrids (design section 10): each layer's mixer by letter, the pattern repeated to n_layers. e: eigenstate
    # layer, h: HTEN layer, a: causal attention, w: sliding-window attention. None: every layer e (h with HTEN).
    layer_pattern: str | None = None
    attention_window: int = DEFAULT_ATTENTION_WINDOW  # w: each position sees itself and the W - 1 before it
    attention_heads: int | None = None  # a and w layers; None: d_model / 64, as the transformer baseline

    # selective_range was a constant 0.1 before it became a field, and the ablation switches' and the hybrids'
    # defaults are the model as it was before them: configs written before lack these fields.
    added_later: ClassVar[frozenset[str]] = frozenset(
        {"selective_range", "output_gate", "coupling", "real_eigenvalues", "fixed_basis", "layer_pattern",
         "attention_window", "attention_heads"}
    )  # fmt: skip

    def __post_init__(self) -> None:
        if not isinstance(self.hten_scales, (list, tuple)):
            raise ValueError(f"hten_scales must be a non-empty list of positive integers, got {self.hten_scales!r}")
        self.hten_scales = list(self.hten_scales)
        self.validate()

    @property
    def mlp_width(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return default_mlp_width(self.d_model)

    @property
    def scales(self) -> list[int]:
        """The temporal scales in use: [1] for plain TEN."""
        return self.hten_scales if self.use_hten else [1]

    @property
    def eigenstates_per_scale(self) -> int:
        return self.num_eigenstates // len(self.scales)

    @property
    def layer_kinds(self) -> str:
        """The mixer letter of every layer: the pattern repeated to n_layers."""
        pattern = self.layer_pattern or ("h" if self.use_hten else "e")
        return (pattern * -(-self.n_layers // len(pattern)))[: self.n_layers]

    @property
    def heads_of_attention(self) -> int:
        """The a and w layers' heads: attention_heads, else one per 64 numbers of d_model (at least one)."""
        return self.attention_heads if self.attention_heads is not None else default_attention_heads(self.d_model)

    def validate(self) -> None:
        check_shared_fields(self, ("vocab_size", "d_model", "n_layers", "num_eigenstates", "num_heads", "max_seq_len"))
        # a string such as "no" would otherwise be true
        for name in ("selective", "use_hten", "output_gate", "coupling", "real_eigenvalues", "fixed_basis"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        weight = self.energy_reg_weight
        if not (is_finite_number(weight) and weight >= 0):
            raise ValueError(f"energy_reg_weight must be a finite number >= 0, got {weight!r}")
        if self.scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"scan_backend must be one of {', '.join(SCAN_BACKENDS)}, got {self.scan_backend!r}")
        if self.scan_backend == "fft" and self.selective:
            raise ValueError("scan_backend 'fft' needs selective=False (it handles time-invariant eigenvalues only)")
        if not (is_integer(self.chunk_size) and 1 <= self.chunk_size <= MAX_CHUNK_SIZE):
            raise ValueError(f"chunk_size must be an integer in [1, {MAX_CHUNK_SIZE}], got {self.chunk_size!r}")
        for name in ("selective_range", "coupling_init"):
            value = getattr(self, name)
            if not (is_finite_number(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.real_eigenvalues and self.fixed_basis:
            raise ValueError("real_eigenvalues and fixed_basis both fix the frequencies (at 0 or pi, or the Fourier "
                             "basis): choose one")  # fmt: skip
        scales = self.hten_scales
        if not scales or any(not is_integer(s) or s < 1 for s in scales):
            raise ValueError(f"hten_scales must be a non-empty list of positive integers, got {scales!r}")
        if len(set(scales)) != len(scales):
            raise ValueError(f"hten_scales must be distinct, got {scales!r}")
        if self.num_eigenstates % len(self.scales):
            raise ValueError(
                f"num_eigenstates ({self.num_eigenstates}) must be divisible by the number of "
                f"hten_scales ({len(self.scales)})"
            )
        if self.eigenstates_per_scale % self.num_heads:
            raise ValueError(
                f"num_eigenstates per scale ({self.eigenstates_per_scale}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        self.validate_layers()
        check_parameter_count(self.parameter_count(), "d_model, n_layers, vocab_size, num_eigenstates, mlp_hidden")

    def validate_layers(self) -> None:
        """The hybrid's settings: the pattern's letters, HTEN scales for h, the attention layers' sizes."""
        pattern = self.layer_pattern
        if pattern is not None and (not isinstance(pattern, str) or not pattern or set(pattern) - set(LAYER_KINDS)):
            raise ValueError(f"layer_pattern must be letters from {LAYER_KINDS} (e: TEN, h: HTEN, a: attention, "
                             f"w: sliding-window attention), one per layer, got {pattern!r}")  # fmt: skip
        kinds = self.layer_kinds
        if "h" in kinds and not self.use_hten:
            raise ValueError("an h layer (HTEN) needs HTEN scales: set use_hten (--use_hten, --hten_scales)")
        if not (is_integer(self.attention_window) and self.attention_window >= 1):
            raise ValueError(f"attention_window must be an integer >= 1 (tokens), got {self.attention_window!r}")
        heads = self.heads_of_attention
        if not (is_integer(heads) and heads >= 1):
            raise ValueError(f"attention_heads must be a positive integer, got {heads!r}")
        if set(kinds) & set("aw") and (self.d_model % heads or self.d_model // heads % 2):
            raise ValueError(f"attention_heads ({heads}) must divide d_model ({self.d_model}) into heads of an even "
                             "size (rotary positions turn pairs of numbers)")  # fmt: skip

    def parameter_count(self) -> int:
        """The built model's parameters, from the config alone (tested equal to the model's count)."""
        d, n_scales = self.d_model, len(self.hten_scales)
        gate = d * d + d if self.output_gate else 0
        mixers = {
            "e": self._core_parameters(self.num_eigenstates) + gate,
            "h": n_scales * self._core_parameters(self.num_eigenstates // n_scales) + gate + n_scales,  # + weights
            "a": 4 * d * d,  # qkv, out
            "w": 4 * d * d,
        }
        mlp = 2 * d + 3 * d * self.mlp_width if self.mlp_width else 0  # norm, SwiGLU
        layers = sum(2 * d + mixers[kind] + mlp for kind in self.layer_kinds)
        return self.vocab_size * d + 2 * d + layers

    def _core_parameters(self, k: int) -> int:
        """One eigenstate core of k eigenstates: W_in, W_out, W_sel, the eigenvalues, the coupling's blocks."""
        d = self.d_model
        selection = (d * k if self.real_eigenvalues else d * 2 * k) if self.selective else 0  # (da) or (da, dw)
        eigenvalues = 0 if self.fixed_basis else k if self.real_eigenvalues else 2 * k  # learned a_k, w_k
        coupling = k * (k // self.num_heads) if self.coupling else 0
        return 2 * d * 2 * k + selection + eigenvalues + coupling

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TemporalEigenstateConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name].model_fields(), **overrides})
