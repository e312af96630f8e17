"""Download and verify the official data archives into a local cache.

:func:`download` fetches any URL that :mod:`urllib` understands (``https://``, ``http://``,
``file://``) to a temporary file next to the destination, checks its sha256 when one is given and
only then renames it into place, so an interrupted or corrupt download never leaves a file that
looks complete. The MovieLens and KuaiRand helpers fetch the official archives, extract them and
verify the extracted files against known per-file sha256 (the archives themselves are not pinned:
a repackaged archive with identical files is accepted, a changed file is not).

Example (offline, with a local archive)::

    >>> from pathlib import Path
    >>> src = Path("archive.zip").resolve().as_uri()  # doctest: +SKIP
    >>> path = download(src, Path("cache") / "archive.zip", sha256=None, progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from .base import DataError

__all__ = [
    "MOVIELENS_URLS",
    "MOVIELENS_FILES",
    "MOVIELENS_FILE_SHA256",
    "KUAIRAND_PURE_URL",
    "KUAIRAND_PURE_FILES",
    "KUAIRAND_FILE_SHA256",
    "sha256_file",
    "verify_sha256",
    "verify_files",
    "download",
    "extract_zip",
    "extract_tar",
    "fetch_movielens",
    "fetch_kuairand_pure",
]

#: Official GroupLens archives.
MOVIELENS_URLS: dict[str, str] = {
    "ml-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "ml-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
}

#: Files the loaders read, per variant.
MOVIELENS_FILES: dict[str, list[str]] = {
    "ml-100k": ["u.data", "u.user", "u.item"],
    "ml-1m": ["ratings.dat", "users.dat", "movies.dat"],
}

#: sha256 of official files (ML-1M ``ratings.dat`` is not pinned).
MOVIELENS_FILE_SHA256: dict[str, dict[str, str]] = {
    "ml-100k": {
        "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
        "u.genre": "48c0197cf7aa88ff61797dfe07ed2ffd3c5555c8b9f9430b738c053525461061",
        "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
        "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
    },
    "ml-1m": {
        "movies.dat": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
        "users.dat": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
    },
}

#: Official KuaiRand-Pure archive (Zenodo record of the KuaiRand release).
KUAIRAND_PURE_URL = "https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz"

#: Files of the KuaiRand-Pure release the loader can read.
KUAIRAND_PURE_FILES: list[str] = [
    "log_standard_4_08_to_4_21_pure.csv",
    "log_standard_4_22_to_5_08_pure.csv",
    "user_features_pure.csv",
    "video_features_basic_pure.csv",
]

#: sha256 of the KuaiRand-Pure feature files (the logs are not pinned).
KUAIRAND_FILE_SHA256: dict[str, str] = {
    "user_features_pure.csv": "dc729a656301b4c6d07f713fe41d05ec9bfaab670b90e531c70037caf033c011",
    "video_features_basic_pure.csv": "a6f7ee02684c5777422306cdc416e170302288aa89aca9dfea995edbd625bcc2",
}

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise :class:`DataError` naming the file and both digests when ``sha256(path) != expected``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected sha256 {expected})")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise DataError(f"{path}: sha256 mismatch: expected {expected.lower()}, got {actual}")


def verify_files(directory: str | Path, expected: dict[str, str]) -> None:
    """Verify ``{file name: sha256}`` inside ``directory``; all mismatches are reported at once."""
    directory = Path(directory)
    problems = []
    for name, digest in expected.items():
        try:
            verify_sha256(directory / name, digest)
        except DataError as err:
            problems.append(str(err))
    if problems:
        raise DataError("\n".join(problems))


def _copy_url(url: str, out: BinaryIO, h: Any, description: str, progress: bool) -> None:
    """Stream ``url`` into the open binary file ``out``, updating the hash ``h``."""
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - the URL is the user's choice
        total = resp.headers.get("Content-Length") if resp.headers else None
        total_n = int(total) if total and str(total).isdigit() else None
        if not progress:
            for block in iter(lambda: resp.read(_CHUNK), b""):
                out.write(block)
                h.update(block)
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(description, total=total_n)
            for block in iter(lambda: resp.read(_CHUNK), b""):
                out.write(block)
                h.update(block)
                bar.advance(task, len(block))


def download(url: str, dest: str | Path, sha256: str | None = None, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` (temp file, verify, then rename) and return ``dest``.

    If ``dest`` already exists and matches ``sha256`` (or no digest is given) nothing is fetched.

    Args:
        url: any URL :func:`urllib.request.urlopen` accepts, ``file://`` included.
        dest: final path; its parent directories are created.
        sha256: expected hex digest of the whole file, or ``None`` to skip the check.
        progress: show a rich progress bar.

    Raises:
        DataError: the URL cannot be read, or the digest does not match (the partial file is removed).
    """
    dest = Path(dest).expanduser()
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                _copy_url(url, out, h, f"download {dest.name}", progress)
            except (urllib.error.URLError, OSError, ValueError) as err:
                raise DataError(f"cannot download {url}: {err}") from None
        actual = h.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise DataError(f"{url}: sha256 mismatch: expected {sha256.lower()}, got {actual}; nothing written to {dest}")
        tmp.replace(dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _check_member(dest_dir: Path, name: str, archive: Path) -> Path:
    target = (dest_dir / name).resolve()
    root = dest_dir.resolve()
    if target != root and root not in target.parents:
        raise DataError(f"{archive}: member {name!r} would be written outside {dest_dir}")
    return target


def extract_zip(archive: str | Path, dest_dir: str | Path) -> Path:
    """Extract a zip archive into ``dest_dir`` (members escaping it are refused); return ``dest_dir``."""
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(dest_dir, info.filename, archive)
            zf.extractall(dest_dir)
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive}: not a valid zip archive: {err}") from None
    return dest_dir


