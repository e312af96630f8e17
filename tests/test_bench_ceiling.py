"""The bench's learnable-ceiling row: fitted once per synthetic data set, cached, shown beside the oracle."""

from __future__ import annotations

from pathlib import Path

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
