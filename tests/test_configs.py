"""Every config shipped in the repository parses strictly (experiment configs, their data
params, model params and bench grids), so a typo in a shipped file fails here, not at a user's."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdmt.bench import load_bench_config
from mdmt.config import load_experiment
from mdmt.data import SOURCES, _config_class
from mdmt.models.base import model_config
from mdmt.schema import parse_config

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "mdmt" / "configs" / "demo.yaml"]
BENCHES = sorted((ROOT / "configs" / "bench").glob("*.yaml"))


def _check_data(data, where: str) -> None:
    import importlib

    module_name, class_name = SOURCES[data.source]
    parse_config(data.params, _config_class(importlib.import_module(module_name), class_name), where)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_config_is_valid(path: Path):
    cfg = load_experiment(path)
    _check_data(cfg.data, f"{path}: data.params")
    model_config(cfg.model.name, cfg.model.params)


@pytest.mark.parametrize("path", BENCHES, ids=lambda p: p.name)
def test_bench_config_is_valid(path: Path):
    cfg = load_bench_config(path)
    for name, data in cfg.datasets.items():
        _check_data(data, f"{path}: datasets.{name}.params")
    for e in cfg.entries:
        model_config(e.model, e.params)


# ---- relative paths and overrides -----------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    (proj / "conf").mkdir(parents=True)
    (proj / "data").mkdir()
    (proj / "data" / "rows.csv").write_text("x\n")
    (proj / "conf" / "schema.yaml").write_text("name: x\n")
    (proj / "conf" / "exp.yaml").write_text(
        "data: {source: table, params: {path: ../data/rows.csv, schema: schema.yaml}, cache_dir: ../cache}\n"
        "output_dir: ../runs\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_experiment(proj / "conf" / "exp.yaml")
    assert Path(cfg.data.params["path"]).resolve() == (proj / "data" / "rows.csv").resolve()
    assert Path(cfg.data.params["schema"]).resolve() == (proj / "conf" / "schema.yaml").resolve()
    assert Path(cfg.data.cache_dir).resolve() == (proj / "cache").resolve()
    assert cfg.output_dir == "../runs"  # where runs go: relative to the working directory, as in bench configs
    # overrides from the command line stay relative to the current directory
    cfg = load_experiment(proj / "conf" / "exp.yaml", {"output_dir": "here"})
    assert Path(cfg.output_dir) == Path("here")


def test_relative_paths_of_a_base_file_resolve_against_the_base(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "rows.csv").write_text("x\n")
    (tmp_path / "base" / "b.yaml").write_text("data: {source: table, params: {path: rows.csv, schema: s.yaml}}\n")
    (tmp_path / "exp.yaml").write_text("base: base/b.yaml\nname: e\n")
    cfg = load_experiment(tmp_path / "exp.yaml")
    assert Path(cfg.data.params["path"]) == (tmp_path / "base" / "rows.csv").resolve()
    assert cfg.data.params["schema"] == "s.yaml"  # not found beside the file: left for --data-dir


def test_null_override_resets_model_params(tmp_path):
    (tmp_path / "exp.yaml").write_text("model: {name: mmoe, params: {num_experts: 8, expert_hidden: [16]}}\n")
    assert load_experiment(tmp_path / "exp.yaml", {"model": {"params": None}}).model.params == {}
    assert load_experiment(tmp_path / "exp.yaml", {"train": {"grad_clip": None}}).train.grad_clip is None


def test_changing_the_model_drops_params_it_does_not_accept(tmp_path):
    (tmp_path / "exp.yaml").write_text(
        "model: {name: mmoe, params: {num_experts: 8, tower_hidden: [8], dropout: 0.1}}\n")
    with pytest.warns(UserWarning, match=r"\['num_experts'\] of model 'mmoe' do not apply to 'sharedbottom'"):
        cfg = load_experiment(tmp_path / "exp.yaml", {"model": {"name": "sharedbottom"}})
    assert "num_experts" not in cfg.model.params
    model_config(cfg.model.name, cfg.model.params)  # what is kept is valid for the new model
    # params given together with the new name are taken as they are
    cfg = load_experiment(tmp_path / "exp.yaml", {"model": {"name": "mmoe", "params": {"num_experts": 2}}})
    assert cfg.model.params["num_experts"] == 2
