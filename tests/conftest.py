"""Shared fixtures: a tiny synthetic schema, feature map and batch, and the real-data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mdmt.batch import Batch
from mdmt.featuremap import FIRST_ID, DenseStats, FeatureMap
from mdmt.schema import DatasetSpec, DomainSpec, FeatureSpec, TableSpec, TaskSpec


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a whole test module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny ops run fastest, and least noisily, on one thread. The previous count is restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def data_dir() -> Path:
    """Root of the real data sets (``MDMT_DATA_DIR``). Skips, saying why, only when it is unset."""
    root = os.environ.get("MDMT_DATA_DIR")
    if not root:
        pytest.skip("MDMT_DATA_DIR is not set; it must point at the directory holding ml-100k/ etc.")
    path = Path(root)
    assert path.is_dir(), f"MDMT_DATA_DIR={root} is not a directory"
    return path


def make_tiny(per_domain: bool = False, with_sequence: bool = True, num_tasks: int = 3, num_domains: int = 3):
    """A tiny schema + feature map: user/item/cat ids, one dense, one bucketised dense, one sequence."""
    features = [
        FeatureSpec(name="user_id", source="user"),
        FeatureSpec(name="item_id", source="item"),
        FeatureSpec(name="category", source="item"),
        FeatureSpec(name="price", kind="dense", source="item"),
        FeatureSpec(name="age", kind="dense", source="user", transform="bucketize", buckets=4),
    ]
    if with_sequence:
        features.append(FeatureSpec(name="hist_item", kind="sequence", vocab="item_id", max_len=5, behaviour="click"))
    tables = []
    if per_domain:
        tables = [
            TableSpec(name="user_shared", dim=8, features=["user_id"]),
            TableSpec(name="user_domain", dim=8, features=["user_id"], per_domain=True),
        ]
    spec = DatasetSpec(
        name="tiny",
        features=features,
        tables=tables,
        domain=DomainSpec(column="domain", names=[f"d{i}" for i in range(num_domains)]),
        tasks=[TaskSpec(name=f"t{i}", label=f"y{i}", related_features=["item_id"]) for i in range(num_tasks)],
        group="user_id",
        default_dim=8,
    )
    fm = FeatureMap.layout_of(
        spec,
        vocabs={"user_id": [str(i) for i in range(20)], "item_id": [str(i) for i in range(30)], "category": list("abcde")},
        dense_stats={"price": DenseStats(mean=0.0, std=1.0), "age": DenseStats(boundaries=[20.0, 30.0, 40.0])},
    )
    return spec, fm


def make_batch(spec: DatasetSpec, fm: FeatureMap, size: int = 16, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cols = [torch.randint(1, fm.vocab_size(name), (size,), generator=g) for name in fm.sparse]
    seqs, lens = {}, {}
    for name in fm.sequences:
        f = spec.feature(name)
        ln = torch.randint(0, f.max_len + 1, (size,), generator=g)
        ids = torch.randint(FIRST_ID, fm.vocab_size(name), (size, f.max_len), generator=g)
        ids = ids * (torch.arange(f.max_len).unsqueeze(0) < ln.unsqueeze(1))
        seqs[name], lens[name] = ids, ln
    return Batch(
        sparse=torch.stack(cols, 1) if cols else torch.zeros(size, 0, dtype=torch.long),
        dense=torch.randn(size, len(fm.dense), generator=g),
        domain=torch.arange(size) % spec.num_domains,
        labels=torch.randint(0, 2, (size, spec.num_tasks), generator=g).float(),
        label_mask=torch.ones(size, spec.num_tasks, dtype=torch.bool),
        group=torch.randint(0, 5, (size,), generator=g),
        sequences=seqs,
        seq_lengths=lens,
    )


@pytest.fixture
def tiny():
    spec, fm = make_tiny()
    return spec, fm, make_batch(spec, fm)


@pytest.fixture
def tiny_per_domain():
    spec, fm = make_tiny(per_domain=True)
    return spec, fm, make_batch(spec, fm)
