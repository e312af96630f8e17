"""Preprocessing: validate, split, fit the feature map on train only, encode, cache (DESIGN §1, §6, §7).

The flow of :func:`prepare`::

    RawData --validate--> split_frame --> {"train", "valid", "test"} Polars frames
            --fit_feature_map(train only)--> FeatureMap
            --encode(each split)--> Batch tensors (whole split in memory)
            --> <cache_dir>/<dataset>-<hash>/{feature_map.json, meta.json, train/part-00000.parquet, ...}

Index conventions (see :mod:`mdmt.featuremap`): 0 = padding, 1 = out-of-vocabulary (ids unseen in
train, below ``min_count``, or null), known ids from 2 in order of decreasing train frequency.

Everything is vectorised with Polars / NumPy: vocabulary lookups are hash replacements over whole
columns, sequences are flattened once and scattered into a padded ``[N, max_len]`` array.

Example::

    >>> from mdmt.data.synthetic import SyntheticConfig, generate   # doctest: +SKIP
    >>> data = prepare(generate(SyntheticConfig()), cache_dir=None)  # doctest: +SKIP
    >>> data.splits["train"].sparse.shape                             # doctest: +SKIP
    torch.Size([N, F])
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ..batch import Batch
from ..featuremap import FIRST_ID, OOV, DenseStats, FeatureMap
from ..provenance import DATA_CODE, code_version
from ..schema import DatasetSpec, FeatureSpec
from .base import DataError, RawData

__all__ = [
    "PreparedData",
    "SPLITS",
    "validate",
    "split_frame",
    "timestamp_key",
    "fit_feature_map",
    "encode",
    "encode_for_scoring",
    "DenseNorm",
    "dense_values",
    "bucket_ids",
    "domain_lookup",
    "prepare",
    "batch_to_arrow",
    "batch_from_arrow",
    "oracle_from_arrow",
    "shard_paths",
    "clean_stale_temporaries",
]

SPLITS = ("train", "valid", "test")
#: bump when the layout of the cache changes, so old caches are not reused
CACHE_FORMAT = 1
#: rows per Parquet shard and per row group inside a shard
SHARD_ROWS = 1_000_000
ROW_GROUP_ROWS = 131_072

DOMAIN_COL = "__domain"
GROUP_COL = "__group"
LABEL_PREFIX = "__label_"
ORACLE_PREFIX = "__oracle_"
LEN_PREFIX = "__len_"


# ---------------------------------------------------------------------------------------------
# the result
# ---------------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    """An encoded data set, ready for training.

    Attributes:
        feature_map: fitted on the train split only.
        splits: ``{"train" | "valid" | "test": Batch}``, the whole split as tensors in memory.
        oracle: ``{split: [N, T] float64}`` true probabilities (NaN for tasks without one);
            ``{}`` when the source has no oracle (real data).
        cache_path: the cache directory (``feature_map.json``, ``meta.json``, ``<split>/part-*.parquet``),
            or None when preparing in memory only.
        source: where the raw rows came from.
    """

    feature_map: FeatureMap
    splits: dict[str, Batch]
    oracle: dict[str, np.ndarray]
    cache_path: Path | None
    source: str

    @property
    def spec(self) -> DatasetSpec:
        return self.feature_map.spec

    def shard_paths(self, split: str) -> list[Path]:
        """The Parquet shards of ``split`` in order (for :class:`mdmt.data.loader.ParquetStream`)."""
        if self.cache_path is None:
            raise DataError("this PreparedData was built without a cache_dir, so it has no Parquet shards")
        return shard_paths(self.cache_path, split)


def shard_paths(cache_path: str | Path, split: str) -> list[Path]:
    """``<cache_path>/<split>/part-*.parquet`` in order."""
    return sorted((Path(cache_path) / split).glob("part-*.parquet"))


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def _required_columns(
    spec: DatasetSpec, *, labels: bool = True, split: bool = True, oracle: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """``[(column, role)]`` the frame must hold."""
    req: list[tuple[str, str]] = []
    for f in spec.features:
        req.append((f.raw_column, f"{f.kind} feature {f.name!r}"))
    req.append((spec.domain.column, "domain column"))
    if labels:
        for t in spec.tasks:
            req.append((t.label, f"label of task {t.name!r}"))
    if split:
        sp = spec.split
        if spec.timestamp is not None:
            req.append((spec.timestamp, "timestamp"))
        if sp.method == "sequential":
            for c in sp.order_by:
                req.append((c, "split.order_by column"))
        if sp.method == "column" and sp.column:
            req.append((sp.column, "split column"))
    for task, col in (oracle or {}).items():
        req.append((col, f"oracle of task {task!r}"))
    return req


def _check_columns(frame: pl.DataFrame, required: list[tuple[str, str]], source: str) -> None:
    have = frame.columns
    lines = []
    seen: set[str] = set()
    for col, role in required:
        if col in have or col in seen:
            continue
        seen.add(col)
        msg = f"{source}: missing column {col!r} ({role})"
        close = difflib.get_close_matches(col, have, n=1, cutoff=0.6)
        if close:
            msg += f"; did you mean {close[0]!r}?"
        lines.append(msg)
    if lines:
        lines.append(f"{source}: available columns: {have}")
        raise DataError("\n".join(lines))


def _first_bad(frame: pl.DataFrame, col: str, bad: pl.Series) -> tuple[int, object]:
    idx = int(bad.arg_true()[0])
    return idx, frame[col][idx]


def _check_labels(frame: pl.DataFrame, spec: DatasetSpec, source: str, required: bool = True) -> None:
    """Labels are 0/1 or null (unobserved). Names file, column, first bad row and value."""
    for t in spec.tasks:
        if t.label not in frame.columns:
            if required:
                _check_columns(frame, [(t.label, f"label of task {t.name!r}")], source)
            continue
        s = frame[t.label]
        if s.dtype == pl.Boolean or s.dtype == pl.Null:
            continue
        if not s.dtype.is_numeric():
            raise DataError(
                f"{source}: column {t.label!r} (label of task {t.name!r}) holds {s.dtype}; expected numbers 0/1 "
                f"(null = unobserved)"
            )
        f = s.cast(pl.Float64)
        bad = (f.is_nan() | ~f.is_in([0.0, 1.0])).fill_null(False)
        if bad.any():
            idx, val = _first_bad(frame, t.label, bad)
            n = int(bad.sum())
            raise DataError(
                f"{source}: column {t.label!r} (label of task {t.name!r}) must hold 0/1 or null, "
                f"row {idx} (0-based) holds {val!r} ({n} bad rows in all)"
            )


def domain_lookup(spec: DatasetSpec) -> dict[str, int]:
    """Raw value (as a string) -> domain index, after ``DomainSpec.mapping``."""
    names = spec.domain.names
    mapping = spec.domain.mapping or {}
    out: dict[str, int] = {n: i for i, n in enumerate(names) if n not in mapping}
    for name, values in mapping.items():
        for v in values:
            out[str(pl.Series([v]).cast(pl.String)[0])] = names.index(name)
    return out


def _as_key_strings(s: pl.Series) -> pl.Series:
    """Raw ids or domain values as their key text. A float holding a whole number is written as
    the integer (``1.0`` -> ``"1"``), value by value, so an id read as float (a column with
    nulls from another tool) and the same id read as integer are one key."""
    if s.dtype.is_float():
        as_int = s.cast(pl.Int64, strict=False)
        whole = ((s == s.round(0)) & s.is_finite() & as_int.is_not_null()).fill_null(False)
        return as_int.cast(pl.String).zip_with(whole, s.cast(pl.String))
    return s.cast(pl.String)


def _encode_domain(frame: pl.DataFrame, spec: DatasetSpec, source: str) -> np.ndarray:
    """``[N]`` int64 domain indices; unknown or null values raise a DataError naming the row."""
    col = spec.domain.column
    lookup = domain_lookup(spec)
    keys = _as_key_strings(frame[col])
    codes = keys.replace_strict(
        pl.Series(list(lookup.keys()), dtype=pl.String),
        pl.Series(list(lookup.values()), dtype=pl.Int64),
        default=None,
        return_dtype=pl.Int64,
    )
    bad = codes.is_null()
    if bad.any():
        idx, val = _first_bad(frame, col, bad)
        uniq = keys.filter(bad).unique().sort().head(10).to_list()
        how = "mapped values" if spec.domain.mapping else "names"
        hint = ""
        if any(isinstance(v, bool) for vs in (spec.domain.mapping or {}).values() for v in vs):
            hint = " (YAML reads unquoted NO/YES/ON/OFF as booleans: quote such values in the mapping)"
        raise DataError(
            f"{source}: domain column {col!r} row {idx} (0-based) holds {val!r}, which is not a domain of the "
            f"schema (domains {spec.domain.names}; accepted raw {how}: {sorted(lookup)}); "
            f"unknown values: {uniq}{hint}"
        )
    return np.array(codes.to_numpy(), dtype=np.int64)


def _check_kinds(frame: pl.DataFrame, spec: DatasetSpec, source: str) -> None:
    for f in spec.features:
        s = frame[f.raw_column]
        if f.kind == "dense":
            if not (s.dtype.is_numeric() or s.dtype in (pl.Boolean, pl.Null)):
                raise DataError(
                    f"{source}: column {f.raw_column!r} (dense feature {f.name!r}) holds {s.dtype}; expected numbers"
                )
        elif f.kind == "sequence":
            if not isinstance(s.dtype, pl.List):
                raise DataError(
                    f"{source}: column {f.raw_column!r} (sequence feature {f.name!r}) holds {s.dtype}; "
                    f"expected a list column of ids (most recent first)"
                )
        else:
            if s.dtype.is_nested():
                raise DataError(
                    f"{source}: column {f.raw_column!r} (sparse feature {f.name!r}) holds {s.dtype}; "
                    f"expected one id per row"
                )


def validate(raw: RawData) -> None:
    """Check a :class:`RawData` before preprocessing; raise a clear :class:`DataError` otherwise.

    Checks: the frame is not empty; every column the schema names exists (suggesting the closest
    existing name); feature columns have the right kind; labels are 0/1 or null (naming the column,
    the first bad row and its value); every domain value (after ``DomainSpec.mapping``) is a domain
    of the schema; timestamps and split columns are complete.
    """
    spec, frame, source = raw.spec, raw.frame, raw.source
    if frame.width == 0 or frame.height == 0:
        raise DataError(f"{source}: no rows (the data set is empty)")
    unknown_tasks = set(raw.oracle) - set(spec.task_names)
    if unknown_tasks:
        raise DataError(f"{source}: oracle names unknown tasks {sorted(unknown_tasks)}; tasks are {spec.task_names}")
    _check_columns(frame, _required_columns(spec, oracle=raw.oracle), source)
    _check_kinds(frame, spec, source)
    _check_labels(frame, spec, source)
    _encode_domain(frame, spec, source)
    if spec.timestamp is not None:
        nulls = frame[spec.timestamp].is_null()
        if nulls.any():
            raise DataError(
                f"{source}: timestamp column {spec.timestamp!r} is null at row {int(nulls.arg_true()[0])} (0-based)"
            )
        timestamp_key(frame[spec.timestamp], source)
    if spec.split.method == "column":
        col = spec.split.column
        assert col is not None
        vals = frame[col].cast(pl.String)
        bad = (~vals.is_in(list(SPLITS))).fill_null(True)
        if bad.any():
            idx, val = _first_bad(frame, col, bad)
            raise DataError(
                f"{source}: split column {col!r} row {idx} (0-based) holds {val!r}; expected one of {list(SPLITS)}"
            )


def timestamp_key(s: pl.Series, source: str = "<frame>") -> pl.Series:
    """Timestamps as values that sort in time order.

    Numbers, dates and datetimes are returned as they are. Text is never sorted as text (``"10"``
    sorts before ``"9"``, ``"1/2/2024"`` before ``"12/1/2023"``): text holding numbers becomes
    numbers, text holding ISO-8601 dates or datetimes (``2024-01-31``, ``2024-01-31 12:00:00``) in
    one format becomes datetimes. Other text (ambiguous day/month orders included) is rejected.

    Raises:
        DataError: text that is neither, naming the column, the first unparsable row and its value.
    """
    if not s.dtype == pl.String:
        if s.dtype.is_numeric() or s.dtype.is_temporal():
            return s
        raise DataError(f"{source}: timestamp column {s.name!r} holds {s.dtype}; expected numbers, dates or datetimes")
    text = s.str.strip_chars()
    for dtype in (pl.Int64, pl.Float64):
        num = text.cast(dtype, strict=False)
        if num.null_count() == s.null_count():
            return num
    iso = text.str.contains(r"^\d{4}-\d{2}-\d{2}").fill_null(True)
    if iso.all():  # only ISO-8601: day/month orders such as 1/2/2024 are ambiguous
        for parse in (lambda t: t.str.to_datetime(strict=True, time_unit="us"), lambda t: t.str.to_date(strict=True)):
            try:
                return parse(text)
            except (pl.exceptions.PolarsError, ValueError):
                pass
        bad = text.str.to_datetime(strict=False, time_unit="us").is_null() & s.is_not_null()
    else:
        bad = ~iso
    row = int(bad.arg_true()[0]) if bad.any() else 0
    raise DataError(
        f"{source}: timestamp column {s.name!r} holds text that is neither numbers nor ISO-8601 "
        f"dates/times in one format (row {row} (0-based): {s[row]!r}); sorting it as text would put rows out of time order. "
        f"Store numbers (e.g. Unix seconds) or ISO-8601 dates such as '2024-01-31 12:00:00'"
    )


# ---------------------------------------------------------------------------------------------
# splitting
# ---------------------------------------------------------------------------------------------
def _cuts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int]:
    c1 = int(n * ratios[0] + 0.5)
    c2 = max(int(n * (ratios[0] + ratios[1]) + 0.5), c1)
    return min(c1, n), min(c2, n)


def split_frame(raw: RawData) -> dict[str, pl.DataFrame]:
    """Split the raw frame into ``{"train", "valid", "test"}`` following ``spec.split``.

    * ``sequential``: stable sort by ``order_by`` (raw order if empty), cut by position.
    * ``temporal``: stable sort by ``spec.timestamp``, cut by position; a cut never falls inside a
      run of equal timestamps: ties go to the earlier split.
    * ``random``: a permutation seeded by ``split.seed``, cut by position.
    * ``column``: the split column holds ``train`` / ``valid`` / ``test``.

    Raises:
        DataError: a split would be empty (naming the split and the source).
    """
    spec, frame, source = raw.spec, raw.frame, raw.source
    sp = spec.split
    n = frame.height
    split_cols = [c for c in _required_columns(spec, labels=False) if c[1] in ("timestamp", "split.order_by column", "split column")]
    _check_columns(frame, split_cols, source)
    if sp.method == "column":
        assert sp.column is not None
        vals = frame[sp.column].cast(pl.String)
        out = {s: frame.filter(vals == s) for s in SPLITS}
    else:
        if sp.method == "sequential":
            ordered = frame.sort(sp.order_by, maintain_order=True) if sp.order_by else frame
            c1, c2 = _cuts(n, sp.ratios)
        elif sp.method == "temporal":
            if spec.timestamp is None:
                raise DataError(f"{source}: split method 'temporal' needs the schema's 'timestamp' column")
            key = timestamp_key(frame[spec.timestamp], source).alias("__ts_key")
            ordered = frame.with_columns(key).sort("__ts_key", maintain_order=True)
            ts = ordered["__ts_key"].to_physical().to_numpy()
            ordered = ordered.drop("__ts_key")
            c1, c2 = _cuts(n, sp.ratios)
            # ties go to the earlier split: move each cut past the run of its last timestamp
            if 0 < c1 < n:
                c1 = int(np.searchsorted(ts, ts[c1 - 1], side="right"))
            c2 = max(c2, c1)
            if 0 < c2 < n:
                c2 = int(np.searchsorted(ts, ts[c2 - 1], side="right"))
        elif sp.method == "random":
            perm = np.random.default_rng(sp.seed).permutation(n)
            ordered = frame[perm]
            c1, c2 = _cuts(n, sp.ratios)
        else:  # pragma: no cover - the schema forbids other values
            raise DataError(f"{source}: unknown split method {sp.method!r}")
        out = {"train": ordered[:c1], "valid": ordered[c1:c2], "test": ordered[c2:]}
    for name in SPLITS:
        if out[name].height == 0:
            sizes = {k: v.height for k, v in out.items()}
            raise DataError(
                f"{source}: the {name!r} split is empty (split method {sp.method!r}, ratios {list(sp.ratios)}, "
                f"{n} rows -> {sizes}); use more rows or other ratios"
                + ("; many equal timestamps at a cut push its rows into the earlier split" if sp.method == "temporal" else "")
            )
    return out


# ---------------------------------------------------------------------------------------------
# fitting (train only)
# ---------------------------------------------------------------------------------------------
def _vocab_groups(spec: DatasetSpec) -> dict[str, list[FeatureSpec]]:
    """``{vocab name: [features]}`` of the id features (sparse + sequence, not bucketised dense)."""
    groups: dict[str, list[FeatureSpec]] = {}
    for f in spec.features:
        if f.kind in ("sparse", "sequence"):
            groups.setdefault(f.vocab_name, []).append(f)
    return groups


def _id_counts(frame: pl.DataFrame, f: FeatureSpec) -> pl.DataFrame:
    """``value`` (raw id as a string) and ``count`` of one id feature's non-null ids."""
    s = frame[f.raw_column]
    if f.kind == "sequence":
        s = s.explode(empty_as_null=False, keep_nulls=False)
    s = s.drop_nulls().rename("value")
    # count on the native type, then turn only the distinct values into key text
    vc = s.value_counts(name="count")
    return pl.DataFrame({"value": _as_key_strings(vc["value"]), "count": vc["count"].cast(pl.Int64)})


