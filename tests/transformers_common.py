"""transformers' own common test mixins, imported from where scripts/transformers_tests.py unpacked them.

They are transformers' test files, not part of its wheel, and must be those of the installed version. Where to find
them, in order: $TEN_TRANSFORMERS_TESTS (a transformers checkout's tests/ folder, at the installed version's tag),
else <environment>/transformers-tests/<version>/ (the source distribution's tests/, fetched by scripts/setup.sh).
They import each other relatively (`from .generation.test_utils import ...`), so the folder is imported as the
package `transformers_tests` (our own tests are the package `tests`).

The source distribution lacks three files the common ones import: the generation mixin
(generation/test_utils.py), the export mixin (exporters/test_export.py) and the config kwargs
(utils/test_configuration_utils.py). Where a file is absent a stand-in of ours takes its place, marked `STAND_IN`,
so that the model and config tests run; the tests that need the real file skip, saying why.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType

PACKAGE = "transformers_tests"
ENVIRONMENT_VARIABLE = "TEN_TRANSFORMERS_TESTS"
# The modules the common files import that only transformers' repository has: what each stand-in defines.
REPOSITORY_ONLY = {
    "exporters.test_export": "ExportTesterMixin",
    "generation.test_utils": "GenerationTesterMixin",
    "utils.test_configuration_utils": "config_common_kwargs",
}


def tests_folder() -> Path | None:
    """The folder of transformers' tests for the installed version, or None where there is none."""
    if os.environ.get(ENVIRONMENT_VARIABLE):
        return Path(os.environ[ENVIRONMENT_VARIABLE])
    folder = Path(sys.prefix) / "transformers-tests" / metadata.version("transformers")
    return folder if (folder / "test_modeling_common.py").is_file() else None


def missing_reason() -> str:
    return (
        f"transformers {metadata.version('transformers')}'s common test mixins are not here: run scripts/setup.sh "
        f"(it fetches them) or set {ENVIRONMENT_VARIABLE} to a transformers checkout's tests/ folder"
    )


def stand_in(name: str) -> ModuleType:
    """An importable module for a repository-only file: empty mixins, no config kwargs (the tests that use them
    skip when they see STAND_IN)."""
    module = ModuleType(f"{PACKAGE}.{name}")
    module.STAND_IN = True
    attribute = REPOSITORY_ONLY[name]
    setattr(module, attribute, None if attribute == "config_common_kwargs" else type(attribute, (), {}))
    return module


def is_stand_in(name: str) -> bool:
    return getattr(sys.modules.get(f"{PACKAGE}.{name}"), "STAND_IN", False)


def load(folder: Path) -> ModuleType:
    """Import test_modeling_common and test_configuration_common from ``folder`` as ``transformers_tests``."""
    if PACKAGE not in sys.modules:
        package = ModuleType(PACKAGE)
        package.__path__ = [str(folder)]
        sys.modules[PACKAGE] = package
        for name in REPOSITORY_ONLY:
            if not (folder / f"{name.replace('.', '/')}.py").is_file():
                parent = name.split(".")[0]
                sys.modules.setdefault(f"{PACKAGE}.{parent}", _namespace(f"{PACKAGE}.{parent}"))
                sys.modules[f"{PACKAGE}.{name}"] = stand_in(name)
    importlib.import_module(f"{PACKAGE}.test_configuration_common")
    return importlib.import_module(f"{PACKAGE}.test_modeling_common")


def _namespace(name: str) -> ModuleType:
    module = ModuleType(name)
    module.__path__ = []
    return module
