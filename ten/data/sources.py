"""Where token streams come from: the built-in corpus, local text, token files, hub datasets.

Every source ends as one flat array of token ids; batching (batching.py) never sees documents.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_open
from .corpus import load_shakespeare
from .errors import DataError

BUILTIN_CORPORA = ("shakespeare",)
TEXT_SUFFIXES = (".txt", ".md", ".text")
TOKEN_FILE_DTYPES = {".bin": np.uint16, ".u16": np.uint16, ".u32": np.uint32}
HUB_PREFIX = "hf:"


def read_text_source(path: Path) -> str:
    """A text file, or every text file of a folder (recursively, sorted by path) joined by blank lines."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"folder {path} holds no text files ({', '.join(TEXT_SUFFIXES)})")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"no such file or folder: {path}")
    parts = []
    for file in files:
        try:
            parts.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise DataError(f"{file} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        except OSError as err:
            raise DataError(f"cannot read {file}: {err.strerror}") from None
    return "\n\n".join(parts)


def load_hub_text(name: str) -> str:
    """`hf:<dataset>[:<config>]`: the train split's `text` column through the optional `datasets` package."""
    try:
        import datasets  # noqa: PLC0415  (optional extra)
    except ImportError:
        raise DataError(f"dataset {name!r} needs the optional extra: pip install 'ten[hub]'") from None
    dataset_id, _, config = name[len(HUB_PREFIX) :].partition(":")
    try:
        data = datasets.load_dataset(dataset_id, config or None, split="train")
    except Exception as err:  # noqa: BLE001  (network, auth and naming errors all arrive here)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot load hub dataset {dataset_id!r}: {first_line}") from None
    if "text" not in data.column_names:
        raise DataError(f"hub dataset {dataset_id!r} has no 'text' column (columns: {data.column_names})")
    return "\n\n".join(data["text"])


def load_corpus(name: str) -> str:
    """Text for a dataset name: 'shakespeare', a local text file or folder, or 'hf:<dataset>[:<config>]'."""
    if name in BUILTIN_CORPORA:
        return load_shakespeare()
    if name.startswith(HUB_PREFIX):
        return load_hub_text(name)
    path = Path(name).expanduser()
    if not path.exists():
        raise DataError(
            f"unknown dataset {name!r}: give one of {', '.join(BUILTIN_CORPORA)}, a text file or folder, "
            f"a token file ({', '.join(TOKEN_FILE_DTYPES)}), or hf:<dataset>"
        )
    return read_text_source(path)


def is_token_file(name: str) -> bool:
    return Path(name).suffix in TOKEN_FILE_DTYPES


def write_token_file(path: Path, tokens: np.ndarray) -> None:
    """Write ids as raw little-endian uint16 (.bin, .u16) or uint32 (.u32), atomically."""
    path = Path(path)
    dtype = TOKEN_FILE_DTYPES.get(path.suffix)
    if dtype is None:
        raise DataError(f"token file {path} must end in one of {', '.join(TOKEN_FILE_DTYPES)}")
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(dtype).max):
        raise DataError(f"token ids {tokens.min()}..{tokens.max()} do not fit {np.dtype(dtype).name} ({path.suffix})")
    with atomic_open(path) as handle:
        handle.write(tokens.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes())


def read_token_file(path: Path, vocab_size: int | None = None) -> np.ndarray:
    """Memory-map a token file (nanoGPT-style) without reading it; check the ids fit the vocabulary."""
    path = Path(path).expanduser()
    dtype = TOKEN_FILE_DTYPES.get(path.suffix)
    if dtype is None:
        raise DataError(f"token file {path} must end in one of {', '.join(TOKEN_FILE_DTYPES)}")
    if not path.is_file():
        raise DataError(f"no such token file: {path}")
    itemsize = np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size == 0 or size % itemsize:
        raise DataError(f"token file {path} has {size} bytes, not a positive multiple of {itemsize}")
    tokens = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
    if vocab_size is not None:
        # A sampled check keeps huge files cheap; the model's own id check catches any stray id later.
        probe = tokens[:: max(1, len(tokens) // 1_000_000)]
        if int(probe.max()) >= vocab_size:
            raise DataError(f"token file {path} holds id {int(probe.max())}, outside the vocabulary of {vocab_size}")
    return tokens
