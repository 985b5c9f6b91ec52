"""The install name: the package index's `ten` is an unrelated project, so nothing may send a user there."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import temporal_eigenstate_networks
from temporal_eigenstate_networks.distribution import DISTRIBUTION, install_hint
from temporal_eigenstate_networks.hf.export import CODE_FILES, _code

ROOT = Path(__file__).resolve().parents[1]
# `pip install ten`, `pip install 'ten[hf]'`, `pip install "ten"`, but not `pip install tensorboard`.
INSTALLS_TEN = re.compile(r"""pip install\s+(-\S+\s+)*['"]?ten(\[|['"\s)]|$)""", re.MULTILINE)


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    suffixes = {".py", ".md", ".sh", ".toml", ".yaml", ".txt", ".cfg"}
    this = Path(__file__).resolve()  # its own examples of what must not be said
    paths = [ROOT / name for name in names if Path(name).suffix in suffixes]
    return [path for path in paths if path.is_file() and path.resolve() != this]


def test_the_distribution_is_ours_and_the_import_name_is_not_the_index_ten() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+, and this project supports 3.10
    assert re.search(r'^name = "(.*)"$', pyproject, re.MULTILINE).group(1) == DISTRIBUTION
    assert DISTRIBUTION == "temporal-eigenstate-networks"
    assert temporal_eigenstate_networks.__name__ != "ten"
    assert 'ten = "temporal_eigenstate_networks.cli:main"' in pyproject  # the command keeps its name
    assert install_hint("hf") == "pip install 'temporal-eigenstate-networks[hf]'"


def test_no_file_tells_a_user_to_install_ten() -> None:
    files = tracked_text_files()
    assert len(files) > 50
    offenders = [f"{path.relative_to(ROOT)}: {m.group(0)!r}" for path in files for m in INSTALLS_TEN.finditer(
        path.read_text(errors="replace"))]
    assert offenders == []
    assert INSTALLS_TEN.search("run pip install 'ten[hf]' first") and INSTALLS_TEN.search("pip install ten")
    assert not INSTALLS_TEN.search("pip install tensorboard")


@pytest.mark.parametrize("code_file", list(CODE_FILES))
def test_exported_code_without_the_package_names_the_right_install(code_file: str) -> None:
    """The code file an export writes, run where the package cannot be imported, names our distribution."""
    blocker = "import sys; sys.modules['temporal_eigenstate_networks'] = None\n"
    code = _code(*CODE_FILES[code_file])
    result = subprocess.run([sys.executable, "-c", blocker + code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "ImportError" in result.stderr
    assert install_hint("hf") in result.stderr.strip().splitlines()[-1]
