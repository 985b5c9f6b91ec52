"""Tokenizers (byte, BPE, hub), hub datasets, load_token_data and prepare_token_files.

The network is never touched: `datasets` and `transformers` are replaced by small fakes in sys.modules,
and BPE tests run only where the optional `tokenizers` package is installed.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from temporal_eigenstate_networks.data import (
    HUB_DATASETS,
    BPETokenizer,
    ByteTokenizer,
    DataError,
    HubTokenizer,
    TokenData,
    Tokenizer,
    build_tokenizer,
    load_corpus,
    load_token_data,
    load_tokenizer,
    prepare_token_files,
    save_tokenizer,
    write_token_file,
)
from temporal_eigenstate_networks.data import tokenizer as tokenizer_module
from temporal_eigenstate_networks.data.pipeline import hub_char_budget
from temporal_eigenstate_networks.distribution import install_hint

TRICKY = "Hark!  ünïcödé ✓ 漢字\n\n\tindented  \n'tis 12 34\x00 end \n"
CORPUS = ("The quick brown fox jumps over the lazy dog. " * 40 + "\n") * 10 + TRICKY


def one_line_error(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- fakes of the optional hub packages


class FakeHubBackend:
    """A character tokenizer shaped like a transformers tokenizer: id = code point + offset."""

    def __init__(self, size: int, offset: int) -> None:
        self.size, self.offset = size, offset
        self.model_max_length = 1024

    def __len__(self) -> int:
        return self.size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert add_special_tokens is False
        return [ord(c) + self.offset for c in text]

    def decode(self, ids: list[int], clean_up_tokenization_spaces: bool = True) -> str:
        assert clean_up_tokenization_spaces is False
        return "".join(chr(i - self.offset) for i in ids)

    def save_pretrained(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "fake.json").write_text(json.dumps({"size": self.size, "offset": self.offset}))
        (Path(path) / "tokenizer_config.json").write_text("{}")  # what every save_pretrained writes


def install_fake_transformers(monkeypatch, known: dict[str, tuple[int, int]]) -> list[str]:
    """sys.modules['transformers'] with an AutoTokenizer that knows `known` names and saved folders."""
    calls: list[str] = []

    class AutoTokenizer:
        @staticmethod
        def from_pretrained(source: str) -> FakeHubBackend:
            calls.append(source)
            saved = Path(source) / "fake.json"
            if saved.is_file():
                return FakeHubBackend(**json.loads(saved.read_text()))
            if source in known:
                return FakeHubBackend(*known[source])
            raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {source}.\nCheck your connection.")

    monkeypatch.setitem(sys.modules, "transformers", types.SimpleNamespace(AutoTokenizer=AutoTokenizer))
    return calls


class FakeDataset:
    """Enough of datasets.Dataset: column_names, a whole column by name, and row iteration (counted)."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows
        self.column_names = list(rows[0])
        self.rows_read = 0

    def __getitem__(self, column: str) -> list:
        return [row[column] for row in self.rows]

    def __iter__(self):
        for row in self.rows:
            self.rows_read += 1
            yield row


def install_fake_datasets(monkeypatch, rows: list[dict], error: Exception | None = None) -> list[dict]:
    """sys.modules['datasets'] whose load_dataset returns `rows` (or raises `error`); returns its calls."""
    calls: list[dict] = []

    def load_dataset(path, name=None, split=None, streaming=False):
        calls.append({"path": path, "name": name, "split": split, "streaming": streaming})
        if error is not None:
            raise error
        dataset = FakeDataset(rows)
        calls[-1]["dataset"] = dataset
        return dataset

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


# ---------------------------------------------------------------- byte tokenizer and save/load


def test_byte_tokenizer_saves_and_loads_back(tmp_path):
    tokenizer = ByteTokenizer()
    assert isinstance(tokenizer, Tokenizer)
    save_tokenizer(tokenizer, tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "tokenizer_meta.json").read_text())
    assert meta == {"kind": "byte", "name": "byte", "vocab_size": 256}
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, ByteTokenizer) and loaded.decode(loaded.encode(TRICKY)) == TRICKY


