"""Bring-your-own-data: a CSV or Parquet table plus a YAML schema, through load_prepared."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from mdmt.config import DataConfig
from mdmt.data import load_prepared, load_raw
from mdmt.data.base import DataError, RawData
from mdmt.data.preprocess import prepare
from mdmt.data.table import TableConfig, load
from mdmt.featuremap import FIRST_ID
from mdmt.schema import ConfigError

from .test_preprocess import assert_batches_equal

SCHEMA = """\
name: shop
features:
  - {name: user_id, source: user}
  - {name: item_id, source: item}
  - {name: price, kind: dense, source: item, transform: log_standard}
  - {name: clicked_items, kind: sequence, vocab: item_id, max_len: 3, behaviour: click}
domain:
  column: country
  names: [north, south]
  mapping: {north: ["NO", SE], south: [IT, ES]}
tasks:
  - {name: click, label: click}
  - {name: buy, label: buy, domains: [south]}
group: user_id
timestamp: ts
split: {method: temporal, ratios: [0.6, 0.2, 0.2]}
"""


def make_frame(n: int = 120) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    return pl.DataFrame(
        {
            "user_id": rng.integers(0, 15, n),
            "item_id": rng.integers(100, 140, n),
            "price": rng.exponential(20.0, n).round(2),
            "clicked_items": [rng.integers(100, 140, int(k)).tolist() for k in rng.integers(0, 6, n)],
            "country": rng.choice(["NO", "SE", "IT", "ES"], n),
            "click": rng.integers(0, 2, n),
            "buy": rng.integers(0, 2, n),
            "ts": np.arange(n) // 2,
        }
    )


def write_csv(frame: pl.DataFrame, path) -> None:
    frame.with_columns(
        pl.col("clicked_items").list.eval(pl.element().cast(pl.String)).list.join("|")
    ).write_csv(path)


@pytest.fixture
def files(tmp_path):
    frame = make_frame()
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    write_csv(frame, tmp_path / "shop.csv")
    frame.write_parquet(tmp_path / "shop.parquet")
    (tmp_path / "parts").mkdir()
    frame[:50].write_parquet(tmp_path / "parts" / "a.parquet")
    frame[50:].write_parquet(tmp_path / "parts" / "b.parquet")
    return tmp_path, frame


def test_csv_round_trip_to_prepared(files):
    root, frame = files
    cfg = DataConfig(source="table", params={"path": str(root / "shop.csv"), "schema": str(root / "schema.yaml")})
    data = load_prepared(cfg, progress=False)
    assert sum(len(b) for b in data.splits.values()) == len(frame)
    assert data.oracle == {} and data.cache_path is None and data.source.endswith("shop.csv")
    # the same rows given directly (list column) encode identically: "|" strings were parsed
    raw = load_raw(cfg)
    direct = prepare(RawData(raw.spec, frame, "direct"), progress=False)
    for s in ("train", "valid", "test"):
        assert_batches_equal(data.splits[s], direct.splits[s])
    train = data.splits["train"]
    assert int(train.seq_lengths["clicked_items"].max()) == 3 and (train.sequences["clicked_items"] >= FIRST_ID).any()
    # temporal split on ts with ties; south-only task masked in the north
    assert train.label_mask[train.domain == 0, 1].sum() == 0
    assert set(data.feature_map.vocabs["item_id"]) <= {str(i) for i in range(100, 140)}


def test_parquet_file_and_directory_match_csv(files, tmp_path):
    root, frame = files
    base = {"schema": str(root / "schema.yaml")}
    csv = load_prepared(DataConfig(source="table", params={**base, "path": str(root / "shop.csv")}), progress=False)
    for path in ("shop.parquet", "parts"):
        pq = load_prepared(
            DataConfig(source="table", params={**base, "path": str(root / path)}, cache_dir=str(tmp_path / "cache")),
            progress=False,
        )
        assert pq.cache_path is not None and (pq.cache_path / "feature_map.json").is_file()
        for s in ("train", "valid", "test"):
            assert_batches_equal(csv.splits[s], pq.splits[s])


def test_relative_paths_resolve_against_data_dir(files, monkeypatch):
    root, frame = files
    raw = load(TableConfig(path="shop.csv", schema="schema.yaml"), data_dir=str(root))
    assert raw.frame.height == len(frame) and raw.source == str(root / "shop.csv")
    monkeypatch.setenv("MDMT_DATA_DIR", str(root))
    raw2 = load_raw(DataConfig(source="table", params={"path": "shop.parquet", "schema": "schema.yaml"}))
    assert raw2.frame.height == len(frame)


def test_semicolon_separator_and_empty_sequences(tmp_path):
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    (tmp_path / "t.csv").write_text(
        "user_id;item_id;price;clicked_items;country;click;buy;ts\n"
        "1;100;2.5;101|102;NO;1;;0\n"
        "2;101;3.5;;IT;0;1;1\n"
        "3;102;1.0; 103 | 104 ;ES;1;0;2\n"
    )
    raw = load(TableConfig(path=str(tmp_path / "t.csv"), schema=str(tmp_path / "schema.yaml"), separator=";"))
    assert raw.frame["clicked_items"].to_list() == [[101, 102], [], [103, 104]]
    assert raw.frame["buy"].null_count() == 1


def test_errors_name_paths_keys_and_columns(files):
    root, frame = files
    with pytest.raises(DataError, match="nope.csv"):
        load(TableConfig(path=str(root / "nope.csv"), schema=str(root / "schema.yaml")))
    with pytest.raises(ConfigError, match="missing.yaml"):
        load(TableConfig(path=str(root / "shop.csv"), schema=str(root / "missing.yaml")))
    (root / "bad.yaml").write_text(SCHEMA.replace("group: user_id", "groupp: user_id"))
    with pytest.raises(ConfigError) as e:
        load(TableConfig(path=str(root / "shop.csv"), schema=str(root / "bad.yaml")))
    assert "groupp" in str(e.value) and "bad.yaml" in str(e.value)
    with pytest.raises(ConfigError, match="data.params.*sep"):
        load_raw(DataConfig(source="table", params={"path": "x.csv", "schema": "s.yaml", "sep": ";"}))
    write_csv(frame.rename({"price": "prize"}), root / "renamed.csv")
    with pytest.raises(DataError) as e:
        load(TableConfig(path=str(root / "renamed.csv"), schema=str(root / "schema.yaml")))
    assert "renamed.csv" in str(e.value) and "'price'" in str(e.value) and "did you mean 'prize'" in str(e.value)
    (root / "t.json").write_text("{}")
    with pytest.raises(DataError, match="unknown file type"):
        load(TableConfig(path=str(root / "t.json"), schema=str(root / "schema.yaml")))
    bad_label = frame.with_columns(click=pl.when(pl.arange(0, len(frame)) == 11).then(3).otherwise(pl.col("click")))
    write_csv(bad_label, root / "badlabel.csv")
    with pytest.raises(DataError, match=r"badlabel\.csv.*'click'.*row 11.*3"):
        load(TableConfig(path=str(root / "badlabel.csv"), schema=str(root / "schema.yaml")))


def test_yaml_boolean_domain_value_gets_a_hint(files):
    root, _ = files
    (root / "norway.yaml").write_text(SCHEMA.replace('"NO"', "NO"))
    with pytest.raises(DataError, match="quote"):
        load(TableConfig(path=str(root / "shop.csv"), schema=str(root / "norway.yaml")))


def test_unknown_source_is_a_config_error():
    with pytest.raises(Exception):
        DataConfig(source="nosuch")  # the config itself rejects it
    cfg = DataConfig.model_construct(source="nosuch", params={}, cache_dir=None)
    with pytest.raises(ConfigError, match="unknown source"):
        load_raw(cfg)


def test_int_and_string_ids_share_vocab_between_item_and_sequence(files):
    root, _ = files
    data = load_prepared(
        DataConfig(source="table", params={"path": str(root / "shop.csv"), "schema": str(root / "schema.yaml")}),
        progress=False,
    )
    fm = data.feature_map
    vocab = fm.vocabs["item_id"]
    b = data.splits["train"]
    # the sequence id of a train item equals that item's sparse id
    items = b.sparse[:, fm.sparse_index("item_id")]
    seq = b.sequences["clicked_items"]
    assert set(seq[seq >= FIRST_ID].tolist()) <= set(range(FIRST_ID, FIRST_ID + len(vocab)))
    assert torch.isin(items, seq).any()
