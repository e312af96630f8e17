"""Benchmark harness: config strictness, aggregation over seeds, t-test marks, the papers' table
layout, the seesaw matrix and heatmaps, resume bookkeeping, an end-to-end tiny grid (with an
interrupted run resumed), BENCHMARKS.md generation and the training-throughput script."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from mdmt.bench import (
    BenchConfig,
    BenchEntry,
    CellKey,
    cell_experiment,
    cell_path,
    completed_cells,
    fingerprint,
    grid_keys,
    load_bench_config,
    run_bench,
)
from mdmt.bench.harness import _validate_models, read_cell, slugify, write_json_atomic
from mdmt.bench.plots import cell_grid, plot_cell_heatmap, plot_seesaw
from mdmt.bench.report import (
    Stat,
    headline,
    markdown_dataset,
    markdown_report,
    seesaw_matrix,
    summarize,
    throughput_markdown,
    write_benchmarks_md,
    write_report,
)
from mdmt.config import DataConfig, TrainConfig
from mdmt.metrics import CellMetrics, EvalResult
from mdmt.schema import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CELLS = [("d0", "click"), ("d0", "like"), ("d1", "click"), ("d1", "like")]


# ---------------------------------------------------------------------------------------------
# hand-built records
# ---------------------------------------------------------------------------------------------


def _eval(aucs: list[float], lls: list[float], oracle: list[float] | None = None) -> dict:
    cells = [
        CellMetrics(domain=d, task=t, n=100, positives=30, auc=a, gauc=a, gauc_unweighted=a, gauc_coverage=1.0,
                    logloss=ll, oracle_auc=(oracle[i] if oracle else math.nan), reason=None)
        for i, ((d, t), a, ll) in enumerate(zip(CELLS, aucs, lls))
    ]
    return EvalResult(
        cells=cells,
        avg_auc=float(np.mean(aucs)),
        avg_gauc=float(np.mean(aucs)),
        avg_logloss=float(np.mean(lls)),
        task_auc={"click": float(np.mean(aucs[0::2])), "like": float(np.mean(aucs[1::2]))},
        macro_task_auc=float(np.mean(aucs)),
        avg_oracle_auc=float(np.mean(oracle)) if oracle else math.nan,
    ).to_dict()


def _rec(label: str, seed: int, aucs: list[float], lls: list[float], oracle=None, dataset="toy", sps=1000.0) -> dict:
    ev = _eval(aucs, lls, oracle)
    return {"format": 1, "bench": "t", "dataset": dataset, "label": label, "model": "mlp", "regime": "mdmt",
            "seed": seed, "test": ev, "valid": ev, "samples_per_sec": sps, "train_seconds": 2.0, "best_epoch": 1}


SEEDS = [0, 1, 2, 3]
BASE = {  # per cell, per seed
    0: [0.70, 0.71, 0.72, 0.73],
    1: [0.65, 0.66, 0.64, 0.67],
    2: [0.60, 0.62, 0.61, 0.63],
    3: [0.75, 0.74, 0.76, 0.77],
}
DELTA = {  # model - base: significantly better, significantly worse, noise, identical
    0: [0.020, 0.021, 0.019, 0.022],
    1: [-0.030, -0.031, -0.029, -0.032],
    2: [0.010, -0.010, 0.020, -0.020],
    3: [0.0, 0.0, 0.0, 0.0],
}


def _records(oracle: bool = False) -> list[dict]:
    recs = []
    orc = [0.9, 0.8, 0.85, 0.95] if oracle else None
    for i, s in enumerate(SEEDS):
        base = [BASE[c][i] for c in range(4)]
        model = [BASE[c][i] + DELTA[c][i] for c in range(4)]
        recs.append(_rec("Base", s, base, [0.5, 0.4, 0.3, 0.2], orc, sps=100.0))
        recs.append(_rec("Model", s, model, [0.45, 0.42, 0.3, 0.2], orc, sps=300.0))
    return recs


def _table_rows(md: str, first_header: str = "| Model | Regime") -> tuple[list[str], dict[str, list[str]]]:
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(first_header))
    header = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = {}
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return header, rows


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


def _cfg(tmp_path: Path, **kw) -> BenchConfig:
    base = dict(
        name="t",
        datasets={"toy": DataConfig(source="synthetic", params={"preset": "douyin", "rows": 3000})},
        entries=[BenchEntry(label="MLP", model="mlp", regime="cell"), BenchEntry(label="MMoE", model="mmoe")],
        seeds=[0, 1],
        train=TrainConfig(epochs=1),
        baseline="MLP",
        seesaw_reference="MLP",
        output_dir=str(tmp_path / "out"),
    )
    base.update(kw)
    return BenchConfig(**base)


def test_shipped_bench_configs_load_and_name_registered_models():
    paths = sorted((ROOT / "configs" / "bench").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"smoke", "ml100k_m3oe", "douyin"}
    for p in paths:
        cfg = load_bench_config(p)
        _validate_models(cfg)  # raises on an unknown model or bad params
        labels = [e.label for e in cfg.entries]
        assert cfg.baseline in labels or (cfg.baseline == "best" and set(cfg.proposed) < set(labels))


def test_unknown_key_and_bad_references_raise(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text("name: x\ndatasets: {a: {source: synthetic}}\nentries: [{label: A, model: mlp, regimee: cell}]\n"
                 "seeds: [0]\nbaseline: A\noutput_dir: o\n")
    with pytest.raises(ConfigError) as e:
        load_bench_config(p)
    assert "regimee" in str(e.value) and str(p) in str(e.value)
    p.write_text("name: x\ndatasets: {a: {source: synthetic}}\nentries: [{label: A, model: mlp}]\n"
                 "seeds: [0]\nbaseline: B\noutput_dir: o\n")
    with pytest.raises(ConfigError, match="baseline 'B'"):
        load_bench_config(p)
    p.write_text("name: x\ndatasets: {a: {source: synthetic}}\nentries: [{label: A, model: mlp, train: {lrr: 1}}]\n"
                 "seeds: [0]\nbaseline: A\noutput_dir: o\n")
    with pytest.raises(ConfigError, match="lrr"):
        load_bench_config(p)
    with pytest.raises(Exception, match="unique"):
        _cfg(tmp_path, entries=[BenchEntry(label="A", model="mlp"), BenchEntry(label="A", model="mmoe")], baseline="A",
             seesaw_reference=None)
    with pytest.raises(Exception, match="seeds"):
        _cfg(tmp_path, seeds=[1, 1])
    bad = _cfg(tmp_path, entries=[BenchEntry(label="MLP", model="nope")], seesaw_reference=None)
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        _validate_models(bad)


def test_grid_order_cell_experiment_and_fingerprint(tmp_path):
    cfg = _cfg(tmp_path, entries=[BenchEntry(label="MLP", model="mlp", regime="cell"),
                                  BenchEntry(label="MMoE", model="mmoe", params={"num_experts": 2}, train={"lr": 0.05})])
    keys = grid_keys(cfg)
    assert keys == [CellKey("toy", "MLP", 0), CellKey("toy", "MLP", 1), CellKey("toy", "MMoE", 0), CellKey("toy", "MMoE", 1)]
    exp = cell_experiment(cfg, keys[3])
    assert exp.train.lr == 0.05 and exp.train.seed == 1 and exp.train.regime == "mdmt" and exp.train.epochs == 1
    assert exp.model.name == "mmoe" and exp.model.params == {"num_experts": 2}
    assert cell_experiment(cfg, keys[0]).train.regime == "cell" and cell_experiment(cfg, keys[0]).train.lr == 1e-3
    fp = fingerprint(exp)
    assert fp == fingerprint(exp.model_copy(update={"output_dir": "elsewhere", "name": "other"}))
    assert fp == fingerprint(exp.model_copy(update={"train": exp.train.model_copy(update={"progress": True})}))
    assert fp != fingerprint(exp.model_copy(update={"train": exp.train.model_copy(update={"lr": 0.01})}))
    assert fp != fingerprint(cell_experiment(cfg, keys[2]))  # another seed
    assert slugify("MLP (per cell)") == "mlp-per-cell"
    assert cell_path(cfg.output_dir, keys[0]).name == "toy__mlp__seed0.json"


def test_model_defaults_and_embedding_apply_to_every_row_unless_the_entry_sets_them(tmp_path):
    entries = [
        BenchEntry(label="MLP", model="mlp", regime="cell"),
        BenchEntry(label="MMoE", model="mmoe", params={"num_experts": 2}),
        BenchEntry(label="MMoE-BN", model="mmoe", params={"norm": "batchnorm"}, embedding={"id_dropout": 0.0}),
    ]
    cfg = _cfg(tmp_path, entries=entries, model_defaults={"norm": "layernorm"},
               embedding={"id_dropout": 0.2, "dim": 8})
    keys = {k.label: k for k in grid_keys(cfg) if k.seed == 0}
    mlp, mmoe, bn = (cell_experiment(cfg, keys[x]) for x in ("MLP", "MMoE", "MMoE-BN"))
    assert mlp.model.params == {"norm": "layernorm"}
    assert mmoe.model.params == {"norm": "layernorm", "num_experts": 2}
    assert bn.model.params == {"norm": "batchnorm"}  # the entry's own setting wins
    assert mlp.model.embedding.id_dropout == 0.2 and mlp.model.embedding.dim == 8
    assert bn.model.embedding.id_dropout == 0.0 and bn.model.embedding.dim == 8
    assert fingerprint(mmoe) != fingerprint(cell_experiment(_cfg(tmp_path, entries=entries), keys["MMoE"]))
    _validate_models(cfg)
    # the built models carry the setting: every hidden layer of every row is normalised alike
    from mdmt.models import build_model

    from .conftest import make_tiny

    spec, fm = make_tiny()
    for exp, kind in ((mlp, torch.nn.LayerNorm), (mmoe, type(None)), (bn, type(None))):
        model = build_model(exp.model.name, spec, fm, exp.model.params, embedding=exp.model.embedding)
        assert model.cfg.norm == exp.model.params["norm"]
        if exp is mlp:
            assert sum(isinstance(m, kind) for m in model.modules()) == 2  # both hidden layers
        else:
            assert model.block.experts.norm == exp.model.params["norm"] == model.head.first_layer.norm
    # the "Training:" line of the report says what every row got and who differs
    md = markdown_report(cfg, summarize(_records(), baseline="Base"))
    line = next(x for x in md.splitlines() if x.startswith("Training:"))
    assert "model defaults for every row: norm=layernorm" in line
    assert "dim 8" in line and "domain id as input" in line and "id dropout 0.2" in line
    assert "MMoE-BN: {'norm': 'batchnorm'}" in line and "MMoE-BN: embedding {'id_dropout': 0.0}" in line
    plain = markdown_report(_cfg(tmp_path), summarize(_records(), baseline="Base"))
    assert "model defaults for every row: none (MLP norm: none)" in plain
    # a default no entry's model accepts, or a bad embedding override, is a clear error
    with pytest.raises(ConfigError, match="entry 'MLP'.*nrm"):
        _validate_models(_cfg(tmp_path, model_defaults={"nrm": "layernorm"}))
    with pytest.raises(Exception, match="unknown embedding override"):
        _cfg(tmp_path, entries=[BenchEntry(label="MLP", model="mlp", embedding={"dimm": 3})], seesaw_reference=None)
    p = tmp_path / "b.yaml"
    p.write_text("name: x\ndatasets: {a: {source: synthetic}}\nentries: [{label: A, model: mlp, embedding: "
                 "{id_dropout: 2}}]\nseeds: [0]\nbaseline: A\noutput_dir: o\n")
    with pytest.raises(ConfigError, match="entry 'A' embedding.*id_dropout"):
        load_bench_config(p)


def test_atomic_write_and_unreadable_cells(tmp_path):
    p = tmp_path / "cells" / "x.json"
    write_json_atomic(p, {"format": 1, "test": {}, "v": float("nan")})
    assert read_cell(p)["format"] == 1
    assert [q.name for q in p.parent.iterdir()] == ["x.json"]  # no temporary file left behind
    p.write_text('{"format": 1, "test": {')  # a torn write is treated as not finished
    assert read_cell(p) is None
    assert read_cell(tmp_path / "missing.json") is None


# ---------------------------------------------------------------------------------------------
# aggregation, t-test marks, layout
# ---------------------------------------------------------------------------------------------


def test_summary_matches_direct_computation():
    s = summarize(_records(), baseline="Base")["toy"]
    assert s.cells == [f"{d}/{t}" for d, t in CELLS]
    base, model = s.model("Base"), s.model("Model")
    for c in range(4):
        name = s.cells[c]
        m_vals = np.array(BASE[c]) + np.array(DELTA[c])
        assert model.cell_auc[name].mean == pytest.approx(m_vals.mean())
        assert model.cell_auc[name].std == pytest.approx(m_vals.std(ddof=1), abs=1e-12)
        assert base.cell_auc[name].p is None and base.cell_auc[name].sign == 0
    # paired t-test against scipy, and the sign of the significant differences
    p0 = stats.ttest_rel(np.array(BASE[0]) + np.array(DELTA[0]), BASE[0]).pvalue
    assert model.cell_auc["d0/click"].p == pytest.approx(p0) and p0 < 0.05
    assert model.cell_auc["d0/click"].sign == 1
    assert model.cell_auc["d0/like"].sign == -1
    assert model.cell_auc["d1/click"].p > 0.05 and model.cell_auc["d1/click"].sign == 0
    assert model.cell_auc["d1/like"].p == 1.0 and model.cell_auc["d1/like"].sign == 0
    # avg AUC: per-seed mean over cells, then mean over seeds; RelaImpr on the means
    m_avg = np.mean([np.mean([BASE[c][i] + DELTA[c][i] for c in range(4)]) for i in range(4)])
    b_avg = np.mean([np.mean([BASE[c][i] for c in range(4)]) for i in range(4)])
    assert model.avg_auc.mean == pytest.approx(m_avg)
    assert model.relaimpr == pytest.approx(((m_avg - 0.5) / (b_avg - 0.5) - 1) * 100)
    assert base.relaimpr is None
    assert model.samples_per_sec == 300.0


def test_markdown_layout_units_and_marks():
    s = summarize(_records(), baseline="Base")["toy"]
    md = markdown_dataset(s)
    header, rows = _table_rows(md)
    auc_cols = [f"{d}/{t} AUC" for d, t in CELLS]
    ll_cols = [f"{d}/{t} LogLoss" for d, t in CELLS]
    assert header == ["Model", "Regime", *auc_cols, "Avg AUC ↑", "Task-pooled AUC ↑", "RelaImpr", *ll_cols,
                      "Avg LogLoss ↓", "Best epoch", "Train samples/s", "Train s"]
    m = dict(zip(header, rows["Model"]))
    mean0 = 100 * np.mean(np.array(BASE[0]) + np.array(DELTA[0]))
    assert m["d0/click AUC"] == f"**{mean0:.2f}**\\*"  # best in its column, significantly better
    assert m["d0/like AUC"].endswith("†") and "*" not in m["d0/like AUC"]
    assert not m["d1/click AUC"].replace("**", "").endswith(("*", "†"))
    assert not m["d1/like AUC"].replace("**", "").endswith(("*", "†"))
    assert m["RelaImpr"] == f"{s.model('Model').relaimpr:+.2f}%"
    assert m["d0/click LogLoss"] == "**45.00**"
    b = dict(zip(header, rows["Base (baseline)"]))
    plain = "".join(b.values()).replace("**", "")
    assert b["RelaImpr"] == "—" and "*" not in plain and "†" not in plain
    assert "units of 10⁻²" in md
    assert "d0/click 30 / 100" in md and "fewer than 30 positives" not in md  # test sizes stated
    assert "Oracle" not in md  # no oracle on real data
    # the std table carries mean ± std and p-values
    assert "± " in md and "(p=" in md


def test_oracle_row_and_gap_when_data_has_an_oracle():
    s = summarize(_records(oracle=True), baseline="Base")["toy"]
    md = markdown_dataset(s)
    header, rows = _table_rows(md)
    orc = dict(zip(header, rows["*Oracle (true probabilities)*"]))
    assert orc["d0/click AUC"] == "90.00" and orc["Avg AUC ↑"] == f"{100 * np.mean([0.9, 0.8, 0.85, 0.95]):.2f}"
    m = dict(zip(header, rows["Model"]))
    assert float(m["Oracle gap ↓"]) == pytest.approx(100 * (0.875 - s.model("Model").avg_auc.mean), abs=0.006)


def test_seesaw_matrix_is_relative_change_against_reference():
    s = summarize(_records(), baseline="Base")["toy"]
    rows, cols, mat = seesaw_matrix(s, "Base")
    assert rows == ["Model"] and cols == s.cells
    for c, name in enumerate(cols):
        a, b = s.model("Model").cell_auc[name].mean, s.model("Base").cell_auc[name].mean
        assert mat[0][c] == pytest.approx((a / b - 1) * 100)
    _, _, ri = seesaw_matrix(s, "Base", metric="relaimpr")
    a, b = s.model("Model").cell_auc["d0/click"].mean, s.model("Base").cell_auc["d0/click"].mean
    assert ri[0][0] == pytest.approx(((a - 0.5) / (b - 0.5) - 1) * 100)
    assert mat[0][3] == pytest.approx(0.0)


def test_heatmaps_are_written(tmp_path):
    import matplotlib.image as mpimg

    p = plot_seesaw([[1.5, -0.5, float("nan")], [0.2, 0.0, -3.0]], ["A", "B"], ["x", "y", "z"], tmp_path / "s.png")
    img = mpimg.imread(p)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 100
    ev = EvalResult.from_dict(_eval([0.7, 0.6, float("nan"), 0.8], [0.3] * 4))
    domains, tasks, grid = cell_grid(ev)
    assert domains == ["d0", "d1"] and tasks == ["click", "like"]
    assert grid[0, 1] == pytest.approx(0.6) and math.isnan(grid[1, 0])
    q = plot_cell_heatmap(ev, tmp_path / "run" / "h.png", title="t")
    assert mpimg.imread(q).ndim == 3
    assert not list((tmp_path / "run").glob(".*tmp*"))


def test_write_report_files_and_reference_kept_apart(tmp_path):
    cfg = _cfg(tmp_path, entries=[BenchEntry(label="Base", model="mlp"), BenchEntry(label="Model", model="mmoe")],
               seeds=SEEDS, baseline="Base", seesaw_reference="Base",
               reference={"label": "published figure", "macro_task_auc": 0.708, "note": "elsewhere"})
    recs = _records() + [_rec("Gone", 0, [0.9] * 4, [0.1] * 4)]  # a label no longer in the config
    paths = write_report(cfg, recs)
    assert {"results.json", "results.parquet", "results.md", "seesaw_toy.png"} <= set(paths)
    import polars as pl

    df = pl.read_parquet(paths["results.parquet"])
    assert df.height == 2 * len(SEEDS) * 4 * 2  # labels × seeds × cells × splits ("Gone" left out)
    assert set(df["label"]) == {"Base", "Model"}
    one = df.filter((pl.col("label") == "Model") & (pl.col("seed") == 2) & (pl.col("split") == "test")
                    & (pl.col("domain") == "d0") & (pl.col("task") == "like"))
    assert one["auc"][0] == pytest.approx(BASE[1][2] + DELTA[1][2])
    data = json.loads(paths["results.json"].read_text())
    assert data["summary"]["toy"]["models"][1]["label"] == "Model"
    md = paths["results.md"].read_text()
    main_table, ref_part = md.split("Reference figures (not measured")
    assert "published figure" not in main_table and "published figure" in ref_part and "70.80" in ref_part
    assert "![seesaw toy](seesaw_toy.png)" in md
    assert "| measured here" not in ref_part  # no entry under study: the reference stands alone
    cfg2 = cfg.model_copy(update={"proposed": ["Model"], "baseline": "Base"})
    ref2 = write_report(cfg2, recs)["results.md"].read_text().split("Reference figures (not measured")[1]
    model_avg = float(np.mean([BASE[c][i] + DELTA[c][i] for c in range(4) for i in range(len(SEEDS))]))
    assert f"| measured here: Model | {100 * model_avg:.2f} ± " in ref2


# ---------------------------------------------------------------------------------------------
# end to end: a tiny grid, interrupted and resumed
# ---------------------------------------------------------------------------------------------


def test_tiny_grid_runs_resumes_and_reports(tmp_path, monkeypatch):
    import mdmt.train.run as run_mod

    cfg = _cfg(
        tmp_path,
        datasets={"tiny": DataConfig(source="synthetic", params={"preset": "douyin", "rows": 2500, "seed": 0})},
        entries=[BenchEntry(label="MLP", model="mlp", params={"hidden": [8]}),
                 BenchEntry(label="MMoE-MTL", model="mmoe", regime="mtl",
                            params={"num_experts": 2, "expert_hidden": [8], "tower_hidden": [4]})],
        train=TrainConfig(epochs=1, batch_size=512, lr=0.01, patience=0),
    )
    real = run_mod.run_experiment
    calls: list[tuple[str, int]] = []

    def failing_after_first(exp, **kw):
        if calls:
            raise KeyboardInterrupt("simulated interruption")
        calls.append((exp.model.name, exp.train.seed))
        return real(exp, **kw)

    monkeypatch.setattr(run_mod, "run_experiment", failing_after_first)
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg, progress=False)
    done = completed_cells(cfg)
    assert list(done) == [CellKey("tiny", "MLP", 0)]
    assert not list((Path(cfg.output_dir) / "cells").glob(".*"))  # no torn files

    seen: list[tuple[str, int, str]] = []

    def counting(exp, **kw):
        seen.append((exp.model.name, exp.train.seed, exp.train.regime))
        return real(exp, **kw)

    monkeypatch.setattr(run_mod, "run_experiment", counting)
    res = run_bench(cfg, progress=False)
    assert seen == [("mlp", 1, "mdmt"), ("mmoe", 0, "mtl"), ("mmoe", 1, "mtl")]  # the finished run is not re-run
    assert res.skipped == [CellKey("tiny", "MLP", 0)] and len(res.ran) == 3
    rec = read_cell(cell_path(cfg.output_dir, CellKey("tiny", "MMoE-MTL", 1)))
    assert rec["regime"] == "mtl" and rec["seed"] == 1 and 0.0 < rec["test"]["avg_auc"] < 1.0
    assert rec["fingerprint"] == fingerprint(cell_experiment(cfg, CellKey("tiny", "MMoE-MTL", 1)))
    md = res.report["results.md"].read_text()
    assert "MMoE-MTL" in md and "*Oracle (true probabilities)*" in md
    assert res.report["seesaw_tiny.png"].exists()

    # a third call has nothing to do; changing one entry's settings re-runs only that entry
    seen.clear()
    run_bench(cfg, progress=False, report=False)
    assert seen == []
    changed = cfg.model_copy(update={"entries": [cfg.entries[0], cfg.entries[1].model_copy(update={"train": {"lr": 0.02}})]})
    run_bench(changed, progress=False, report=False)
    assert seen == [("mmoe", 0, "mtl"), ("mmoe", 1, "mtl")]


def test_cli_report_only_and_benchmarks_md(tmp_path, capsys):
    from mdmt.bench import main

    cfg = _cfg(tmp_path, entries=[BenchEntry(label="Base", model="mlp"), BenchEntry(label="Model", model="mmoe")],
               seeds=SEEDS, baseline="Base", seesaw_reference="Base")
    for r in _records(oracle=True):
        write_json_atomic(cell_path(cfg.output_dir, CellKey(r["dataset"], r["label"], r["seed"])), r)
    yml = tmp_path / "b.yaml"
    yml.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    write_json_atomic(Path(cfg.output_dir) / "meta.json",
                      {"config_path": "configs/bench/x.yaml", "config": cfg.model_dump(mode="json"),
                       "machine": {"cpu": "Test CPU", "logical_cores": 2, "torch_threads": 2, "torch": "x", "python": "3"}})
    assert main([str(yml), "--report-only", "--quiet"]) == 0
    assert (Path(cfg.output_dir) / "results.md").exists()
    # the report-only records the config it reported from (here b.yaml, shown without machine paths)
    meta = json.loads((Path(cfg.output_dir) / "meta.json").read_text())
    assert meta["config_path"] == "b.yaml" and meta["config"] == cfg.model_dump(mode="json")
    assert meta["machine"]["cpu"] == "Test CPU"  # the runs' machine is kept
    tp = tmp_path / "tp.json"
    tp.write_text(json.dumps({
        "command": "python benchmarks/train_throughput.py --rows 10", "machine": {"cpu": "Test CPU"},
        "peak_flops": 1e11, "target_ratio": 1.10,
        "settings": {"rows": 10, "preset": "douyin", "batch_size": 4, "steps": 2, "warmup": 1, "mm_repeats": 1},
        "models": [{"model": "mlp", "batch_size": 4, "ratio": 1.05, "e2e_samples_per_sec": 1e5,
                    "model_samples_per_sec": 1.05e5, "flops_per_step": 4e6, "e2e_flops_per_sec": 1e11 * 0.1,
                    "e2e_utilisation": 0.1, "model_utilisation": 0.105},
                   {"model": "bad", "error": "RuntimeError: boom"}],
    }))
    out = write_benchmarks_md([cfg.output_dir], tp, out=tmp_path / "docs" / "BENCHMARKS.md",
                              regenerate_command="python benchmarks/make_benchmarks_md.py")
    text = out.read_text()
    assert "mdmt bench b.yaml" in text and "python benchmarks/train_throughput.py --rows 10" in text
    assert "Test CPU" in text and "## Training throughput" in text and "10.0%" in text and "error: RuntimeError" in text
    link = text.split("![seesaw toy](")[1].split(")")[0]
    assert (out.parent / link).resolve() == (Path(cfg.output_dir) / "seesaw_toy.png").resolve()
    assert "Oracle gap" in text


def test_report_only_on_copied_records_writes_meta_so_benchmarks_md_shows_the_bench(tmp_path):
    """Run records copied in from another checkout (no meta.json): --report-only writes meta.json
    with the config, its path and the machine the newest record states, and BENCHMARKS.md then
    includes the bench; a folder without records gets no meta.json."""
    from mdmt.bench import main

    cfg = _cfg(tmp_path, entries=[BenchEntry(label="Base", model="mlp"), BenchEntry(label="Model", model="mmoe")],
               seeds=SEEDS, baseline="Base", seesaw_reference="Base")
    yml = tmp_path / "c.yaml"
    yml.write_text(json.dumps(cfg.model_dump(mode="json")))
    meta_path = Path(cfg.output_dir) / "meta.json"
    assert main([str(yml), "--report-only", "--quiet"]) == 0  # nothing to report from: no meta.json
    assert not meta_path.exists()
    for i, r in enumerate(_records(oracle=True)):
        cpu = "Newest CPU" if i == len(SEEDS) * 2 - 1 else "Older CPU"
        r.update(machine={"cpu": cpu, "logical_cores": 2, "torch_threads": 1, "torch": "x", "python": "3", "os": "Linux"},
                 finished_at=f"2026-01-01T00:00:{i:02d}+00:00")
        write_json_atomic(cell_path(cfg.output_dir, CellKey(r["dataset"], r["label"], r["seed"])), r)
    assert main([str(yml), "--report-only", "--quiet"]) == 0
    meta = json.loads(meta_path.read_text())
    assert meta["bench"] == cfg.name and meta["config_path"] == "c.yaml"
    assert meta["config"] == cfg.model_dump(mode="json") and meta["started_at"] is None
    assert meta["machine"]["cpu"] == "Newest CPU"
    out = write_benchmarks_md([cfg.output_dir], None, out=tmp_path / "BENCHMARKS.md",
                              regenerate_command="python benchmarks/make_benchmarks_md.py")
    text = out.read_text()
    assert "mdmt bench c.yaml" in text and "Bench `" in text
    assert "Newest CPU / Older CPU (per run)" in text  # the machine line states every run's CPU


# ---------------------------------------------------------------------------------------------
# throughput benchmark
# ---------------------------------------------------------------------------------------------


def _bench_module(name: str):
    sys.path.insert(0, str(ROOT))
    try:
        import importlib

        return importlib.import_module(f"benchmarks.{name}")
    finally:
        sys.path.remove(str(ROOT))


def test_mm_peak_counts_two_n_cubed():
    machine = _bench_module("machine")
    r = machine.mm_peak(n=128, repeats=2, warmup=1)
    assert r["flops_per_sec"] == pytest.approx(2 * 128**3 / r["seconds_best"])
    assert r["flops_per_sec"] >= r["median_flops_per_sec"] > 0
    d = machine.describe()
    assert d["logical_cores"] >= 1 and d["torch"] == torch.__version__


def test_flop_count_of_a_step_matches_formula():
    from mdmt.batch import Batch
    from mdmt.models.base import ModelOutput

    tt = _bench_module("train_throughput")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(5, 8), torch.nn.Linear(8, 2)

        def forward(self, batch: Batch) -> ModelOutput:
            z = self.b(torch.relu(self.a(batch.dense)))
            return ModelOutput(logits={"x": z[:, 0], "y": z[:, 1]})

    b = Batch.empty(num_sparse=1, num_dense=5, num_tasks=2, size=16)
    b.dense.normal_()
    flops = tt._flops_per_step(Tiny(), b, ["x", "y"])
    B = 16
    # forward 2·B·(5·8 + 8·2); backward: weight grads of both layers, input grad of the second only
    assert flops == 2 * B * 5 * 8 * 2 + 2 * B * 8 * 2 * 3


def test_train_throughput_script_tiny(tmp_path):
    tt = _bench_module("train_throughput")
    out = tmp_path / "tp.json"
    res = tt.main(["--rows", "3000", "--batch-size", "256", "--steps", "3", "--warmup", "1", "--models", "mlp,mmoe,pmta",
                   "--mm-repeats", "1", "--out", str(out), "--quiet"])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(res))
    assert [(r["model"], r["kind"]) for r in data["models"]] == [
        ("mlp", "registered"), ("mmoe", "registered"), ("mmoe", "hand-written"),
        ("pmta", "registered"), ("pmta", "base model"), ("pmta", "warm start")]
    assert data["machine"]["logical_cores"] >= 1 and data["peak_flops"] > 0 and data["target_ratio"] == 1.10
    for r in data["models"]:
        assert "error" not in r, r
        assert r["flops_per_step"] > 0 and r["e2e_samples_per_sec"] > 0
        e2e, mdl = r["e2e_step_seconds_rounds"], r["model_step_seconds_rounds"]
        assert len(e2e) == len(mdl) == 3 and r["e2e_step_seconds"] == pytest.approx(float(np.median(e2e)))
        assert r["ratio"] == pytest.approx(float(np.median(np.array(e2e) / np.array(mdl))))  # paired by round
        assert r["e2e_utilisation"] == pytest.approx(r["flops_per_step"] / r["e2e_step_seconds"] / data["peak_flops"])
    by = {(r["model"], r["kind"]): r for r in data["models"]}
    hand = data["comparisons"]["hand_written"]
    assert [h["model"] for h in hand] == ["mmoe"] and hand[0]["same_params"] and hand[0]["same_flops"]
    assert hand[0]["e2e_ratio"] == pytest.approx(float(np.median(
        np.array(by["mmoe", "registered"]["e2e_step_seconds_rounds"])
        / np.array(by["mmoe", "hand-written"]["e2e_step_seconds_rounds"]))))
    pm = data["comparisons"]["pmta"]
    assert pm["base_model"] == "sharedbottom" and pm["extra_flops_per_sample"] > 0
    assert pm["extra_flops_per_sample"] == pytest.approx(by["pmta", "registered"]["flops_per_sample"]
                                                         - by["pmta", "base model"]["flops_per_sample"])
    # the warm start trains PMTA's own parameters only: everything the base model has is loaded and frozen
    warm, cold = by["pmta", "warm start"], by["pmta", "registered"]
    assert warm["params"] == cold["params"]
    assert warm["trainable_params"] == cold["params"] - by["pmta", "base model"]["params"]
    assert warm["flops_per_sample"] < cold["flops_per_sample"]  # no backward into the frozen base model
    assert data["comparisons"]["automl"] == []
    md = throughput_markdown(data)
    assert "mmoe (hand-written)" in md and "Registered / hand-written" in md and "PMTA's extra cost" in md
    with pytest.raises(SystemExit, match="unknown model"):
        tt.main(["--rows", "3000", "--models", "nope", "--out", str(out), "--quiet"])


@pytest.mark.parametrize("per_domain", [False, True])
@pytest.mark.parametrize("name", ["mmoe", "sharedbottom"])
def test_hand_written_references_compute_the_registered_models(name, per_domain):
    """The benchmark's hand-written MMoE and SharedBottom hold the registered model's parameter shapes;
    loaded with its weights they give its logits, and a step costs the same FLOPs."""
    from mdmt.models import build_model

    from .conftest import make_batch, make_tiny

    tt = _bench_module("train_throughput")
    spec, fm = make_tiny(per_domain=per_domain)
    torch.manual_seed(0)
    reg = build_model(name, spec, fm, {})
    hand = tt.hand_written(name, reg, spec, fm)
    e = reg.embeddings
    r = [e.table(t.name).weight for t in spec.effective_tables()] + [e.domain_table.weight]
    h = [*hand.tables, hand.domain_table]
    if name == "mmoe":
        r += [*reg.block.experts.weights, *reg.block.experts.biases, reg.block.gates.weight, reg.block.gates.bias]
        h += [*hand.expert_w, *hand.expert_b, hand.gate_w, hand.gate_b]
    else:
        linear = [m for m in reg.backbone.mlp if isinstance(m, torch.nn.Linear)]
        r += [m.weight for m in linear] + [m.bias for m in linear]
        h += [*hand.bottom_w, *hand.bottom_b]
    head = reg.head
    r += [*head.first_layer.weights, *head.rest_layers.weights, *head.first_layer.biases, *head.rest_layers.biases]
    h += [*hand.tower_w, *hand.tower_b]
    assert len(r) == len(list(reg.parameters())) and len(h) == len(list(hand.parameters()))
    assert [p.shape for p in r] == [p.shape for p in h]
    with torch.no_grad():
        for a, b in zip(r, h):
            b.copy_(a)
    batch = make_batch(spec, fm, 16)
    reg.eval(), hand.eval()
    with torch.no_grad():
        ours, theirs = reg(batch).logits, hand(batch).logits
    for t in reg.task_names:
        assert torch.allclose(ours[t], theirs[t], atol=1e-6)
    reg.train(), hand.train()
    assert tt._flops_per_step(reg, batch, reg.task_names) == tt._flops_per_step(hand, batch, reg.task_names)
    # in training both drop ids to OOV at the same rate, on the same columns
    assert hand.layout.id_dropout == e.id_dropout and hand.id_columns.tolist() == e.dropout_columns.tolist()


def test_throughput_comparisons_and_markdown():
    """The comparisons of a run and their rendering: registered ÷ hand-written, PMTA over its base
    model, the AutoML share; the ratio target marks a miss."""
    tt = _bench_module("train_throughput")

    def row(model, kind, e2e, mdl, flops, label=None, **kw):
        return {"model": model, "label": label or model, "kind": kind, "batch_size": 10, "params": 5,
                "trainable_params": kw.pop("trainable", 5), "has_valid_step": False, "e2e_step_seconds": e2e,
                "model_step_seconds": mdl, "ratio": e2e / mdl, "flops_per_step": flops * 10, "flops_per_sample": flops,
                "e2e_step_seconds_rounds": [e2e, e2e * 2, e2e * 3], "model_step_seconds_rounds": [mdl, mdl * 2, mdl * 3],
                "e2e_samples_per_sec": 10 / e2e, "model_samples_per_sec": 10 / mdl, "e2e_flops_per_sec": flops * 10 / e2e,
                "model_flops_per_sec": flops * 10 / mdl, "e2e_utilisation": 0.5, "model_utilisation": 0.5,
                "arch_step_seconds": 0.0, "arch_share_of_e2e": 0.0, **kw}

    rows = [
        row("mmoe", "registered", 1.2, 1.0, 1e6),
        row("mmoe", "hand-written", 1.0, 1.0, 1e6, "mmoe (hand-written)"),
        row("pmta", "registered", 3.0, 3.0, 4e6),
        row("pmta", "base model", 1.0, 1.0, 1e6, "pmta: base model alone (sharedbottom)"),
        row("pmta", "warm start", 1.5, 1.5, 3e6, "pmta, warm start", trainable=2),
        row("m3oe", "registered", 2.0, 2.0, 5e5, has_valid_step=True, arch_step_seconds=0.5, arch_share_of_e2e=0.25),
        {"model": "bad", "label": "bad", "kind": "registered", "error": "RuntimeError: boom"},
    ]
    cmp = tt.comparisons(rows)
    assert cmp["hand_written"] == [{"model": "mmoe", "e2e_ratio": pytest.approx(1.2), "model_ratio": 1.0,
                                    "same_params": True, "same_flops": True, "within_target": False}]
    pm = cmp["pmta"]
    assert pm["extra_flops_per_sample"] == 3e6 and pm["flops_ratio"] == 4.0 and pm["e2e_time_ratio"] == 3.0
    assert pm["warm_vs_cold_e2e_time_ratio"] == 0.5 and pm["warm_trainable_params"] == 2
    assert cmp["automl"] == [{"label": "m3oe", "arch_step_seconds": 0.5, "arch_share_of_e2e": 0.25}]
    data = {"peak_flops": 1e9, "target_ratio": tt.TARGET_RATIO, "target_hand_ratio": tt.TARGET_HAND_RATIO,
            "settings": {"rows": 100, "batch_size": 10, "steps": 2, "dataset": "synthetic"}, "models": rows,
            "comparisons": cmp}
    md = throughput_markdown(data)
    header, table = _table_rows(md, "| Model | Samples/s")
    assert table["mmoe"][header.index("E2E / model step time")] == "1.200 ⚠"  # over 1.10
    assert table["pmta"][header.index("E2E / model step time")] == "1.000"
    assert table["m3oe"][header.index("AutoML share")] == "25.0%" and table["mmoe"][header.index("AutoML share")] == "—"
    assert "error: RuntimeError: boom" in md and "at most 1.10 ×" in md
    h_header, h_table = _table_rows(md, "| Model | Registered / hand-written")
    assert h_table["mmoe"][h_header.index("Registered / hand-written (end to end)")] == "1.200 ⚠"
    assert "adds **3.00 MFLOP per sample** forward + backward (1.00 → 4.00, 4.0×)" in md and "**3.00× its step time**" in md
    assert "0.50× the cold-started PMTA's" in md and "takes **25.0%** of the end-to-end step time" in md


def test_gauc_table_users_and_indicative_cells():
    """The bench table shows per-cell GAUC (with t-test marks), users beside positives, and marks a cell
    with fewer than FEW_USERS users as indicative."""
    from mdmt.bench.report import FEW_USERS, INDICATIVE

    recs = _records()
    for r in recs:
        for split in ("test", "valid"):
            for i, c in enumerate(r[split]["cells"]):
                c["groups"] = FEW_USERS - 1 if i == 1 else 500  # d0/like rests on few users
    s = summarize(recs, baseline="Base")["toy"]
    assert s.groups["d0/click"] == 500 and s.indicative() == ["d0/like"]
    m = s.model("Model")
    assert m.cell_gauc["d0/click"].sign == 1 and m.cell_gauc["d0/like"].sign == -1
    assert m.avg_gauc.mean == pytest.approx(np.mean([np.mean([BASE[c][i] + DELTA[c][i] for c in range(4)])
                                                     for i in range(4)]))
    md = markdown_dataset(s)
    header, rows = _table_rows(md, "| Model | d0")
    assert f"d0/like{INDICATIVE} GAUC" in header and "d0/click GAUC" in header
    assert rows["Model"][header.index("d0/click GAUC")].endswith("*")
    assert "Positives / users / rows per cell" in md and "30 / 500 / 100" in md
    assert f"fewer than {FEW_USERS} users" in md and f"d0/like{INDICATIVE} AUC" in md


def test_cell_metrics_count_users():
    from mdmt.metrics import evaluate

    rng = np.random.default_rng(0)
    n = 400
    group = rng.integers(0, 37, n)
    dom = rng.integers(0, 2, n)
    y = rng.integers(0, 2, (n, 1))
    r = evaluate(rng.random((n, 1)), y, np.ones_like(y, bool), dom, group, ["click"], ["a", "b"])
    for i, d in enumerate(("a", "b")):
        assert r.cell(d, "click").groups == len(np.unique(group[dom == i]))
    assert CellMetrics.from_dict(r.cells[0].to_dict()).groups == r.cells[0].groups
    legacy = r.cells[0].to_dict()
    legacy.pop("groups")
    assert CellMetrics.from_dict(legacy).groups == 0


def test_best_epoch_column_shows_the_selected_epochs_over_seeds():
    from mdmt.bench.report import _fmt_epochs

    recs = _records()
    for r in recs:
        r["best_epoch"] = {"a": 1, "b": 2 + r["seed"]} if r["label"] == "Model" else 3
    s = summarize(recs, baseline="Base")["toy"]
    assert s.model("Model").best_epochs == [2, 3, 4, 5] and s.model("Base").best_epochs == [3] * 4
    header, rows = _table_rows(markdown_dataset(s))
    col = header.index("Best epoch")
    assert rows["Model"][col] == "2–5" and rows["Base (baseline)"][col] == "3"
    assert _fmt_epochs([None, None]) == "—"


def test_best_baseline_is_the_strongest_entry_not_under_study(tmp_path):
    """``baseline: best`` compares the proposed entries against the highest mean Avg AUC of the others."""
    recs = _records()
    weak = []
    for r in [r for r in recs if r["label"] == "Base"]:
        w = json.loads(json.dumps(r))
        w["label"] = "Weak"
        for c in w["test"]["cells"]:
            c["auc"] = c["auc"] - 0.05
        w["test"]["avg_auc"] = w["test"]["avg_auc"] - 0.05
        weak.append(w)
    s = summarize(recs + weak, baseline="best", proposed=["Model"])["toy"]
    assert s.baseline == "Base" and s.best_baseline and s.proposed == ["Model"]
    direct = summarize(recs + weak, baseline="Base")["toy"]
    assert s.model("Model").avg_auc.p == pytest.approx(direct.model("Model").avg_auc.p)
    assert s.model("Model").relaimpr == pytest.approx(direct.model("Model").relaimpr)
    # without the proposed entry excluded, the strongest row overall is chosen
    assert summarize(recs + weak, baseline="best")["toy"].baseline == max(
        direct.models, key=lambda m: m.avg_auc.mean).label
    assert "the best baseline" in markdown_dataset(s)
    # the config accepts "best", checks proposed labels, and needs a non-proposed entry
    assert _cfg(tmp_path, baseline="best", proposed=["MMoE"]).baseline == "best"
    with pytest.raises(ValueError, match="proposed"):
        _cfg(tmp_path, baseline="best", proposed=["nope"])


def test_headline_states_wins_ties_and_losses_of_the_proposed_entries():
    """Model is better than Weak on every cell and seed (a win) and equal in mean to Base' (a tie)."""
    recs = _records()
    weak = []
    for r in [r for r in recs if r["label"] == "Base"]:
        w = json.loads(json.dumps(r))
        w["label"] = "Weak"
        w["test"]["avg_auc"] = w["test"]["avg_auc"] - 0.05 - 0.001 * w["seed"]
        weak.append(w)
    s = summarize(recs + weak, baseline="best", proposed=["Model"])["toy"]
    lines = "\n".join(headline(s))
    better = next(x for x in lines.splitlines() if "significantly better than" in x)
    worse = next(x for x in lines.splitlines() if "significantly worse than" in x)
    assert "Weak" in better and "Base" not in better and worse.endswith("none")
    assert headline(summarize(recs, baseline="Base")["toy"]) == []
    assert "**Headline**" in markdown_dataset(s)
    # two entries under study: each is compared with the other too (e.g. PMTA warm vs cold)
    two = "\n".join(headline(summarize(recs + weak, baseline="best", proposed=["Model", "Weak"])["toy"]))
    model_part, weak_part = two.split("- **Weak**")
    assert "Weak (" in model_part.split("significantly better than:")[1].splitlines()[0]
    assert "Model (" in weak_part.split("significantly worse than:")[1].splitlines()[0]


