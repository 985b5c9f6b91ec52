"""Corpora, tokenizers, batching."""

from .batching import VALIDATION_FRACTION, WindowSampler, sequential_windows, split_train_val
from .corpus import cache_dir, load_shakespeare
from .errors import DataError
from .sources import is_token_file, load_corpus, read_text_source, read_token_file, write_token_file
from .tokenizer import ByteTokenizer

__all__ = [
    "VALIDATION_FRACTION",
    "ByteTokenizer",
    "DataError",
    "WindowSampler",
    "cache_dir",
    "is_token_file",
    "load_corpus",
    "load_shakespeare",
    "read_text_source",
    "read_token_file",
    "sequential_windows",
    "split_train_val",
    "write_token_file",
]