def test_load_tokenizer_refuses_missing_and_garbled_meta(tmp_path):
    with pytest.raises(DataError, match="no tokenizer meta file") as info:
        load_tokenizer(tmp_path)
    one_line_error(info)
    (tmp_path / "tokenizer_meta.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read tokenizer meta file") as info:
        load_tokenizer(tmp_path)
    one_line_error(info)
    (tmp_path / "tokenizer_meta.json").write_text(json.dumps({"kind": "pickle", "name": "x", "vocab_size": 3}))
    with pytest.raises(DataError, match="unknown kind 'pickle'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_meta.json").write_text(json.dumps({"kind": "byte", "name": "byte", "vocab_size": 300}))
    with pytest.raises(DataError, match="has 256 tokens, its meta file says 300"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("spec", ["bpe:x", "bpe:10", "bpe:256", "bpe:", "bpe", "bpe:-300", "  "])
def test_bad_tokenizer_specs_are_one_line_errors(spec):
    with pytest.raises(DataError) as info:
        build_tokenizer(spec, train_text="some text")
    assert "bpe:N" in one_line_error(info)


def test_byte_spec_is_the_default():
    assert isinstance(build_tokenizer("byte"), ByteTokenizer)
    assert isinstance(build_tokenizer(), ByteTokenizer)


# ---------------------------------------------------------------- BPE


def test_bpe_round_trips_saves_and_loads(tmp_path):
    pytest.importorskip("tokenizers")
    tokenizer = BPETokenizer.train(CORPUS, 300)
    assert tokenizer.vocab_size == 300 and tokenizer.name == "bpe:300"
    ids = tokenizer.encode(CORPUS)
    assert ids.dtype == np.uint16 and int(ids.max()) < 300
    assert len(ids) < len(CORPUS.encode()) / 2, "merges must compress the text they were trained on"
    assert tokenizer.decode(ids) == CORPUS
    assert tokenizer.decode(torch.as_tensor(ids.astype(np.int64))) == CORPUS
    assert tokenizer.decode(ids.tolist()) == CORPUS
    with pytest.raises(DataError, match="0..299"):
        tokenizer.decode([300])

    save_tokenizer(tokenizer, tmp_path)
    assert json.loads((tmp_path / "tokenizer_meta.json").read_text())["kind"] == "bpe"
    json.loads((tmp_path / "tokenizer.json").read_text())  # the library's JSON format, not a pickle
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer) and loaded.name == "bpe:300"
    assert np.array_equal(loaded.encode(TRICKY), tokenizer.encode(TRICKY))

    (tmp_path / "tokenizer.json").write_text("garbage")
    with pytest.raises(DataError, match="cannot read BPE tokenizer") as info:
        load_tokenizer(tmp_path)
    one_line_error(info)


def test_bpe_encodes_in_safe_chunks_with_the_same_ids(monkeypatch):
    pytest.importorskip("tokenizers")
    text = "a  \nb\n\n c\t\nd \n e\nf\n'tis 12\n34 ü\n漢\n\n\n" * 50
    tokenizer = BPETokenizer.train(text, 290)
    whole = tokenizer.encode(text)
    monkeypatch.setattr(tokenizer_module, "BPE_ENCODE_CHUNK_CHARS", 7)
    assert len(list(tokenizer_module._safe_chunks(text, 7))) > 100
    assert np.array_equal(tokenizer.encode(text), whole)


def test_bpe_is_cached_by_size_and_text_and_not_retrained(tmp_path, monkeypatch):
    pytest.importorskip("tokenizers")
    monkeypatch.setenv("TEN_CACHE_DIR", str(tmp_path))
    trainings = []
    real_train = BPETokenizer.train.__func__

    def counting_train(cls, text, vocab_size):
        trainings.append(vocab_size)
        return real_train(cls, text, vocab_size)

    monkeypatch.setattr(BPETokenizer, "train", classmethod(counting_train))
    first = build_tokenizer("bpe:300", train_text=CORPUS)
    digest = tokenizer_module.hashlib.sha256(CORPUS.encode()).hexdigest()[:16]
    assert (tmp_path / "tokenizers" / f"bpe-300-{digest}.json").is_file()
    second = build_tokenizer("bpe:300", train_text=CORPUS)
    assert trainings == [300], "the second call must load the cache, not retrain"
    assert np.array_equal(first.encode(CORPUS), second.encode(CORPUS))
    build_tokenizer("bpe:300", train_text=CORPUS + "more")
    build_tokenizer("bpe:290", train_text=CORPUS)
    assert trainings == [300, 300, 290]
    (tmp_path / "tokenizers" / f"bpe-300-{digest}.json").write_text("garbled")
    assert build_tokenizer("bpe:300", train_text=CORPUS).vocab_size == 300
    assert trainings == [300, 300, 290, 300], "a garbled cache is retrained"
    with pytest.raises(DataError, match="no training text"):
        build_tokenizer("bpe:300")


