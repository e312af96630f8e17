"""BatchIterator (in-memory fast path) and ParquetStream (streaming path) yield the same Batches."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

import mdmt.data.preprocess as pp
from mdmt.batch import Batch
from mdmt.data.base import RawData
from mdmt.data.loader import BatchIterator, ParquetStream
from mdmt.data.preprocess import prepare
from mdmt.schema import DatasetSpec, DomainSpec, FeatureSpec, SplitSpec, TaskSpec

from .test_preprocess import assert_batches_equal


def row_batch(n: int) -> Batch:
    """A batch whose sparse column 0 is the row number."""
    b = Batch.empty(num_sparse=2, num_dense=1, num_tasks=2, size=n)
    b.sparse[:, 0] = torch.arange(n)
    b.dense[:, 0] = torch.arange(n, dtype=torch.float32)
    return b


def rows_of(batches) -> list[int]:
    return torch.cat([b.sparse[:, 0] for b in batches]).tolist()


def test_batch_iterator_covers_every_row_once_per_epoch():
    n, bs = 1003, 64
    it = BatchIterator(row_batch(n), batch_size=bs, shuffle=True, seed=5)
    assert len(it) == 16
    epochs = []
    for _ in range(3):
        batches = list(it)
        assert len(batches) == len(it) and [len(b) for b in batches[:-1]] == [bs] * 15 and len(batches[-1]) == n - 15 * bs
        rows = rows_of(batches)
        assert sorted(rows) == list(range(n))
        for b in batches:  # rows stay aligned across fields
            assert torch.equal(b.sparse[:, 0].float(), b.dense[:, 0])
        epochs.append(rows)
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(n))
    # the same seed gives the same order; set_epoch pins the permutation
    other = BatchIterator(row_batch(n), batch_size=bs, shuffle=True, seed=5)
    assert rows_of(other) == epochs[0]
    other.set_epoch(2)
    assert rows_of(other) == epochs[2]
    assert rows_of(BatchIterator(row_batch(n), batch_size=bs, shuffle=True, seed=6)) != epochs[0]


def test_batch_iterator_shuffled_batches_are_the_permutation_in_order():
    """Each shuffled batch is its slice of the epoch's permutation, gathered on its own: the rows and
    their order are those of gathering the whole split first, and each batch owns its memory."""
    n, bs = 1003, 64
    data = row_batch(n)
    it = BatchIterator(data, batch_size=bs, shuffle=True, seed=3, drop_last=True)
    it.set_epoch(4)
    perm = it.permutation(4)
    whole = data.index(perm)
    batches = list(it)
    assert len(batches) == n // bs
    for k, b in enumerate(batches):
        ref = whole.slice(k * bs, (k + 1) * bs)
        assert torch.equal(b.sparse, ref.sparse) and torch.equal(b.dense, ref.dense) and torch.equal(b.domain, ref.domain)
        assert b.sparse.is_contiguous() and b.sparse.data_ptr() != data.sparse.data_ptr()


def test_batch_iterator_no_shuffle_and_drop_last():
    n = 100
    it = BatchIterator(row_batch(n), batch_size=30, drop_last=True)
    assert len(it) == 3 and rows_of(it) == list(range(90))
    it = BatchIterator(row_batch(n), batch_size=30)
    assert len(it) == 4 and rows_of(it) == list(range(n)) and rows_of(it) == list(range(n))
    with pytest.raises(ValueError):
        BatchIterator(row_batch(n), batch_size=0)


# ---------------------------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------------------------
def stream_raw(n: int = 1000) -> RawData:
    rng = np.random.default_rng(0)
    spec = DatasetSpec(
        name="stream",
        features=[
            FeatureSpec(name="row_id"),  # unique per row: a row key after encoding
            FeatureSpec(name="user_id", source="user"),
            FeatureSpec(name="item_id", source="item"),
            FeatureSpec(name="price", kind="dense"),
            FeatureSpec(name="hist", kind="sequence", vocab="item_id", max_len=4),
        ],
        domain=DomainSpec(column="dom", names=["a", "b", "c"]),
        tasks=[TaskSpec(name="click", label="click"), TaskSpec(name="like", label="like", domains=["a", "b"])],
        group="user_id",
        split=SplitSpec(method="random", seed=3),
    )
    frame = pl.DataFrame(
        {
            "row_id": np.arange(n),
            "user_id": rng.integers(0, 50, n),
            "item_id": rng.integers(0, 80, n),
            "price": rng.normal(size=n),
            "hist": [rng.integers(0, 80, int(k)).tolist() for k in rng.integers(0, 7, n)],
            "dom": rng.choice(["a", "b", "c"], n),
            "click": rng.integers(0, 2, n),
            "like": pl.Series(rng.integers(0, 2, n)).set(pl.Series(rng.random(n) < 0.2), None),
        }
    )
    return RawData(spec, frame, "stream-test")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(pp, "ROW_GROUP_ROWS", 70)  # several row groups per shard
    try:
        yield prepare(stream_raw(), cache_dir=tmp_path_factory.mktemp("cache"), progress=False, shard_rows=300)
    finally:
        mp.undo()


def test_stream_without_shuffle_equals_batch_iterator(prepared):
    train = prepared.splits["train"]
    shards = prepared.shard_paths("train")
    assert len(shards) == 3  # 800 rows in shards of 300
    for bs in (64, 300, 1000):
        stream = ParquetStream(shards, prepared.feature_map, batch_size=bs)
        ref = list(BatchIterator(train, batch_size=bs))
        got = list(stream)
        assert len(got) == len(ref) == len(stream)
        for a, b in zip(got, ref):
            assert_batches_equal(a, b)
    # from the cache directory alone (feature_map.json travels with the shards)
    s2 = ParquetStream.from_cache(prepared.cache_path, "valid", batch_size=32)
    assert_batches_equal(Batch.concat(list(s2)), prepared.splits["valid"])


@pytest.mark.parametrize("world_size", [2, 3])
def test_stream_ranks_partition_rows(prepared, world_size):
    train = prepared.splits["train"]
    n = len(train)
    seen = []
    for rank in range(world_size):
        s = ParquetStream(prepared.shard_paths("train"), prepared.feature_map, 50, rank=rank, world_size=world_size)
        got = Batch.concat(list(s))
        assert len(got) == s.num_rows
        assert_batches_equal(got, train.index(torch.arange(rank, n, world_size)))
        seen.append(got.sparse[:, 0])
    all_rows = torch.cat(seen)
    assert len(all_rows) == n and len(torch.unique(all_rows)) == n


def test_stream_shuffle_covers_rows_and_is_seeded(prepared):
    train = prepared.splits["train"]
    key = prepared.feature_map.sparse_index("row_id")
    ref = {int(r): i for i, r in enumerate(train.sparse[:, key])}

    def epoch_rows(stream):
        batches = list(stream)
        rows = torch.cat([b.sparse[:, key] for b in batches])
        for b in batches:  # every row is intact (all fields come from the same source row)
            assert_batches_equal(b, train.index(torch.tensor([ref[int(r)] for r in b.sparse[:, key]])))
        return rows.tolist()

    shards = prepared.shard_paths("train")
    s = ParquetStream(shards, prepared.feature_map, 64, shuffle=True, seed=1, buffer_rows=200)
    e0, e1 = epoch_rows(s), epoch_rows(s)
    assert sorted(e0) == sorted(e1) == sorted(ref) and e0 != e1
    assert e0 != train.sparse[:, key].tolist()
    assert epoch_rows(ParquetStream(shards, prepared.feature_map, 64, shuffle=True, seed=1, buffer_rows=200)) == e0
    # shuffle + ranks still partition the rows
    parts = [
        epoch_rows(ParquetStream(shards, prepared.feature_map, 64, shuffle=True, seed=1, rank=r, world_size=2))
        for r in range(2)
    ]
    assert sorted(parts[0] + parts[1]) == sorted(ref) and not set(parts[0]) & set(parts[1])
