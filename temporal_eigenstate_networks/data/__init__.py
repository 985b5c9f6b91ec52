"""Corpora, tokenizers, batching."""

from .batching import VALIDATION_FRACTION, WindowSampler, sequential_windows, split_train_val
from .corpus import cache_dir, load_shakespeare
from .errors import DataError
from .pipeline import TokenData, load_token_data
from .prepare import prepare_token_files
from .sources import (
    HUB_DATASETS,
    HubDataset,
    is_hub_dataset,
    is_token_file,
    load_corpus,
    read_text_source,
    read_token_file,
    write_token_file,
)
from .tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    HubTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    model_tokenizer,
    save_tokenizer,
)

__all__ = [
    "HUB_DATASETS",
    "VALIDATION_FRACTION",
    "BPETokenizer",
    "ByteTokenizer",
    "DataError",
    "HubDataset",
    "HubTokenizer",
    "TokenData",
    "Tokenizer",
    "WindowSampler",
    "build_tokenizer",
    "cache_dir",
    "is_hub_dataset",
    "is_token_file",
    "load_corpus",
    "load_shakespeare",
    "load_token_data",
    "load_tokenizer",
    "model_tokenizer",
    "prepare_token_files",
    "read_text_source",
    "read_token_file",
    "save_tokenizer",
    "sequential_windows",
    "split_train_val",
    "write_token_file",
]
