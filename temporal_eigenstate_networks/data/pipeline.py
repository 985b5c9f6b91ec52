"""One call from a dataset name and a tokenizer spec to train/validation token streams (design section 7).

Three routes, cheapest first: a folder written by prepare_token_files (memory-mapped, no text, no
tokenizer training), a token file (memory-mapped), or text (built-in, local or hub) tokenized here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .batching import VALIDATION_FRACTION, split_train_val
from .errors import DataError
from .identity import DataIdentity, files_identity, text_identity
from .jsonfile import read_json
from .sources import BUILTIN_CORPORA, is_hub_dataset, is_token_file, load_corpus, read_token_file
from .tokenizer import META_FILE, ByteTokenizer, Tokenizer, build_tokenizer, load_tokenizer

PREPARED_META = "meta.json"
PREPARED_SUFFIXES = {"uint16": ".bin", "uint32": ".u32"}
# Characters per token when sizing a hub download for max_train_tokens: a byte is at most one character;
# subword tokenizers average about 4 characters of English per token. The margin covers the guess being off.
CHARS_PER_TOKEN = {"byte": 1.0, "other": 4.0}
DOWNLOAD_MARGIN = 1.2


@dataclass
class TokenData:
    """Token streams ready for WindowSampler, with the tokenizer that made them."""

    train: np.ndarray  # 1-D token ids (may be np.memmap)
    val: np.ndarray
    tokenizer: Tokenizer
    description: str  # one line, for the log
    identity: DataIdentity  # what was read, by content: a run records it and a resumed run checks it


def prepared_file(directory: Path, split: str, dtype: str) -> Path:
    """`train.bin` / `val.bin` for uint16 ids, `.u32` for uint32 (the suffix tells read_token_file the dtype)."""
    if dtype not in PREPARED_SUFFIXES:
        raise DataError(f"prepared data in {directory}: unknown dtype {dtype!r} (expected uint16 or uint32)")
    return Path(directory) / f"{split}{PREPARED_SUFFIXES[dtype]}"


def hub_char_budget(max_train_tokens: int, tokenizer: str) -> int:
    """How many characters of a hub dataset to fetch so train holds ~max_train_tokens after the 90/10 split."""
    per_token = CHARS_PER_TOKEN["byte" if tokenizer == "byte" else "other"]
    return math.ceil(max_train_tokens * DOWNLOAD_MARGIN / (1.0 - VALIDATION_FRACTION) * per_token)


def _cap_train(train: np.ndarray, max_train_tokens: int | None) -> np.ndarray:
    return train if max_train_tokens is None else train[:max_train_tokens]


def _counts(train: np.ndarray, val: np.ndarray, full_train: int) -> str:
    """'N train / M val tokens', noting the full train size when max_train_tokens cut it."""
    of = f" (of {full_train:,})" if full_train != len(train) else ""
    return f"{len(train):,}{of} train / {len(val):,} val tokens"


def _check_tokenizer_matches(requested: str, saved: str, where: Path) -> None:
    """Refuse an explicit tokenizer that contradicts the saved one.

    "byte" is also the default of load_token_data, so it cannot be told apart from 'not given' and is let
    through; the saved tokenizer is used either way.
    """
    if requested not in ("byte", saved):
        raise DataError(f"{where} was tokenized with {saved!r}, not {requested!r}")


def _load_prepared(directory: Path, tokenizer: str, max_train_tokens: int | None) -> TokenData:
    """A folder from prepare_token_files: memory-mapped ids plus the saved tokenizer, no text at all."""
    given, directory = str(directory), Path(directory).expanduser()
    meta: dict[str, Any] = read_json(directory / PREPARED_META, "prepared-data meta file")
    _check_tokenizer_matches(tokenizer, str(meta.get("tokenizer")), directory)
    tok = load_tokenizer(directory)
    dtype = str(meta.get("dtype"))
    files = [prepared_file(directory, split, dtype) for split in ("train", "val")]
    for split, file in zip(("train", "val"), files, strict=True):
        _check_prepared_size(file, meta.get(f"{split}_tokens"), dtype)
    train, val = (read_token_file(file, vocab_size=tok.vocab_size) for file in files)
    capped = _cap_train(train, max_train_tokens)
    where = f"{meta.get('dataset', '?')} (prepared in {directory})"
    identity = prepared_identity(given, directory, meta, files)
    return TokenData(capped, val, tok, f"{where}: {_counts(capped, val, len(train))} ({tok.name})", identity)


def _check_prepared_size(file: Path, tokens: Any, dtype: str) -> None:
    """A token file must hold the count meta.json gives: a file cut short (by an even number of bytes) would
    otherwise train on less, or other, data without a word."""
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        raise DataError(f"{file.parent / PREPARED_META} gives no token count for {file.name}: prepare it again")
    expected = tokens * np.dtype(dtype).itemsize
    actual = file.stat().st_size if file.is_file() else None
    if actual != expected:
        has = "is missing" if actual is None else f"has {actual:,} bytes"
        raise DataError(f"{file} {has}, but {PREPARED_META} gives {tokens:,} {dtype} tokens ({expected:,} bytes): "
                        "the folder was changed after `ten prepare`; prepare it again")  # fmt: skip


def prepared_identity(given: str, directory: Path, meta: dict[str, Any], files: list[Path]) -> DataIdentity:
    """The identity `ten prepare` recorded in meta.json; a folder prepared before it did is hashed now."""
    size, sha = meta.get("bytes"), meta.get("sha256")
    if isinstance(size, int) and isinstance(sha, str):
        return DataIdentity(given, "prepared", str(directory.resolve()), size, sha)
    return files_identity(given, "prepared", files, directory)


def _token_file_tokenizer(path: Path, spec: str) -> Tokenizer:
    """The tokenizer of a token file: the one saved beside it, else byte, else a hub tokenizer by name.

    A BPE cannot be rebuilt without its training text, so a BPE token file needs its saved tokenizer.
    """
    if (path.parent / META_FILE).is_file():
        tok = load_tokenizer(path.parent)
        _check_tokenizer_matches(spec, tok.name, path)
        return tok
    if spec == "byte":
        return ByteTokenizer()
    if spec == "bpe" or spec.startswith("bpe:"):
        raise DataError(
            f"token file {path} with tokenizer {spec!r}: give tokenized_dir, the folder prepared with that "
            "tokenizer (a BPE cannot be rebuilt without its training text)"
        )
    return build_tokenizer(spec)


def _load_token_file(given: str, spec: str, max_train_tokens: int | None) -> TokenData:
    path = Path(given).expanduser()
    tok = _token_file_tokenizer(path, spec)
    tokens = read_token_file(path, vocab_size=tok.vocab_size)
    if len(tokens) < 2:
        raise DataError(f"token file {path} holds {len(tokens)} token, need at least 2 for train and validation")
    train, val = split_train_val(tokens)
    capped = _cap_train(train, max_train_tokens)
    description = f"{path}: token file -> {_counts(capped, val, len(train))} ({tok.name})"
    return TokenData(capped, val, tok, description, files_identity(given, "tokens", [path], path))


def _load_text(dataset: str, spec: str, max_train_tokens: int | None, streaming: bool, cache: Path | None) -> TokenData:
    """Text -> tokenizer (trained on the first 90% of the text, if it is trained) -> ids -> 90/10 split.

    Only hub datasets are cut to a prefix for max_train_tokens (to avoid downloading everything); a local
    corpus is read whole so its validation split stays the same whatever max_train_tokens is.
    """
    hub = is_hub_dataset(dataset)
    max_chars = hub_char_budget(max_train_tokens, spec) if hub and max_train_tokens is not None else None
    text = load_corpus(dataset, max_chars=max_chars, streaming=streaming)
    if not text:
        raise DataError(f"dataset {dataset!r} is empty")
    train_text = text[: int(len(text) * (1.0 - VALIDATION_FRACTION))]
    tok = build_tokenizer(spec, train_text=train_text or text, cache=cache)
    ids = tok.encode(text)
    if len(ids) < 2:
        raise DataError(f"dataset {dataset!r} gives {len(ids)} token, need at least 2 for train and validation")
    train, val = split_train_val(ids)
    capped = _cap_train(train, max_train_tokens)
    prefix = " (prefix)" if max_chars is not None else ""
    counts = _counts(capped, val, len(train))
    description = f"{dataset}: {len(text):,} chars{prefix} -> {counts} ({tok.name})"
    return TokenData(capped, val, tok, description, _text_identity(dataset, text))


def _text_identity(dataset: str, text: str) -> DataIdentity:
    if is_hub_dataset(dataset):
        return text_identity(dataset, "hub", text)
    if dataset in BUILTIN_CORPORA:
        return text_identity(dataset, "builtin", text)
    return text_identity(dataset, "text", text, Path(dataset).expanduser())


def load_token_data(
    dataset: str,
    tokenizer: str = "byte",
    *,
    max_train_tokens: int | None = None,
    streaming: bool = False,
    tokenized_dir: Path | None = None,
    cache: Path | None = None,
) -> TokenData:
    """Train and validation token streams for `dataset`, with the tokenizer that produced them.

    `tokenized_dir` (a folder from prepare_token_files) wins over `dataset`: its ids are memory-mapped and
    its tokenizer loaded, with no text read. A `dataset` ending in .bin/.u16/.u32 is a token file, split
    90/10. Anything else is text. `max_train_tokens` keeps the first tokens of train; validation stays
    whole (for hub datasets it comes from the downloaded prefix). `cache` overrides cache_dir() for BPE.
    """
    if max_train_tokens is not None and max_train_tokens < 1:
        raise DataError(f"max_train_tokens must be positive, got {max_train_tokens}")
    if tokenized_dir is not None:
        return _load_prepared(Path(tokenized_dir), tokenizer, max_train_tokens)
    if is_token_file(dataset):
        return _load_token_file(dataset, tokenizer, max_train_tokens)
    return _load_text(dataset, tokenizer, max_train_tokens, streaming, cache)
