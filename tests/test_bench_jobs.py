"""``mdmt bench --jobs N``: runs of a grid trained in worker processes, each pinned to its own CPUs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mdmt.bench import BenchConfig, BenchEntry, BenchWarmStart, CellKey, run_bench
from mdmt.bench.harness import cell_path
from mdmt.bench.parallel import cpu_groups
from mdmt.config import DataConfig, TrainConfig
from mdmt.data.base import DataError
from mdmt.schema import ConfigError
from mdmt.train.run import available_cpus

needs_two_cpus = pytest.mark.skipif(available_cpus() < 2, reason="two worker processes need two CPUs")

BASE = {"backbone": "mlp", "backbone_params": {"hidden": [8]}, "tower_hidden": [4]}
PMTA = {**BASE, "width": 8, "num_heads": 2, "num_layers": 1, "prompt_dim": 4, "tpe_hidden": 4}
TINY = DataConfig(source="synthetic", params={"preset": "douyin", "rows": 2500, "seed": 0})


def _cfg(tmp_path: Path, name: str, **kw) -> BenchConfig:
    base = dict(
        name="jobs",
        datasets={"tiny": TINY},
        entries=[BenchEntry(label="MLP", model="mlp", regime="cell", params={"hidden": [8]}),
                 BenchEntry(label="MMoE", model="mmoe", params={"num_experts": 2, "expert_hidden": [8],
                                                                "tower_hidden": [4]})],
        seeds=[0, 1],
        # one thread in both paths, so that the serial and the parallel runs execute the same kernels
        train=TrainConfig(epochs=1, batch_size=512, lr=0.01, patience=0, num_threads=1),
        baseline="MLP",
        reuse=False,  # train every run, never copy it from the sibling bench of another test step
        output_dir=str(tmp_path / name),
    )
    base.update(kw)
    return BenchConfig(**base)


def test_cpu_groups_split_the_allowed_cpus_into_disjoint_groups():
    n = available_cpus()
    groups = cpu_groups(n)
    assert len(groups) == n and all(len(g) == 1 for g in groups)
    assert len({c for g in groups for c in g}) == n
    (one,) = cpu_groups(1)
    assert len(one) == n
    if hasattr(os, "sched_getaffinity"):
        assert set(one) <= os.sched_getaffinity(0)
    with pytest.raises(ConfigError, match="at least 1"):
        cpu_groups(0)
    with pytest.raises(ConfigError, match=f"the {n} CPU"):
        cpu_groups(n + 1)


@needs_two_cpus
def test_two_workers_give_the_serial_results_and_pin_one_cpu_each(tmp_path):
    serial = run_bench(_cfg(tmp_path, "serial"), progress=False, report=False)
    par = run_bench(_cfg(tmp_path, "parallel"), progress=False, report=False, jobs=2)
    assert set(par.ran) == set(serial.ran) and len(par.ran) == 4
    for key, rec in par.records.items():
        assert rec["test"] == serial.records[key]["test"], key
        assert rec["fingerprint"] == serial.records[key]["fingerprint"]
        assert rec["machine"]["torch_threads"] == 1
        assert cell_path(tmp_path / "parallel", key).is_file()
    # finished cells are resumed, not trained again
    again = run_bench(_cfg(tmp_path, "parallel"), progress=False, report=False, jobs=2)
    assert again.ran == [] and len(again.skipped) == 4


@needs_two_cpus
def test_a_warm_started_run_waits_for_its_source(tmp_path):
    entries = [BenchEntry(label="ShBot", model="sharedbottom", params=BASE),
               BenchEntry(label="PMTA warm", model="pmta", params=PMTA,
                          warm_start=BenchWarmStart(entry="ShBot", freeze=True))]
    cfg = _cfg(tmp_path, "warm", entries=entries, baseline="ShBot")
    res = run_bench(cfg, progress=False, report=False, jobs=2)
    assert len(res.ran) == 4
    for seed in (0, 1):
        src, dst = CellKey("tiny", "ShBot", seed), CellKey("tiny", "PMTA warm", seed)
        assert res.ran.index(src) < res.ran.index(dst)
    # runs without weights (a fresh clone): changing the warm-started entry trains each source again first
    shutil.rmtree(tmp_path / "warm" / "runs")
    entries[1] = entries[1].model_copy(update={"warm_start": BenchWarmStart(entry="ShBot", freeze=False)})
    res2 = run_bench(_cfg(tmp_path, "warm", entries=entries, baseline="ShBot"), progress=False, report=False, jobs=2)
    assert len(res2.ran) == 4
    for seed in (0, 1):
        assert res2.ran.index(CellKey("tiny", "ShBot", seed)) < res2.ran.index(CellKey("tiny", "PMTA warm", seed))


@needs_two_cpus
def test_a_failed_run_stops_the_grid_keeps_finished_runs_and_raises_the_workers_error(tmp_path):
    missing = DataConfig(source="table", params={"path": str(tmp_path / "none.parquet"),
                                                  "schema": str(tmp_path / "none.yaml")})
    cfg = _cfg(tmp_path, "fail", datasets={"tiny": TINY, "missing": missing}, seeds=[0],
               entries=[BenchEntry(label="MLP", model="mlp", regime="cell", params={"hidden": [8]})])
    with pytest.raises((DataError, ConfigError, FileNotFoundError)) as err:
        run_bench(cfg, progress=False, report=False, jobs=2)
    assert "none" in str(err.value)
    assert any("worker process" in note for note in getattr(err.value, "__notes__", []))
    assert cell_path(tmp_path / "fail", CellKey("tiny", "MLP", 0)).is_file()
    assert not cell_path(tmp_path / "fail", CellKey("missing", "MLP", 0)).exists()


@needs_two_cpus
def test_a_model_registered_in_a_script_is_refused_before_anything_is_written(tmp_path):
    from mdmt.bench.parallel import model_modules
    from mdmt.models.base import REGISTRY, register
    from mdmt.models.mlp import MLPModel

    cls = type("ScriptModel", (MLPModel,), {"__module__": "__main__"})
    register("script-mlp", paper="-")(cls)
    try:
        cfg = _cfg(tmp_path, "script", entries=[BenchEntry(label="S", model="script-mlp", regime="cell")],
                   baseline="S")
        with pytest.raises(ConfigError, match="registered in __main__"):
            run_bench(cfg, progress=False, report=False, jobs=2)
        assert not (tmp_path / "script").exists()
        ok = _cfg(tmp_path, "ok")
        assert model_modules(ok) == []
    finally:
        REGISTRY.pop("script-mlp", None)
