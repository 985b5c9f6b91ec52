"""Hugging Face transformers for `ten` models: `AutoModelForCausalLM.from_pretrained(folder)` after `import ten`.

Optional (`pip install 'ten[hf]'`). `import ten` registers model_type "ten" with AutoConfig and
AutoModelForCausalLM when a supported transformers is installed; the classes live in `ten.hf.modeling`.
"""

from __future__ import annotations

import warnings
from importlib import metadata

# generate passes the state as `cache` from 5.24 (earlier: past_key_values); pinned where it was tested.
SUPPORTED_TRANSFORMERS = ((5, 24), (5, 25))  # [lowest, first unsupported)
HF_EXTRA_HINT = "pip install 'ten[hf]'"


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
    """Register TenConfig / TenForCausalLM with the Auto classes; False (and a warning if the version is
    unsupported) when transformers cannot be used."""
    problem = transformers_problem()
    if problem:
        if "is installed" in problem:
            warnings.warn(problem, stacklevel=2)
        return False
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415  (optional extra)

    from .configuration import MODEL_TYPE, TenConfig  # noqa: PLC0415
    from .modeling import TenForCausalLM  # noqa: PLC0415

    AutoConfig.register(MODEL_TYPE, TenConfig, exist_ok=True)
    AutoModelForCausalLM.register(TenConfig, TenForCausalLM, exist_ok=True)
    return True