def _finite(s: pl.Series) -> np.ndarray:
    x = s.cast(pl.Float64).to_numpy()
    return x[np.isfinite(x)]


def fit_feature_map(train: pl.DataFrame, spec: DatasetSpec) -> FeatureMap:
    """Fit vocabularies and dense statistics on the TRAIN split only.

    * Vocabularies: one per vocab group (features sharing ``FeatureSpec.vocab``, sequences
      included). Ids (as strings) with a train count ``>= min_count`` (the largest ``min_count``
      declared in the group) are kept, sorted by count descending then by value; id ``vocab[i]``
      encodes to ``i + FIRST_ID``.
    * Dense statistics over the finite train values (population std, ddof=0; a zero std becomes 1):
      ``standard``: mean/std; ``log_standard``: mean/std of ``log1p(max(x, 0))``; ``minmax``:
      min/max; ``bucketize``: ``buckets`` quantile cut points (deduplicated); min/max always.
    """
    _check_columns(train, _required_columns(spec, labels=False, split=False), "<train split>")
    _check_kinds(train, spec, "<train split>")
    fm_vocabs: dict[str, list[str]] = {}
    for vocab, feats in _vocab_groups(spec).items():
        min_count = max(f.min_count for f in feats)
        counts = pl.concat([_id_counts(train, f) for f in feats])
        vc = counts.group_by("value").agg(pl.col("count").sum())
        vc = vc.filter(pl.col("count") >= min_count).sort(["count", "value"], descending=[True, False])
        fm_vocabs[vocab] = vc["value"].to_list()
    stats: dict[str, DenseStats] = {}
    for f in spec.features:
        if f.kind != "dense":
            continue
        x = _finite(train[f.raw_column])
        if len(x) == 0:
            stats[f.name] = DenseStats()
            continue
        lo, hi = float(x.min()), float(x.max())
        boundaries: list[float] = []
        v = np.log1p(np.maximum(x, 0.0)) if f.transform == "log_standard" else x
        mean, std = float(v.mean()), float(v.std())
        if not np.isfinite(std) or std <= 0.0:
            std = 1.0
        if f.transform == "bucketize":
            q = np.linspace(0.0, 1.0, f.buckets + 1)[1:-1]
            boundaries = [float(b) for b in np.unique(np.quantile(x, q))]
        stats[f.name] = DenseStats(mean=mean, std=std, min=lo, max=hi, boundaries=boundaries)
    return FeatureMap.layout_of(spec, vocabs=fm_vocabs, dense_stats=stats, num_rows={"train": train.height})


