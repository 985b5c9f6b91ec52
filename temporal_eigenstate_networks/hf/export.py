"""`ten export --hf DIR`: a folder transformers loads without this package.

For TEN (and HTEN, the hybrids), with `trust_remote_code=True`: what every checkpoint holds (config.json,
model.safetensors, the tokenizer's files), `auto_map` in config.json, and the modeling code: configuration_ten.py,
modeling_ten.py and the package modules they import, copied from this installed package at export time with their
imports made flat (hf/standalone.py). It loads, generates and saves where only torch and transformers are
installed; a `save_pretrained` copy of it does too (transformers copies the code along). ten's own commands read
it as a checkpoint.

For Mamba-2, which is transformers' own Mamba2ForCausalLM: that model's own `save_pretrained` folder (model_type
"mamba2") and the tokenizer's files, which load with neither this package nor trust_remote_code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from ..atomic import (
    WriteError,
    atomic_folder,
    recover_interrupted_swaps,
    refuse_foreign_files,
    refuse_overlap,
    write_failure,
)
from ..data import model_tokenizer, save_tokenizer
from ..data.jsonfile import write_json
from ..lm import CONFIG_FILE, LanguageModel
from .standalone import ROOTS, write_code

AUTO_MAP = {
    "AutoConfig": "configuration_ten.TenConfig",
    "AutoModel": "modeling_ten.TenModel",
    "AutoModelForCausalLM": "modeling_ten.TenForCausalLM",
}
GENERATION_CONFIG_FILE = "generation_config.json"
# What an export folder holds (a ten or a Mamba-2 model, its code, a tokenizer's files): --overwrite replaces only
# a folder of these, never a run or a checkpoint (optimizer and trainer state are not among them).
EXPORT_FILES = (CONFIG_FILE, GENERATION_CONFIG_FILE, "model*.safetensors", "model.safetensors.index.json", "*.py",
                "tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt", "README.md")  # fmt: skip


def export_hf(checkpoint: Path, destination: Path, overwrite: bool = False) -> Path:
    """Write the export of `checkpoint` (a checkpoint folder) to `destination`, whole or not at all."""
    from . import require_transformers  # noqa: PLC0415

    require_transformers()
    refuse_overlap(Path(destination), checkpoint, "--hf", "checkpoint")  # --overwrite would replace it
    model = LanguageModel.from_pretrained(checkpoint)
    if model.architecture not in WRITERS:
        raise ValueError(f"{checkpoint} holds ten's {model.architecture!r} baseline; TEN, HTEN and Mamba-2 models "
                         "export")  # fmt: skip
    # A bare save_pretrained folder has no tokenizer files: the byte tokenizer needs none, another is named as missing.
    tokenizer = model_tokenizer(checkpoint, model.config.vocab_size)
    destination = Path(destination).expanduser()
    recover_interrupted_swaps(destination.parent, destination.name)  # first: a killed export may have set it aside
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise ValueError(f"{destination} is not empty: choose another folder or pass --overwrite")
    refuse_foreign_files(destination, "--hf", "ten export", EXPORT_FILES)
    try:
        with atomic_folder(destination) as staging:
            WRITERS[model.architecture](staging, model, tokenizer)
    except (OSError, SafetensorError) as err:  # a full disk: nothing half-written is left
        raise WriteError(f"cannot write {destination}: {write_failure(err)}") from None
    return destination


def _write_ten(folder: Path, model: LanguageModel, tokenizer: Any) -> None:
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    write_json(folder / CONFIG_FILE, {**config, "architectures": ["TenForCausalLM"], "auto_map": AUTO_MAP})
    _write_generation_config(folder, tokenizer)
    write_code(folder)


def _write_mamba2(folder: Path, model: LanguageModel, tokenizer: Any) -> None:
    """The inner Mamba2ForCausalLM's own folder: its config (model_type "mamba2"), weights and generation config."""
    with _no_progress_bars():  # one "Writing model shards" bar, for one file
        model.network.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    # lm-eval reads max_position_embeddings as its context window: the training window, as TEN's export gives it
    # (Mamba-2 has no positions; transformers' Mamba2Config keeps the key and nothing reads it).
    write_json(folder / CONFIG_FILE, {**config, "max_position_embeddings": model.config.max_seq_len})
    _write_generation_config(folder, tokenizer)


WRITERS: dict[str, Callable[[Path, LanguageModel, Any], None]] = {"ten": _write_ten, "mamba2": _write_mamba2}


def _write_generation_config(folder: Path, tokenizer: Any) -> None:
    """generate pads a batch's finished rows with pad_token_id: for the byte and BPE tokenizers, their pad and eos,
    byte 0's token (over what save_pretrained wrote there, if anything)."""
    if getattr(tokenizer, "kind", None) not in ("byte", "bpe"):
        return
    nul = int(tokenizer.encode("\x00")[0])
    path = folder / GENERATION_CONFIG_FILE
    written = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**written, "pad_token_id": nul, "eos_token_id": nul})


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off for the duration, then as they were."""
    from transformers.utils import logging as transformers_logging  # noqa: PLC0415  (optional extra)

    was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            transformers_logging.enable_progress_bar()


def loading_code(destination: Path) -> str:
    """How transformers loads an export: TEN's needs trust_remote_code (its auto_map), Mamba-2's does not."""
    remote = ", trust_remote_code=True" if (destination / f"{ROOTS['hf.configuration']}.py").is_file() else ""
    return f"AutoModelForCausalLM.from_pretrained({str(destination)!r}{remote})"