def test_missing_optional_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    hint = re.escape(install_hint("hub"))
    with pytest.raises(DataError, match=r"bpe:300.*needs the optional extra: " + hint) as info:
        build_tokenizer("bpe:300", train_text="text")
    one_line_error(info)
    with pytest.raises(DataError, match=r"'gpt2' needs the optional extra: " + hint):
        build_tokenizer("gpt2")


# ---------------------------------------------------------------- hub tokenizers (fake transformers)


def test_unreachable_hub_tokenizer_is_one_line_naming_it(monkeypatch):
    install_fake_transformers(monkeypatch, known={})
    with pytest.raises(DataError, match="cannot load hub tokenizer 'gpt2': the hub could not be reached") as info:
        build_tokenizer("gpt2")
    assert "couldn't connect" in one_line_error(info)


def test_hub_tokenizer_round_trips_and_reloads_from_its_saved_files(tmp_path, monkeypatch):
    calls = install_fake_transformers(monkeypatch, known={"org/tok": (1000, 0)})
    tokenizer = build_tokenizer("org/tok")
    assert isinstance(tokenizer, HubTokenizer) and tokenizer.vocab_size == 1000 and tokenizer.name == "org/tok"
    assert tokenizer.backend.model_max_length > 10**12, "no 'sequence too long' warning on a whole corpus"
    ids = tokenizer.encode("hello")
    assert ids.dtype == np.uint16 and tokenizer.decode(ids) == "hello"
    save_tokenizer(tokenizer, tmp_path)
    assert json.loads((tmp_path / "tokenizer_meta.json").read_text()) == {
        "kind": "hub",
        "name": "org/tok",
        "vocab_size": 1000,
    }
    loaded = load_tokenizer(tmp_path)
    assert calls[-1] == str(tmp_path), "reload from the saved files (at the top, for AutoTokenizer), not the hub"
    assert isinstance(loaded, HubTokenizer) and loaded.name == "org/tok" and loaded.decode(ids) == "hello"
    assert isinstance(build_tokenizer(str(tmp_path)), HubTokenizer), "a saved folder is a valid spec"


def test_hub_tokenizer_in_an_old_folder_loads_from_its_subfolder_or_by_name(tmp_path, monkeypatch):
    calls = install_fake_transformers(monkeypatch, known={"org/tok": (1000, 0)})
    meta = {"kind": "hub", "name": "org/tok", "vocab_size": 1000}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "tokenizer_meta.json").write_text(json.dumps(meta))
    FakeHubBackend(1000, 0).save_pretrained(str(tmp_path / "old" / "hub_tokenizer"))  # the layout before
    assert load_tokenizer(tmp_path / "old").decode([104, 105]) == "hi"
    assert calls[-1] == str(tmp_path / "old" / "hub_tokenizer")
    (tmp_path / "meta_only").mkdir()
    (tmp_path / "meta_only" / "tokenizer_meta.json").write_text(json.dumps(meta))
    assert load_tokenizer(tmp_path / "meta_only").vocab_size == 1000
    assert calls[-1] == "org/tok", "no saved files: by name"


def test_hub_tokenizer_past_uint16_gives_uint32_ids(monkeypatch):
    install_fake_transformers(monkeypatch, known={"big": (70_000, 66_000)})
    ids = build_tokenizer("big").encode("hi")
    assert ids.dtype == np.uint32 and ids.tolist() == [ord("h") + 66_000, ord("i") + 66_000]


# ---------------------------------------------------------------- hub datasets (fake datasets)


def test_hub_table_has_the_short_names():
    assert HUB_DATASETS["wikitext-103"] == ("Salesforce/wikitext", "wikitext-103-raw-v1", "text")
    assert HUB_DATASETS["tinystories"] == ("roneneldan/TinyStories", None, "text")
    assert set(HUB_DATASETS) == {"wikitext-103", "tinystories", "finewebedu", "pg19", "openwebtext", "imdb", "ag_news"}


def test_hub_dataset_rows_become_one_stream(monkeypatch):
    calls = install_fake_datasets(monkeypatch, [{"text": "Once."}, {"text": ""}, {"text": "Twice."}])
    assert load_corpus("tinystories") == "Once.\n\nTwice."
    assert calls[0] == {
        "path": "roneneldan/TinyStories",
        "name": None,
        "split": "train",
        "streaming": False,
        "dataset": calls[0]["dataset"],
    }
    install_fake_datasets(monkeypatch, [{"text": " = Title = \n"}, {"text": ""}, {"text": " Body .\n"}])
    assert load_corpus("wikitext-103") == " = Title = \n Body .\n", "line rows are joined as they are"
    calls = install_fake_datasets(monkeypatch, [{"text": "a"}, {"text": "b"}])
    assert load_corpus("hf:user/set:cfg") == "a\n\nb"
    assert (calls[0]["path"], calls[0]["name"]) == ("user/set", "cfg")