def test_cell_comparison_gathers_the_significant_cells_sparsest_first():
    """DELTA makes Model significantly better in cell 0, worse in cell 1, neither in 2 and 3; the
    list gives the mean differences and orders the cells by their test positives."""
    from mdmt.bench.report import cell_comparison

    s = summarize(_records(), baseline="Base")["toy"]
    c0, c1 = s.cells[0], s.cells[1]
    s.positives = {c: 100 * (len(s.cells) - i) for i, c in enumerate(s.cells)}  # the last cell is the sparsest
    md = "\n".join(cell_comparison(s))
    header, rows = _table_rows(md, "| Model | Regime")
    better, worse = rows["Model"][2], rows["Model"][3]
    d0 = 100 * (np.mean([BASE[0][i] + DELTA[0][i] for i in range(4)]) - np.mean(BASE[0]))
    d1 = 100 * (np.mean([BASE[1][i] + DELTA[1][i] for i in range(4)]) - np.mean(BASE[1]))
    assert better == f"1 of 4: {c0} ({d0:+.2f}, 400 pos.)"
    assert worse == f"1 of 4: {c1} ({d1:+.2f}, 300 pos.)"
    assert "Base" not in rows  # the baseline is not compared with itself
    assert "**Per cell against Base**" in markdown_dataset(s)
    # sparsest first: make the model better in both cells 0 and 1 and flip the sizes
    recs = _records()
    for r in recs:
        if r["label"] == "Model":
            r["test"]["cells"][1]["auc"] = r["test"]["cells"][1]["auc"] + 0.06 + 0.001 * r["seed"]
    s2 = summarize(recs, baseline="Base")["toy"]
    s2.positives = {c0: 500, c1: 20}
    better2 = _table_rows("\n".join(cell_comparison(s2)), "| Model | Regime")[1]["Model"][2]
    assert better2.startswith(f"2 of 4: {c1} (") and f"; {c0} (" in better2
    # nothing to say without a baseline row or with one seed
    assert cell_comparison(summarize(_records(), baseline="nope")["toy"]) == []
    one = [r for r in _records() if r["seed"] == 0]
    assert cell_comparison(summarize(one, baseline="Base")["toy"]) == []


