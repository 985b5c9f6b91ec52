"""Unpack the common test mixins of the installed transformers into <environment>/transformers-tests/<version>/.

transformers' test mixins (ModelTesterMixin in tests/test_modeling_common.py, ConfigTester in
tests/test_configuration_common.py) are not part of its wheel; its source distribution on the package index
ships them. They must match the installed version (they call its private helpers), so they are fetched for that
version, once, at set-up: the only step with network. tests/test_hf_common.py imports them from here and skips,
saying why, where they are absent. Nothing of them is committed to this repository.

The generation mixin (tests/generation/test_utils.py) and two helpers the common files import are in
transformers' repository only, not in the source distribution: point TEN_TRANSFORMERS_TESTS at a checkout's
tests/ folder (at the tag of the installed version) to run those too.

Run by scripts/setup.sh; safe to re-run (does nothing where the folder exists). Fails soft: without network it
says so in one line and exits 0, and the common tests are skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

# Beside the installed packages (.venv for scripts/setup.sh): each environment its version's.
DESTINATION = Path(sys.prefix) / "transformers-tests"
WANTED = ("test_modeling_common.py", "test_configuration_common.py")


def unpack_tests(archive: Path, version: str, destination: Path) -> None:
    """The sdist's top-level tests/*.py into ``destination`` (written whole or not at all)."""
    prefix = f"transformers-{version}/tests/"
    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix(prefix)
            if member.isfile() and member.name.startswith(prefix) and "/" not in name and name.endswith(".py"):
                (staging / name).write_bytes(tar.extractfile(member).read())
    missing = [name for name in WANTED if not (staging / name).is_file()]
    if missing:
        shutil.rmtree(staging)
        raise ValueError(f"the source distribution of transformers {version} holds no tests/{missing[0]}")
    # The repository's tests/ is a package, whose empty __init__.py the archive lacks: test_configuration_common
    # executes it (direct_transformers_import).
    (staging / "__init__.py").touch()
    staging.rename(destination)


def main() -> int:
    try:
        version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return 0  # no hf extra: nothing to test against
    destination = DESTINATION / version
    if (destination / WANTED[0]).is_file():
        return 0
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   f"transformers=={version}", "--dest", download]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        archives = sorted(Path(download).glob(f"transformers-{version}.tar.gz"))
        if done.returncode or not archives:
            reason = (done.stderr.strip().splitlines() or ["no archive"])[-1]
            print(f"transformers' common tests not fetched (their tests are skipped): {reason}", file=sys.stderr)
            return 0
        destination.parent.mkdir(parents=True, exist_ok=True)
        unpack_tests(archives[0], version, destination)
    print(f"transformers {version}'s common test mixins: {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
