"""`TenConfig`: a `ten` config.json as transformers reads it (model_type "ten").

The model's fields are those of `TemporalEigenstateConfig`, stored flat exactly as `ten train` writes them, so
they are not declared a second time here: transformers keeps the keys it does not know as attributes, and a field
not given takes TemporalEigenstateConfig's default (`TenConfig()` is ten's default model, as every transformers
config builds with no argument).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ..config import TemporalEigenstateConfig
from ..lm import MODEL_TYPE
from . import register  # export: omit (transformers registers an export's classes from auto_map)


@strict
class TenConfig(PreTrainedConfig):
    model_type = MODEL_TYPE
    # transformers' names for ten's settings; lm-eval reads max_position_embeddings as its context window, and
    # the training window is where a ten model's own validation figure is measured.
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "max_seq_len",
    }

    architecture: str = "ten"  # ten's own key: "transformer" marks the attention baseline, which is not served here
    use_cache: bool = True
    tie_word_embeddings: bool = False  # the head reads the embedding inside the network: nothing to tie

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        for field in dataclasses.fields(TemporalEigenstateConfig):
            if not hasattr(self, field.name):  # hidden_size=... set d_model already (attribute_map)
                default = field.default_factory() if field.default is dataclasses.MISSING else field.default
                setattr(self, field.name, default)

    @classmethod
    def from_ten(cls, config: TemporalEigenstateConfig, **kwargs: Any) -> TenConfig:
        return cls(architecture="ten", **config.to_dict(), **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:  # export: omit
        """transformers' save; and where this config names ten's code (its auto_map: it was read from an export by
        this package's class), that code beside it, so that the folder still loads without this package. (An
        export's own classes need nothing: transformers copies their code.) A model's save_pretrained calls this."""
        from .standalone import ROOTS, write_code  # noqa: PLC0415  (not a module an export holds)

        super().save_pretrained(save_directory, *args, **kwargs)
        auto_map = getattr(self, "auto_map", None) or {}
        if any(str(reference).split(".")[0] in ROOTS.values() for reference in auto_map.values()):
            write_code(Path(save_directory))

    def to_ten(self) -> TemporalEigenstateConfig:
        """The network's config; a folder of the transformer baseline (or of no ten model) is refused in one line."""
        if self.architecture != "ten":
            # Mamba-2 is transformers' own model: its export is that model's folder.
            export = (
                "; `ten export` writes it as transformers' Mamba2ForCausalLM" if self.architecture == "mamba2" else ""
            )
            raise ValueError(
                f"this config is of ten's {self.architecture!r} baseline; the transformers integration serves TEN and "
                f"HTEN models (architecture 'ten'){export}"
            )
        # The dataclass's own fields, not lm.config_fields("ten"): that registry is filled only once model.py is
        # imported, which an export's configuration_ten.py does not do.
        names = [field.name for field in dataclasses.fields(TemporalEigenstateConfig)]
        return TemporalEigenstateConfig.from_dict({name: getattr(self, name) for name in names if hasattr(self, name)})


IMPORTED = True  # register() reads it: before this line, this module is still being imported
register()  # export: omit. The Auto classes, where importing this module was what imported transformers