# ---------------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------------
#: integer types whose every value fits Int64; ids of other types (UInt64, Int128 read from a CSV
#: of ids beyond Int64) are looked up as text, so they are never truncated or overflow
_INT64_SAFE = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)


class _VocabIndex:
    """Vectorised raw id -> index lookup for one vocabulary (built once, applied to many columns)."""

    def __init__(self, vocab: list[str]) -> None:
        self.keys = pl.Series("k", vocab, dtype=pl.String)
        self.codes = pl.Series("c", np.arange(FIRST_ID, FIRST_ID + len(vocab), dtype=np.int64))
        self._int: tuple[pl.Series, pl.Series] | None = None

    def _int_keys(self) -> tuple[pl.Series, pl.Series]:
        # integer columns are looked up on integers (no string cast of the big column); only the
        # vocabulary entries whose integer form prints back identically are kept
        if self._int is None:
            as_int = self.keys.cast(pl.Int64, strict=False)
            keep = (as_int.cast(pl.String) == self.keys).fill_null(False)
            self._int = (as_int.filter(keep), self.codes.filter(keep))
        return self._int

    def __call__(self, s: pl.Series) -> pl.Series:
        """Raw ids -> Int64 indices; unseen and null ids -> OOV."""
        if s.dtype in _INT64_SAFE:
            old, new = self._int_keys()
            s = s.cast(pl.Int64)
        else:
            old, new = self.keys, self.codes
            s = _as_key_strings(s)
        if len(old) == 0:
            return pl.Series(s.name, np.full(len(s), OOV, dtype=np.int64))
        return s.replace_strict(old, new, default=OOV, return_dtype=pl.Int64).fill_null(OOV)