def extract_tar(archive: str | Path, dest_dir: str | Path) -> Path:
    """Extract a (compressed) tar archive into ``dest_dir`` with the safe ``data`` filter; return ``dest_dir``."""
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                _check_member(dest_dir, member.name, archive)
            tf.extractall(dest_dir, filter="data")
    except tarfile.TarError as err:
        raise DataError(f"{archive}: not a valid tar archive: {err}") from None
    return dest_dir


def _find_dir_with(root: Path, names: list[str]) -> Path | None:
    """The first directory under ``root`` (itself included) holding every file in ``names``."""
    candidates = [root] + sorted(p for p in root.rglob("*") if p.is_dir())
    for d in candidates:
        if all((d / n).is_file() for n in names):
            return d
    return None


def fetch_movielens(variant: str, cache_dir: str | Path, *, url: str | None = None, progress: bool = True) -> Path:
    """Download, extract and verify a MovieLens archive; return the directory holding its files.

    Files land in ``<cache_dir>/<variant>/``. A cache that already holds the verified files is reused.

    Args:
        variant: ``"ml-100k"`` or ``"ml-1m"``.
        cache_dir: cache root (``~`` is expanded).
        url: archive URL; default :data:`MOVIELENS_URLS` ``[variant]`` (a mirror or ``file://`` copy may be given).
    """
    if variant not in MOVIELENS_URLS:
        raise DataError(f"unknown MovieLens variant {variant!r}; known: {sorted(MOVIELENS_URLS)}")
    cache = Path(cache_dir).expanduser()
    target = cache / variant
    expected = MOVIELENS_FILE_SHA256[variant]
    needed = MOVIELENS_FILES[variant]
    if all((target / n).is_file() for n in needed):
        verify_files(target, expected)
        return target
    archive = download(url or MOVIELENS_URLS[variant], cache / f"{variant}.zip", sha256=None, progress=progress)
    _install_archive(archive, extract_zip, needed, expected, target)
    return target


def _install_archive(archive: Path, extract, needed, expected: dict[str, str], target: Path) -> None:
    """Extract ``archive`` into a staging folder next to it, find the folder holding ``needed``,
    verify ``expected`` checksums, then move it to ``target`` (replacing it). A bad archive is
    deleted, so the next call downloads it again."""
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=archive.parent))
    try:
        try:
            extract(archive, staging)
            found = _find_dir_with(staging, needed)
            if found is None:
                raise DataError(f"{archive}: the archive does not contain {list(needed)}")
            verify_files(found, expected)
        except DataError:
            archive.unlink(missing_ok=True)  # a bad archive is fetched again next time
            raise
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        found.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_kuairand_pure(cache_dir: str | Path, *, url: str | None = None, progress: bool = True) -> Path:
    """Download and extract KuaiRand-Pure; return the directory holding its CSV files.

    The archive is not pinned; the expected files must be present and the two feature files must
    match :data:`KUAIRAND_FILE_SHA256`. Files land under ``<cache_dir>/KuaiRand-Pure/``.
    """
    cache = Path(cache_dir).expanduser()
    root = cache / "KuaiRand-Pure"
    found = _find_dir_with(root, KUAIRAND_PURE_FILES) if root.is_dir() else None
    if found is None:
        archive = download(url or KUAIRAND_PURE_URL, cache / "KuaiRand-Pure.tar.gz", sha256=None, progress=progress)
        _install_archive(archive, extract_tar, KUAIRAND_PURE_FILES, KUAIRAND_FILE_SHA256, root)
        found = root
    verify_files(found, KUAIRAND_FILE_SHA256)
    return found
