"""Tokenizers: byte-level (the default), trained byte-level BPE, and hub tokenizers, behind one protocol.

Byte-level is the default because it needs no vocabulary file and round-trips any text exactly. BPE and hub
tokenizers come from the optional `hub` extra (`tokenizers`, `transformers`) and are imported only when asked
for, so the core library never depends on them. Every tokenizer saves to plain files (JSON, never pickle)
next to a `tokenizer_meta.json` that says which kind to load back.

Every saved folder also loads with `transformers.AutoTokenizer.from_pretrained(folder)` and gives the same ids:
byte and BPE folders hold a `tokenizer.json` (for byte, written here by hand: a merge-free byte-level BPE whose
id for byte b is b) and a `tokenizer_config.json`; a hub tokenizer's own files sit at the top of the folder
(older folders kept them in `hub_tokenizer/`, which still loads).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..atomic import atomic_open
from ..distribution import install_hint
from .corpus import cache_dir, make_cache_folder
from .errors import DataError
from .jsonfile import read_json, write_json

META_FILE = "tokenizer_meta.json"
BPE_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
HUB_SUBDIR = "hub_tokenizer"  # where hub tokenizers were saved before they moved to the top of the folder
BPE_PREFIX = "bpe:"
BPE_MIN_VOCAB = 257  # the 256 byte tokens plus at least one merge
HUB_EXTRA_HINT = install_hint("hub")
# BPE encodes in pieces of about this many characters (cut only where the cut cannot change the ids), so a
# corpus of gigabytes never becomes one giant Encoding object and the pieces run on all cores.
BPE_ENCODE_CHUNK_CHARS = 1 << 20
# A newline between two non-space characters: the byte-level pre-tokenizer (GPT-2 regex) always ends a
# pre-token before and after such a newline, so cutting right after it leaves every id unchanged.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")

Ids = Sequence[int] | np.ndarray | torch.Tensor


@runtime_checkable
class Tokenizer(Protocol):
    """What the trainer and sampler need: text -> ids, ids -> text, a vocabulary size, and saving."""

    name: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Ids) -> str: ...

    def save(self, directory: Path) -> None: ...


def ids_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """uint16 while every id fits (the nanoGPT token-file format, half the memory), else uint32."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def _as_id_list(ids: Ids) -> list[int]:
    """A flat list of Python ints from a list, numpy array or torch tensor (any shape)."""
    if isinstance(ids, torch.Tensor):
        return ids.detach().cpu().reshape(-1).tolist()
    if isinstance(ids, np.ndarray):
        return ids.reshape(-1).tolist()
    return [int(i) for i in ids]


def _check_ids(ids: list[int], vocab_size: int, name: str) -> None:
    """Refuse ids outside the vocabulary, which the `tokenizers` library would otherwise drop silently."""
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = min(ids) if min(ids) < 0 else max(ids)
        raise DataError(f"tokenizer {name!r} can only decode ids 0..{vocab_size - 1}, got {bad}")


def _one_line(err: BaseException) -> str:
    """The first line of an exception's message (or its type name), for one-line DataErrors."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _write_meta(directory: Path, kind: str, name: str, vocab_size: int) -> None:
    write_json(Path(directory) / META_FILE, {"kind": kind, "name": name, "vocab_size": int(vocab_size)})


def byte_level_alphabet() -> list[str]:
    """GPT-2's bytes-to-unicode map as a list: entry b is the printable character that stands for byte b.

    The `tokenizers` ByteLevel pre-tokenizer and decoder use this same map, so byte 0 is "Ā" (U+0100).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {b: chr(b) for b in printable}
    others = (b for b in range(256) if b not in alphabet)
    alphabet.update((b, chr(256 + n)) for n, b in enumerate(others))
    return [alphabet[b] for b in range(256)]


def byte_tokenizer_json() -> dict[str, Any]:
    """The byte tokenizer in the `tokenizers` library's JSON format: byte b has id b, for any text.

    A BPE model without merges over the 256 ByteLevel characters, behind a ByteLevel pre-tokenizer that neither
    splits (no regex) nor adds a prefix space, so every UTF-8 byte becomes exactly one token; the ByteLevel
    decoder maps the characters back to bytes. No added tokens: the vocabulary stays at 256.
    """
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {char: b for b, char in enumerate(byte_level_alphabet())},
            "merges": [],
        },
    }


