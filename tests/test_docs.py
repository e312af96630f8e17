"""The documentation is current and its examples run: the generated option reference of
docs/training.md, and the README's bring-your-own-data example, verbatim."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import polars as pl
import pytest

from mdmt.cli import main
from mdmt.docgen import DOC, render_training_doc

from .shop import shop_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_training_option_reference_is_current():
    current = DOC.read_text()
    assert render_training_doc(current) == current, "docs/training.md is stale: run python -m mdmt.docgen"


def test_every_train_option_is_documented():
    from mdmt.config import TrainConfig

    text = DOC.read_text()
    missing = [n for n in TrainConfig.model_fields if f"`train.{n}`" not in text]
    assert not missing
    assert all(f.description for f in TrainConfig.model_fields.values())


def _yaml_block(title: str) -> str:
    m = re.search(r"```yaml\n(# " + re.escape(title) + r".*?)```", README, re.S)
    assert m, f"README has no yaml block starting with '# {title}'"
    return m.group(1)


def _readme_commands() -> list[list[str]]:
    """Every ``mdmt`` command of the README's code blocks, comments stripped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("mdmt "):
                out.append(shlex.split(line)[1:])
    return out


def test_readme_bring_your_own_data_example_runs_verbatim(tmp_path: Path, monkeypatch, capsys):
    """The schema and experiment of the README, written as they are, on a table with their columns;
    then the README's train, evaluate and predict commands on it."""
    (tmp_path / "shop.yaml").write_text(_yaml_block("shop.yaml"))
    (tmp_path / "exp.yaml").write_text(_yaml_block("exp.yaml"))
    shop_table(3000).write_csv(tmp_path / "shop.csv")
    new = shop_table(50, seed=4).drop("click", "order")  # in Parquet a sequence is a list column
    new = new.with_columns(pl.col("hist").str.split("|").list.eval(pl.element().filter(pl.element() != "")))
    new.write_parquet(tmp_path / "rows.parquet")
    monkeypatch.chdir(tmp_path)
    commands = _readme_commands()
    assert ["train", "exp.yaml"] in [c[:2] for c in commands] or "mdmt train exp.yaml" in README
    assert main(["train", "exp.yaml"]) == 0
    (run_dir,) = list((tmp_path / "runs").iterdir())
    for argv in commands:
        if argv[0] in ("evaluate", "predict") and "runs/<run-dir>" in argv:
            argv = [str(run_dir) if a == "runs/<run-dir>" else a for a in argv]
            assert main(argv) == 0, argv
    assert (tmp_path / "scores.parquet").exists()
    assert "avg AUC" in capsys.readouterr().out