class DenseNorm:
    """The normalisation of dense columns with their train statistics, all columns at once.

    Column ``j`` maps a raw value ``x`` to ``y = (g_j(x) - center_j) / scale_j``, with
    ``g_j(x) = log1p(max(x, 0))`` for ``log_standard`` and ``x`` otherwise; a missing or
    non-finite ``x`` becomes ``fill_j``, the train mean transformed. Per transform:

    ============ ============= ============= ======================
    transform    center        scale         fill
    ============ ============= ============= ======================
    standard     mean          std           0
    log_standard mean of g(x)  std of g(x)   0
    minmax       min           max - min (1) (mean - min) / scale
    none         0             1             mean
    ============ ============= ============= ======================

    The one formula of every encoder (frames here, records in :mod:`mdmt.data.records`).

    Args:
        columns: ``[(transform, stats)]``, one per column.
    """

    def __init__(self, columns: list[tuple[str, DenseStats]]) -> None:
        rows = [self._affine(t, st) for t, st in columns]
        self.log = np.array([t == "log_standard" for t, _ in columns], dtype=bool)
        self.center, self.scale, self.fill = (np.array(v, dtype=np.float64).reshape(-1) for v in
                                              (zip(*rows) if rows else ([], [], [])))

    @staticmethod
    def _affine(transform: str, st: DenseStats) -> tuple[float, float, float]:
        if transform in ("standard", "log_standard"):
            return st.mean, st.std, 0.0
        if transform == "minmax":
            rng = (st.max - st.min) or 1.0
            return st.min, rng, (st.mean - st.min) / rng
        return 0.0, 1.0, st.mean  # none

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``[N, D]`` raw values (NaN where missing) -> ``[N, D]`` float32."""
        x = np.array(x, dtype=np.float64, copy=True)
        missing = ~np.isfinite(x)
        if self.log.any():
            with np.errstate(invalid="ignore"):
                x[:, self.log] = np.log1p(np.maximum(x[:, self.log], 0.0))
        x -= self.center
        x /= self.scale
        np.copyto(x, np.broadcast_to(self.fill, x.shape), where=missing)
        return x.astype(np.float32)


def dense_values(x: np.ndarray, transform: str, st: DenseStats) -> np.ndarray:
    """``[N]`` float32 raw values normalised with the train statistics ``st`` (``transform`` of the
    feature); missing / non-finite -> the train mean, transformed: one column of :class:`DenseNorm`."""
    return DenseNorm([(transform, st)])(np.asarray(x, dtype=np.float64).reshape(-1, 1))[:, 0]


def bucket_ids(x: np.ndarray, st: DenseStats) -> np.ndarray:
    """``[N]`` int64 ids of a bucketised dense feature: ``2 + bucket`` by the train quantile
    boundaries, missing / non-finite -> OOV."""
    x = np.asarray(x, dtype=np.float64)
    ids = FIRST_ID + np.searchsorted(np.asarray(st.boundaries, dtype=np.float64), x, side="right")
    ids[~np.isfinite(x)] = OOV
    return ids.astype(np.int64)


def _floats(s: pl.Series) -> np.ndarray:
    """A numeric column as float64, null -> NaN."""
    return s.cast(pl.Float64).to_numpy()


def _encode_sequence(s: pl.Series, max_len: int, index: _VocabIndex) -> tuple[np.ndarray, np.ndarray]:
    """List column -> (``[N, max_len]`` int64 ids, first ``max_len`` entries, 0-padded; ``[N]`` lengths)."""
    n = len(s)
    head = s.list.head(max_len)
    lengths = head.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = head.explode(empty_as_null=False, keep_nulls=False)
    ids = index(flat).to_numpy().astype(np.int64, copy=False)
    return _scatter_left(ids, lengths, max_len), lengths


def _scatter_left(values: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Flat values of consecutive rows -> ``[N, max_len]`` left-aligned, 0-padded (C-order mask fill)."""
    out = np.zeros((len(lengths), max_len), dtype=np.int64)
    if len(values):
        out[np.arange(max_len)[None, :] < lengths[:, None]] = values
    return out