def test_seed_noise_line_states_the_minimal_detectable_difference():
    from mdmt.bench.report import MDD_Z, minimal_detectable_difference, seed_noise

    # 2.80 · std · sqrt(2/n): std 0.002 over 5 seeds -> 0.00354
    assert minimal_detectable_difference(0.002, 5) == pytest.approx(MDD_Z * 0.002 * math.sqrt(2 / 5))
    assert minimal_detectable_difference(0.002, 5) == pytest.approx(0.003544, abs=1e-6)

    class _S:  # the fields seed_noise reads
        def __init__(self, stds):
            self.models = [type("M", (), {"avg_auc": Stat(0.7, sd, 5)})() for sd in stds]

    lines = seed_noise(_S([0.001, 0.003, 0.002]))
    assert "seed std 0.20" in lines[0] and "0.10–0.30" in lines[0]
    assert f"**{100 * minimal_detectable_difference(0.002, 5):.2f}**" in lines[0]
    assert seed_noise(_S([])) == []


def test_code_line_counts_the_runs_of_each_code_version():
    from mdmt.bench.report import code_line

    recs = [{"code": {"mdmt": "0.1", "code": "aaa"}}] * 3 + [{"code": {"mdmt": "0.1", "code": "bbb"}}, {}]
    line = code_line(recs)
    assert line.startswith("Runs made by: mdmt 0.1, code aaa (3 runs)")
    assert "code bbb (1 run)" in line and "unrecorded code (1 run)" in line
    assert code_line([]) == ""
    assert "1 of them are copies of identical runs" in code_line([{"code": {}, "copied_from": "other/cells/x.json"}])


