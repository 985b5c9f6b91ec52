"""`TenConfig`: a `ten` config.json as transformers reads it (model_type "ten").

The model's fields are those of `TemporalEigenstateConfig`, stored flat exactly as `ten train` writes them, so
they are not declared a second time here: transformers keeps the keys it does not know as attributes, and a field
not given takes TemporalEigenstateConfig's default (`TenConfig()` is ten's default model, as every transformers
config builds with no argument).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ..config import TemporalEigenstateConfig
from ..lm import MODEL_TYPE, config_fields
from . import register


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
        return TemporalEigenstateConfig.from_dict(
            {name: getattr(self, name) for name in config_fields("ten") if hasattr(self, name)}
        )


IMPORTED = True  # register() reads it: before this line, this module is still being imported
register()  # the Auto classes, where importing this module was what imported transformers
