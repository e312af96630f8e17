"""Warm start (``mdmt train --warm-start RUN_DIR``): loaded tensors equal the source run's, frozen
ones stay bit-identical through training, a loaded group gets its own learning rate, and a run
with another feature map is refused with the differences listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mdmt.cli import main
from mdmt.config import WarmStartConfig
from mdmt.models import build_model
from mdmt.schema import ConfigError
from mdmt.train.run import load_run
from mdmt.train.warmstart import apply_warm_start, load_source

from .shop import shop_table, write_project


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("warm")
    write_project(root, epochs=1)
    run = root / "runs" / "source"
    assert main(["train", str(root / "exp.yaml"), "--run-dir", str(run), "--set", "train.progress=false"]) == 0
    return run


def _source_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "all-best.pt", weights_only=True)


def test_loaded_tensors_equal_the_source_runs(source: Path):
    src = load_run(source)
    fm = src.feature_map
    model = build_model("mmoe", fm.spec, fm, {"expert_hidden": [64]})
    fresh_before = {k: v.clone() for k, v in model.state_dict().items()}
    groups, summary = apply_warm_start(model, load_source(source, fm), "all", WarmStartConfig(run_dir=str(source)),
                                       quiet=True)
    ref = _source_weights(source)
    state = model.state_dict()
    assert summary.loaded and summary.fresh  # embeddings and towers loaded; experts and gates fresh
    assert all(k.startswith("embeddings.") or k.startswith("head.") for k in summary.loaded)
    assert any(k.startswith("block.experts.") for k in summary.fresh)
    assert any(k.startswith("block.gates.") for k in summary.fresh)
    for k in summary.loaded:
        assert torch.equal(state[k], ref[k]), k
    for k in summary.fresh:
        assert torch.equal(state[k], fresh_before[k]), k
    assert sum(len(g.params) for g in groups) == sum(1 for _ in model.parameters())


def test_loaded_parameters_get_their_own_learning_rate(source: Path):
    fm = load_run(source).feature_map
    model = build_model("mmoe", fm.spec, fm, {"expert_hidden": [64]})
    groups, summary = apply_warm_start(model, load_source(source, fm), "all",
                                       WarmStartConfig(run_dir=str(source), lr=1e-5), quiet=True)
    by_name = {g.name: g for g in groups}
    assert set(by_name) == {"main", "main/loaded"}
    assert by_name["main/loaded"].lr == 1e-5 and by_name["main"].lr is None  # fresh ones inherit train.lr
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in by_name["main/loaded"].params} == {
        n for n in summary.loaded if n in dict(model.named_parameters())}


def test_frozen_parameters_are_bit_identical_after_training(source: Path):
    root = source.parents[1]
    run = root / "runs" / "frozen"
    assert main(["train", str(root / "exp.yaml"), "--run-dir", str(run), "--set", "model.name=mmoe",
                 "--set", "train.epochs=2", "--set", "train.progress=false",
                 "--warm-start", str(source), "--freeze-loaded"]) == 0
    info = json.loads((run / "warm_start.json").read_text())
    (unit,) = info["models"]
    assert unit["frozen"] and unit["loaded"] and unit["fresh"]
    ref = _source_weights(source)
    after = _source_weights(run)
    params = dict(build_model("mmoe", load_run(run).feature_map.spec, load_run(run).feature_map).named_parameters())
    frozen = [k for k in unit["loaded"] if k in params]
    assert frozen
    for k in frozen:
        assert torch.equal(after[k], ref[k]), k
    assert any(not torch.equal(after[k], ref.get(k, torch.zeros(0))) for k in unit["fresh"] if k in params)
    # the run itself is a normal run: evaluate works
    assert main(["evaluate", str(run)]) == 0


def test_another_feature_map_is_refused_with_the_differences(source: Path, tmp_path: Path, capsys):
    write_project(tmp_path, epochs=1)
    shop_table(3000, seed=5).write_csv(tmp_path / "rows.csv")
    assert main(["train", str(tmp_path / "exp.yaml"), "--warm-start", str(source)]) == 2
    err = capsys.readouterr().err
    assert "feature maps must be identical" in err and "vocabulary 'user_id'" in err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="statistics of dense feature 'price'"):
        from mdmt.data import load_prepared
        from mdmt.config import load_experiment

        fm = load_prepared(load_experiment(tmp_path / "exp.yaml").data, progress=False).feature_map
        load_source(source, fm)


def test_same_name_other_shape_is_listed(source: Path):
    fm = load_run(source).feature_map
    model = build_model("sharedbottom", fm.spec, fm, {"tower_hidden": [7]})
    with pytest.raises(ConfigError, match=r"another shape.*head\."):
        apply_warm_start(model, load_source(source, fm), "all", WarmStartConfig(run_dir=str(source)), quiet=True)