def _encode_group(frame: pl.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """``[N]`` int64: dense rank of the raw group value in THIS frame (sorted values), null -> -1."""
    n = frame.height
    if spec.group is None:
        return np.full(n, -1, dtype=np.int64)
    col = spec.feature(spec.group).raw_column
    if col not in frame.columns:
        return np.full(n, -1, dtype=np.int64)
    s = frame[col]
    if not (s.dtype.is_numeric() or s.dtype == pl.String):
        s = s.cast(pl.String)
    r = s.rank("dense").cast(pl.Int64) - 1
    return np.array(r.fill_null(-1).to_numpy(), dtype=np.int64)


def encode(
    frame: pl.DataFrame, fm: FeatureMap, source: str = "<frame>", require_labels: bool = True, groups: bool = True
) -> Batch:
    """Encode a raw frame with a fitted feature map into a :class:`Batch` (``N`` rows).

    * sparse ids -> ``[N, F]`` int64: known ids 2.., unseen or null ids -> OOV (1);
      bucketised dense -> ``2 + bucket`` (null -> OOV).
    * dense -> ``[N, Dn]`` float32 normalised with the train statistics; null -> the train mean
      (0 after standardisation).
    * sequences -> ``{name: [N, max_len]}`` int64, the FIRST ``max_len`` entries (most recent
      first), left-aligned, 0-padded, plus ``{name: [N]}`` lengths.
    * domain -> ``[N]`` index of the domain name (after ``DomainSpec.mapping``).
    * labels ``[N, T]`` float32 and label_mask ``[N, T]`` bool: False where the label is null or
      the task is not observed in the row's domain (``TaskSpec.domains``); labels are 0 there.
    * group ``[N]`` int64: the raw group column factorised over this frame (sorted values), or -1.

    With ``require_labels=False`` missing label columns give all-masked tasks (scoring); with
    ``groups=False`` every group is -1.
    """
    spec = fm.spec
    _check_columns(frame, _required_columns(spec, labels=require_labels, split=False), source)
    _check_kinds(frame, spec, source)
    _check_labels(frame, spec, source, required=require_labels)
    n = frame.height
    indices = {v: _VocabIndex(fm.vocabs.get(v, [])) for v in _vocab_groups(spec)}

    sparse = np.empty((n, len(fm.sparse)), dtype=np.int64)
    for j, name in enumerate(fm.sparse):
        f = spec.feature(name)
        s = frame[f.raw_column]
        if f.kind == "dense":  # bucketised
            sparse[:, j] = bucket_ids(_floats(s), fm.dense_stats[name])
        else:
            sparse[:, j] = indices[f.vocab_name](s).to_numpy()
    dense = np.empty((n, len(fm.dense)), dtype=np.float32)
    for j, name in enumerate(fm.dense):  # column by column: long columns stay contiguous
        f = spec.feature(name)
        dense[:, j] = dense_values(_floats(frame[f.raw_column]), f.transform, fm.dense_stats[name])
    seqs: dict[str, torch.Tensor] = {}
    lens: dict[str, torch.Tensor] = {}
    for name in fm.sequences:
        f = spec.feature(name)
        ids, ln = _encode_sequence(frame[f.raw_column], f.max_len, indices[f.vocab_name])
        seqs[name], lens[name] = torch.from_numpy(ids), torch.from_numpy(ln)

    domain = _encode_domain(frame, spec, source)
    labels = np.zeros((n, spec.num_tasks), dtype=np.float32)
    mask = np.zeros((n, spec.num_tasks), dtype=bool)
    for j, t in enumerate(spec.tasks):
        if t.label not in frame.columns:
            continue
        y = frame[t.label].cast(pl.Float32).to_numpy()
        m = ~np.isnan(y)
        if t.domains is not None:
            allowed = np.array([spec.domain.names.index(d) for d in t.domains], dtype=np.int64)
            m &= np.isin(domain, allowed)
        labels[:, j] = np.where(m, y, 0.0)
        mask[:, j] = m
    return Batch(
        sparse=torch.from_numpy(sparse),
        dense=torch.from_numpy(dense),
        domain=torch.from_numpy(domain),
        labels=torch.from_numpy(labels),
        label_mask=torch.from_numpy(mask),
        group=torch.from_numpy(_encode_group(frame, spec) if groups else np.full(n, -1, dtype=np.int64)),
        sequences=seqs,
        seq_lengths=lens,
    )


def encode_for_scoring(frame: pl.DataFrame, fm: FeatureMap, source: str) -> Batch:
    """Encode rows to score (``mdmt predict``): labels are optional (all-masked when absent), and
    ``group`` is -1 (scores need no GAUC key; ranking the group column would cost a sort)."""
    return encode(frame, fm, source=source, require_labels=False, groups=False)


# ---------------------------------------------------------------------------------------------
# Arrow codec of encoded batches (cache shards and the streaming path share it)
# ---------------------------------------------------------------------------------------------
def batch_to_arrow(batch: Batch, fm: FeatureMap, oracle: np.ndarray | None = None) -> pa.Table:
    """Encoded rows as an Arrow table.

    Columns: one Int64 per sparse feature (named by feature), one Float32 per dense feature, one
    ``List(Int64)`` per sequence (its true entries) plus ``__len_<name>`` Int64, ``__domain``,
    ``__label_<task>`` Float32 (null where masked), ``__group`` and, when given, ``__oracle_<task>``
    Float64 (null where there is none).
    """
    spec = fm.spec
    cols: dict[str, pa.Array] = {}
    sparse = batch.sparse.numpy()
    for j, name in enumerate(fm.sparse):
        cols[name] = pa.array(np.ascontiguousarray(sparse[:, j]), type=pa.int64())
    dense = batch.dense.numpy()
    for j, name in enumerate(fm.dense):
        cols[name] = pa.array(np.ascontiguousarray(dense[:, j]), type=pa.float32())
    for name in fm.sequences:
        ids = batch.sequences[name].numpy()
        ln = batch.seq_lengths[name].numpy().astype(np.int64)
        keep = np.arange(ids.shape[1])[None, :] < ln[:, None]
        offsets = np.concatenate([[0], np.cumsum(ln)]).astype(np.int64)
        cols[name] = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(ids[keep], type=pa.int64()))
        cols[LEN_PREFIX + name] = pa.array(ln, type=pa.int64())
    cols[DOMAIN_COL] = pa.array(batch.domain.numpy(), type=pa.int64())
    labels, mask = batch.labels.numpy(), batch.label_mask.numpy()
    for j, t in enumerate(spec.tasks):
        cols[LABEL_PREFIX + t.name] = pa.array(np.ascontiguousarray(labels[:, j]), type=pa.float32(), mask=~mask[:, j])
    cols[GROUP_COL] = pa.array(batch.group.numpy(), type=pa.int64())
    if oracle is not None:
        for j, t in enumerate(spec.tasks):
            col = np.ascontiguousarray(oracle[:, j])
            cols[ORACLE_PREFIX + t.name] = pa.array(col, type=pa.float64(), mask=np.isnan(col))
    return pa.table(cols)


