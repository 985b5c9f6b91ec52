"""`ten export --hf DIR`: a folder transformers loads on its own, with `trust_remote_code=True`.

It holds what every checkpoint holds (config.json, model.safetensors, the tokenizer's files) plus `auto_map`
in config.json and two small modules that import ten's classes. They import, not copy: the folder needs
this package (`temporal-eigenstate-networks`) where it is loaded, and there is one network, ten's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from ..atomic import WriteError, atomic_folder, recover_interrupted_swaps, write_failure
from ..data import load_tokenizer, save_tokenizer
from ..data.jsonfile import write_json
from ..distribution import DISTRIBUTION, install_hint
from ..lm import CONFIG_FILE, LanguageModel

CODE_FILES = {
    "configuration_ten.py": "TenConfig",
    "modeling_ten.py": "TenForCausalLM",
}
AUTO_MAP = {
    "AutoConfig": "configuration_ten.TenConfig",
    "AutoModelForCausalLM": "modeling_ten.TenForCausalLM",
}
GENERATION_CONFIG_FILE = "generation_config.json"
PACKAGE = __name__.split(".")[0]  # the import name, temporal_eigenstate_networks


def _code(class_name: str) -> str:
    module = "configuration" if class_name == "TenConfig" else "modeling"
    return (
        f'"""{class_name} for transformers\' trust_remote_code: the code is the installed package '
        f'{DISTRIBUTION!r} (import name {PACKAGE}), not a copy."""\n\n'
        "try:\n"
        f"    from {PACKAGE}.hf.{module} import {class_name}\n"
        "except ModuleNotFoundError as error:\n"
        f'    raise ImportError("this model\'s code is the package {DISTRIBUTION!r}: "\n'
        f'                      "{install_hint("hf")}") from error\n\n'
        f'__all__ = ["{class_name}"]\n'
    )


def export_hf(checkpoint: Path, destination: Path, overwrite: bool = False) -> Path:
    """Write the export of `checkpoint` (a checkpoint folder) to `destination`, whole or not at all."""
    from . import require_transformers  # noqa: PLC0415

    require_transformers()
    model = LanguageModel.from_pretrained(checkpoint)
    if model.architecture != "ten":
        raise ValueError(f"{checkpoint} holds ten's {model.architecture!r} baseline; only TEN and HTEN models export")
    tokenizer = load_tokenizer(checkpoint)
    destination = Path(destination).expanduser()
    recover_interrupted_swaps(destination.parent, destination.name)  # first: a killed export may have set it aside
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise ValueError(f"{destination} is not empty: choose another folder or pass --overwrite")
    try:
        with atomic_folder(destination) as staging:
            _write_export(staging, model, tokenizer)
    except (OSError, SafetensorError) as err:  # a full disk: nothing half-written is left
        raise WriteError(f"cannot write {destination}: {write_failure(err)}") from None
    return destination


def _write_export(folder: Path, model: LanguageModel, tokenizer: Any) -> None:
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    write_json(folder / CONFIG_FILE, {**config, "architectures": ["TenForCausalLM"], "auto_map": AUTO_MAP})
    if getattr(tokenizer, "kind", None) in ("byte", "bpe"):
        # generate pads a batch's finished rows with pad_token_id: the tokenizer's pad and eos, byte 0's token.
        nul = int(tokenizer.encode("\x00")[0])
        write_json(folder / GENERATION_CONFIG_FILE, {"pad_token_id": nul, "eos_token_id": nul})
    for name, class_name in CODE_FILES.items():
        (folder / name).write_text(_code(class_name))
