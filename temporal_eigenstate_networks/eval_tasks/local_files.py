"""The data of the tasks in this folder, found beside their YAML files whatever the working directory.

lm-eval hands `dataset_kwargs` to datasets.load_dataset, which resolves relative `data_files` against the
working directory, not the YAML's folder. So the YAMLs name their JSONL files relative to this folder and
point `custom_dataset` here (`!function local_files.load_json`); lm-eval calls it with the task's
`dataset_kwargs` and metadata. lm-eval loads this file by its path, outside the `ten` package: keep it
free of imports from `ten`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _resolve(files: Any) -> Any:
    """data_files in any of datasets' forms (a name, a list, split -> names), made absolute under HERE."""
    if isinstance(files, dict):
        return {split: _resolve(names) for split, names in files.items()}
    if isinstance(files, (list, tuple)):
        return [_resolve(name) for name in files]
    return str(HERE / str(files))


def load_json(data_files: Any, **_metadata: Any) -> Any:
    """A DatasetDict (split -> Dataset) of JSON-lines files in this folder."""
    import datasets

    return datasets.load_dataset("json", data_files=_resolve(data_files))