def hf_tokenizer_config() -> dict[str, Any]:
    """The `tokenizer_config.json` beside a byte or BPE `tokenizer.json`, for transformers.AutoTokenizer.

    ten's tokenizers have no special tokens, but batched generation needs a pad token and lm-evaluation-harness
    an eos token (first context token of rolling log-likelihood, stop sequence). Both are the token of byte 0
    (NUL, which text practically never holds; "Ā" in the ByteLevel alphabet): an existing entry, so the
    vocabulary (the model's embedding rows) does not grow. split_special_tokens keeps a literal "Ā" in the
    text from matching that special token: it stays two UTF-8 bytes, as in ten's own encode. Nothing is
    added around a text (no bos/eos), and padding goes on the left, where generation wants it.
    """
    nul = byte_level_alphabet()[0]
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": nul,
        "pad_token": nul,
        "padding_side": "left",
        "add_bos_token": False,
        "add_eos_token": False,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    }


class ByteTokenizer:
    """Text <-> UTF-8 bytes, one token per byte (vocab 256)."""

    kind = "byte"
    vocab_size: int = 256
    name: str = "byte"

    def encode(self, text: str) -> np.ndarray:
        """Text -> 1-D uint16 token ids. uint16 (not uint8) so the ids share a dtype with token files."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: Ids) -> str:
        """Token ids -> text. A cut through a multi-byte character (e.g. a sampled prefix) becomes U+FFFD."""
        try:
            raw = bytes(_as_id_list(ids))
        except ValueError as err:
            raise DataError(f"byte tokenizer can only decode ids 0..255: {err}") from None
        return raw.decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        """The meta file, plus the files transformers.AutoTokenizer reads (ten itself needs only the meta)."""
        directory = Path(directory)
        write_json(directory / BPE_FILE, byte_tokenizer_json())
        write_json(directory / HF_CONFIG_FILE, hf_tokenizer_config())
        _write_meta(directory, self.kind, self.name, self.vocab_size)


def _import_tokenizers(spec: str) -> Any:
    try:
        import tokenizers  # noqa: PLC0415  (optional extra)
    except ImportError:
        raise DataError(f"tokenizer {spec!r} needs the optional extra: {HUB_EXTRA_HINT}") from None
    return tokenizers


def _safe_chunks(text: str, size: int = BPE_ENCODE_CHUNK_CHARS) -> Iterator[str]:
    """Pieces of about `size` characters, cut only at newlines where the BPE ids cannot change."""
    start = 0
    while len(text) - start > size:
        cut = _SAFE_CUT.search(text, start + size)
        if cut is None:
            break
        yield text[start : cut.start()]
        start = cut.start()
    yield text[start:]


class BPETokenizer:
    """Byte-level BPE trained with the `tokenizers` library: every text round-trips, no unknown tokens.

    `vocab_size` is the trained vocabulary, which is the requested size unless the training text was too
    small to find that many merges. `name` is the spec it was built from, e.g. "bpe:4096".
    """

    kind = "bpe"

    def __init__(self, backend: Any, name: str) -> None:
        self.backend = backend
        self.name = name
        self.vocab_size = int(backend.get_vocab_size())

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Learn merges on `text` over the 256-byte alphabet (no special tokens: the model sees one stream)."""
        name = f"{BPE_PREFIX}{vocab_size}"
        tk = _import_tokenizers(name)
        if vocab_size < BPE_MIN_VOCAB:
            raise DataError(f"tokenizer {name!r}: the BPE vocabulary must be at least {BPE_MIN_VOCAB}")
        if not text:
            raise DataError(f"tokenizer {name!r} needs non-empty training text")
        backend = tk.Tokenizer(tk.models.BPE())
        backend.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        backend.train_from_iterator(_safe_chunks(text), trainer=trainer)
        return cls(backend, name)

    @classmethod
    def from_file(cls, path: Path, name: str) -> BPETokenizer:
        """Read a `tokenizer.json`; a missing or garbled file is a DataError, not a Rust panic message."""
        tk = _import_tokenizers(name)
        try:
            backend = tk.Tokenizer.from_str(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"no BPE tokenizer file at {path}") from None
        except Exception as err:  # noqa: BLE001  (the tokenizers library raises plain Exception)
            raise DataError(f"cannot read BPE tokenizer {path}: {_one_line(err)}") from None
        return cls(backend, name)

    def encode(self, text: str) -> np.ndarray:
        chunks = list(_safe_chunks(text))
        encodings = self.backend.encode_batch(chunks) if len(chunks) > 1 else [self.backend.encode(chunks[0])]
        dtype = ids_dtype(self.vocab_size)
        parts = [np.asarray(e.ids, dtype=dtype) for e in encodings]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def decode(self, ids: Ids) -> str:
        id_list = _as_id_list(ids)
        _check_ids(id_list, self.vocab_size, self.name)
        return self.backend.decode(id_list)

    def to_json(self) -> str:
        return self.backend.to_str()

    def save_json(self, path: Path) -> None:
        with atomic_open(Path(path)) as handle:
            handle.write(self.to_json().encode("utf-8"))

    def save(self, directory: Path) -> None:
        """`tokenizer.json`, the meta file, and the `tokenizer_config.json` that transformers.AutoTokenizer reads."""
        self.save_json(Path(directory) / BPE_FILE)
        write_json(Path(directory) / HF_CONFIG_FILE, hf_tokenizer_config())
        _write_meta(directory, self.kind, self.name, self.vocab_size)


