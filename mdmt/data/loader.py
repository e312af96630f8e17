"""Batch iterators: the in-memory fast path and the streaming Parquet path (DESIGN §6, §7).

Both yield the same :class:`~mdmt.batch.Batch` type, so a trainer does not care which one it holds.

* :class:`BatchIterator` keeps the whole split as tensors in memory. An epoch with ``shuffle`` costs
  one ``torch.randperm``; every batch is then one gather of its rows (``Batch.index`` with its
  slice of the permutation), and without ``shuffle`` a view (``Batch.slice``): no per-row Python
  and no collation. Gathering batch by batch rather than the whole split at the epoch's start
  copies the same rows, but into a batch-sized buffer that the step reads while it is still in
  cache, with no epoch-sized copy (nor its memory) at every epoch start. This is what makes
  small models train at the speed of the model rather than of the data path.
* :class:`ParquetStream` reads encoded Parquet shards (written by :func:`mdmt.data.preprocess.prepare`)
  row group by row group with PyArrow, for data larger than memory. With ``shuffle`` the shard
  order and the row-group order change every epoch and rows are mixed in a shuffle buffer of
  ``buffer_rows`` rows. Each rank of a ``world_size`` job keeps the rows whose global index is
  ``rank`` modulo ``world_size`` (a partition of the rows, ready for DDP).

Example::

    >>> from mdmt.batch import Batch
    >>> data = Batch.empty(num_sparse=2, num_dense=0, num_tasks=1, size=10)
    >>> it = BatchIterator(data, batch_size=4, shuffle=True, seed=0)
    >>> [len(b) for b in it], len(it)
    ([4, 4, 2], 3)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from ..batch import Batch
from ..featuremap import FeatureMap
from .base import DataError
from .preprocess import arrow_columns, batch_from_arrow, shard_paths

__all__ = ["BatchIterator", "ParquetStream"]


class BatchIterator:
    """Mini-batches of an in-memory split.

    Args:
        data: the whole split (``N`` rows).
        batch_size: rows per batch ``B``; the last batch may be smaller unless ``drop_last``.
        shuffle: permute the rows every epoch (``torch.randperm`` seeded by ``seed + epoch``).
        seed: base seed of the permutations.
        drop_last: drop the last incomplete batch.

    Each ``iter()`` runs one epoch and advances the epoch counter, so iterating repeatedly
    shuffles differently each time; :meth:`set_epoch` pins the epoch (e.g. on resume). Two
    iterators with the same seed and epoch give the same order.
    """

    def __init__(
        self, data: Batch, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (its permutation is seeded by ``seed + epoch``)."""
        self.epoch = epoch

    @property
    def num_rows(self) -> int:
        return len(self.data)

    def __len__(self) -> int:
        n, b = len(self.data), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def permutation(self, epoch: int) -> torch.Tensor:
        """``[N]`` int64 row order of ``epoch`` (identity without shuffle)."""
        n = len(self.data)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(n, generator=g)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        data, n, b = self.data, len(self.data), self.batch_size
        stop = n - n % b if self.drop_last else n
        if not self.shuffle:
            for start in range(0, stop, b):
                yield data.slice(start, min(start + b, n))
            return
        perm = self.permutation(epoch)
        for start in range(0, stop, b):
            yield data.index(perm[start : min(start + b, n)])  # this batch's rows, gathered


