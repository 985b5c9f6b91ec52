"""The install name: the package index's `ten` is an unrelated project, so nothing may send a user there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import temporal_eigenstate_networks
from temporal_eigenstate_networks.distribution import DISTRIBUTION, install_hint
from temporal_eigenstate_networks.hf.standalone import flat_modules

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
    offenders = [
        f"{path.relative_to(ROOT)}: {m.group(0)!r}"
        for path in files
        for m in INSTALLS_TEN.finditer(path.read_text(errors="replace"))
    ]
    assert offenders == []
    assert INSTALLS_TEN.search("run pip install 'ten[hf]' first") and INSTALLS_TEN.search("pip install ten")
    assert not INSTALLS_TEN.search("pip install tensorboard")


def test_the_code_an_export_writes_names_the_right_install() -> None:
    """The modules `ten export` copies into a folder (hf/standalone.py) say nothing of `ten` either; the one install
    hint they hold (the fused scan's triton) names our distribution."""
    texts = [module.text for module in flat_modules()]
    assert not [m.group(0) for text in texts for m in INSTALLS_TEN.finditer(text)]
    assert any("install_hint('gpu')" in text for text in texts)
    assert any(f'DISTRIBUTION = "{DISTRIBUTION}"' in text for text in texts)
