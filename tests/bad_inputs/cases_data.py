"""Bad inputs in data files: the table source's CSV / Parquet rows, and rows given to ``mdmt predict``."""

from __future__ import annotations

import polars as pl

from . import Workspace, bad_input


def _rows(ws: Workspace, frame: pl.DataFrame) -> list[str]:
    ws.project()
    frame.write_csv(ws.path("rows.csv"))
    return ["data", "prepare", "exp.yaml"]


@bad_input("data file", "A label column holding a value other than 0/1", expect="'click'")
def label_not_binary(ws: Workspace) -> list[str]:
    t = ws.table()
    return _rows(ws, t.with_columns(click=pl.when(pl.int_range(t.height) == 17).then(2).otherwise(pl.col("click"))))


@bad_input("data file", "A label column holding words", expect="'order'")
def label_words(ws: Workspace) -> list[str]:
    t = ws.table()
    return _rows(ws, t.with_columns(order=pl.col("order").cast(pl.String).fill_null("").replace({"1": "yes", "0": "no"})))


@bad_input("data file", "Timestamps written as day/month text (sorting them as text would leak the future)",
           expect="timestamp column 'ts'")
def timestamps_as_text(ws: Workspace) -> list[str]:
    t = ws.table()
    days = [f"{1 + i % 28}/{1 + (i // 28) % 12}/2024" for i in range(t.height)]
    return _rows(ws, t.with_columns(ts=pl.Series(days)))


@bad_input("data file", "A null timestamp", expect="is null at row 5")
def null_timestamp(ws: Workspace) -> list[str]:
    t = ws.table()
    return _rows(ws, t.with_columns(ts=pl.when(pl.int_range(t.height) == 5).then(None).otherwise(pl.col("ts"))))


@bad_input("data file", "A sequence column written with another separator than '|'", expect="separated by ';'")
def sequence_wrong_separator(ws: Workspace) -> list[str]:
    return _rows(ws, ws.table().with_columns(pl.col("hist").str.replace_all("|", ";", literal=True)))


@bad_input("data file", "An empty data file", expect="rows.csv")
def empty_file(ws: Workspace) -> list[str]:
    ws.project()
    ws.write("rows.csv", "")
    return ["data", "prepare", "exp.yaml"]


@bad_input("data file", "A data file with a header and no rows", expect="no rows")
def header_only(ws: Workspace) -> list[str]:
    return _rows(ws, ws.table().head(0))


@bad_input("data file", "A Parquet file that is not Parquet", expect="cannot read the table")
def unreadable_parquet(ws: Workspace) -> list[str]:
    ws.project()
    ws.write("rows.parquet", b"PAR1 this is not a parquet file")
    ws.edit("exp.yaml", "rows.csv", "rows.parquet")
    return ["data", "prepare", "exp.yaml"]


@bad_input("data file", "A data file of an unknown type", expect="unknown file type '.json'")
def unknown_file_type(ws: Workspace) -> list[str]:
    ws.project()
    ws.write("rows.json", "[]")
    ws.edit("exp.yaml", "rows.csv", "rows.json")
    return ["data", "prepare", "exp.yaml"]


@bad_input("data file", "The data file does not exist", expect="not found")
def data_file_missing(ws: Workspace) -> list[str]:
    ws.project()
    ws.edit("exp.yaml", "rows.csv", "rows_2024.csv")
    return ["data", "prepare", "exp.yaml"]


@bad_input("data file", "A domain value the schema does not name", expect="'cart'")
def unknown_domain_value(ws: Workspace) -> list[str]:
    t = ws.table()
    return _rows(ws, t.with_columns(tab=pl.when(pl.int_range(t.height) == 9).then(pl.lit("cart")).otherwise(pl.col("tab"))))


@bad_input("data file", "Text in a dense (numeric) column", expect="'price'")
def dense_text(ws: Workspace) -> list[str]:
    t = ws.table()
    return _rows(ws, t.with_columns(price=pl.col("price").cast(pl.String).replace({t["price"].cast(pl.String)[3]: "n/a"})))


@bad_input("data file", "Rows to score whose sequence column uses another separator", expect="separated by ','")
def predict_wrong_separator(ws: Workspace) -> list[str]:
    ws.trained_run()
    ws.table(200, seed=3).with_columns(pl.col("hist").str.replace_all("|", ",", literal=True)).write_csv(
        ws.path("new.tsv"), separator="\t"
    )
    return ["predict", "runs/done", "new.tsv", "--separator", "\t", "--out", "scores.parquet"]
