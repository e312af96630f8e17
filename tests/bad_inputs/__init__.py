"""The catalogue of bad inputs: every case is a command a user may type, and the one clear message it gets.

Each case writes what it needs into a fresh workspace and returns the ``mdmt`` arguments to run.
``tests/test_bad_inputs.py`` runs every case and asserts exit status 2, no traceback, and that the
message contains the case's ``expect`` text; ``python -m tests.bad_inputs.make_doc`` runs them all
and writes ``docs/errors.md`` (the command and the message actually printed).

Add a case next to the others of its area::

    @bad_input("config", "a misspelt training option", expect="learning_rte")
    def misspelt_train_key(ws: Workspace) -> list[str]:
        ws.project()
        ws.edit("exp.yaml", "lr: 0.01", "lr: 0.01, learning_rte: 3")
        return ["train", "exp.yaml"]
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import tempfile
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..shop import shop_table, write_project

__all__ = ["AREAS", "BadInput", "CASES", "Outcome", "Workspace", "bad_input", "load_cases", "run_case"]

AREAS = ("config", "schema", "data file", "checkpoint", "cache", "cli")


@dataclass(frozen=True)
class BadInput:
    """One bad input: ``setup(ws)`` prepares files and returns the ``mdmt`` argv; ``expect`` must be in the message."""

    id: str
    area: str
    title: str
    expect: str
    setup: Callable[["Workspace"], list[str]]


CASES: dict[str, BadInput] = {}


def bad_input(area: str, title: str, expect: str) -> Callable[[Callable[["Workspace"], list[str]]], Callable]:
    """Register a case; its id is the function's name."""
    if area not in AREAS:
        raise ValueError(f"unknown area {area!r}; one of {AREAS}")

    def deco(fn: Callable[["Workspace"], list[str]]) -> Callable:
        if fn.__name__ in CASES:
            raise ValueError(f"bad-input case {fn.__name__!r} is defined twice")
        CASES[fn.__name__] = BadInput(fn.__name__, area, title, expect, fn)
        return fn

    return deco


_TEMPLATES: dict[str, Path] = {}


class Workspace:
    """A fresh directory for one case; commands run with it as the current directory.

    ``project()`` writes the shop project (``rows.csv``, ``schema.yaml``, ``exp.yaml``);
    ``trained_run()`` copies a finished one-epoch run of it to ``runs/done`` (trained once per process).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, text: str | bytes) -> Path:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        return p

    def edit(self, name: str, old: str, new: str) -> None:
        """Replace ``old`` (which must occur) by ``new`` in a workspace file."""
        text = (self.root / name).read_text()
        if old not in text:
            raise AssertionError(f"{old!r} is not in {name}")
        (self.root / name).write_text(text.replace(old, new))

    def project(self, model: str = "sharedbottom", epochs: int = 1) -> Path:
        return write_project(self.root, model=model, epochs=epochs)

    def table(self, n: int = 3000, seed: int = 0):
        """The shop rows as a Polars frame, to alter and write back."""
        return shop_table(n, seed)

    def trained_run(self) -> Path:
        """A finished shop run at ``runs/done`` (with ``exp.yaml`` and the data files beside it)."""
        if "run" not in _TEMPLATES:
            tmpl = Path(tempfile.mkdtemp(prefix="mdmt-bad-input-run-"))
            atexit.register(shutil.rmtree, tmpl, True)  # the template outlives every case, not the process
            write_project(tmpl, epochs=1)
            rc, _, err = _call(["train", str(tmpl / "exp.yaml"), "--run-dir", str(tmpl / "runs" / "done")], tmpl)
            if rc != 0:
                raise RuntimeError(f"training the template run failed: {err}")
            _TEMPLATES["run"] = tmpl
        tmpl = _TEMPLATES["run"]
        self.project(epochs=1)
        shutil.copytree(tmpl / "runs" / "done", self.root / "runs" / "done")
        for name in ("config.yaml",):  # the run's config names the template's data files: point it here
            p = self.root / "runs" / "done" / name
            p.write_text(p.read_text().replace(str(tmpl), str(self.root)))
        return self.root / "runs" / "done"


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    changed: list[str] = field(default_factory=list)  # files under runs/ created, altered or removed

    @property
    def message(self) -> str:
        """The error as printed: stderr from its first ``mdmt: error`` / ``usage:`` line on (progress
        lines of the stages that ran before the error are not part of it); all of stderr if none."""
        lines = self.stderr.splitlines()
        for i, line in enumerate(lines):
            if line.startswith(("mdmt: error", "usage:")):
                return "\n".join(lines[i:]).strip()
        return self.stderr.strip()


def _call(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    from mdmt.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse usage errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def run_case(case: BadInput, root: Path) -> tuple[list[str], Outcome]:
    """Prepare ``case`` in ``root`` and run its command there. Exceptions other than SystemExit propagate."""
    ws = Workspace(root)
    argv = case.setup(ws)
    before = _snapshot(root / "runs")
    code, out, err = _call(argv, root)
    after = _snapshot(root / "runs")
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return argv, Outcome(code, out, err, changed)


def _snapshot(root: Path) -> dict[str, str]:
    """``{relative path: sha1}`` of every file under ``root`` (directories as ``path/``)."""
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha1(root.read_bytes()).hexdigest()}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel + ("/" if p.is_dir() else "")] = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else ""
    return out


def load_cases() -> dict[str, BadInput]:
    """Import every ``cases_*.py`` module beside this file and return the registered cases."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if mod.name.startswith("cases_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    return CASES