def _import_auto_tokenizer(name: str) -> Any:
    try:
        from transformers import AutoTokenizer  # noqa: PLC0415  (optional extra)
    except ImportError:
        raise DataError(f"tokenizer {name!r} needs the optional extra: {HUB_EXTRA_HINT}") from None
    return AutoTokenizer


class HubTokenizer:
    """A pretrained tokenizer from the hub through `transformers.AutoTokenizer` (e.g. "gpt2").

    Special tokens are never added: the model trains on one flat stream of text, like the other tokenizers.
    """

    kind = "hub"

    def __init__(self, backend: Any, name: str) -> None:
        self.backend = backend
        self.name = name
        self.vocab_size = int(len(backend))  # len() counts added tokens; .vocab_size does not
        # The stream is encoded in one call, far beyond any model_max_length; silence that warning.
        if hasattr(backend, "model_max_length"):
            backend.model_max_length = 1 << 62

    @classmethod
    def from_pretrained(cls, name: str, source: str | Path | None = None) -> HubTokenizer:
        """Load `source` (a hub name or a saved folder; default `name`) as a one-line DataError on failure."""
        auto = _import_auto_tokenizer(name)
        try:
            backend = auto.from_pretrained(str(source if source is not None else name))
        except Exception as err:  # noqa: BLE001  (network, auth and naming errors all arrive here)
            raise DataError(
                f"cannot load hub tokenizer {name!r}: the hub could not be reached or has no such tokenizer "
                f"({_one_line(err)})"
            ) from None
        return cls(backend, name)

    def encode(self, text: str) -> np.ndarray:
        ids = self.backend.encode(text, add_special_tokens=False)
        return np.asarray(ids, dtype=ids_dtype(self.vocab_size))

    def decode(self, ids: Ids) -> str:
        id_list = _as_id_list(ids)
        _check_ids(id_list, self.vocab_size, self.name)
        return self.backend.decode(id_list, clean_up_tokenization_spaces=False)

    def save(self, directory: Path) -> None:
        """The name, plus the tokenizer's own files (a few MB) at the top of the folder, so it loads again
        without the hub, with ten or with transformers.AutoTokenizer.from_pretrained(directory)."""
        directory = Path(directory)
        try:
            self.backend.save_pretrained(str(directory))
        except Exception as err:  # noqa: BLE001
            raise DataError(f"cannot save hub tokenizer {self.name!r} to {directory}: {_one_line(err)}") from None
        _write_meta(directory, self.kind, self.name, self.vocab_size)


def _hub_source(directory: Path) -> Path | None:
    """Where a saved hub tokenizer's files are: the old subfolder, the folder itself, or none (load by name)."""
    if (directory / HUB_SUBDIR).is_dir():
        return directory / HUB_SUBDIR
    if (directory / HF_CONFIG_FILE).is_file():
        return directory
    return None


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    """Write `tokenizer_meta.json` plus the tokenizer's own files into `directory` (created if needed).

    The folder then loads with load_tokenizer, and also with transformers.AutoTokenizer.from_pretrained.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(directory)


def model_tokenizer(directory: Path, vocab_size: int) -> Tokenizer:
    """The tokenizer of the model folder `directory`, whose vocabulary is `vocab_size`: the one saved there,
    else (a bare `save_pretrained` folder) the byte tokenizer when the vocabulary is the bytes'."""
    directory = Path(directory).expanduser()
    if (directory / META_FILE).is_file():
        return load_tokenizer(directory)
    if vocab_size == ByteTokenizer.vocab_size:
        return ByteTokenizer()
    raise DataError(
        f"{directory} has no tokenizer ({META_FILE}) and a vocabulary of {vocab_size:,}, not the bytes' 256: save "
        "the tokenizer the model was trained with beside it "
        "(temporal_eigenstate_networks.data.save_tokenizer(tokenizer, folder))"
    )


