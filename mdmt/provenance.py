"""Which code made a result: the package version plus a hash of the source files that produced it.

Caches and resumed benchmark runs are keyed on it (DESIGN §6, "stale results"), so a result made
by other code is recomputed instead of silently reused. The key is a hash of the source text, not
a hand-bumped format number: nobody has to remember to bump it, and any edit of the code involved
(a comment included) invalidates, which errs on the side of recomputing.

* the data cache (:mod:`mdmt.data.preprocess`) depends on :data:`DATA_CODE`: the data package and
  the modules it encodes with (schema, feature map, batch);
* a benchmark run depends on the whole package (:data:`ALL_CODE`).

Example::

    >>> key = code_version(DATA_CODE)
    >>> sorted(key)
    ['code', 'mdmt']
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__all__ = ["ALL_CODE", "DATA_CODE", "code_hash", "code_version"]

PACKAGE_ROOT = Path(__file__).resolve().parent

#: the parts of the package the encoded data cache depends on (paths relative to the package)
DATA_CODE: tuple[str, ...] = ("data", "schema.py", "featuremap.py", "batch.py")
#: every source file of the package
ALL_CODE: tuple[str, ...] = (".",)


def _files(parts: tuple[str, ...], root: Path) -> list[Path]:
    out: set[Path] = set()
    for part in parts:
        p = (root / part).resolve()
        if p.is_dir():
            out.update(f for f in p.rglob("*.py") if "__pycache__" not in f.parts)
        elif p.is_file():
            out.add(p)
        else:
            raise FileNotFoundError(f"package part {part!r} not found under {root}")
    return sorted(out)


@functools.lru_cache(maxsize=None)
def _cached_hash(parts: tuple[str, ...], root: Path) -> str:
    h = hashlib.sha256()
    for f in _files(parts, root):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(f.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return h.hexdigest()


def code_hash(parts: tuple[str, ...] = ALL_CODE, root: Path | None = None) -> str:
    """SHA-256 over the relative paths and contents of the ``*.py`` files of ``parts``.

    Args:
        parts: files or folders relative to ``root`` (folders are searched recursively).
        root: default the installed ``mdmt`` package folder.
    """
    return _cached_hash(tuple(parts), (root or PACKAGE_ROOT).resolve())


def code_version(parts: tuple[str, ...] = ALL_CODE) -> dict[str, str]:
    """``{"mdmt": package version, "code": first 16 hex digits of code_hash(parts)}``."""
    from . import __version__

    return {"mdmt": __version__, "code": code_hash(parts)[:16]}