def test_streaming_stops_reading_rows_at_max_chars(monkeypatch):
    rows = [{"text": f"row {i:03d}"} for i in range(500)]
    calls = install_fake_datasets(monkeypatch, rows)
    text = load_corpus("finewebedu", max_chars=25, streaming=True)
    assert text == "row 000\n\nrow 001\n\nrow 002"[:25] and len(text) == 25
    assert calls[0]["streaming"] is True and calls[0]["name"] == "sample-10BT"
    assert calls[0]["dataset"].rows_read == 3


def test_hub_dataset_errors_are_one_line_naming_the_dataset(monkeypatch):
    install_fake_datasets(monkeypatch, [], error=ConnectionError("Couldn't reach 'x' on the Hub\n(details)"))
    with pytest.raises(DataError, match="cannot load hub dataset 'pg19' from deepmind/pg19") as info:
        load_corpus("pg19")
    assert "could not be reached" in one_line_error(info)
    install_fake_datasets(monkeypatch, [{"label": 1}])
    with pytest.raises(DataError, match="'imdb' has no 'text' column"):
        load_corpus("imdb")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"'ag_news' needs the optional extra: " + re.escape(install_hint("hub"))):
        load_corpus("ag_news")


def test_max_chars_truncates_local_text(tmp_path):
    (tmp_path / "a.txt").write_text("abcdefghij")
    assert load_corpus(str(tmp_path / "a.txt"), max_chars=4) == "abcd"
    with pytest.raises(DataError, match="max_chars must be positive"):
        load_corpus(str(tmp_path / "a.txt"), max_chars=0)


# ---------------------------------------------------------------- load_token_data


