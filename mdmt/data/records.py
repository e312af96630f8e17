"""Encode a few raw rows given as records (dicts keyed by raw column) without Polars.

:func:`~mdmt.data.preprocess.encode` encodes a Polars frame. Polars runs every Series operation
as a small query, about 40 of them per call, which sets a floor of several milliseconds on a
one-row scoring request. :class:`RecordEncoder` reads the same fitted feature map with plain
dictionary look-ups and NumPy, applies the same formulas (:class:`~mdmt.data.preprocess.DenseNorm`,
:func:`~mdmt.data.preprocess.bucket_ids`, :func:`~mdmt.data.preprocess.domain_lookup`) and yields
the :class:`~mdmt.batch.Batch` that :func:`~mdmt.data.preprocess.encode_for_scoring` yields on the
same rows (sparse, dense, domain, sequences and lengths; labels all masked, group -1).

The records are expected to be validated already (ids are integers, strings or None; numbers are
numbers or None; sequences are lists or None; the domain is a known value): the HTTP service
validates them with the pydantic models of :mod:`mdmt.serve.rows`. A domain value not in the
schema raises a ``KeyError``.

Example::

    >>> enc = RecordEncoder(feature_map)                                           # doctest: +SKIP
    >>> enc.encode([{"user_id": 7, "item_id": "a9", "price": None, "tab": "home"}]).sparse  # doctest: +SKIP
    tensor([[3, 1, ...]])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..batch import Batch
from ..featuremap import FIRST_ID, OOV, FeatureMap
from .preprocess import DenseNorm, bucket_ids, domain_lookup

__all__ = ["RecordEncoder", "raw_key"]


def raw_key(v: Any) -> str | None:
    """A raw id or domain value as its vocabulary key: integers print as integers, strings stay."""
    if v is None:
        return None
    return v if isinstance(v, str) else str(v)


class RecordEncoder:
    """Records (dicts keyed by raw column) -> the encoded :class:`Batch` ``encode_for_scoring`` gives.

    Args:
        fm: the fitted feature map.
    """

    def __init__(self, fm: FeatureMap) -> None:
        self.fm = fm
        spec = self.spec = fm.spec
        self.vocab: dict[str, dict[str, int]] = {}
        for f in spec.features:
            if f.kind != "dense" and f.vocab_name not in self.vocab:
                self.vocab[f.vocab_name] = {k: i + FIRST_ID for i, k in enumerate(fm.vocabs.get(f.vocab_name, []))}
        self.domains = domain_lookup(spec)
        self.sparse = [(spec.feature(n), fm.dense_stats.get(n)) for n in fm.sparse]
        self.dense = [(spec.feature(n), fm.dense_stats[n]) for n in fm.dense]
        self.dense_columns = [f.raw_column for f, _ in self.dense]
        self.dense_norm = DenseNorm([(f.transform, st) for f, st in self.dense])
        self.seqs = [spec.feature(n) for n in fm.sequences]

    @staticmethod
    def _id(vocab: dict[str, int], v: Any) -> int:
        k = raw_key(v)
        return OOV if k is None else vocab.get(k, OOV)

    @staticmethod
    def _floats(rows: list[dict[str, Any]], col: str) -> np.ndarray:
        return np.array([np.nan if r.get(col) is None else float(r[col]) for r in rows], dtype=np.float64)

    def encode(self, rows: list[dict[str, Any]]) -> Batch:
        """``rows``: raw values by raw column -> a :class:`Batch` of ``len(rows)`` rows."""
        n, spec = len(rows), self.spec
        sparse = np.empty((n, len(self.sparse)), dtype=np.int64)
        for j, (f, st) in enumerate(self.sparse):
            if f.kind == "dense":  # bucketised
                sparse[:, j] = bucket_ids(self._floats(rows, f.raw_column), st)
            else:
                vocab = self.vocab[f.vocab_name]
                sparse[:, j] = [self._id(vocab, r.get(f.raw_column)) for r in rows]
        # every dense column at once (None -> NaN: missing)
        raw = np.array([[r.get(c) for c in self.dense_columns] for r in rows], dtype=np.float64)
        dense = self.dense_norm(raw.reshape(n, len(self.dense_columns)))
        seqs, lens = {}, {}
        for f in self.seqs:  # the first max_len entries (most recent first), left-aligned, 0-padded
            vocab, L = self.vocab[f.vocab_name], f.max_len
            ids = np.zeros((n, L), dtype=np.int64)
            ln = np.zeros(n, dtype=np.int64)
            for i, r in enumerate(rows):
                items = (r.get(f.raw_column) or [])[:L]
                ln[i] = len(items)
                ids[i, : len(items)] = [self._id(vocab, v) for v in items]
            seqs[f.name], lens[f.name] = torch.from_numpy(ids), torch.from_numpy(ln)
        domain = np.array([self.domains[raw_key(r[spec.domain.column])] for r in rows], dtype=np.int64)
        T = spec.num_tasks
        return Batch(
            sparse=torch.from_numpy(sparse), dense=torch.from_numpy(dense), domain=torch.from_numpy(domain),
            labels=torch.zeros(n, T), label_mask=torch.zeros(n, T, dtype=torch.bool),
            group=torch.full((n,), -1, dtype=torch.long), sequences=seqs, seq_lengths=lens,
        )
