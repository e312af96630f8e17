"""Preprocessing: splits, fit on train only, encoding conventions, cache, and clear errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

import mdmt.data.preprocess as pp
from mdmt.data.base import DataError, RawData
from mdmt.data.preprocess import (
    DenseNorm, dense_values, encode, encode_for_scoring, fit_feature_map, prepare, split_frame, validate,
)
from mdmt.data.records import RecordEncoder
from mdmt.featuremap import FIRST_ID, OOV, DenseStats, FeatureMap
from mdmt.schema import DatasetSpec, DomainSpec, FeatureSpec, SplitSpec, TaskSpec

BATCH_FIELDS = ("sparse", "dense", "domain", "labels", "label_mask", "group")


def make_spec(split: SplitSpec | None = None, **kw) -> DatasetSpec:
    features = kw.pop(
        "features",
        [
            FeatureSpec(name="user_id", source="user"),
            FeatureSpec(name="item_id", source="item"),
            FeatureSpec(name="price", kind="dense", source="item"),
            FeatureSpec(name="views", kind="dense", transform="log_standard"),
            FeatureSpec(name="score", kind="dense", transform="minmax"),
            FeatureSpec(name="age", kind="dense", source="user", transform="bucketize", buckets=4),
            FeatureSpec(name="hist", kind="sequence", vocab="item_id", max_len=3),
        ],
    )
    return DatasetSpec(
        name="toy",
        features=features,
        domain=kw.pop("domain", DomainSpec(column="dom", names=["d0", "d1"])),
        tasks=kw.pop("tasks", [TaskSpec(name="click", label="y_click"), TaskSpec(name="buy", label="y_buy")]),
        group=kw.pop("group", "user_id" if any(f.name == "user_id" for f in features) else None),
        timestamp="ts",
        split=split or SplitSpec(method="sequential", ratios=(0.8, 0.1, 0.1)),
        **kw,
    )


def make_frame(n: int = 200, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "user_id": rng.integers(0, 20, n),
            "item_id": rng.integers(0, 30, n),
            "price": rng.normal(5.0, 2.0, n),
            "views": rng.exponential(100.0, n),
            "score": rng.uniform(-1.0, 3.0, n),
            "age": rng.integers(15, 70, n).astype(np.float64),
            "hist": [rng.integers(0, 30, int(k)).tolist() for k in rng.integers(0, 6, n)],
            "dom": rng.choice(["d0", "d1"], n),
            "y_click": rng.integers(0, 2, n),
            "y_buy": rng.integers(0, 2, n).astype(np.float64),
            "ts": np.arange(n, dtype=np.int64),
        }
    )


def assert_batches_equal(a, b) -> None:
    for f in BATCH_FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.sequences.keys() == b.sequences.keys()
    for k in a.sequences:
        assert torch.equal(a.sequences[k], b.sequences[k]), k
        assert torch.equal(a.seq_lengths[k], b.seq_lengths[k]), k


# ---------------------------------------------------------------------------------------------
# fit on train only
# ---------------------------------------------------------------------------------------------
def test_vocab_and_stats_come_from_train_only():
    n = 100
    frame = make_frame(n)
    # rows 80.. are valid/test (sequential split, raw order): give them unseen ids and extreme values
    is_eval = np.arange(n) >= 80
    frame = frame.with_columns(
        user_id=pl.when(pl.Series(is_eval)).then(pl.col("user_id") + 1000).otherwise(pl.col("user_id")),
        item_id=pl.when(pl.Series(is_eval)).then(pl.col("item_id") + 5000).otherwise(pl.col("item_id")),
        price=pl.when(pl.Series(is_eval)).then(1e9).otherwise(pl.col("price")),
        views=pl.when(pl.Series(is_eval)).then(1e12).otherwise(pl.col("views")),
        hist=pl.when(pl.Series(is_eval)).then(pl.lit([7777, 8888])).otherwise(pl.col("hist")),
    )
    spec = make_spec()
    data = prepare(RawData(spec, frame, "toy.csv"), cache_dir=None, progress=False)
    fm = data.feature_map
    train = frame[:80]

    assert set(fm.vocabs["user_id"]) == {str(u) for u in train["user_id"].to_list()}
    train_items = set(map(str, train["item_id"].to_list())) | {str(i) for h in train["hist"].to_list() for i in h}
    assert set(fm.vocabs["item_id"]) == train_items  # sequences count towards their vocab group
    assert not any(int(v) >= 1000 for v in fm.vocabs["user_id"])
    assert "7777" not in fm.vocabs["item_id"]

    for split in ("valid", "test"):
        b = data.splits[split]
        assert torch.all(b.sparse[:, fm.sparse_index("user_id")] == OOV)
        assert torch.all(b.sparse[:, fm.sparse_index("item_id")] == OOV)
        assert torch.all(b.sequences["hist"][:, :2] == OOV) and torch.all(b.seq_lengths["hist"] == 2)

    price = train["price"].to_numpy()
    assert fm.dense_stats["price"].mean == pytest.approx(np.mean(price), rel=1e-12)
    assert fm.dense_stats["price"].std == pytest.approx(np.std(price), rel=1e-12)
    lv = np.log1p(np.maximum(train["views"].to_numpy(), 0))
    assert fm.dense_stats["views"].mean == pytest.approx(lv.mean(), rel=1e-12)
    assert fm.dense_stats["views"].std == pytest.approx(lv.std(), rel=1e-12)
    sc = train["score"].to_numpy()
    assert (fm.dense_stats["score"].min, fm.dense_stats["score"].max) == (sc.min(), sc.max())
    age = train["age"].to_numpy()
    expected_b = np.unique(np.quantile(age, [0.25, 0.5, 0.75]))
    np.testing.assert_allclose(fm.dense_stats["age"].boundaries, expected_b)

    # encoded train values follow the formulas
    d = data.splits["train"].dense.numpy()
    np.testing.assert_allclose(d[:, fm.dense.index("price")], (price - price.mean()) / price.std(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d[:, fm.dense.index("views")], (lv - lv.mean()) / lv.std(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d[:, fm.dense.index("score")], (sc - sc.min()) / (sc.max() - sc.min()), rtol=1e-5, atol=1e-6)
    ages = data.splits["train"].sparse[:, fm.sparse_index("age")].numpy()
    np.testing.assert_array_equal(ages, FIRST_ID + np.searchsorted(expected_b, age, side="right"))
    # the extreme valid price is standardised with the train statistics, not re-fitted
    vprice = data.splits["valid"].dense[:, fm.dense.index("price")].numpy()
    np.testing.assert_allclose(vprice, (1e9 - price.mean()) / price.std(), rtol=1e-5)


def test_min_count_and_vocab_order():
    ids = ["a"] * 5 + ["c"] * 3 + ["b"] * 3 + ["d"] * 2 + ["e"]
    n = len(ids)
    spec = make_spec(features=[FeatureSpec(name="tok", min_count=3)])
    frame = pl.DataFrame({"tok": ids, "dom": ["d0"] * n, "y_click": [0] * n, "y_buy": [1] * n, "ts": list(range(n))})
    fm = fit_feature_map(frame, spec)
    assert fm.vocabs["tok"] == ["a", "b", "c"]  # frequency desc, ties by value; d (2) and e (1) dropped
    b = encode(pl.DataFrame({"tok": ["a", "b", "c", "d", "e", None], "dom": ["d1"] * 6, "y_click": [1] * 6, "y_buy": [0] * 6}), fm)
    assert b.sparse[:, 0].tolist() == [2, 3, 4, OOV, OOV, OOV]
    assert fm.vocab_size("tok") == FIRST_ID + 3


def test_sequence_keeps_first_max_len_and_pads():
    spec = make_spec(features=[FeatureSpec(name="item_id"), FeatureSpec(name="hist", kind="sequence", vocab="item_id", max_len=3)])
    frame = pl.DataFrame(
        {
            "item_id": [10, 11, 12],
            "hist": [[10, 11, 12, 10], [], None],
            "dom": ["d0", "d1", "d0"],
            "y_click": [0, 1, None],
            "y_buy": [1, 0, 0],
        }
    )
    fm = fit_feature_map(frame, spec)
    idx = {v: i + FIRST_ID for i, v in enumerate(fm.vocabs["item_id"])}
    assert fm.vocabs["item_id"][0] == "10"  # 3 occurrences (item + 2 in hist)
    b = encode(frame, fm)
    assert b.sequences["hist"].tolist() == [[idx["10"], idx["11"], idx["12"]], [0, 0, 0], [0, 0, 0]]
    assert b.seq_lengths["hist"].tolist() == [3, 0, 0]
    assert b.label_mask[:, 0].tolist() == [True, True, False]
    assert b.labels[2, 0].item() == 0.0


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------
def test_temporal_split_never_straddles_a_timestamp():
    rng = np.random.default_rng(1)
    n = 997
    ts = np.sort(rng.integers(0, 40, n))  # many ties
    frame = make_frame(n).with_columns(ts=pl.Series(rng.permutation(ts)))
    raw = RawData(make_spec(SplitSpec(method="temporal")), frame, "toy.csv")
    parts = split_frame(raw)
    tr, va, te = (set(parts[s]["ts"].to_list()) for s in ("train", "valid", "test"))
    assert not (tr & va) and not (va & te) and not (tr & te)
    assert parts["train"]["ts"].max() <= parts["valid"]["ts"].min() <= parts["test"]["ts"].min()
    assert sum(p.height for p in parts.values()) == n
    # ties go to the earlier split: the train cut is the end of the run holding row round(0.8 n) - 1
    sorted_ts = np.sort(ts)
    c1 = int(np.searchsorted(sorted_ts, sorted_ts[int(0.8 * n + 0.5) - 1], side="right"))
    assert parts["train"].height == c1
    assert parts["train"].height >= int(0.8 * n + 0.5)


def test_temporal_split_all_ties_gives_empty_split_error():
    frame = make_frame(50).with_columns(ts=pl.lit(7, dtype=pl.Int64))
    with pytest.raises(DataError, match=r"'valid' split is empty.*toy\.csv|toy\.csv.*'valid' split is empty"):
        split_frame(RawData(make_spec(SplitSpec(method="temporal")), frame, "toy.csv"))


def test_sequential_split_orders_by_user_stably():
    n = 300
    frame = make_frame(n, seed=3).with_columns(row=pl.arange(0, n))
    spec = make_spec(SplitSpec(method="sequential", order_by=["user_id"]))
    parts = split_frame(RawData(spec, frame, "toy.csv"))
    assert [p.height for p in parts.values()] == [240, 30, 30]
    users = pl.concat([parts[s] for s in ("train", "valid", "test")])
    assert users["user_id"].is_sorted()
    assert parts["train"]["user_id"].max() <= parts["valid"]["user_id"].min()
    for _, g in users.group_by("user_id"):
        assert g["row"].is_sorted()  # stable within a user


def test_random_and_column_splits():
    frame = make_frame(100).with_columns(fold=pl.Series(["train"] * 70 + ["valid"] * 20 + ["test"] * 10))
    a = split_frame(RawData(make_spec(SplitSpec(method="random", seed=1)), frame, "x"))
    b = split_frame(RawData(make_spec(SplitSpec(method="random", seed=1)), frame, "x"))
    c = split_frame(RawData(make_spec(SplitSpec(method="random", seed=2)), frame, "x"))
    assert a["train"].equals(b["train"]) and not a["train"].equals(c["train"])
    assert sorted(pl.concat(list(a.values()))["ts"].to_list()) == list(range(100))
    d = split_frame(RawData(make_spec(SplitSpec(method="column", column="fold")), frame, "x"))
    assert [d[s].height for s in ("train", "valid", "test")] == [70, 20, 10]
    bad = frame.with_columns(fold=pl.Series(["train"] * 99 + ["dev"]))
    with pytest.raises(DataError, match="'fold' row 99.*'dev'"):
        validate(RawData(make_spec(SplitSpec(method="column", column="fold")), bad, "x"))


def test_empty_split_names_split_and_source():
    spec = make_spec(SplitSpec(method="sequential", ratios=(0.9, 0.1, 0.0)))
    with pytest.raises(DataError) as e:
        prepare(RawData(spec, make_frame(50), "my_table.csv"), progress=False)
    assert "'test' split is empty" in str(e.value) and "my_table.csv" in str(e.value)


# ---------------------------------------------------------------------------------------------
# encoding details
# ---------------------------------------------------------------------------------------------
def test_task_domains_mask_and_null_labels():
    spec = make_spec(tasks=[TaskSpec(name="click", label="y_click"), TaskSpec(name="buy", label="y_buy", domains=["d1"])])
    frame = make_frame(60).with_columns(y_click=pl.when(pl.arange(0, 60) % 7 == 0).then(None).otherwise(pl.col("y_click")))
    fm = fit_feature_map(frame, spec)
    b = encode(frame, fm)
    dom = frame["dom"].to_numpy()
    np.testing.assert_array_equal(b.domain.numpy(), (dom == "d1").astype(np.int64))
    np.testing.assert_array_equal(b.label_mask[:, 1].numpy(), dom == "d1")
    np.testing.assert_array_equal(b.label_mask[:, 0].numpy(), np.arange(60) % 7 != 0)
    assert torch.all(b.labels[~b.label_mask] == 0)
    y = frame["y_buy"].to_numpy()
    np.testing.assert_array_equal(b.labels[:, 1].numpy()[dom == "d1"], y[dom == "d1"])


def test_domain_mapping_of_raw_values():
    spec = make_spec(domain=DomainSpec(column="age_code", names=["young", "old"], mapping={"young": [1, 18], "old": [25, 35]}))
    frame = make_frame(8).with_columns(age_code=pl.Series([1, 18, 25, 35, 1, 25, 18, 35]))
    b = encode(frame, fit_feature_map(frame, spec))
    assert b.domain.tolist() == [0, 0, 1, 1, 0, 1, 0, 1]
    bad = frame.with_columns(age_code=pl.Series([1, 18, 25, 35, 99, 25, 18, 35]))
    with pytest.raises(DataError, match=r"t\.csv.*'age_code' row 4.*99"):
        validate(RawData(spec, bad, "t.csv"))


def test_group_factorisation_keeps_unseen_users_apart():
    n = 100
    frame = make_frame(n)
    users = np.where(np.arange(n) < 80, np.arange(n) % 10, 500 + np.arange(n) % 3)  # test users unseen in train
    frame = frame.with_columns(user_id=pl.Series(users))
    data = prepare(RawData(make_spec(), frame, "toy.csv"), progress=False)
    test = data.splits["test"]
    raw_test = users[90:]
    assert torch.all(test.sparse[:, data.feature_map.sparse_index("user_id")] == OOV)  # all OOV as features...
    g = test.group.numpy()
    assert len(np.unique(g)) == 3  # ...but three separate GAUC groups
    for u in np.unique(raw_test):
        assert len(np.unique(g[raw_test == u])) == 1
    # deterministic: factorised over sorted values
    np.testing.assert_array_equal(g, np.searchsorted(np.unique(raw_test), raw_test))
    spec_nogroup = make_spec().model_copy(update={"group": None})
    b = encode(frame, fit_feature_map(frame, spec_nogroup))
    assert torch.all(b.group == -1)


def test_feature_map_json_round_trip_encodes_identically(tmp_path):
    frame = make_frame(120)
    spec = make_spec()
    fm = fit_feature_map(frame[:80], spec)
    fm.save(tmp_path / "feature_map.json")
    fm2 = FeatureMap.load(tmp_path / "feature_map.json")
    assert fm2 == fm
    new = frame[80:].with_columns(item_id=pl.col("item_id") + 10_000, price=pl.lit(None, dtype=pl.Float64))
    a, b = encode(new, fm), encode(new, fm2)
    assert_batches_equal(a, b)
    assert torch.all(a.sparse[:, fm.sparse_index("item_id")] == OOV)
    assert torch.all(a.dense[:, fm.dense.index("price")] == 0.0)  # null -> train mean -> 0
    # scoring: labels absent -> all masked
    s = encode_for_scoring(new.drop(["y_click", "y_buy"]), fm2, "score.csv")
    assert not s.label_mask.any() and torch.equal(s.sparse, a.sparse)


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------
def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    frame = make_frame(300)
    spec = make_spec()
    oracle_frame = frame.with_columns(p_click=pl.Series(np.linspace(0.01, 0.99, 300)))
    raw = RawData(spec, oracle_frame, "toy.csv", oracle={"click": "p_click"})
    first = prepare(raw, cache_dir=tmp_path, progress=False)
    assert first.cache_path is not None and (first.cache_path / "feature_map.json").is_file()
    assert (first.cache_path / "meta.json").is_file() and (first.cache_path / "train" / "part-00000.parquet").is_file()
    assert FeatureMap.load(first.cache_path / "feature_map.json") == first.feature_map

    def boom(*a, **k):
        raise AssertionError("fit_feature_map must not run on a cache hit")

    monkeypatch.setattr(pp, "fit_feature_map", boom)
    second = prepare(raw, cache_dir=tmp_path, progress=False)
    assert second.cache_path == first.cache_path
    for s in ("train", "valid", "test"):
        assert_batches_equal(first.splits[s], second.splits[s])
        np.testing.assert_array_equal(first.oracle[s], second.oracle[s])
    assert np.isnan(second.oracle["test"][:, 1]).all() and not np.isnan(second.oracle["test"][:, 0]).any()
    np.testing.assert_allclose(second.oracle["train"][:, 0], np.linspace(0.01, 0.99, 300)[:240])

    # a changed frame (one value) or a changed schema misses the cache and refits
    changed = oracle_frame.with_columns(price=pl.when(pl.arange(0, 300) == 5).then(123.0).otherwise(pl.col("price")))
    with pytest.raises(AssertionError, match="must not run"):
        prepare(RawData(spec, changed, "toy.csv", oracle={"click": "p_click"}), cache_dir=tmp_path, progress=False)
    spec2 = make_spec(SplitSpec(method="sequential", ratios=(0.7, 0.2, 0.1)))
    with pytest.raises(AssertionError, match="must not run"):
        prepare(RawData(spec2, oracle_frame, "toy.csv", oracle={"click": "p_click"}), cache_dir=tmp_path, progress=False)
    monkeypatch.undo()
    third = prepare(RawData(spec, changed, "toy.csv", oracle={"click": "p_click"}), cache_dir=tmp_path, progress=False)
    assert third.cache_path != first.cache_path
    # no cache dir: in memory only
    assert prepare(raw, cache_dir=None, progress=False).cache_path is None


def test_cache_shards(tmp_path):
    raw = RawData(make_spec(), make_frame(250), "toy.csv")
    data = prepare(raw, cache_dir=tmp_path, progress=False, shard_rows=64)
    shards = data.shard_paths("train")
    assert [p.name for p in shards] == [f"part-{k:05d}.parquet" for k in range(4)]  # 200 rows / 64
    again = prepare(raw, cache_dir=tmp_path, progress=False, shard_rows=64)
    assert_batches_equal(data.splits["train"], again.splits["train"])
    cols = pl.read_parquet(shards[0]).schema
    assert cols["user_id"] == pl.Int64 and cols["price"] == pl.Float32
    assert cols["hist"] == pl.List(pl.Int64) and cols["__label_click"] == pl.Float32 and "__domain" in cols


# ---------------------------------------------------------------------------------------------
# errors on bad input
# ---------------------------------------------------------------------------------------------
def test_missing_column_names_column_file_and_suggestion():
    frame = make_frame(20).rename({"user_id": "user_idd"})
    with pytest.raises(DataError) as e:
        validate(RawData(make_spec(), frame, "clicks.csv"))
    msg = str(e.value)
    assert "clicks.csv" in msg and "'user_id'" in msg and "did you mean 'user_idd'" in msg


@pytest.mark.parametrize("bad", [2, float("nan"), -1])
def test_bad_label_names_column_row_and_value(bad):
    frame = make_frame(20).with_columns(
        y_buy=pl.when(pl.arange(0, 20) == 7).then(pl.lit(bad, dtype=pl.Float64)).otherwise(pl.col("y_buy"))
    )
    with pytest.raises(DataError) as e:
        prepare(RawData(make_spec(), frame, "clicks.csv"), progress=False)
    msg = str(e.value)
    assert "clicks.csv" in msg and "'y_buy'" in msg and "row 7" in msg
    assert ("nan" in msg) if bad != bad else (str(float(bad)) in msg)


def test_string_label_and_unknown_domain_and_empty_data():
    frame = make_frame(20)
    with pytest.raises(DataError, match="'y_click'.*String"):
        validate(RawData(make_spec(), frame.with_columns(pl.col("y_click").cast(pl.String)), "f.csv"))
    bad = frame.with_columns(dom=pl.when(pl.arange(0, 20) == 4).then(pl.lit("d9")).otherwise(pl.col("dom")))
    with pytest.raises(DataError, match=r"f\.csv.*'dom' row 4.*'d9'"):
        validate(RawData(make_spec(), bad, "f.csv"))
    with pytest.raises(DataError, match=r"f\.csv.*no rows"):
        prepare(RawData(make_spec(), frame.head(0), "f.csv"), progress=False)
    with pytest.raises(DataError, match="'hist'.*list"):
        validate(RawData(make_spec(), frame.with_columns(hist=pl.lit("1|2")), "f.csv"))


def test_stale_or_corrupt_cache_is_rebuilt(tmp_path):
    raw = RawData(make_spec(), make_frame(100), "toy.csv")
    good = prepare(raw, cache_dir=tmp_path, progress=False)
    path = good.cache_path
    (path / "meta.json").write_text("{not json")  # an interrupted or corrupt write
    (path / "train" / "part-00000.parquet").write_bytes(b"garbage")
    again = prepare(raw, cache_dir=tmp_path, progress=False)
    assert again.cache_path == path and (path / "meta.json").is_file()
    for s in ("train", "valid", "test"):
        assert_batches_equal(good.splits[s], again.splits[s])
    assert_batches_equal(good.splits["train"], prepare(raw, cache_dir=tmp_path, progress=False).splits["train"])


def test_float_ids_and_integer_sequences_share_keys():
    """An id column read as float (nulls written by another tool) matches the same ids as integers."""
    spec = make_spec(features=[FeatureSpec(name="item_id"), FeatureSpec(name="hist", kind="sequence", vocab="item_id", max_len=2)])
    frame = pl.DataFrame(
        {
            "item_id": [10.0, None, 11.0, 2.5],
            "hist": [[11], [10, 11], [], [10]],
            "dom": ["d0"] * 4,
            "y_click": [1, 0, 1, 0],
            "y_buy": [0, 0, 1, 1],
        }
    )
    fm = fit_feature_map(frame, spec)
    assert fm.vocabs["item_id"] == ["10", "11", "2.5"]  # 10 and 11 counted 3 times each, across both columns
    b = encode(frame, fm)
    assert b.sparse[:, 0].tolist() == [2, OOV, 3, 4]
    assert b.sequences["hist"].tolist() == [[3, 0], [2, 3], [0, 0], [2, 0]]
    ints = encode(frame.with_columns(pl.col("item_id").fill_null(99).cast(pl.Int64, strict=False)), fm)
    assert ints.sparse[:, 0].tolist() == [2, OOV, 3, OOV]  # the integer column finds 10 and 11; 99 is unseen


# ---------------------------------------------------------------------------------------------
# the record encoder (small scoring requests) equals the frame encoder
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", ["standard", "log_standard", "minmax", "none"])
def test_record_encoder_equals_encode_for_scoring(transform):
    spec = DatasetSpec(
        name="t",
        features=[
            FeatureSpec(name="user", source="user"),
            FeatureSpec(name="item", source="item"),
            FeatureSpec(name="price", kind="dense", source="item", transform=transform),
            FeatureSpec(name="age", kind="dense", source="user", transform="bucketize", buckets=3),
            FeatureSpec(name="hist", kind="sequence", vocab="item", max_len=3, behaviour="click"),
        ],
        domain=DomainSpec(column="dom", names=["a", "b", "c"], mapping={"a": [1, 2], "b": [3], "c": ["x"]}),
        tasks=[TaskSpec(name="y", label="y")],
    )
    fm = FeatureMap.layout_of(
        spec, vocabs={"user": ["1", "2", "u7", "007"], "item": ["10", "11", "12"]},
        dense_stats={"price": DenseStats(mean=2.0, std=3.0, min=-1.0, max=9.0),
                     "age": DenseStats(boundaries=[20.0, 30.0])},
    )
    rows = [
        {"user": 1, "item": 10, "price": 1.5, "age": 25, "hist": [10, 11, 12, 10], "dom": 1},
        {"user": "u7", "item": 99, "price": None, "age": None, "hist": [], "dom": "x"},
        {"user": None, "item": "11", "price": -4, "age": 30.0, "hist": None, "dom": 3},
        {"user": "007", "item": 12, "price": 1e6, "age": 5, "hist": [99, None, 11], "dom": 2},
        {"user": 7, "item": "x", "price": 0, "age": 40, "hist": ["12"], "dom": "x"},
    ]
    mine = RecordEncoder(fm).encode(rows)
    frame = pl.DataFrame(rows, schema={"user": pl.String, "item": pl.String, "price": pl.Float64, "age": pl.Float64,
                                       "hist": pl.List(pl.String), "dom": pl.String})
    ref = encode_for_scoring(frame, fm, source="rows")
    for name in ("sparse", "domain"):
        assert torch.equal(getattr(mine, name), getattr(ref, name)), name
    torch.testing.assert_close(mine.dense, ref.dense)
    assert torch.equal(mine.sequences["hist"], ref.sequences["hist"])
    assert torch.equal(mine.seq_lengths["hist"], ref.seq_lengths["hist"])
    assert torch.equal(mine.label_mask, ref.label_mask) and not mine.label_mask.any()
    # and with integer-typed columns, as a JSON client sends them
    ints = [r | {"user": 1, "item": 10, "dom": 1, "hist": [10, 12]} for r in rows]
    ref = encode_for_scoring(pl.DataFrame(ints, infer_schema_length=None), fm, source="rows")
    mine = RecordEncoder(fm).encode(ints)
    assert torch.equal(mine.sparse, ref.sparse) and torch.equal(mine.sequences["hist"], ref.sequences["hist"])


def test_dense_columns_of_every_transform_at_once_equal_each_column_alone():
    """DenseNorm (every dense column in one pass, as both encoders use it) against each column's
    formula written out, and the record encoder against the frame encoder on such columns."""
    transforms = ["standard", "log_standard", "minmax", "none", "log_standard", "minmax"]
    stats = [DenseStats(mean=0.5 * j - 1, std=1.0 + j, min=-2.0 - j, max=3.0 * j) for j in range(len(transforms))]
    stats[-1] = DenseStats(mean=4.0, std=1.0, min=4.0, max=4.0)  # a constant train column: max - min = 0
    values = [1.5, None, -4.0, 0.0, 1e6, float("inf"), -float("inf"), 3]
    x = np.array([[values[(i + j) % len(values)] for j in range(len(transforms))] for i in range(len(values))],
                 dtype=np.float64)
    got = DenseNorm(list(zip(transforms, stats)))(x)
    for j, (t, st) in enumerate(zip(transforms, stats)):
        col = x[:, j]
        with np.errstate(invalid="ignore"):
            want = {"standard": (col - st.mean) / st.std, "log_standard": (np.log1p(np.maximum(col, 0)) - st.mean) / st.std,
                    "minmax": (col - st.min) / ((st.max - st.min) or 1.0), "none": col}[t]
        fill = {"standard": 0.0, "log_standard": 0.0, "minmax": (st.mean - st.min) / ((st.max - st.min) or 1.0),
                "none": st.mean}[t]
        want = np.where(np.isfinite(col), want, fill).astype(np.float32)
        np.testing.assert_array_equal(got[:, j], want, err_msg=t)
        np.testing.assert_array_equal(dense_values(col, t, st), want, err_msg=t)
    # the two encoders on the same columns
    feats = [FeatureSpec(name=f"x{j}", kind="dense", transform=t) for j, t in enumerate(transforms)]
    spec = DatasetSpec(name="t", features=[FeatureSpec(name="user", source="user"), *feats],
                       domain=DomainSpec(column="dom", names=["a", "b"]), tasks=[TaskSpec(name="y", label="y")])
    fm = FeatureMap.layout_of(spec, vocabs={"user": ["1", "2"]}, dense_stats={f"x{j}": st for j, st in enumerate(stats)})
    rows = [{"user": 1, "dom": "a", **{f"x{j}": v for j, v in enumerate(r)}} for r in x.tolist()]
    rows[1]["x2"] = None
    ref = encode_for_scoring(pl.DataFrame(rows, schema={"user": pl.Int64, "dom": pl.String,
                                                        **{f"x{j}": pl.Float64 for j in range(len(transforms))}}),
                             fm, source="rows")
    assert torch.equal(RecordEncoder(fm).encode(rows).dense, ref.dense)
    assert torch.equal(RecordEncoder(fm).encode(rows[:1]).dense, ref.dense[:1])  # one row, as most requests
