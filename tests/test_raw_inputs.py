"""Raw inputs that once gave silently wrong results: text timestamps, a sequence column written with
another separator, ids beyond Int64, and CSV rows to score read unlike the training rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mdmt.cli import main
from mdmt.data.base import DataError, RawData
from mdmt.data.preprocess import prepare, split_frame, validate
from mdmt.data.table import TableConfig, load, read_table
from mdmt.schema import SplitSpec

from .shop import SCHEMA, shop_table, write_project
from .test_preprocess import make_frame, make_spec


# ---------------------------------------------------------------------------------------------
# timestamps stored as text
# ---------------------------------------------------------------------------------------------
def _temporal(frame: pl.DataFrame) -> RawData:
    return RawData(make_spec(SplitSpec(method="temporal", ratios=(0.5, 0.25, 0.25))), frame, "toy.csv")


def test_numbers_stored_as_text_split_in_time_order():
    # 8..11 as text: sorted as text "10" < "11" < "8" < "9", the two latest rows would train
    frame = make_frame(4).with_columns(ts=pl.Series(["8", "9", "10", "11"]))
    parts = split_frame(_temporal(frame))
    assert parts["train"]["ts"].to_list() == ["8", "9"] and parts["test"]["ts"].to_list() == ["11"]


def test_iso_datetimes_as_text_split_in_time_order():
    ts = ["2024-03-01 09:00:00", "2023-12-31 23:00:00", "2024-01-15 12:00:00", "2024-02-01 00:00:00"]
    parts = split_frame(_temporal(make_frame(4).with_columns(ts=pl.Series(ts))))
    assert parts["train"]["ts"].to_list() == [ts[1], ts[2]] and parts["test"]["ts"].to_list() == [ts[0]]


@pytest.mark.parametrize("ts, row", [(["1/2/2024", "12/1/2023", "3/1/2024", "4/1/2024"], 0),
                                     (["2024-01-01", "2024-01-02", "soon", "2024-01-04"], 2)])
def test_ambiguous_or_garbage_text_timestamps_are_rejected(ts, row):
    raw = _temporal(make_frame(4).with_columns(ts=pl.Series(ts)))
    with pytest.raises(DataError, match=rf"timestamp column 'ts'.*row {row} \(0-based\): '{ts[row]}'.*ISO-8601"):
        validate(raw)


def test_text_timestamps_from_a_csv_through_the_table_source(tmp_path: Path):
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    rows = shop_table(200).with_columns(
        ts=pl.Series((np.datetime64("2024-01-01T00:00:00") + np.arange(200)[::-1] * np.timedelta64(1, "h")).astype(str))
    )
    rows.write_csv(tmp_path / "rows.csv")
    raw = load(TableConfig(path=str(tmp_path / "rows.csv"), schema=str(tmp_path / "schema.yaml")))
    parts = split_frame(raw)
    assert parts["train"]["ts"].max() < parts["valid"]["ts"].min() <= parts["valid"]["ts"].max() < parts["test"]["ts"].min()


# ---------------------------------------------------------------------------------------------
# a sequence column written with another separator
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sep, shown", [(";", "';'"), (",", "','"), (" ", "a space")])
def test_a_sequence_column_with_another_separator_is_named(tmp_path: Path, sep: str, shown: str):
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    rows = shop_table(100).with_columns(pl.col("hist").str.replace_all("|", sep, literal=True))
    rows.write_csv(tmp_path / "rows.csv")
    with pytest.raises(DataError, match=rf"column 'hist' \(sequence feature 'hist'\) holds ids separated by {shown}.*'\|'"):
        load(TableConfig(path=str(tmp_path / "rows.csv"), schema=str(tmp_path / "schema.yaml")))
    # declaring that separator reads it
    raw = load(TableConfig(path=str(tmp_path / "rows.csv"), schema=str(tmp_path / "schema.yaml"), sequence_separator=sep))
    assert raw.frame["hist"].list.len().max() > 1


def test_single_id_histories_and_ids_with_spaces_in_a_multi_id_column_are_fine(tmp_path: Path):
    (tmp_path / "schema.yaml").write_text(SCHEMA)
    rows = shop_table(50).with_columns(hist=pl.Series(["red shoe|blue hat"] + ["7"] * 49))
    rows.write_csv(tmp_path / "rows.csv")
    raw = load(TableConfig(path=str(tmp_path / "rows.csv"), schema=str(tmp_path / "schema.yaml")))
    assert raw.frame["hist"][0].to_list() == ["red shoe", "blue hat"]


# ---------------------------------------------------------------------------------------------
# ids beyond Int64
# ---------------------------------------------------------------------------------------------
def test_ids_beyond_int64_are_kept_apart_as_text(tmp_path: Path):
    project = write_project(tmp_path)
    big = shop_table().with_columns((pl.col("user_id").cast(pl.String) + "000000000000000000000").alias("user_id"))
    big.write_csv(project / "rows.csv")  # 22-digit ids: beyond Int64 (read as Int128)
    assert main(["data", "prepare", str(project / "exp.yaml")]) == 0
    raw = load(TableConfig(path=str(project / "rows.csv"), schema=str(project / "schema.yaml")))
    data = prepare(raw, progress=False)
    assert data.feature_map.vocab_size("user_id") == 2 + shop_table()["user_id"].n_unique()
    assert "10000000000000000000000" in data.feature_map.vocabs["user_id"]
    # the same rows with ordinary ids encode to the same indices
    small = prepare(load(TableConfig(path=str(_write(tmp_path / "s", shop_table())), schema=str(project / "schema.yaml"))),
                    progress=False)
    assert (data.splits["test"].sparse == small.splits["test"].sparse).all()


def _write(root: Path, frame: pl.DataFrame) -> Path:
    root.mkdir()
    frame.write_csv(root / "rows.csv")
    return root / "rows.csv"


# ---------------------------------------------------------------------------------------------
# one reader for training and scoring
# ---------------------------------------------------------------------------------------------
def test_predict_reads_sequences_as_training_does(tmp_path: Path):
    project = write_project(tmp_path, epochs=1)
    run_dir = project / "runs" / "r"
    assert main(["train", str(project / "exp.yaml"), "--run-dir", str(run_dir)]) == 0
    rows = shop_table(400, seed=5).drop("click", "order")
    hist = ["7"] * 300 + ["3|7|9"] + [""] * 99  # single-item histories first, a multi-item row late
    rows.with_columns(hist=pl.Series(hist)).write_csv(project / "new.csv")
    assert main(["predict", str(run_dir), str(project / "new.csv"), "--out", str(project / "csv.parquet")]) == 0

    as_lists = rows.with_columns(hist=pl.Series([[7]] * 300 + [[3, 7, 9]] + [[]] * 99, dtype=pl.List(pl.Int64)))
    as_lists.write_parquet(project / "new.parquet")
    assert main(["predict", str(run_dir), str(project / "new.parquet"), "--out", str(project / "pq.parquet")]) == 0
    a, b = pl.read_parquet(project / "csv.parquet"), pl.read_parquet(project / "pq.parquet")
    assert a.height == 400 and a.equals(b)
    assert read_table(project / "new.csv", load(TableConfig(path=str(project / "rows.csv"),
                                                            schema=str(project / "schema.yaml"))).spec)["hist"][300].to_list() == [3, 7, 9]


def test_ids_too_long_for_any_integer_type_are_read_as_text(tmp_path: Path):
    project = write_project(tmp_path)
    rows = shop_table().with_columns((pl.col("item_id").cast(pl.String) + "9" * 45).alias("item_id"))
    rows.write_csv(project / "rows.csv")
    raw = load(TableConfig(path=str(project / "rows.csv"), schema=str(project / "schema.yaml")))
    assert raw.frame["item_id"].dtype == pl.String and raw.frame["item_id"].n_unique() == shop_table()["item_id"].n_unique()
