"""Tokenize a corpus once into memory-mappable token files, so later runs skip text and tokenizer training.

The folder holds train.bin/val.bin (uint16; .u32 past 65,536 tokens), the tokenizer (save_tokenizer) and
meta.json, which records the token counts and the files' size and hash (a run resumed from the folder checks
them). The folder is written whole or not at all: an interrupted prepare leaves an older folder as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import (
    WriteError,
    atomic_folder,
    recover_interrupted_swaps,
    refuse_foreign_files,
    refuse_overlap,
    write_failure,
)
from .errors import DataError
from .identity import digest, file_blocks
from .jsonfile import write_json
from .pipeline import PREPARED_META, PREPARED_SUFFIXES, load_token_data, prepared_file
from .sources import write_token_file
from .tokenizer import ids_dtype, save_tokenizer

# What a prepared folder holds: --overwrite replaces only a folder of these (never a run, or a user's own files).
PREPARED_FILES = (PREPARED_META, *(f"*{suffix}" for suffix in PREPARED_SUFFIXES.values()), "tokenizer*")


def check_output_folder(folder: Path, overwrite: bool = False) -> None:
    """Raise a one-line DataError when `folder` cannot be written: it, or the first of its parents that exists,
    is a file; or it holds something and `overwrite` is off. (Nothing is created: a corpus that fails to load
    leaves no empty folder.)"""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"is inside {existing}, a file"
        raise DataError(f"output folder {folder} {where}: choose another")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise DataError(f"output folder {folder} is not empty: choose another or pass --overwrite to replace it")


def prepare_token_files(
    dataset: str,
    tokenizer: str,
    out_dir: Path,
    *,
    max_train_tokens: int | None = None,
    streaming: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Tokenize `dataset` with `tokenizer` into `out_dir`; return the meta dict also written to meta.json."""
    out_dir = Path(out_dir).expanduser()
    recover_interrupted_swaps(out_dir.parent, out_dir.name)  # a killed prepare may have set the older one aside
    # Before the slow part: a file in the way, a folder in use, or the corpus inside the folder fails at once.
    check_output_folder(out_dir, overwrite)
    if Path(dataset).expanduser().exists():
        refuse_overlap(out_dir, Path(dataset), "--output_dir", "dataset")
    refuse_foreign_files(out_dir, "--output_dir", "ten prepare", PREPARED_FILES)  # --overwrite replaces it whole
    data = load_token_data(dataset, tokenizer, max_train_tokens=max_train_tokens, streaming=streaming)
    dtype = np.dtype(ids_dtype(data.tokenizer.vocab_size)).name
    try:
        with atomic_folder(out_dir) as staging:
            return _write_folder(staging, data, dataset, tokenizer, dtype)
    except OSError as err:  # a full disk: the older folder, if any, stays
        raise WriteError(f"cannot write {out_dir}: {write_failure(err)}") from None


def _write_folder(folder: Path, data: Any, dataset: str, tokenizer: str, dtype: str) -> dict[str, Any]:
    files = [prepared_file(folder, "train", dtype), prepared_file(folder, "val", dtype)]
    for file, tokens in zip(files, (data.train, data.val), strict=True):
        write_token_file(file, tokens)
    save_tokenizer(data.tokenizer, folder)
    size, sha256 = digest(file_blocks(files))  # of the files as written: what a resumed run will read
    meta = {
        "dataset": dataset,
        "tokenizer": tokenizer,
        "vocab_size": data.tokenizer.vocab_size,
        "train_tokens": len(data.train),
        "val_tokens": len(data.val),
        "dtype": dtype,
        "bytes": size,
        "sha256": sha256,
    }
    write_json(folder / PREPARED_META, meta)
    return meta
