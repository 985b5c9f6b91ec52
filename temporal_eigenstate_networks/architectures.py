"""The one model factory over the architecture registry (lm.ARCHITECTURES), and how a model is named.

Training (`ModelPlan.build`), `ten bench`, `ten synthetic` and the benchmarks build their models here.
"""

from __future__ import annotations

from typing import Any

import torch

from . import baselines, model  # noqa: F401  (defining the classes registers "ten" and "transformer")
from .lm import ARCHITECTURES, LanguageModel, config_fields


def build_model(
    architecture: str, device: torch.device | str = "cpu", config: Any | None = None, **sizes: Any
) -> LanguageModel:
    """A new model of a registered architecture ("ten", "transformer") on `device`, from its `config` or `sizes`.

    Each architecture takes the sizes its config has (num_eigenstates goes to TEN, not to the
    transformer), so one set of sizes builds both at the same width and depth. A size that no
    architecture has is a typo, not something to drop: ValueError.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    model_class = ARCHITECTURES[architecture]
    if config is None:
        config = model_class.config_class(**architecture_sizes(architecture, sizes))
    elif sizes:
        raise ValueError("build_model takes a config or sizes, not both")
    return model_class(config).to(device)


def architecture_sizes(architecture: str, sizes: dict[str, Any]) -> dict[str, Any]:
    """The sizes `architecture`'s config has; ValueError for one that no architecture has."""
    unknown = set(sizes).difference(*(config_fields(name) for name in ARCHITECTURES))
    if unknown:
        raise ValueError(f"no architecture has the size(s) {', '.join(sorted(unknown))}")
    fields = config_fields(architecture)
    return {name: value for name, value in sizes.items() if name in fields}


def hten_label(config: Any, separator: str) -> str:
    """`separator` + "hten" for a hierarchical model, else "": run folders say -hten, tables ten/hten."""
    return f"{separator}hten" if getattr(config, "use_hten", False) else ""
