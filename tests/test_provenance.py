"""Stale results: the data cache and resumed bench runs are keyed on the code that made them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import mdmt.bench.harness as harness
import mdmt.data.preprocess as pp
from mdmt.bench.harness import BenchConfig, BenchEntry, bench_summary, completed_cells, run_bench
from mdmt.config import DataConfig, TrainConfig
from mdmt.data.base import RawData
from mdmt.data.preprocess import prepare
from mdmt.provenance import ALL_CODE, DATA_CODE, PACKAGE_ROOT, code_hash, code_version

from .test_preprocess import assert_batches_equal, make_frame, make_spec


def test_code_hash_follows_the_source_of_the_parts(tmp_path: Path):
    copy = tmp_path / "mdmt"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    data0, all0 = code_hash(DATA_CODE, copy), code_hash(ALL_CODE, copy)
    assert data0 == code_hash(DATA_CODE, PACKAGE_ROOT) and all0 == code_hash(ALL_CODE, PACKAGE_ROOT)

    pp_copy = copy / "data" / "preprocess.py"
    pp_copy.write_text(pp_copy.read_text() + "\n# a change of the encoder\n")
    from mdmt import provenance

    provenance._cached_hash.cache_clear()
    assert code_hash(DATA_CODE, copy) != data0 and code_hash(ALL_CODE, copy) != all0

    model = copy / "models" / "mmoe.py"
    before = code_hash(DATA_CODE, copy), code_hash(ALL_CODE, copy)
    model.write_text(model.read_text() + "\n# a change of a model\n")
    provenance._cached_hash.cache_clear()
    assert code_hash(DATA_CODE, copy) == before[0]  # the data cache does not depend on models
    assert code_hash(ALL_CODE, copy) != before[1]  # bench runs do
    assert set(code_version(DATA_CODE)) == {"mdmt", "code"}


def test_data_cache_made_by_other_code_is_rebuilt(tmp_path: Path, monkeypatch, capsys):
    raw = RawData(make_spec(), make_frame(200), "toy.csv")
    first = prepare(raw, cache_dir=tmp_path, progress=False)
    import json

    meta = json.loads((first.cache_path / "meta.json").read_text())
    assert meta["code"] == code_version(DATA_CODE)

    calls = []
    real_fit = pp.fit_feature_map
    monkeypatch.setattr(pp, "fit_feature_map", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    again = prepare(raw, cache_dir=tmp_path, progress=False)  # same code: reused, nothing refitted
    assert calls == [] and "rebuilding" not in capsys.readouterr().err

    monkeypatch.setattr(pp, "code_version", lambda parts: {"mdmt": "9.9", "code": "0123456789abcdef"})
    rebuilt = prepare(raw, cache_dir=tmp_path, progress=False)
    err = capsys.readouterr().err
    assert calls == [1] and "made by other code" in err and "rebuilding" in err
    assert rebuilt.cache_path == first.cache_path
    assert json.loads((rebuilt.cache_path / "meta.json").read_text())["code"]["mdmt"] == "9.9"
    for s in ("train", "valid", "test"):
        assert_batches_equal(again.splits[s], rebuilt.splits[s])


def test_bench_recomputes_runs_of_other_code_and_says_so(tmp_path: Path, monkeypatch):
    import mdmt.train.run as run_mod

    cfg = BenchConfig(
        name="t",
        datasets={"toy": DataConfig(source="synthetic", params={"preset": "douyin", "rows": 2000})},
        entries=[BenchEntry(label="MLP", model="mlp", params={"hidden": [8]})],
        seeds=[0],
        train=TrainConfig(epochs=1, batch_size=512),
        baseline="MLP",
        output_dir=str(tmp_path / "out"),
    )
    first = run_bench(cfg, progress=False, report=False)
    assert len(first.ran) == 1 and first.stale == []
    trained = []
    real = run_mod.run_experiment
    monkeypatch.setattr(run_mod, "run_experiment", lambda exp, **kw: trained.append(1) or real(exp, **kw))

    same = run_bench(cfg, progress=False, report=False)
    assert trained == [] and len(same.skipped) == 1
    line = bench_summary(same)
    assert "1 reused (same config and code" in line and "stale" not in line

    monkeypatch.setattr(harness, "code_version", lambda parts: {"mdmt": "9.9", "code": "0123456789abcdef"})
    assert completed_cells(cfg) == {}  # a record of other code is not a finished run
    redone = run_bench(cfg, progress=False, report=False)
    assert trained == [1] and redone.stale == redone.ran and len(redone.ran) == 1 and redone.skipped == []
    assert "1 of the trained were stale results made by other code, recomputed" in bench_summary(redone)

