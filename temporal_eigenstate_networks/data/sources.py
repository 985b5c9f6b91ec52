"""Where token streams come from: the built-in corpus, local text, token files, hub datasets.

Every source ends as one flat array of token ids; batching (batching.py) never sees documents.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..atomic import atomic_open
from ..distribution import install_hint
from .corpus import load_shakespeare
from .errors import DataError

BUILTIN_CORPORA = ("shakespeare",)
TEXT_SUFFIXES = (".txt", ".md", ".text")
TOKEN_FILE_DTYPES = {".bin": np.uint16, ".u16": np.uint16, ".u32": np.uint32}  # raw little-endian ids (nanoGPT's)
NUMPY_TOKEN_FILE = ".npy"  # a 1-D integer array saved by numpy.save: its header gives the dtype
TOKEN_FILE_SUFFIXES = (*TOKEN_FILE_DTYPES, NUMPY_TOKEN_FILE)
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


class HubDataset(NamedTuple):
    """Where a short dataset name lives on the hub: dataset path, config (or None), and its text column."""

    path: str
    config: str | None
    column: str


HUB_DATASETS: dict[str, HubDataset] = {
    "wikitext-103": HubDataset("Salesforce/wikitext", "wikitext-103-raw-v1", "text"),
    "tinystories": HubDataset("roneneldan/TinyStories", None, "text"),
    "finewebedu": HubDataset("HuggingFaceFW/fineweb-edu", "sample-10BT", "text"),
    "pg19": HubDataset("deepmind/pg19", None, "text"),
    "openwebtext": HubDataset("Skylion007/openwebtext", None, "text"),
    "imdb": HubDataset("stanfordnlp/imdb", None, "text"),
    "ag_news": HubDataset("fancyzhx/ag_news", None, "text"),
}


def is_hub_dataset(name: str) -> bool:
    """True for the short names of HUB_DATASETS and for hf:<dataset>[:<config>]."""
    return name in HUB_DATASETS or name.startswith(HUB_PREFIX)


def hub_dataset_spec(name: str) -> HubDataset:
    """The (path, config, column) of a short name, or of `hf:<dataset>[:<config>]` (column `text`)."""
    if name in HUB_DATASETS:
        return HUB_DATASETS[name]
    dataset_id, _, config = name[len(HUB_PREFIX) :].partition(":")
    if not dataset_id:
        raise DataError(f"bad hub dataset {name!r}: give hf:<dataset>[:<config>]")
    return HubDataset(dataset_id, config or None, "text")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _join_rows(texts: Iterable[Any], max_chars: int | None) -> str:
    """Rows joined into one stream, reading no row past `max_chars` characters (then cut to exactly that).

    Rows that already end in a newline (wikitext stores one line per row) are joined as they are; other
    rows are documents and get a blank line between them. Empty rows carry nothing and are skipped.
    """
    parts: list[str] = []
    total = 0
    for text in texts:
        if not isinstance(text, str) or not text:
            continue
        if parts and not parts[-1].endswith("\n"):
            parts.append("\n\n")
            total += 2
        parts.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    joined = "".join(parts)
    return joined if max_chars is None else joined[:max_chars]


def _column_texts(data: Any, column: str, label: str, bounded: bool) -> Iterable[Any]:
    """The texts of one column: the whole column at once (fast on Arrow), or row by row when bounded."""
    names = getattr(data, "column_names", None)
    if names is not None and column not in names:
        raise DataError(f"hub dataset {label!r} has no {column!r} column (columns: {', '.join(names)})")
    if not bounded and names is not None:
        return data[column]
    return (row[column] for row in data)


def load_hub_text(name: str, max_chars: int | None = None, streaming: bool = False) -> str:
    """The train split of a hub dataset as text, through the optional `datasets` package.

    With streaming=True only the rows needed for `max_chars` characters are downloaded. Any failure of the
    hub (no network, HF_HUB_OFFLINE, no such dataset, auth) becomes one DataError line naming the dataset.
    """
    spec = hub_dataset_spec(name)
    label = name if name in HUB_DATASETS else spec.path
    try:
        import datasets  # noqa: PLC0415  (optional extra)
    except ImportError:
        raise DataError(f"dataset {name!r} needs the optional extra: {install_hint('hub')}") from None
    where = spec.path + (f" ({spec.config})" if spec.config else "")
    try:
        data = datasets.load_dataset(spec.path, spec.config, split="train", streaming=streaming)
        texts = _column_texts(data, spec.column, label, bounded=streaming or max_chars is not None)
        return _join_rows(texts, max_chars)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001  (network, auth and naming errors all arrive here)
        raise DataError(
            f"cannot load hub dataset {label!r} from {where}: the hub could not be reached or the dataset is "
            f"unavailable ({_first_line(err)})"
        ) from None


def load_corpus(name: str, max_chars: int | None = None, streaming: bool = False) -> str:
    """Text for a dataset name: 'shakespeare', a local text file or folder, a hub dataset name or hf:<id>.

    `max_chars` keeps only the first characters of any source (for hub datasets it also stops the download
    early when streaming). `streaming` only matters for hub datasets.
    """
    if max_chars is not None and max_chars < 1:
        raise DataError(f"max_chars must be positive, got {max_chars}")
    if is_hub_dataset(name):
        return load_hub_text(name, max_chars=max_chars, streaming=streaming)
    if name in BUILTIN_CORPORA:
        text = load_shakespeare()
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise DataError(
                f"unknown dataset {name!r}: give one of {', '.join(BUILTIN_CORPORA)}, a text file or folder, "
                f"a token file ({', '.join(TOKEN_FILE_SUFFIXES)}), a hub dataset ({', '.join(HUB_DATASETS)}) "
                "or hf:<dataset>[:<config>]"
            )
        text = read_text_source(path)
    return text if max_chars is None else text[:max_chars]


def is_token_file(name: str) -> bool:
    return Path(name).suffix in TOKEN_FILE_SUFFIXES


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
    """Memory-map a token file (nanoGPT-style, or a numpy .npy) without reading it; check the ids fit the
    vocabulary."""
    path = Path(path).expanduser()
    if path.suffix == NUMPY_TOKEN_FILE and path.is_file():
        tokens = _read_numpy_tokens(path)
        if vocab_size is not None:
            check_token_ids_fit(tokens, vocab_size, path)
        return tokens
    dtype = TOKEN_FILE_DTYPES.get(path.suffix)
    if dtype is None:
        raise DataError(f"token file {path} must end in one of {', '.join(TOKEN_FILE_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"no such token file: {path}")
    itemsize = np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size == 0 or size % itemsize:
        raise DataError(f"token file {path} has {size} bytes, not a positive multiple of {itemsize}")
    tokens = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
    if vocab_size is not None:
        check_token_ids_fit(tokens, vocab_size, path)
    return tokens


def _read_numpy_tokens(path: Path) -> np.ndarray:
    """A .npy of token ids, memory-mapped; never unpickled (allow_pickle=False), so object arrays are refused."""
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path} is not a numpy array file ({_first_line(err)})") from None
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu" or tokens.size == 0:
        raise DataError(f"{path} holds a {tokens.dtype} array of shape {tokens.shape}: token ids are a non-empty "
                        "1-D integer array")  # fmt: skip
    if tokens.dtype.kind == "i" and int(tokens.min()) < 0:
        raise DataError(f"{path} holds a negative token id ({int(tokens.min())})")
    return tokens


def check_token_ids_fit(tokens: np.ndarray, vocab_size: int, path: Path, block: int = 1 << 24) -> None:
    """Every id below vocab_size, the first bad one named. The whole file: a stray id found only in training
    fails a step there, or the final evaluation. A vectorised max per block reads it as fast as the disk."""
    for start in range(0, len(tokens), block):
        part = tokens[start : start + block]
        if int(part.max()) >= vocab_size:
            position = start + int(np.argmax(part >= vocab_size))
            raise DataError(
                f"token file {path} holds id {int(tokens[position])} at position {position:,}, outside the "
                f"vocabulary of {vocab_size}"
            )
