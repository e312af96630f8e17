"""Bring your own data: one CSV or Parquet table plus a YAML :class:`~mdmt.schema.DatasetSpec`.

The table holds one row per impression: the raw feature columns, the domain column, one 0/1
column per task (empty / null = unobserved) and, for a temporal split, a timestamp. Sequence
features are list columns in Parquet; in CSV they are strings of ids separated by ``|``, most
recent first (``"42|7|19"``; an empty cell is an empty sequence).

Example config (``data:`` section of an experiment)::

    data:
      source: table
      params:
        path: clicks.csv          # or clicks.parquet, or a directory of *.parquet files
        schema: clicks.yaml       # a DatasetSpec in YAML
        separator: ","

Relative paths are tried as given, then under ``data_dir`` (``--data-dir`` / ``MDMT_DATA_DIR``).
See ``docs/data.md`` for a complete schema.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import polars as pl

from ..schema import ConfigError, DatasetSpec, StrictModel, load_yaml
from .base import DataError, RawData
from .preprocess import validate

__all__ = ["TableConfig", "load", "read_table", "parse_sequences", "SEQUENCE_SEPARATOR"]

#: separator of the ids of a sequence written as one CSV cell
SEQUENCE_SEPARATOR = "|"
#: characters a sequence cell written with another separator is likely to use
_OTHER_SEPARATORS = (",", ";", "/", "\t", " ")
#: a regular expression per separator: it joins two ids inside one cell
_SEPARATOR_PATTERNS = {",": r"[^,],+[^,]", ";": r"[^;];+[^;]", "/": r"[^/]/+[^/]", "\t": r"\S\t+\S", " ": r"\S +\S"}
CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
PARQUET_SUFFIXES = {".parquet", ".pq"}


with warnings.catch_warnings():
    # the field is called ``schema`` on purpose (it is the user-facing key); the instance value
    # shadows pydantic's deprecated ``BaseModel.schema`` classmethod, which is harmless here
    warnings.filterwarnings("ignore", message='Field name "schema"')

    class TableConfig(StrictModel):
        """Params of the ``table`` source.

        Attributes:
            path: a ``.csv`` / ``.tsv`` / ``.txt`` file, a ``.parquet`` file, or a directory of ``*.parquet`` files.
            schema: a YAML file holding the :class:`~mdmt.schema.DatasetSpec`.
            separator: the CSV field separator.
            sequence_separator: the separator of the ids inside a CSV sequence cell.
        """

        path: str
        schema: str
        separator: str = ","
        sequence_separator: str = SEQUENCE_SEPARATOR


class _NotFound(Exception):
    def __init__(self, what: str, tried: list[str]) -> None:
        super().__init__(f"{what} not found: tried {', '.join(tried)}")


def _resolve(path: str, data_dir: str | None, what: str) -> Path:
    p = Path(path).expanduser()
    if p.exists():
        return p
    tried = [str(p)]
    if data_dir is not None and not p.is_absolute():
        q = Path(data_dir).expanduser() / p
        if q.exists():
            return q
        tried.append(str(q))
    raise _NotFound(what, tried)


def parse_sequences(
    frame: pl.DataFrame, spec: DatasetSpec, separator: str = SEQUENCE_SEPARATOR, source: str = "<frame>"
) -> pl.DataFrame:
    """Turn ``"a|b|c"`` string columns of sequence features into list columns, most recent first.

    Spaces around ids are dropped and an empty or null cell is an empty list. The ids become
    integers when every one of them is; otherwise they stay strings. Columns that are already
    lists are left alone.

    Raises:
        DataError: a column written with another separator: no cell holds two ids, yet cells
            hold ids joined by ``,`` ``;`` ``/`` a tab or a space (naming the column, a row and
            the separator found).
    """
    cols = []
    for f in spec.sequence_features():
        c = f.raw_column
        if c not in frame.columns or frame[c].dtype != pl.String:
            continue
        parts = pl.col(c).fill_null("").str.split(separator)
        parts = parts.list.eval(pl.element().str.strip_chars()).list.eval(pl.element().filter(pl.element() != ""))
        lists = frame.select(parts.alias(c))[c]
        _check_separator(lists, f.name, c, separator, source)
        try:
            lists = lists.cast(pl.List(pl.Int64))
        except pl.exceptions.PolarsError:
            pass  # ids that are not all integers (or beyond Int64) stay strings
        cols.append(lists)
    return frame.with_columns(cols) if cols else frame


def _check_separator(lists: pl.Series, feature: str, column: str, separator: str, source: str) -> None:
    """Reject a sequence column whose cells are one id each that hold another separator."""
    if len(lists) == 0 or int(lists.list.len().max() or 0) > 1:
        return  # some cell holds several ids: the separator is the right one
    first = lists.list.first()
    for other in _OTHER_SEPARATORS:
        if other == separator:
            continue
        pattern = _SEPARATOR_PATTERNS[other]
        hit = first.str.contains(pattern).fill_null(False)
        if hit.any():
            row = int(hit.arg_true()[0])
            shown = "a space" if other == " " else ("a tab" if other == "\t" else repr(other))
            raise DataError(
                f"{source}: column {column!r} (sequence feature {feature!r}) holds ids separated by {shown}, "
                f"e.g. row {row} (0-based): {first[row]!r}; sequence ids must be separated by {separator!r} "
                f"(set the table source's 'sequence_separator' to read another)"
            )


def _read(path: Path, separator: str, spec: DatasetSpec) -> pl.DataFrame:
    seq_cols = {f.raw_column: pl.String for f in spec.sequence_features()}
    try:
        if path.is_dir():
            files = sorted(path.glob("*.parquet"))
            if not files:
                raise DataError(f"{path}: directory holds no *.parquet files")
            return pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")
        suffix = path.suffix.lower()
        if suffix in PARQUET_SUFFIXES:
            return pl.read_parquet(path)
        if suffix in CSV_SUFFIXES:
            with open(path, "rb") as fh:
                header = fh.readline().decode("utf-8", errors="replace").rstrip("\r\n").split(separator)
            names = [h.strip('"') for h in header]
            overrides = {c: t for c, t in seq_cols.items() if c in names}
            # sequence cells are text whatever their first rows hold; other types are inferred
            # from every row, so a late value never breaks the read; an id column too long for
            # any integer type (beyond Int128) is read again as text
            ids = {f.raw_column for f in spec.features if f.kind == "sparse"} & set(names)
            while True:
                try:
                    return pl.read_csv(path, separator=separator, schema_overrides=overrides, infer_schema_length=None)
                except pl.exceptions.ComputeError as err:
                    hit = re.search(r"could not parse .* at column '([^']+)'", str(err))
                    if hit is None or hit.group(1) not in ids or hit.group(1) in overrides:
                        raise
                    overrides[hit.group(1)] = pl.String
    except DataError:
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the table: {str(err).splitlines()[0]}") from None
    raise DataError(
        f"{path}: unknown file type {path.suffix!r}; use one of {sorted(CSV_SUFFIXES | PARQUET_SUFFIXES)} "
        f"or a directory of .parquet files"
    )


def read_table(
    path: str | Path, spec: DatasetSpec, separator: str = ",", sequence_separator: str = SEQUENCE_SEPARATOR
) -> pl.DataFrame:
    """Read a CSV / Parquet file (or a directory of Parquet files) the way training reads it.

    The one reader of raw rows for training (:func:`load`) and scoring (``mdmt predict``):
    sequence columns of a CSV are read as text whatever the first rows hold and split by
    ``sequence_separator`` (:func:`parse_sequences`); the other column types are inferred from
    every row.

    Raises:
        DataError: the file is unreadable, of an unknown type, or a sequence column uses another
            separator.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    return parse_sequences(_read(path, separator, spec), spec, sequence_separator, source=str(path))


def load(cfg: TableConfig, data_dir: str | None = None) -> RawData:
    """Read the table and its schema into a validated :class:`RawData`.

    Raises:
        DataError: the table is missing (naming the paths tried), unreadable, or does not match
            the schema (missing columns with a close-name suggestion, bad labels, unknown domains).
        ConfigError: the schema file is missing or invalid (naming the key and the file).
    """
    try:
        schema_path = _resolve(cfg.schema, data_dir, "schema file")
    except _NotFound as err:
        raise ConfigError(str(err)) from None
    spec = load_yaml(schema_path, DatasetSpec)
    try:
        path = _resolve(cfg.path, data_dir, "data table")
    except _NotFound as err:
        raise DataError(str(err)) from None
    frame = read_table(path, spec, cfg.separator, cfg.sequence_separator)
    raw = RawData(spec=spec, frame=frame, source=str(path), meta={"path": str(path), "schema": str(schema_path)})
    validate(raw)
    return raw