def arrow_columns(fm: FeatureMap) -> list[str]:
    """The columns :func:`batch_from_arrow` reads."""
    cols = list(fm.sparse) + list(fm.dense)
    for name in fm.sequences:
        cols += [name, LEN_PREFIX + name]
    cols += [DOMAIN_COL, GROUP_COL] + [LABEL_PREFIX + t for t in fm.spec.task_names]
    return cols


def _np(col: pa.ChunkedArray | pa.Array, dtype: type) -> np.ndarray:
    """A null-free Arrow column as a NumPy array of ``dtype``."""
    return np.asarray(col.to_numpy(), dtype=dtype)


def batch_from_arrow(table: pa.Table, fm: FeatureMap) -> Batch:
    """The inverse of :func:`batch_to_arrow`: an Arrow table of encoded rows -> :class:`Batch`."""
    spec = fm.spec
    n = table.num_rows
    sparse = np.empty((n, len(fm.sparse)), dtype=np.int64)
    for j, name in enumerate(fm.sparse):
        sparse[:, j] = _np(table.column(name), np.int64)
    dense = np.empty((n, len(fm.dense)), dtype=np.float32)
    for j, name in enumerate(fm.dense):
        dense[:, j] = _np(table.column(name), np.float32)
    seqs: dict[str, torch.Tensor] = {}
    lens: dict[str, torch.Tensor] = {}
    for name in fm.sequences:
        max_len = spec.feature(name).max_len
        arr = table.column(name).combine_chunks() if n else pa.array([], type=pa.large_list(pa.int64()))
        ln = np.array(arr.value_lengths().fill_null(0).to_numpy(), dtype=np.int64)
        vals = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
        if n and int(ln.max()) > max_len:
            raise DataError(f"encoded column {name!r} holds sequences longer than max_len={max_len}")
        seqs[name], lens[name] = torch.from_numpy(_scatter_left(vals, ln, max_len)), torch.from_numpy(ln)
    labels = np.zeros((n, spec.num_tasks), dtype=np.float32)
    mask = np.zeros((n, spec.num_tasks), dtype=bool)
    for j, t in enumerate(spec.tasks):
        col = table.column(LABEL_PREFIX + t.name)
        if n:
            mask[:, j] = np.asarray(pc.is_valid(col).to_numpy(), dtype=bool)
            labels[:, j] = np.asarray(pc.fill_null(col, 0.0).to_numpy(), dtype=np.float32)
    return Batch(
        sparse=torch.from_numpy(sparse),
        dense=torch.from_numpy(dense),
        domain=torch.from_numpy(_np(table.column(DOMAIN_COL), np.int64).copy()),
        labels=torch.from_numpy(labels),
        label_mask=torch.from_numpy(mask),
        group=torch.from_numpy(_np(table.column(GROUP_COL), np.int64).copy()),
        sequences=seqs,
        seq_lengths=lens,
    )


