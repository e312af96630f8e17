"""Rows as JSON objects: the request models generated from a feature map, and the small-request encoder.

:func:`row_model` builds a pydantic model from ``feature_map.json``: one field per raw column the
schema reads (sparse ids: integer or string; dense: a number; sequences: a list of ids, most
recent first; the domain column: one of the schema's domain values). ``null`` is accepted where a
file may hold null (it encodes as in a file: OOV, the train mean). Other keys of a row (labels,
ids to echo) are ignored. A malformed row fails validation with its index and the field.

:class:`RowEncoder` encodes a few validated rows without Polars. Polars runs every Series
operation as a small query, about 40 of them per call of the data layer's
:func:`~mdmt.data.preprocess.encode_for_scoring`, which sets a floor of several milliseconds on a
one-row request. ``RowEncoder`` reads the same fitted feature map with plain dictionary look-ups
and NumPy and yields the same :class:`~mdmt.batch.Batch` tensors (sparse, dense, domain,
sequences and lengths); ``tests/test_serve_app.py`` checks it against ``encode_for_scoring`` on
rows with known, unseen and null ids, missing numbers and every domain. Requests of more rows than
``RowEncoder.max_rows`` go through ``encode_for_scoring`` itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from typing_extensions import Annotated

from ..batch import Batch
from ..data.preprocess import _domain_lookup
from ..featuremap import FIRST_ID, OOV, FeatureMap
from ..schema import DatasetSpec

__all__ = ["row_model", "request_model", "RowEncoder", "domain_keys"]

def _id(v: Any) -> int | str | None:
    if v is None or (isinstance(v, (int, str)) and not isinstance(v, bool)):
        return v
    raise ValueError(f"expected an id (an integer or a string) or null, got {type(v).__name__} {v!r}")


def _number(v: Any) -> float | None:
    if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return v
    raise ValueError(f"expected a number or null, got {type(v).__name__} {v!r}")


def _ids(v: Any) -> list | None:
    if v is None:
        return v
    if not isinstance(v, list):
        raise ValueError(f"expected a list of ids (most recent first) or null, got {type(v).__name__} {v!r}")
    for k, x in enumerate(v):
        if x is not None and not (isinstance(x, (int, str)) and not isinstance(x, bool)):
            raise ValueError(f"entry {k} of the list is {type(x).__name__} {x!r}; expected an id (integer or string)")
    return v


Id = Annotated[Any, BeforeValidator(_id)]
Number = Annotated[Any, BeforeValidator(_number)]
Ids = Annotated[Any, BeforeValidator(_ids)]


def domain_keys(spec: DatasetSpec) -> dict[str, int]:
    """Accepted raw domain values (as key strings) -> domain index (the data layer's look-up)."""
    return _domain_lookup(spec)


def _key(v: Any) -> str | None:
    """A raw id as its vocabulary key: integers print as integers, strings stay as they are."""
    if v is None:
        return None
    return v if isinstance(v, str) else str(v)


def _columns(spec: DatasetSpec) -> dict[str, Any]:
    """``{raw column: annotation}`` of the fields a row must carry."""
    cols: dict[str, Any] = {}
    for f in spec.features:
        if f.raw_column in cols:
            continue
        if f.kind == "dense":
            cols[f.raw_column] = Number
        elif f.kind == "sequence":
            cols[f.raw_column] = Ids
        else:
            cols[f.raw_column] = Id
    keys = domain_keys(spec)

    def known_domain(v: Any) -> int | str:
        if isinstance(v, bool) or not isinstance(v, (int, str)) or _key(v) not in keys:
            raise ValueError(f"{v!r} is not a domain of the schema; accepted values: {sorted(keys)}")
        return v

    cols[spec.domain.column] = Annotated[Any, BeforeValidator(known_domain)]
    return cols


def row_model(spec: DatasetSpec) -> type[BaseModel]:
    """The pydantic model of one raw row (fields named by their raw columns)."""
    fields = {f"c{i}": (ann, Field(alias=col)) for i, (col, ann) in enumerate(_columns(spec).items())}
    return create_model("Row", __config__=ConfigDict(extra="ignore", populate_by_name=False), **fields)


def request_model(spec: DatasetSpec) -> type[BaseModel]:
    """``{"rows": [Row, ...]}`` with at least one row."""
    row = row_model(spec)
    return create_model("ScoreRequest", __config__=ConfigDict(extra="forbid"),
                        rows=(list[row], Field(min_length=1)))  # type: ignore[valid-type]


class RowEncoder:
    """Validated rows (dicts keyed by raw column) -> the encoded :class:`Batch` ``encode_for_scoring`` gives.

    Args:
        fm: the fitted feature map.
        max_rows: requests up to this many rows use this encoder; larger ones the data layer's.
    """

    def __init__(self, fm: FeatureMap, max_rows: int = 256) -> None:
        self.fm, self.max_rows = fm, max_rows
        spec = fm.spec
        self.spec = spec
        self.vocab: dict[str, dict[str, int]] = {}
        for f in spec.features:
            if f.kind != "dense" and f.vocab_name not in self.vocab:
                self.vocab[f.vocab_name] = {k: i + FIRST_ID for i, k in enumerate(fm.vocabs.get(f.vocab_name, []))}
        self.domains = domain_keys(spec)
        self.sparse = [(spec.feature(n), fm.dense_stats.get(n)) for n in fm.sparse]
        self.dense = [(spec.feature(n), fm.dense_stats[n]) for n in fm.dense]
        self.seqs = [spec.feature(n) for n in fm.sequences]

    def _id(self, vocab: dict[str, int], v: Any) -> int:
        k = _key(v)
        return OOV if k is None else vocab.get(k, OOV)

    def encode(self, rows: list[dict[str, Any]]) -> Batch:
        """``rows``: raw values by raw column (validated by :func:`row_model`)."""
        n, spec = len(rows), self.spec
        sparse = np.empty((n, len(self.sparse)), dtype=np.int64)
        for j, (f, st) in enumerate(self.sparse):
            col = f.raw_column
            if f.kind == "dense":  # bucketised: 2 + bucket, missing -> OOV (as _bucket_ids)
                x = np.array([np.nan if r.get(col) is None else float(r[col]) for r in rows], dtype=np.float64)
                ids = FIRST_ID + np.searchsorted(np.asarray(st.boundaries, dtype=np.float64), x, side="right")
                ids[~np.isfinite(x)] = OOV
                sparse[:, j] = ids
            else:
                vocab = self.vocab[f.vocab_name]
                sparse[:, j] = [self._id(vocab, r.get(col)) for r in rows]
        dense = np.empty((n, len(self.dense)), dtype=np.float32)
        for j, (f, st) in enumerate(self.dense):
            col = f.raw_column
            x = np.array([np.nan if r.get(col) is None else float(r[col]) for r in rows], dtype=np.float64)
            dense[:, j] = _transform(x, f.transform, st)
        seqs, lens = {}, {}
        for f in self.seqs:
            vocab, L = self.vocab[f.vocab_name], f.max_len
            ids = np.zeros((n, L), dtype=np.int64)
            ln = np.zeros(n, dtype=np.int64)
            for i, r in enumerate(rows):
                items = (r.get(f.raw_column) or [])[:L]
                ln[i] = len(items)
                ids[i, : len(items)] = [self._id(vocab, v) for v in items]
            seqs[f.name], lens[f.name] = torch.from_numpy(ids), torch.from_numpy(ln)
        domain = np.array([self.domains[_key(r[spec.domain.column])] for r in rows], dtype=np.int64)
        T = spec.num_tasks
        return Batch(
            sparse=torch.from_numpy(sparse), dense=torch.from_numpy(dense), domain=torch.from_numpy(domain),
            labels=torch.zeros(n, T), label_mask=torch.zeros(n, T, dtype=torch.bool),
            group=torch.full((n,), -1, dtype=torch.long), sequences=seqs, seq_lengths=lens,
        )


def _transform(x: np.ndarray, transform: str, st) -> np.ndarray:
    """Normalise dense values with the train statistics; missing -> the train mean, transformed
    (the formulas of the data layer's ``_dense_values``)."""
    missing = ~np.isfinite(x)
    if transform == "standard":
        y, fill = (x - st.mean) / st.std, 0.0
    elif transform == "log_standard":
        with np.errstate(invalid="ignore"):
            y = (np.log1p(np.maximum(x, 0.0)) - st.mean) / st.std
        fill = 0.0
    elif transform == "minmax":
        rng = (st.max - st.min) or 1.0
        y, fill = (x - st.min) / rng, (st.mean - st.min) / rng
    else:  # none
        y, fill = x, st.mean
    y = np.where(missing, fill, y)
    return y.astype(np.float32)


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: a cell no unit scores is ``null``."""
    return None if math.isnan(x) else x
