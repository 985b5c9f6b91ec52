"""Every folder save_tokenizer writes loads with transformers.AutoTokenizer and gives ten's ids.

Byte and BPE folders are checked against ten's own encode/decode and against the `tokenizers` library reading
the same tokenizer.json; the hub kind with a small local transformers tokenizer. Nothing reaches the network.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported: set it before transformers
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from temporal_eigenstate_networks.data import BPETokenizer, ByteTokenizer, HubTokenizer, load_tokenizer, save_tokenizer  # noqa: E402
from temporal_eigenstate_networks.data.tokenizer import byte_level_alphabet  # noqa: E402

NUL_TOKEN = "\u0100"  # "Ā": byte 0 in the ByteLevel alphabet, ten's eos and pad token for transformers
FIXED_TEXTS = [
    "",
    "a",
    "Hello, world!",
    "  leading and trailing spaces  ",
    " ",
    "\n",
    "line one\nline two\r\n\n\ttabbed\n",
    "ünïcödé ✓ 漢字 Ελληνικά русский",
    "emoji 🎉👍🏽 and a family 👨‍👩‍👧",
    "a\x00b \x00",
    "Ā literally, Ā, ĀĀ and Ģ",  # the eos token's own text must stay ordinary bytes
    "'tis 12 34 don't   x",
    "\ufffd replacement char and \U0010ffff",
]
TRAIN_TEXT = ("The quick brown fox jumps over the lazy dog. " * 40 + "\n") * 5 + "".join(FIXED_TEXTS) * 3


def random_texts(count: int = 60) -> list[str]:
    """Random bytes decoded as UTF-8 (with U+FFFD where invalid) and random code points."""
    rng = random.Random(0)
    texts = [
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))).decode("utf-8", "replace") for _ in range(count)
    ]
    for _ in range(count):
        points = (
            rng.choice([rng.randrange(32, 127), rng.randrange(0xD800), rng.randrange(0xE000, 0x110000)])
            for _ in range(30)
        )
        texts.append("".join(chr(p) for p in points))
    return texts


TEXTS = FIXED_TEXTS + random_texts()


def auto_tokenizer(folder):
    return transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(TRAIN_TEXT, 300)


@pytest.fixture(params=["byte", "bpe"])
def saved(request, tmp_path, bpe):
    """(ten tokenizer, folder it was saved to) for each kind with a tokenizer.json."""
    tokenizer = ByteTokenizer() if request.param == "byte" else bpe
    save_tokenizer(tokenizer, tmp_path / request.param)
    return tokenizer, tmp_path / request.param


def test_byte_level_alphabet_is_the_tokenizers_librarys():
    alphabet = byte_level_alphabet()
    assert len(set(alphabet)) == 256 and alphabet[0] == NUL_TOKEN and alphabet[ord("a")] == "a"
    assert set(alphabet) == set(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    pre = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    assert [pre.pre_tokenize_str(bytes([b]).decode("latin-1"))[0][0] for b in range(128)] == alphabet[:128]


def test_auto_tokenizer_gives_ten_ids_and_text(saved):
    tokenizer, folder = saved
    raw = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok = auto_tokenizer(folder)
    assert len(tok) == tokenizer.vocab_size == raw.get_vocab_size()
    for text in TEXTS:
        ids = tokenizer.encode(text).tolist()
        assert raw.encode(text).ids == ids, text
        assert tok.encode(text) == ids, text
        assert tok(text)["input_ids"] == ids, text
        assert tok.decode(ids) == tokenizer.decode(ids) == text, text
        assert raw.decode(ids) == text, text
    assert tok(TEXTS)["input_ids"] == [tokenizer.encode(t).tolist() for t in TEXTS]


def test_byte_ids_are_the_utf8_bytes(tmp_path):
    save_tokenizer(ByteTokenizer(), tmp_path)
    tok = auto_tokenizer(tmp_path)
    for text in TEXTS:
        assert tok.encode(text) == list(text.encode("utf-8"))
    assert len(tok) == tok.vocab_size == 256, "the model's embedding has exactly 256 rows"


def test_eos_and_pad_are_the_nul_byte_token(saved):
    tokenizer, folder = saved
    tok = auto_tokenizer(folder)
    nul_id = tokenizer.encode("\x00").tolist()
    assert len(nul_id) == 1
    assert tok.eos_token == tok.pad_token == NUL_TOKEN
    assert tok.eos_token_id == tok.pad_token_id == nul_id[0] == tok.convert_tokens_to_ids(NUL_TOKEN)
    if isinstance(tokenizer, ByteTokenizer):
        assert nul_id == [0]
    else:
        assert nul_id[0] == tokenizer.backend.token_to_id(NUL_TOKEN)
    assert tok.bos_token is None and tok.padding_side == "left"
    assert len(tok) == tokenizer.vocab_size, "eos and pad are existing entries: the vocabulary does not grow"
    assert tok.decode(nul_id) == "\x00" and tok.decode(nul_id, skip_special_tokens=True) == ""


def test_batches_pad_on_the_left_with_the_pad_id(saved):
    tokenizer, folder = saved
    tok = auto_tokenizer(folder)
    texts = ["ab", "abcd"] if isinstance(tokenizer, ByteTokenizer) else ["ab", "abcd ✓ 漢字"]
    batch = tok(texts, padding=True)
    short, long = (tokenizer.encode(t).tolist() for t in texts)
    pads = len(long) - len(short)
    assert pads > 0
    assert batch["input_ids"] == [[tok.pad_token_id] * pads + short, long]
    assert batch["attention_mask"] == [[0] * pads + [1] * len(short), [1] * len(long)]
    if isinstance(tokenizer, ByteTokenizer):
        assert batch["input_ids"][0] == [0, 0, 97, 98]


def test_folder_resaved_by_transformers_keeps_the_ids(saved, tmp_path):
    tokenizer, folder = saved
    auto_tokenizer(folder).save_pretrained(str(tmp_path / "resaved"))
    tok = auto_tokenizer(tmp_path / "resaved")
    assert len(tok) == tokenizer.vocab_size and tok.eos_token_id == tok.pad_token_id
    for text in FIXED_TEXTS:
        assert tok.encode(text) == tokenizer.encode(text).tolist(), text


def test_a_model_config_beside_the_tokenizer_does_not_change_it(saved):
    """Checkpoint folders also hold the model's config.json, of a model type transformers does not know."""
    tokenizer, folder = saved
    (folder / "config.json").write_text(json.dumps({"model_type": "ten", "architectures": ["TenForCausalLM"]}))
    tok = auto_tokenizer(folder)
    assert tok.encode("Ā é\x00") == tokenizer.encode("Ā é\x00").tolist()