def oracle_from_arrow(table: pa.Table, spec: DatasetSpec) -> np.ndarray:
    """``[N, T]`` float64 oracle probabilities from ``__oracle_<task>`` columns (NaN where none)."""
    out = np.full((table.num_rows, spec.num_tasks), np.nan, dtype=np.float64)
    for j, t in enumerate(spec.tasks):
        name = ORACLE_PREFIX + t.name
        if name in table.column_names and table.num_rows:
            out[:, j] = np.asarray(table.column(name).to_numpy(), dtype=np.float64)
    return out


# ---------------------------------------------------------------------------------------------
# prepare + cache
# ---------------------------------------------------------------------------------------------
def _oracle_array(frame: pl.DataFrame, spec: DatasetSpec, oracle: dict[str, str]) -> np.ndarray:
    out = np.full((frame.height, spec.num_tasks), np.nan, dtype=np.float64)
    for j, t in enumerate(spec.tasks):
        if t.name in oracle:
            out[:, j] = frame[oracle[t.name]].cast(pl.Float64).to_numpy()
    return out


def fingerprint(raw: RawData, shard_rows: int = SHARD_ROWS) -> str:
    """Hex digest of everything the encoded cache depends on: the frame's content (row hashes, in
    order), shape, column names and types, the schema JSON, the oracle columns and the format."""
    h = hashlib.blake2b(digest_size=16)
    frame = raw.frame
    header = {
        "format": CACHE_FORMAT,
        "polars": pl.__version__,
        "shape": list(frame.shape),
        "columns": [[c, str(t)] for c, t in zip(frame.columns, frame.dtypes)],
        "spec": raw.spec.model_dump(mode="json"),
        "oracle": sorted(raw.oracle.items()),
        "shard_rows": shard_rows,
    }
    h.update(json.dumps(header, sort_keys=True, default=str).encode())
    if frame.height:
        try:
            h.update(np.ascontiguousarray(frame.hash_rows(seed=0).to_numpy()).tobytes())
        except pl.exceptions.PolarsError:  # a dtype hash_rows does not support: hash the serialised frame
            try:
                h.update(frame.write_ipc(None).getvalue())
            except Exception as err:
                raise DataError(f"{raw.source}: cannot fingerprint the frame for caching: {err}") from None
    return h.hexdigest()


class _Progress:
    """One rich status line per stage (or silence)."""

    def __init__(self, enabled: bool, name: str) -> None:
        self.console = None
        self.name = name
        self.timings: dict[str, float] = {}
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True, log_path=False)

    @contextlib.contextmanager
    def stage(self, label: str) -> Iterator[None]:
        t0 = time.perf_counter()
        if self.console is None:
            yield
        else:
            with self.console.status(f"[bold]{self.name}[/]: {label}..."):
                yield
        dt = time.perf_counter() - t0
        self.timings[label] = round(dt, 4)
        if self.console is not None:
            self.console.log(f"{self.name}: {label} [dim]({dt:.2f}s)[/]")


def _notice(message: str) -> None:
    """A line on standard error that the user should see even without progress output."""
    print(f"mdmt: {message}", file=sys.stderr)


