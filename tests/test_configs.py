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