def test_saved_files_are_json_and_ten_loads_them_back(saved):
    tokenizer, folder = saved
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["add_bos_token"] is False and config["add_eos_token"] is False
    json.loads((folder / "tokenizer.json").read_text())
    loaded = load_tokenizer(folder)
    assert type(loaded) is type(tokenizer) and loaded.vocab_size == tokenizer.vocab_size
    assert np.array_equal(loaded.encode(TRAIN_TEXT), tokenizer.encode(TRAIN_TEXT))


def test_old_folders_still_load(tmp_path, bpe):
    (tmp_path / "byte").mkdir()
    (tmp_path / "byte" / "tokenizer_meta.json").write_text(
        json.dumps({"kind": "byte", "name": "byte", "vocab_size": 256})
    )
    assert isinstance(load_tokenizer(tmp_path / "byte"), ByteTokenizer)
    save_tokenizer(bpe, tmp_path / "bpe")
    (tmp_path / "bpe" / "tokenizer_config.json").unlink()  # an old BPE folder: tokenizer.json and the meta only
    loaded = load_tokenizer(tmp_path / "bpe")
    assert isinstance(loaded, BPETokenizer) and loaded.encode("fox").tolist() == bpe.encode("fox").tolist()


def test_hub_tokenizer_folder_loads_with_auto_tokenizer(tmp_path, bpe):
    backend = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe.backend)
    hub = HubTokenizer(backend, "local/tiny")
    save_tokenizer(hub, tmp_path / "new")
    tok = auto_tokenizer(tmp_path / "new")
    loaded = load_tokenizer(tmp_path / "new")
    assert isinstance(loaded, HubTokenizer) and loaded.name == "local/tiny" and len(tok) == hub.vocab_size
    for text in FIXED_TEXTS:
        ids = hub.encode(text).tolist()
        assert tok.encode(text, add_special_tokens=False) == loaded.encode(text).tolist() == ids, text
        assert loaded.decode(ids) == text

    # An old folder kept the files in hub_tokenizer/: ten still reads them from there.
    (tmp_path / "old").mkdir()
    backend.save_pretrained(str(tmp_path / "old" / "hub_tokenizer"))
    (tmp_path / "old" / "tokenizer_meta.json").write_text((tmp_path / "new" / "tokenizer_meta.json").read_text())
    old = load_tokenizer(tmp_path / "old")
    assert isinstance(old, HubTokenizer) and old.encode("the fox").tolist() == hub.encode("the fox").tolist()
