"""The one model factory over the architecture registry (lm.ARCHITECTURES), and how a model is named.

Training (`ModelPlan.build`), `ten bench`, `ten synthetic` and the benchmarks build their models here.
"""

from __future__ import annotations

from typing import Any

import torch

from . import baselines, model  # noqa: F401  (defining the classes registers "ten", "transformer", "mamba2")
from .baselines.mamba2_config import matched_sizes, require_transformers_mamba2
from .lm import ARCHITECTURES, LanguageModel, config_fields


def build_model(
    architecture: str, device: torch.device | str = "cpu", config: Any | None = None, **sizes: Any
) -> LanguageModel:
    """A new model of a registered architecture (ten, transformer, mamba2) on `device`, from `config` or `sizes`.

    Each architecture takes the sizes its config has (num_eigenstates goes to TEN, not to the
    transformer), so one set of sizes builds both at the same width and depth. A size that no
    architecture has is a typo, not something to drop: ValueError.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    if config is None:
        config = architecture_config(architecture, sizes)
    elif sizes:
        raise ValueError("build_model takes a config or sizes, not both")
    return ARCHITECTURES[architecture](config).to(device)


def architecture_config(architecture: str, sizes: dict[str, Any]) -> Any:
    """The config of `architecture` from one set of sizes (see build_model). Mamba-2's expand and state size,
    where not given, follow its sizing rule against the TEN these sizes make (baselines/mamba2_config.py)."""
    config_class = ARCHITECTURES[architecture].config_class
    own = architecture_sizes(architecture, sizes)
    if architecture == "mamba2":
        require_transformers_mamba2()
        if not {"expand", "state_size"} & set(own):
            own = {**mamba2_sizes_like(ARCHITECTURES["ten"].config_class(**architecture_sizes("ten", sizes))), **own}
    return config_class(**own)


def mamba2_sizes_like(ten_config: Any) -> dict[str, int]:
    """Mamba-2's expand and state size for a model compared with this TEN (SIZING_RULE)."""
    return matched_sizes(ten_config.parameter_count(), ten_config.vocab_size, ten_config.d_model, ten_config.n_layers)


def architecture_sizes(architecture: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """The sizes `architecture`'s config has; ValueError for one that no architecture has."""
    unknown = set(sizes).difference(*(config_fields(name) for name in ARCHITECTURES))
    if unknown:
        raise ValueError(f"no architecture has the size(s) {', '.join(sorted(unknown))}")
    fields = config_fields(architecture)
    return {name: value for name, value in sizes.items() if name in fields}


def variant_label(config: Any, separator: str) -> str:
    """What sets a TEN model apart in a name, each part after `separator`: "hten" for a hierarchical model, and
    the layer pattern of a hybrid (run folders say nano-hten or nano-eeea, tables ten/hten or ten/eeea)."""
    parts = ["hten"] if getattr(config, "use_hten", False) else []
    parts += [config.layer_pattern] if getattr(config, "layer_pattern", None) else []
    return "".join(separator + part for part in parts)