class ParquetStream:
    """Mini-batches streamed from encoded Parquet shards (data larger than memory).

    Args:
        shard_paths: the shards of one split, in their canonical order (``<cache>/<split>/part-*.parquet``).
        feature_map: the feature map they were encoded with.
        batch_size: rows per batch; the last batch of an epoch may be smaller.
        shuffle: shuffle the shard order, the row-group order within each shard, and rows within a
            buffer of ``buffer_rows`` rows, differently every epoch (seeded by ``seed + epoch``).
        seed: base seed.
        buffer_rows: rows held in the shuffle buffer (memory bound of the stream).
        rank / world_size: this process keeps global rows ``i`` with ``i % world_size == rank``,
            numbered in the canonical (unshuffled) order, so the ranks partition the rows.

    Without shuffle it yields exactly the batches of ``BatchIterator(split, batch_size)``.
    """

    def __init__(
        self,
        shard_paths: list[Path],
        feature_map: FeatureMap,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        buffer_rows: int = 200_000,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if not shard_paths:
            raise DataError("ParquetStream: no shard paths given")
        self.paths = [Path(p) for p in shard_paths]
        self.feature_map = feature_map
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_rows = max(buffer_rows, batch_size)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.columns = arrow_columns(feature_map)
        # (shard index, row group, global offset, rows) in canonical order, from metadata only
        self._units: list[tuple[int, int, int, int]] = []
        offset = 0
        for s, path in enumerate(self.paths):
            if not path.is_file():
                raise DataError(f"{path}: shard not found")
            meta = pq.ParquetFile(path)
            missing = [c for c in self.columns if c not in meta.schema_arrow.names]
            if missing:
                raise DataError(f"{path}: encoded shard lacks columns {missing} required by the feature map")
            for g in range(meta.metadata.num_row_groups):
                n = meta.metadata.row_group(g).num_rows
                self._units.append((s, g, offset, n))
                offset += n
        self.total_rows = offset

    @classmethod
    def from_cache(cls, cache_path: str | Path, split: str, batch_size: int, **kwargs) -> "ParquetStream":
        """A stream over ``<cache_path>/<split>/part-*.parquet`` with ``<cache_path>/feature_map.json``."""
        fm = FeatureMap.load(Path(cache_path) / "feature_map.json")
        return cls(shard_paths(cache_path, split), fm, batch_size, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration."""
        self.epoch = epoch

    @property
    def num_rows(self) -> int:
        """Rows this rank yields per epoch."""
        return max(0, -(-(self.total_rows - self.rank) // self.world_size))

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def _rank_rows(self, offset: int, n: int) -> np.ndarray | None:
        """Local indices of this rank's rows in a unit starting at global ``offset`` (None = all)."""
        if self.world_size == 1:
            return None
        first = (self.rank - offset) % self.world_size
        return np.arange(first, n, self.world_size, dtype=np.int64)

    def _units_for(self, epoch: int) -> list[tuple[int, int, int, int]]:
        if not self.shuffle:
            return self._units
        rng = np.random.default_rng(self.seed + epoch)
        by_shard: dict[int, list[tuple[int, int, int, int]]] = {}
        for u in self._units:
            by_shard.setdefault(u[0], []).append(u)
        order: list[tuple[int, int, int, int]] = []
        for s in rng.permutation(len(self.paths)):
            units = by_shard.get(int(s), [])
            order += [units[i] for i in rng.permutation(len(units))]
        return order

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        gen = torch.Generator().manual_seed(self.seed + epoch)
        bs = self.batch_size
        threshold = self.buffer_rows if self.shuffle else bs
        buf: list[Batch] = []
        buf_rows = 0
        files: dict[int, pq.ParquetFile] = {}

        def drain(final: bool) -> Iterator[Batch]:
            nonlocal buf, buf_rows
            data = buf[0] if len(buf) == 1 else Batch.concat(buf)
            if self.shuffle:
                data = data.index(torch.randperm(len(data), generator=gen))
            n = len(data)
            full = n if final else n - n % bs
            for start in range(0, full, bs):
                yield data.slice(start, min(start + bs, full))
            buf = [data.slice(full, n)] if full < n else []
            buf_rows = n - full

        for s, g, offset, n in self._units_for(epoch):
            pf = files.get(s)
            if pf is None:
                pf = files[s] = pq.ParquetFile(self.paths[s])
            table = pf.read_row_group(g, columns=self.columns)
            keep = self._rank_rows(offset, n)
            if keep is not None:
                if len(keep) == 0:
                    continue
                table = table.take(keep)
            buf.append(batch_from_arrow(table, self.feature_map))
            buf_rows += table.num_rows
            if buf_rows >= threshold:
                yield from drain(final=False)
        if buf_rows:
            yield from drain(final=True)