def test_the_machine_line_states_the_cpu_and_threads_the_runs_trained_with():
    from mdmt.bench.harness import machine_line
    from mdmt.bench.report import runs_machine

    meta = {"cpu": "CPU X", "logical_cores": 2, "torch_threads": 2, "torch": "2", "python": "3", "os": "L"}
    one = [{"machine": {"cpu": "CPU X", "torch_threads": 1}}] * 2
    assert "torch threads 1;" in machine_line(runs_machine(meta, one))
    mixed = one + [{"machine": {"cpu": "CPU Y", "torch_threads": 2}}, {}]
    line = machine_line(runs_machine(meta, mixed))
    assert "CPU X / CPU Y (per run)" in line and "torch threads 1 / 2 (per run)" in line
    assert runs_machine(meta, []) == meta  # no records: the bench process's own description


def test_valid_table_adds_the_validation_split_beside_the_test_one(tmp_path):
    from mdmt.bench.report import markdown_report

    cfg = _cfg(tmp_path, valid_table=True, entries=[BenchEntry(label="Base", model="mlp"),
                                                     BenchEntry(label="Model", model="mlp")], baseline="Base",
               seesaw_reference=None)
    recs = _records()
    for r in recs:  # validation figures 0.1 below the test ones
        r["valid"] = _eval([c["auc"] - 0.1 for c in r["test"]["cells"]], [0.5, 0.4, 0.3, 0.2], None)
    test = summarize(recs, cfg.baseline, "test", ["Base", "Model"])
    md = markdown_report(cfg, test, records=recs)
    assert "### toy (test split)" in md and "### toy (valid split)" in md
    assert md.index("### toy (test split)") < md.index("### toy (valid split)")
    valid = summarize(recs, cfg.baseline, "valid", ["Base", "Model"])
    assert valid["toy"].model("Base").avg_auc.mean == pytest.approx(test["toy"].model("Base").avg_auc.mean - 0.1)
    off = markdown_report(cfg.model_copy(update={"valid_table": False}), test, records=recs)
    assert "valid split" not in off


def test_learned_values_of_the_selected_epoch_are_reported_per_entry():
    from mdmt.bench.report import learned_values_markdown, selected_values

    def rec(seed, best, values):
        hist = [{"epoch": e + 1, "model_values": {"alpha_d": v}} for e, v in enumerate(values)]
        return {"dataset": "toy", "label": "M3oE", "seed": seed, "best_epoch": best, "history": hist}

    a, b = rec(0, 2, [0.5, 0.7, 0.9]), rec(1, 1, [0.6, 0.8])
    assert selected_values(a) == {"alpha_d": 0.7}  # the kept epoch, not the last one
    assert selected_values({"best_epoch": {"unit": 1}, "history": []}) == {}  # several models
    lines = learned_values_markdown([a, b, {"dataset": "toy", "label": "MLP", "best_epoch": 1, "history": []}],
                                    "toy", ["MLP", "M3oE"])
    assert lines[2] == "- M3oE (2 seeds): alpha_d 0.650 ± 0.071"
    assert not any("MLP" in x for x in lines)
    assert learned_values_markdown([], "toy", ["M3oE"]) == []
