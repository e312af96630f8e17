"""The bench's learnable-ceiling row: fitted once per synthetic data set, cached, shown beside the oracle."""

from __future__ import annotations

from pathlib import Path
import pytest

import mdmt.bench.harness as harness
from mdmt.bench.harness import BenchConfig, BenchEntry, run_bench
from mdmt.config import DataConfig, TrainConfig


def test_bench_shows_the_learnable_ceiling_and_caches_it(tmp_path: Path, monkeypatch):
    import mdmt.data.ceiling as ceiling_mod

    cfg = BenchConfig(
        name="t",
        datasets={"toy": DataConfig(source="synthetic", params={"preset": "douyin", "rows": 3000})},
        entries=[BenchEntry(label="MLP", model="mlp", params={"hidden": [8]})],
        seeds=[0],
        train=TrainConfig(epochs=1, batch_size=512),
        baseline="MLP",
        output_dir=str(tmp_path / "out"),
        learnable_ceiling=True,
        ceiling_epochs=1,
    )
    res = run_bench(cfg, progress=False)
    cached = harness.ceiling_path(cfg.output_dir, "toy")
    cells = harness.ceiling_cells(cfg, "toy")
    assert cached.is_file() and set(cells) == {f"{d}/{t}" for d in ("A", "B") for t in
                                               ("like", "follow", "comment", "dislike", "headslideleft", "finish")}
    md = res.report["results.md"].read_text()
    assert "*Learnable ceiling (generator's form fitted)*" in md and "Ceiling gap ↓" in md
    # a second run reads the cached fit; other data params would fit again
    monkeypatch.setattr(ceiling_mod, "learnable_ceiling", lambda *a, **k: (_ for _ in ()).throw(AssertionError("refit")))
    run_bench(cfg, progress=False)
    other = cfg.model_copy(update={"datasets": {"toy": DataConfig(source="synthetic", params={"preset": "douyin", "rows": 3001})}})
    assert harness.ceiling_cells(other, "toy") == {}
    assert harness.ceiling_cells(cfg.model_copy(update={"learnable_ceiling": False}), "toy") == {}


def test_report_shows_a_ceiling_made_by_other_code_but_a_run_refits_it(tmp_path: Path, monkeypatch):
    import json

    import mdmt.data.ceiling as ceiling_mod

    cfg = BenchConfig(
        name="t", datasets={"toy": DataConfig(source="synthetic", params={"preset": "douyin", "rows": 3000})},
        entries=[BenchEntry(label="MLP", model="mlp")], seeds=[0], baseline="MLP",
        output_dir=str(tmp_path / "out"), learnable_ceiling=True, ceiling_epochs=1,
    )
    path = harness.ceiling_path(cfg.output_dir, "toy")
    path.parent.mkdir(parents=True)
    key = {"params": {"preset": "douyin", "rows": 3000}, "epochs": 1, "code": {"mdmt": "0", "code": "other"}}
    path.write_text(json.dumps({"key": key, "auc": {"A/like": 0.9}}))
    assert harness.ceiling_cells(cfg, "toy") == {"A/like": 0.9}  # a report: the bench's own figure
    monkeypatch.setattr(ceiling_mod, "learnable_ceiling", lambda *a, **k: (_ for _ in ()).throw(AssertionError("refit")))
    with pytest.raises(AssertionError, match="refit"):
        harness.ceiling_cells(cfg, "toy", compute=True)  # a run recomputes what other code made
    other = cfg.model_copy(update={"ceiling_epochs": 2})
    assert harness.ceiling_cells(other, "toy") == {}
