"""Hugging Face transformers for `ten` models: `AutoModelForCausalLM.from_pretrained(folder)` after
`import temporal_eigenstate_networks`.

Optional (the `hf` extra). After that import, model_type "ten" is registered with AutoConfig and
AutoModelForCausalLM as soon as transformers is imported (at once if it already is): importing transformers'
model classes takes seconds, which no `ten` command that does not use them should pay. The classes live in
`hf.configuration` and `hf.modeling`.
"""

from __future__ import annotations

import sys
import warnings
from importlib import metadata
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType

from ..distribution import install_hint

# [lowest, first unsupported), as pyproject.toml's hf extra. From 5.24: generate hands the state to forward and back
# as `cache` (before: past_key_values, so 5.23 recomputes every prefix and returns no state). Below 5.26: 5.25 is
# the newest minor tested (CI tests both ends: scripts/test.sh).
SUPPORTED_TRANSFORMERS = ((5, 24), (5, 26))
HF_EXTRA_HINT = install_hint("hf")


def transformers_problem() -> str | None:
    """Why the transformers integration cannot be used here (one line), or None when it can."""
    try:
        version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return f"the Hugging Face integration needs transformers: {HF_EXTRA_HINT}"
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return f"cannot read the installed transformers version {version!r}"
    low, high = SUPPORTED_TRANSFORMERS
    if not low <= major_minor < high:
        return (
            f"transformers {version} is installed; ten supports >={low[0]}.{low[1]},<{high[0]}.{high[1]} "
            f"({HF_EXTRA_HINT})"
        )
    return None


def require_transformers() -> None:
    """Raise ImportError with the one line of `transformers_problem` if there is one."""
    problem = transformers_problem()
    if problem:
        raise ImportError(problem)


def register() -> bool:
    """Register TenConfig, TenModel and TenForCausalLM with the Auto classes (called once transformers is
    imported); False, with a warning saying why, when this transformers cannot be used."""
    problem = transformers_problem()
    if problem:
        warnings.warn(problem, stacklevel=2)
        return False
    if being_imported("configuration") or being_imported("modeling"):
        return True  # that module is what imports transformers: it registers when it is complete
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM  # noqa: PLC0415  (optional extra)

    from .configuration import MODEL_TYPE, TenConfig  # noqa: PLC0415
    from .modeling import TenForCausalLM, TenModel  # noqa: PLC0415

    AutoConfig.register(MODEL_TYPE, TenConfig, exist_ok=True)
    AutoModel.register(TenConfig, TenModel, exist_ok=True)
    AutoModelForCausalLM.register(TenConfig, TenForCausalLM, exist_ok=True)
    return True


def being_imported(name: str) -> bool:
    """Whether hf.<name> has started and not finished importing (it sets IMPORTED on its last lines): importing
    transformers from it runs the import hook, whose `register` must not import it a second time, half-made."""
    module = sys.modules.get(f"{__name__}.{name}")
    return module is not None and not getattr(module, "IMPORTED", False)


class _RegisterAfterImport(MetaPathFinder, Loader):
    """Finds `transformers` as usual and runs `register` right after the package has been executed."""

    def find_spec(self, name: str, path: object = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name != "transformers":
            return None
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        sys.meta_path.remove(self)
        register()


def register_when_imported() -> None:
    """Register now if transformers is imported already, else as soon as it is (once)."""
    if "transformers" in sys.modules:
        register()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
