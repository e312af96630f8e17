"""End-to-end on real MovieLens-100K (read through MDMT_DATA_DIR).

* MMoE trained jointly on the M3oE protocol clears a stated average-test-AUC floor. For
  reference, the official M3oE code reports about 0.708 on this protocol; our MMoE reaches about
  0.71 with the settings of ``configs/ml100k_mmoe.yaml`` (see BENCHMARKS.md), so the floor of
  0.69 leaves room for seed noise while still failing on a broken pipeline (a model that learns
  nothing scores 0.5; one that only learns per-domain base rates scores well below 0.65).
* On the temporal protocol, the vocabulary and every dense statistic come from the train split
  only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from mdmt.config import DataConfig, load_experiment
from mdmt.data import load_prepared, load_raw
from mdmt.data.preprocess import split_frame
from mdmt.featuremap import FIRST_ID, OOV
from mdmt.train.run import run_experiment

ROOT = Path(__file__).resolve().parents[1]
AUC_FLOOR = 0.69


def test_mmoe_ml100k_m3oe_clears_auc_floor(data_dir, tmp_path):
    cfg = load_experiment(ROOT / "configs" / "ml100k_mmoe.yaml",
                          {"train": {"progress": False}, "output_dir": str(tmp_path)})
    res = run_experiment(cfg, data_dir=str(data_dir), quiet=True)
    assert len(res.test.cells) == 6
    assert res.test.avg_auc >= AUC_FLOOR, res.test.markdown()
    for c in res.test.cells:  # every cell learned something
        assert c.auc > 0.62, (c.domain, c.task, c.auc)
    # selection used validation only: the best epoch's validation score is the maximum seen
    scores = [h["valid_score"] for h in res.history]
    assert res.history[res.best_epoch - 1]["valid_score"] == max(scores)  # best_epoch is 1-based


def test_temporal_vocab_and_stats_come_from_train_only(data_dir):
    dcfg = DataConfig(source="movielens", params={"variant": "ml-100k", "protocol": "temporal"})
    raw = load_raw(dcfg, data_dir=str(data_dir))
    splits = split_frame(raw)
    prepared = load_prepared(dcfg, data_dir=str(data_dir), progress=False)
    fm = prepared.feature_map
    train = splits["train"]
    # vocabulary: exactly the ids seen in train (ids only in valid/test are OOV)
    for f in ("user_id", "movie_id", "zip"):
        train_ids = set(train[f].cast(pl.Utf8).unique().to_list())
        assert set(fm.vocabs[f]) <= train_ids | set(
            x for col in ("hist_click", "hist_like", "hist_all") if f == "movie_id"
            for x in train[col].explode().drop_nulls().cast(pl.Utf8).unique().to_list())
        later_only = set(splits["test"][f].cast(pl.Utf8).unique().to_list()) - train_ids
        if f == "movie_id":
            later_only -= set(train["hist_all"].explode().drop_nulls().cast(pl.Utf8).to_list())
        col = fm.sparse_index(f)
        test_ids = splits["test"][f].cast(pl.Utf8).to_numpy()
        enc = prepared.splits["test"].sparse[:, col].numpy()
        mask = np.isin(test_ids, list(later_only))
        if f == "user_id":
            assert mask.any(), "the temporal test split should contain users unseen in train"
        assert np.all(enc[mask] == OOV)
        assert np.all(enc[~mask] >= FIRST_ID)
    # dense statistics: mean/std of the train split only
    for name in fm.dense:
        spec = fm.spec.feature(name)
        x = train[spec.raw_column].cast(pl.Float64).to_numpy()
        x = x[np.isfinite(x)]
        if spec.transform == "log_standard":
            x = np.log1p(np.maximum(x, 0))
        st = fm.dense_stats[name]
        assert np.isclose(st.mean, x.mean(), rtol=1e-9, atol=1e-12), name
        assert np.isclose(st.std, x.std() if x.std() > 0 else 1.0, rtol=1e-9, atol=1e-12), name
    assert fm.num_rows.get("train", len(train)) == len(train)