def load_tokenizer(directory: Path) -> Tokenizer:
    """The tokenizer saved in `directory` by save_tokenizer; no meta file or a garbled one is a DataError."""
    directory = Path(directory).expanduser()
    meta = read_json(directory / META_FILE, "tokenizer meta file")
    kind, name, vocab_size = meta.get("kind"), meta.get("name"), meta.get("vocab_size")
    if not isinstance(name, str) or not isinstance(vocab_size, int):
        raise DataError(f"tokenizer meta file {directory / META_FILE} lacks a name or vocab_size")
    tokenizer: Tokenizer
    if kind == ByteTokenizer.kind:
        tokenizer = ByteTokenizer()
    elif kind == BPETokenizer.kind:
        tokenizer = BPETokenizer.from_file(directory / BPE_FILE, name)
    elif kind == HubTokenizer.kind:
        tokenizer = HubTokenizer.from_pretrained(name, _hub_source(directory))
    else:
        raise DataError(f"tokenizer meta file {directory / META_FILE} has unknown kind {kind!r}")
    if tokenizer.vocab_size != vocab_size:
        raise DataError(f"tokenizer in {directory} has {tokenizer.vocab_size} tokens, its meta file says {vocab_size}")
    return tokenizer


def parse_bpe_spec(spec: str) -> int:
    """N from "bpe:N", or a one-line DataError for anything else after the prefix."""
    raw = spec[len(BPE_PREFIX) :]
    if not raw.isdigit() or int(raw) < BPE_MIN_VOCAB:
        raise DataError(f"bad tokenizer {spec!r}: give bpe:N with N an integer >= {BPE_MIN_VOCAB}, e.g. bpe:4096")
    return int(raw)


def text_digest(text: str) -> str:
    """First 16 hex digits of the text's sha256: the cache key that ties a trained BPE to its text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def bpe_cache_path(vocab_size: int, train_text: str, cache: Path | None = None) -> Path:
    root = Path(cache if cache is not None else cache_dir()).expanduser()
    return root / "tokenizers" / f"bpe-{vocab_size}-{text_digest(train_text)}.json"


def cached_bpe(vocab_size: int, train_text: str, cache: Path | None = None) -> BPETokenizer:
    """The BPE for this (size, text) from the cache, else trained once and cached (a bad cache is retrained)."""
    name = f"{BPE_PREFIX}{vocab_size}"
    path = bpe_cache_path(vocab_size, train_text, cache)
    if path.is_file():
        try:
            return BPETokenizer.from_file(path, name)
        except DataError:
            pass  # garbled cache (e.g. disk trouble): train again and overwrite it
    make_cache_folder(path.parent)
    tokenizer = BPETokenizer.train(train_text, vocab_size)
    tokenizer.save_json(path)
    return tokenizer


def build_tokenizer(spec: str = "byte", train_text: str | None = None, cache: Path | None = None) -> Tokenizer:
    """A tokenizer from its spec: "byte", "bpe:N" (trained on train_text, cached), or a hub tokenizer name.

    A folder holding a saved tokenizer (tokenizer_meta.json) also works, so a run can reuse the tokenizer of
    a prepared dataset or checkpoint. `cache` replaces cache_dir() as the root of the BPE cache.
    """
    spec = spec.strip()
    if not spec:
        raise DataError("empty tokenizer spec: give 'byte', 'bpe:N' or a hub tokenizer name")
    if spec == ByteTokenizer.name:
        return ByteTokenizer()
    if spec == "bpe" or spec.startswith(BPE_PREFIX):
        vocab_size = parse_bpe_spec(spec)
        if not train_text:
            raise DataError(f"tokenizer {spec!r} is trained on the corpus, but no training text was given")
        return cached_bpe(vocab_size, train_text, cache)
    if (Path(spec).expanduser() / META_FILE).is_file():
        return load_tokenizer(Path(spec))
    return HubTokenizer.from_pretrained(spec)
