"""Tokenize a corpus once into memory-mappable token files, so later runs skip text and tokenizer training.

The folder holds train.bin/val.bin (uint16; .u32 past 65,536 tokens), the tokenizer (save_tokenizer) and
meta.json. meta.json is written last, so a folder that has it is complete: an interrupted prepare leaves
no folder that load_token_data(tokenized_dir=...) would accept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .jsonfile import write_json
from .pipeline import PREPARED_META, load_token_data, prepared_file
from .sources import write_token_file
from .tokenizer import ids_dtype, save_tokenizer


def check_output_folder(folder: Path) -> None:
    """Raise a one-line DataError when `folder` cannot be a folder: it, or the first of its parents that
    exists, is a file. (Nothing is created: a corpus that fails to load leaves no empty folder.)"""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"is inside {existing}, a file"
        raise DataError(f"output folder {folder} {where}: choose another")


def prepare_token_files(
    dataset: str,
    tokenizer: str,
    out_dir: Path,
    *,
    max_train_tokens: int | None = None,
    streaming: bool = False,
) -> dict[str, Any]:
    """Tokenize `dataset` with `tokenizer` into `out_dir`; return the meta dict also written to meta.json."""
    out_dir = Path(out_dir).expanduser()
    check_output_folder(out_dir)  # before the slow part: a file in the way fails at once
    data = load_token_data(dataset, tokenizer, max_train_tokens=max_train_tokens, streaming=streaming)
    dtype = np.dtype(ids_dtype(data.tokenizer.vocab_size)).name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PREPARED_META).unlink(missing_ok=True)  # the folder is incomplete until the end
    write_token_file(prepared_file(out_dir, "train", dtype), data.train)
    write_token_file(prepared_file(out_dir, "val", dtype), data.val)
    save_tokenizer(data.tokenizer, out_dir)
    meta = {
        "dataset": dataset,
        "tokenizer": tokenizer,
        "vocab_size": data.tokenizer.vocab_size,
        "train_tokens": len(data.train),
        "val_tokens": len(data.val),
        "dtype": dtype,
    }
    write_json(out_dir / PREPARED_META, meta)
    return meta