def test_text_file_gives_a_ninety_ten_byte_split(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("x" * 995 + "✓")  # 995 + 3 bytes
    data = load_token_data(str(path))
    assert isinstance(data, TokenData) and isinstance(data.tokenizer, ByteTokenizer)
    assert (len(data.train), len(data.val)) == (898, 100)
    assert data.tokenizer.decode(np.concatenate([data.train, data.val])) == "x" * 995 + "✓"
    assert data.description == f"{path}: 996 chars -> 898 train / 100 val tokens (byte)"
    capped = load_token_data(str(path), max_train_tokens=50)
    assert len(capped.train) == 50 and np.array_equal(capped.val, data.val), "validation stays whole"
    assert "50 (of 898) train" in capped.description


def test_empty_tiny_and_binary_text_are_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_token_data(str(tmp_path / "empty.txt"))
    (tmp_path / "one.txt").write_text("a")
    with pytest.raises(DataError, match="gives 1 token"):
        load_token_data(str(tmp_path / "one.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\xff\x00")
    with pytest.raises(DataError, match="not UTF-8"):
        load_token_data(str(tmp_path / "bin.txt"))
    with pytest.raises(DataError, match="max_train_tokens must be positive"):
        load_token_data(str(tmp_path / "one.txt"), max_train_tokens=0)


def test_bpe_is_trained_on_the_first_ninety_percent(tmp_path, monkeypatch):
    pytest.importorskip("tokenizers")
    monkeypatch.setenv("TEN_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "c.txt").write_text(CORPUS)
    data = load_token_data(str(tmp_path / "c.txt"), "bpe:300")
    assert isinstance(data.tokenizer, BPETokenizer) and data.description.endswith("(bpe:300)")
    train_text = CORPUS[: int(len(CORPUS) * 0.9)]
    assert tokenizer_module.bpe_cache_path(300, train_text).is_file()
    assert data.tokenizer.decode(np.concatenate([data.train, data.val])) == CORPUS


def test_hub_dataset_with_max_train_tokens_downloads_only_a_prefix(monkeypatch):
    calls = install_fake_datasets(monkeypatch, [{"text": "abcdefghij" * 3}] * 1000)
    data = load_token_data("tinystories", max_train_tokens=100, streaming=True)
    budget = hub_char_budget(100, "byte")
    assert budget == 134 and hub_char_budget(100, "bpe:300") == 534
    assert len(data.train) == 100 and len(data.val) == budget - int(budget * 0.9)
    assert calls[0]["dataset"].rows_read == 5 and "(prefix)" in data.description


def test_token_file_is_memory_mapped_and_split(tmp_path):
    path = tmp_path / "ids.bin"
    write_token_file(path, np.arange(200) % 256)
    data = load_token_data(str(path))
    assert isinstance(data.train, np.memmap) and (len(data.train), len(data.val)) == (180, 20)
    assert np.array_equal(data.val, np.arange(180, 200))
    write_token_file(path, np.array([1, 2, 300]))
    with pytest.raises(DataError, match="outside the vocabulary of 256"):
        load_token_data(str(path))
    with pytest.raises(DataError, match="give tokenized_dir") as info:
        load_token_data(str(path), "bpe:300")
    one_line_error(info)


# ---------------------------------------------------------------- prepare_token_files


def test_prepared_byte_files_round_trip(tmp_path):
    (tmp_path / "c.txt").write_text(CORPUS)
    out = tmp_path / "prepared"
    meta = prepare_token_files(str(tmp_path / "c.txt"), "byte", out)
    direct = load_token_data(str(tmp_path / "c.txt"))
    assert {k: v for k, v in meta.items() if k not in ("bytes", "sha256")} == {
        "dataset": str(tmp_path / "c.txt"),
        "tokenizer": "byte",
        "vocab_size": 256,
        "train_tokens": len(direct.train),
        "val_tokens": len(direct.val),
        "dtype": "uint16",
    }
    assert json.loads((out / "meta.json").read_text()) == meta
    loaded = load_token_data("ignored", tokenized_dir=out)
    assert isinstance(loaded.train, np.memmap) and isinstance(loaded.tokenizer, ByteTokenizer)
    assert np.array_equal(loaded.train, direct.train) and np.array_equal(loaded.val, direct.val)
    assert "prepared in" in loaded.description
    assert len(load_token_data("ignored", tokenized_dir=out, max_train_tokens=7).train) == 7
    via_file = load_token_data(str(out / "train.bin"))  # a token file beside its tokenizer
    assert isinstance(via_file.tokenizer, ByteTokenizer)
    with pytest.raises(DataError, match="tokenized with 'byte', not 'bpe:300'"):
        load_token_data("ignored", "bpe:300", tokenized_dir=out)
    (out / "meta.json").unlink()
    with pytest.raises(DataError, match="no prepared-data meta file"):
        load_token_data("ignored", tokenized_dir=out)


def test_prepared_bpe_files_round_trip_without_retraining(tmp_path, monkeypatch):
    pytest.importorskip("tokenizers")
    monkeypatch.setenv("TEN_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "c.txt").write_text(CORPUS)
    out = tmp_path / "prepared"
    meta = prepare_token_files(str(tmp_path / "c.txt"), "bpe:300", out, max_train_tokens=100)
    assert meta["train_tokens"] == 100 and meta["dtype"] == "uint16" and 256 < meta["vocab_size"] <= 300

    def no_training(*args, **kwargs):
        raise AssertionError("a prepared folder must not retrain its tokenizer")

    monkeypatch.setattr(BPETokenizer, "train", no_training)
    loaded = load_token_data("ignored", "bpe:300", tokenized_dir=out)
    assert isinstance(loaded.tokenizer, BPETokenizer) and len(loaded.train) == 100
    assert loaded.tokenizer.vocab_size == meta["vocab_size"], "a small text can stop short of N merges"
    assert loaded.tokenizer.decode(loaded.val) == CORPUS[-len(loaded.tokenizer.decode(loaded.val)) :]
    via_file = load_token_data(str(out / "val.bin"), "bpe:300")
    assert isinstance(via_file.tokenizer, BPETokenizer)


def test_prepared_large_vocab_uses_u32_files(tmp_path, monkeypatch):
    install_fake_transformers(monkeypatch, known={"big": (70_000, 66_000)})
    (tmp_path / "c.txt").write_text("hello world, " * 20)
    out = tmp_path / "prepared"
    meta = prepare_token_files(str(tmp_path / "c.txt"), "big", out)
    assert meta["dtype"] == "uint32" and (out / "train.u32").is_file() and not (out / "train.bin").exists()
    loaded = load_token_data("ignored", tokenized_dir=out)
    assert loaded.train.dtype == np.dtype("<u4") and int(loaded.train.max()) >= 65_536
    assert loaded.tokenizer.decode(loaded.train[:5]) == "hello"