#: an unfinished write's directory: ``.<cache name>.tmp-<host>-<pid>``
_TMP_MARK = ".tmp-"
#: an unfinished write whose process cannot be checked (another host) is removed after this long
_STALE_TMP_SECONDS = 24 * 3600


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temporaries(cache_dir: Path) -> list[Path]:
    """Remove the temporary directories of cache writes that were killed before they finished.

    A directory ``.<name>.tmp-<host>-<pid>`` is stale when its process on this host is gone, or,
    for another host, when it is older than a day. Returns the directories removed.
    """
    removed: list[Path] = []
    host = socket.gethostname()
    for d in sorted(Path(cache_dir).glob(f".*{_TMP_MARK}*")):
        if not d.is_dir():
            continue
        owner = d.name.rsplit(_TMP_MARK, 1)[1]
        o_host, _, o_pid = owner.rpartition("-")
        try:
            if o_host == host and o_pid.isdigit():
                stale = int(o_pid) != os.getpid() and not _pid_alive(int(o_pid))
            else:
                stale = time.time() - d.stat().st_mtime > _STALE_TMP_SECONDS
        except OSError:
            continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _write_cache(
    final: Path,
    fm: FeatureMap,
    splits: dict[str, Batch],
    oracle: dict[str, np.ndarray],
    meta: dict,
    shard_rows: int,
) -> None:
    """Write the cache into a temporary directory, then rename it into place (atomic).

    An exception (or Ctrl-C) during the write removes the temporary directory; after a kill that
    leaves no chance to clean up, :func:`clean_stale_temporaries` removes it on the next run.
    """
    tmp = final.parent / f".{final.name}{_TMP_MARK}{socket.gethostname()}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        shards: dict[str, list[str]] = {}
        for split, batch in splits.items():
            (tmp / split).mkdir()
            shards[split] = []
            n = len(batch)
            for k, start in enumerate(range(0, max(n, 1), shard_rows)):
                stop = min(start + shard_rows, n)
                part = batch.slice(start, stop)
                orc = oracle[split][start:stop] if split in oracle else None
                rel = f"{split}/part-{k:05d}.parquet"
                pq.write_table(batch_to_arrow(part, fm, orc), tmp / rel, row_group_size=ROW_GROUP_ROWS)
                shards[split].append(rel)
        fm.save(tmp / "feature_map.json")
        meta = dict(meta, shards=shards, complete=True)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        if _cache_problem(final, meta["hash"], meta["code"]) is None:  # another process (a DDP rank) finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if final.exists():  # a stale, incomplete or damaged directory
            shutil.rmtree(final, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:  # another process won the race; its cache is equivalent
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


#: what reading a damaged cache can raise
_DAMAGE = (OSError, ValueError, KeyError, TypeError, pa.ArrowException, DataError)


def _read_cache(path: Path, has_oracle: bool) -> tuple[FeatureMap, dict[str, Batch], dict[str, np.ndarray]]:
    """Read a cache back. Raises one of ``_DAMAGE`` when a file is damaged or rows are missing."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except _DAMAGE as err:
        raise ValueError(f"meta.json: {err}") from None
    try:
        fm = FeatureMap.load(path / "feature_map.json")
    except _DAMAGE as err:
        raise ValueError(f"feature_map.json: {str(err).splitlines()[0]}") from None
    splits: dict[str, Batch] = {}
    oracle: dict[str, np.ndarray] = {}
    for split in SPLITS:
        tables = []
        for rel in meta["shards"][split]:
            try:
                tables.append(pq.read_table(path / rel))
            except _DAMAGE as err:
                raise ValueError(f"{rel}: {err}") from None
        table = pa.concat_tables(tables)
        if table.num_rows != int(meta["rows"][split]):
            raise ValueError(f"{split} shards hold {table.num_rows} rows, meta.json says {meta['rows'][split]}")
        splits[split] = batch_from_arrow(table, fm)
        if has_oracle:
            oracle[split] = oracle_from_arrow(table, fm.spec)
    return fm, splits, oracle


def _check_cache_dir(cache_dir: Path) -> None:
    """The cache directory exists (or can be made) and is a directory; else a DataError naming it."""
    if cache_dir.exists() and not cache_dir.is_dir():
        raise DataError(f"data.cache_dir {str(cache_dir)!r} is a file, not a directory; name a directory for the cache")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"data.cache_dir {str(cache_dir)!r} cannot be created: {err.strerror or err}") from None
    if not os.access(cache_dir, os.W_OK | os.X_OK):
        raise DataError(f"data.cache_dir {str(cache_dir)!r} is not writable")


def _cache_problem(path: Path, digest: str, code: dict[str, str]) -> str | None:
    """None when ``path`` holds a complete cache of ``digest`` made by ``code``; else why not
    (``""`` when there is no cache at all)."""
    meta_path = path / "meta.json"
    if not path.exists():
        return ""
    if not meta_path.is_file():
        return "it is incomplete (no meta.json)"
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        return f"its meta.json is unreadable ({err})"
    if not meta.get("complete"):
        return "it is incomplete"
    if meta.get("hash") != digest:
        return "it holds other input"
    if meta.get("code") != code:
        old = meta.get("code") or {}
        return (
            f"it was made by other code (mdmt {old.get('mdmt', '?')}, code {old.get('code', '?')}; "
            f"now mdmt {code['mdmt']}, code {code['code']})"
        )
    if not (path / "feature_map.json").is_file():
        return "feature_map.json is missing"
    for files in meta.get("shards", {}).values():
        for rel in files:
            if not (path / rel).is_file():
                return f"shard {rel} is missing"
    return None


def prepare(
    raw: RawData,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    *,
    shard_rows: int = SHARD_ROWS,
) -> PreparedData:
    """Validate, split, fit on train only, encode every split and (optionally) cache the result.

    With ``cache_dir`` the encoded splits are written to ``<cache_dir>/<dataset>-<hash>/`` as
    Parquet shards of ``shard_rows`` rows plus ``feature_map.json`` and ``meta.json``. The hash
    covers the input frame (row hashes, shape, columns and types) and the schema, so an unchanged
    input reuses the cache (tensors are read back from the shards, nothing is refitted) and a
    changed input or schema writes a new one. The cache also records the code that wrote it
    (:func:`mdmt.provenance.code_version` of the data code): a cache made by other code, an
    incomplete one, or one with a damaged shard, ``feature_map.json`` or ``meta.json`` is rebuilt
    in place, with a message on standard error. Temporary directories left by a killed write are
    removed (:func:`clean_stale_temporaries`).

    Args:
        raw: rows + schema from a source.
        cache_dir: where to cache, or None to stay in memory.
        progress: show one status line per stage.
        shard_rows: rows per Parquet shard.
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    if raw.spec.split.method == "temporal" and raw.spec.timestamp is None:
        raise DataError(f"{raw.source}: split method 'temporal' needs the schema's 'timestamp' column")
    if cache_dir is not None:
        _check_cache_dir(Path(cache_dir))
    prog = _Progress(progress, raw.spec.name)
    with prog.stage("validate"):
        validate(raw)
    has_oracle = bool(raw.oracle)
    cache_path: Path | None = None
    digest = ""
    code = code_version(DATA_CODE)
    if cache_dir is not None:
        with prog.stage("fingerprint"):
            digest = fingerprint(raw, shard_rows)
        cache_path = Path(cache_dir) / f"{raw.spec.name}-{digest[:16]}"
        if Path(cache_dir).is_dir():
            for d in clean_stale_temporaries(Path(cache_dir)):
                _notice(f"removed {d}, the remains of a cache write that was interrupted")
        problem = _cache_problem(cache_path, digest, code)
        if problem is None:
            try:
                with prog.stage(f"load cache {cache_path}"):
                    fm, splits, oracle = _read_cache(cache_path, has_oracle)
                return PreparedData(fm, splits, oracle, cache_path, raw.source)
            except _DAMAGE as err:
                problem = f"it is damaged ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        if problem:
            _notice(f"data cache {cache_path}: {problem}; rebuilding it")
            shutil.rmtree(cache_path, ignore_errors=True)
    with prog.stage("split"):
        frames = split_frame(raw)
    with prog.stage("fit feature map (train only)"):
        fm = fit_feature_map(frames["train"], raw.spec)
    fm = fm.model_copy(update={"num_rows": {k: v.height for k, v in frames.items()}})
    splits: dict[str, Batch] = {}
    oracle: dict[str, np.ndarray] = {}
    for name in SPLITS:
        with prog.stage(f"encode {name} ({frames[name].height:,} rows)"):
            splits[name] = encode(frames[name], fm, source=f"{raw.source} [{name} split]")
            if has_oracle:
                oracle[name] = _oracle_array(frames[name], raw.spec, raw.oracle)
    if cache_path is not None:
        with prog.stage(f"write cache {cache_path}"):
            meta = {
                "dataset": raw.spec.name,
                "source": raw.source,
                "hash": digest,
                "format": CACHE_FORMAT,
                "code": code,
                "rows": fm.num_rows,
                "oracle_tasks": sorted(raw.oracle),
                "source_meta": raw.meta,
                "timings_s": prog.timings,
            }
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            _write_cache(cache_path, fm, splits, oracle, meta, shard_rows)
    return PreparedData(fm, splits, oracle, cache_path, raw.source)
