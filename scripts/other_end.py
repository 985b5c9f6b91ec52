"""Set up .venv/other-end: transformers and lm-eval at the end of their supported range that .venv does not have.

pyproject.toml's hf extra gives a range for each (oldest minor supported, first one not). .venv holds one version
of each; scripts/test.sh runs the whole suite there, then the hf tests (tests/test_hf*.py) again here, so that both
ends of the range are tested. This environment holds just those two packages (and what they need that .venv's do
not give) and sees every other package of .venv through a .pth file: a few megabytes, not a second torch.

Run by scripts/setup.sh with .venv's python (the only step with network); safe to re-run: it installs nothing where
the other end is in place. Fails soft, in one line: test.sh then says the other end was not tested.
"""

from __future__ import annotations

import re
import site
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OTHER_END = ROOT / ".venv" / "other-end"
PACKAGES = {"transformers": "transformers", "lm-eval": "lm_eval"}  # requirement name: distribution name


def supported_ranges(pyproject: Path) -> dict[str, tuple[str, str]]:
    """{"transformers": (lowest, first unsupported), "lm-eval": ...} from the hf extra's requirements."""
    extra = re.search(r"^hf = \[(.*)\]$", pyproject.read_text(), re.MULTILINE)
    ranges = {}
    for name in PACKAGES:
        found = extra and re.search(rf'"{re.escape(name)}(?:\[\w+\])?>=([\d.]+),<([\d.]+)"', extra.group(1))
        if not found:
            raise ValueError(f"pyproject.toml's hf extra has no range >=X,<Y for {name}")
        ranges[name] = (found.group(1), found.group(2))
    return ranges


def minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def wanted(ranges: dict[str, tuple[str, str]], installed_transformers: str) -> list[str] | None:
    """The requirements of the end .venv lacks: the oldest where .venv's transformers is newer than the lowest minor,
    else any minor newer than .venv's (the newest, installed with --upgrade). None where the range is one minor."""
    (low, high), (lm_low, lm_high) = ranges["transformers"], ranges["lm-eval"]
    major, current = minor(installed_transformers)
    if (major, current) > minor(low):
        return [f"transformers=={low}.*", f"lm-eval[hf]=={lm_low}"]
    if (major, current + 1) >= minor(high):
        return None
    return [f"transformers>={major}.{current + 1},<{high}", f"lm-eval[hf]>={lm_low},<{lm_high}"]


def make_environment() -> Path:
    """The environment, seeing .venv's packages after its own (site.addsitedir also reads .venv's .pth files)."""
    python = OTHER_END / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(OTHER_END)], check=True)
        (own,) = (p for p in OTHER_END.glob("lib/python*/site-packages"))
        bases = [p for p in site.getsitepackages() if Path(p).is_dir()]
        (own / "zz-venv.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in bases))
    return python


def satisfied(python: Path, requirements: list[str]) -> bool:
    """Whether the environment's versions meet ``requirements`` already (then set-up needs no network)."""
    code = (
        "import sys\n"
        "from importlib.metadata import version\n"
        "from packaging.requirements import Requirement\n"
        "sys.exit(not all(version(r.name) in r.specifier for r in map(Requirement, sys.argv[1:])))\n"
    )
    return subprocess.run([str(python), "-c", code, *requirements], capture_output=True).returncode == 0


def versions(python: Path) -> str:
    code = "from importlib import metadata as m; print(m.version('transformers'), m.version('lm_eval'))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()


def main() -> int:
    try:
        installed = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return 0  # no hf extra: nothing to test at either end
    requirements = wanted(supported_ranges(ROOT / "pyproject.toml"), installed)
    if requirements is None:
        return 0  # one minor: .venv is both ends
    python = make_environment()
    if not satisfied(python, requirements):
        # .venv's pip installs into the other environment (which has none of its own); --upgrade: the newest that
        # meets them, not the version .venv has.
        command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--upgrade"]
        done = subprocess.run([*command, *requirements], capture_output=True, text=True)
        if done.returncode:
            reason = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            print(f"the other end of the supported range is not set up (test.sh tests one end): {reason}")
            return 0
    subprocess.run([str(python), str(ROOT / "scripts" / "transformers_tests.py")], check=False)
    print(f"the other end of the supported range: transformers, lm-eval {versions(python)} ({OTHER_END})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
