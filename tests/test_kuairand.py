"""KuaiRand-Pure loader: logs written in the official format, joined with the real profile files."""

from __future__ import annotations

import csv
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mdmt.data.base import DataError
from mdmt.data.kuairand import KuaiRandConfig, load
from mdmt.schema import ConfigError, parse_config

# the official header of the KuaiRand-Pure interaction logs, in file order
OFFICIAL_HEADER = (
    "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
    "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab"
)
LOG_A = "log_standard_4_08_to_4_21_pure.csv"
LOG_B = "log_standard_4_22_to_5_08_pure.csv"
UNKNOWN_USER = 99_999_999
UNKNOWN_VIDEO = 88_888_888


def _features_dir(data_dir: Path) -> Path:
    d = data_dir / "kuairand-pure-features"
    assert (d / "user_features_pure.csv").is_file(), f"{d} lacks user_features_pure.csv"
    return d


def _csv_rows(path: Path, key: str) -> dict[int, dict[str, str]]:
    with open(path, newline="") as fh:
        return {int(r[key]): r for r in csv.DictReader(fh)}


def _write_logs(directory: Path, features: Path, n: int = 600, seed: int = 0) -> pl.DataFrame:
    """Two logs in the official format with real user/video ids (plus one unknown of each)."""
    rng = np.random.default_rng(seed)
    users = np.array(sorted(_csv_rows(features / "user_features_pure.csv", "user_id")))
    videos = np.array(sorted(_csv_rows(features / "video_features_basic_pure.csv", "video_id")))
    user_pool = np.append(rng.choice(users, 25, replace=False), UNKNOWN_USER)
    video_pool = np.append(rng.choice(videos, 120, replace=False), UNKNOWN_VIDEO)
    base = 1_649_376_000_000  # 2022-04-08 00:00 UTC+8, in ms
    t = base + np.sort(rng.integers(0, 240, n)) * 10_800_000  # 3-hour slots over 30 days: many ties
    hourmin = ((t - base) // 3_600_000 % 24) * 100 + (t - base) // 60_000 % 60
    day = (t - base) // 86_400_000
    date = np.array([20220408 + d if d < 23 else 20220501 + d - 23 for d in day])
    df = pl.DataFrame(
        {
            "user_id": rng.choice(user_pool, n),
            "video_id": rng.choice(video_pool, n),
            "date": date,
            "hourmin": hourmin,
            "time_ms": t,
            **{c: rng.integers(0, 2, n) for c in ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view")},
            "play_time_ms": rng.integers(0, 60_000, n),
            "duration_ms": rng.integers(1_000, 60_000, n),
            "profile_stay_time": rng.integers(0, 100, n),
            "comment_stay_time": rng.integers(0, 100, n),
            "is_profile_enter": rng.integers(0, 2, n),
            "is_rand": np.zeros(n, dtype=np.int64),
            "tab": rng.choice([0, 1, 1, 1, 2, 4, 6], n),
        }
    ).unique(["user_id", "video_id", "time_ms"], keep="first", maintain_order=True)
    assert ",".join(df.columns) == OFFICIAL_HEADER
    directory.mkdir(parents=True, exist_ok=True)
    cut = df.height // 2
    df.head(cut).write_csv(directory / LOG_A)
    df.slice(cut).write_csv(directory / LOG_B)
    assert (directory / LOG_A).read_text().splitlines()[0] == OFFICIAL_HEADER
    return df


@pytest.fixture
def logs(tmp_path: Path, data_dir: Path) -> tuple[Path, Path, pl.DataFrame]:
    feats = _features_dir(data_dir)
    df = _write_logs(tmp_path / "logs", feats)
    return tmp_path / "logs", feats, df


def test_load_joins_real_profiles(logs: tuple[Path, Path, pl.DataFrame]) -> None:
    log_dir, feats, written = logs
    raw = load(KuaiRandConfig(path=str(log_dir), features_path=str(feats)))
    f, spec = raw.frame, raw.spec

    # domains = tab, three tabs kept by default; other tabs dropped
    kept = written.filter(pl.col("tab").is_in([0, 1, 2]))
    assert f.height == kept.height and raw.meta["rows_dropped_other_tabs"] == written.height - kept.height
    assert spec.domain_names == ["tab0", "tab1", "tab2"] and spec.domain.column == "domain"
    assert f.select(pl.col("domain") == pl.lit("tab") + pl.col("tab").cast(pl.String)).to_series().all()
    assert raw.meta["domain_rows"] == {f"tab{t}": kept.filter(pl.col("tab") == t).height for t in (0, 1, 2)}

    # labels are the written values, row by row
    key = ["user_id", "video_id", "time_ms"]
    both = kept.join(f, on=key, how="left", suffix="_got")
    assert both.height == f.height
    for task in ("is_click", "long_view"):
        assert (both[task] == both[f"{task}_got"]).all()
    assert spec.task_names == ["is_click", "long_view"] and [t.label for t in spec.tasks] == ["is_click", "long_view"]
    assert (both["play_time_ms"] == both["play_time_ms_got"]).all()  # raw columns are kept
    assert (f["hour"] == f["hourmin"] // 100).all()

    # joined profiles equal the files' values for known ids; null for unknown ids
    users = _csv_rows(feats / "user_features_pure.csv", "user_id")
    videos = _csv_rows(feats / "video_features_basic_pure.csv", "video_id")
    user_cols = ["user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
                 "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range",
                 *[f"onehot_feat{i}" for i in range(18)]]  # fmt: skip
    checked_multi_tag = 0
    for row in f.iter_rows(named=True):
        if row["user_id"] == UNKNOWN_USER:
            assert all(row[c] is None for c in user_cols)
        else:
            u = users[row["user_id"]]
            assert [row[c] for c in user_cols] == [u[c] if u[c] != "" else None for c in user_cols]
            assert row["user_active_degree"] is not None
        if row["video_id"] == UNKNOWN_VIDEO:
            assert row["author_id"] is None and row["tag"] is None and row["video_type"] is None
        else:
            v = videos[row["video_id"]]
            for c in ("author_id", "video_type", "upload_type", "visible_status"):
                assert row[c] == v[c] and row[c] is not None
            assert row["music_type"] == (v["music_type"] or None)
            assert row["tag"] == (v["tag"].split(",")[0] if v["tag"] else None)
            checked_multi_tag += "," in v["tag"]
    assert checked_multi_tag > 0  # the first-tag rule was exercised
    assert f.filter(pl.col("user_id") == UNKNOWN_USER).height > 0
    assert 0.9 < raw.meta["user_profile_coverage"] < 1.0
    assert all(raw.meta["official_sha256_match"].values())

    # schema
    names = [x.name for x in spec.features]
    for c in ["user_id", "video_id", "author_id", "tag", "hour", *user_cols]:
        assert c in names and spec.feature(c).kind == "sparse"
    assert spec.group == "user_id" and spec.timestamp == "time_ms" and spec.split.method == "temporal"
    assert spec.feature("hist_is_click").vocab == "video_id"
    assert spec.tasks[1].related_features == ["user_long_view_count", "user_long_view_rate", "item_long_view_count", "item_long_view_rate"]
    assert (np.diff(f["time_ms"].to_numpy()) >= 0).all()


def test_history_is_leak_free_on_kuairand(logs: tuple[Path, Path, pl.DataFrame]) -> None:
    log_dir, feats, _ = logs
    f = load(KuaiRandConfig(path=str(log_dir), features_path=str(feats), seq_len=5)).frame
    ev = f.select("user_id", "video_id", "time_ms", "is_click").to_numpy()
    tied = f.filter(pl.len().over(["user_id", "time_ms"]) > 1)
    assert tied.height > 0
    for row in pl.concat([tied, f.sample(40, seed=0)]).iter_rows(named=True):
        past = ev[(ev[:, 2] < row["time_ms"]) & (ev[:, 0] == row["user_id"])]
        assert row["user_events"] == len(past)
        assert row["user_is_click_count"] == int(past[:, 3].sum())
        item_past = ev[(ev[:, 2] < row["time_ms"]) & (ev[:, 1] == row["video_id"])]
        assert row["item_is_click_count"] == int(item_past[:, 3].sum())
        assert len(row["hist_all"]) == min(5, len(past))
        assert set(row["hist_is_click"]) <= set(past[past[:, 3] == 1][:, 1].tolist())


def test_tab_options(logs: tuple[Path, Path, pl.DataFrame]) -> None:
    log_dir, feats, written = logs
    raw = load(KuaiRandConfig(path=str(log_dir), features_path=str(feats), tabs=None, history=False))
    assert raw.spec.domain_names == ["tab0", "tab1", "tab2", "tab4", "tab6"]
    assert raw.frame.height == written.height and raw.meta["rows_dropped_other_tabs"] == 0
    assert not any(c.startswith("hist_") for c in raw.frame.columns)
    assert all(t.related_features == [] for t in raw.spec.tasks)

    cfg = KuaiRandConfig(path=str(log_dir), features_path=str(feats), tab_mapping={"main": [1], "other": [0, 2, 4]}, split="random")
    raw = load(cfg)
    assert raw.spec.domain_names == ["main", "other"] and raw.spec.split.method == "random"
    assert raw.frame.height == written.filter(pl.col("tab") != 6).height
    got = raw.frame.select((pl.col("domain") == "main") == (pl.col("tab") == 1)).to_series()
    assert got.all()

    raw = load(KuaiRandConfig(path=str(log_dir), features_path=str(feats), tasks=["is_like", "is_follow", "long_view"], logs=[LOG_A]))
    assert raw.spec.task_names == ["is_like", "is_follow", "long_view"]
    assert raw.frame["log"].unique().to_list() == [LOG_A]
    assert "hist_is_follow" in raw.frame.columns


def test_clear_errors(tmp_path: Path, logs: tuple[Path, Path, pl.DataFrame]) -> None:
    log_dir, feats, _ = logs
    missing = log_dir / "log_random_4_22_to_5_08_pure.csv"
    with pytest.raises(DataError, match=str(missing).replace(".", r"\.")):
        load(KuaiRandConfig(path=str(log_dir), features_path=str(feats), logs=[LOG_A, missing.name]))

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    text = (log_dir / LOG_A).read_text().splitlines()
    (bad_dir / LOG_A).write_text("\n".join([text[0].replace(",tab", ",tab_id"), *text[1:]]) + "\n")
    with pytest.raises(DataError, match=r"log_standard_4_08_to_4_21_pure\.csv: missing column\(s\) \['tab'\]"):
        load(KuaiRandConfig(path=str(bad_dir), features_path=str(feats), logs=[LOG_A]))

    header = text[0].split(",")
    fields = text[3].split(",")
    fields[header.index("is_click")] = "2"
    (bad_dir / LOG_A).write_text("\n".join([text[0], text[1], text[2], ",".join(fields)]) + "\n")
    with pytest.raises(DataError, match=r"column 'is_click' data row 3: label 2 is not 0 or 1"):
        load(KuaiRandConfig(path=str(bad_dir), features_path=str(feats), logs=[LOG_A]))

    fields = text[2].split(",")
    fields[header.index("time_ms")] = "soon"
    (bad_dir / LOG_A).write_text("\n".join([text[0], text[1], ",".join(fields)]) + "\n")
    with pytest.raises(DataError, match=r"column 'time_ms' data row 2: 'soon' is not an integer"):
        load(KuaiRandConfig(path=str(bad_dir), features_path=str(feats), logs=[LOG_A]))

    with pytest.raises(DataError, match="user_features_pure.csv"):
        load(KuaiRandConfig(path=str(log_dir), features_path=str(tmp_path / "nowhere")))

    with pytest.raises(ConfigError, match="unknown KuaiRand behaviours"):
        parse_config({"tasks": ["is_clik"]}, KuaiRandConfig, "exp.yaml")
    with pytest.raises(ConfigError, match="unknown key 'tab_map'"):
        parse_config({"tab_map": {}}, KuaiRandConfig, "exp.yaml")
    with pytest.raises(ConfigError, match="mapped to both"):
        parse_config({"tab_mapping": {"a": [1], "b": [1, 2]}}, KuaiRandConfig, "exp.yaml")


def test_default_paths_under_data_dir(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feats = _features_dir(data_dir)
    root = tmp_path / "root"
    written = _write_logs(root / "KuaiRand-Pure" / "data", feats, n=200)
    # profiles found in <data_dir>/kuairand-pure-features when absent beside the logs
    (root / "kuairand-pure-features").mkdir()
    for name in ("user_features_pure.csv", "video_features_basic_pure.csv"):
        (root / "kuairand-pure-features" / name).symlink_to((feats / name).resolve())
    monkeypatch.setenv("MDMT_DATA_DIR", str(root))
    raw = load(KuaiRandConfig(cache_dir=str(tmp_path / "cache")))
    assert raw.meta["log_dir"] == str(root / "KuaiRand-Pure" / "data")
    assert raw.frame.height == written.filter(pl.col("tab").is_in([0, 1, 2])).height
    monkeypatch.delenv("MDMT_DATA_DIR")
    with pytest.raises(DataError, match=r"no directory holding the logs.*download"):
        load(KuaiRandConfig(cache_dir=str(tmp_path / "cache")), data_dir=tmp_path / "empty")


def test_download_from_a_local_archive(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feats = _features_dir(data_dir)
    staging = tmp_path / "staging" / "KuaiRand-Pure" / "data"
    written = _write_logs(staging, feats, n=150)
    archive = tmp_path / "KuaiRand-Pure.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for p in sorted(staging.iterdir()):
            tf.add(p, arcname=f"KuaiRand-Pure/data/{p.name}")
        for name in ("user_features_pure.csv", "video_features_basic_pure.csv"):
            tf.add(feats / name, arcname=f"KuaiRand-Pure/data/{name}")
    monkeypatch.delenv("MDMT_DATA_DIR", raising=False)
    cfg = KuaiRandConfig(download=True, cache_dir=str(tmp_path / "cache"), url=archive.as_uri())
    raw = load(cfg, data_dir=tmp_path / "empty")
    assert raw.frame.height == written.filter(pl.col("tab").is_in([0, 1, 2])).height
    assert raw.meta["log_dir"] == str(tmp_path / "cache" / "KuaiRand-Pure")

    # an archive without the expected files is refused and not kept
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz") as tf:
        tf.add(staging / LOG_A, arcname=f"KuaiRand-Pure/data/{LOG_A}")
    cfg = KuaiRandConfig(download=True, cache_dir=str(tmp_path / "cache2"), url=(tmp_path / "empty.tar.gz").as_uri())
    with pytest.raises(DataError, match="does not contain"):
        load(cfg, data_dir=tmp_path / "empty")
    assert not (tmp_path / "cache2" / "KuaiRand-Pure.tar.gz").exists()
