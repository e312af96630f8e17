"""Rows per second of the data paths, against a per-row ``DataLoader`` measured in the same run.

Measures, on one machine and in one process:

1. :class:`mdmt.data.loader.BatchIterator` over an in-memory split of ``--rows`` rows (default
   1,000,000) with ``--sparse`` sparse features (default 10), 4 dense features, 3 tasks, batch
   size ``--batch-size`` (default 2048), shuffled: best of ``--repeats`` full epochs;
2. the reference: ``torch.utils.data.DataLoader`` over a per-row ``Dataset`` (``__getitem__``
   returns one row as a dict of tensors) with default collation, shuffled, ``num_workers=0``,
   timed on its first ``--ref-rows`` rows (default 200,000) — the ratio of the two is the speed-up;
3. :class:`mdmt.data.loader.ParquetStream` over the same rows written as encoded Parquet shards
   (shuffled, one epoch), unless ``--no-stream``.

Each path yields batches with the same fields; a batch is only produced, not used by a model.
Results are printed and written to ``results/loader_speed.json`` beside this file.

Run::

    python benchmarks/loader_speed.py                     # full size
    python benchmarks/loader_speed.py --rows 200000       # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

try:
    from mdmt.batch import Batch
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mdmt.batch import Batch

from mdmt.data.loader import BatchIterator, ParquetStream
from mdmt.data.preprocess import batch_to_arrow
from mdmt.featuremap import FeatureMap
from mdmt.schema import DatasetSpec, DomainSpec, FeatureSpec, TaskSpec

NUM_DENSE, NUM_TASKS, NUM_DOMAINS = 4, 3, 3


def machine() -> dict[str, object]:
    """Facts about the machine and library versions the timings come from."""
    return {
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def make_split(rows: int, sparse: int, vocab: int = 100_000, seed: int = 0) -> tuple[Batch, FeatureMap]:
    """A synthetic encoded split and the feature map describing its columns."""
    g = torch.Generator().manual_seed(seed)
    spec = DatasetSpec(
        name="bench",
        features=[FeatureSpec(name=f"s{i}") for i in range(sparse)]
        + [FeatureSpec(name=f"x{i}", kind="dense") for i in range(NUM_DENSE)],
        domain=DomainSpec(column="d", names=[f"d{i}" for i in range(NUM_DOMAINS)]),
        tasks=[TaskSpec(name=f"t{i}", label=f"y{i}") for i in range(NUM_TASKS)],
        group="s0",
    )
    fm = FeatureMap.layout_of(spec)
    batch = Batch(
        sparse=torch.randint(1, vocab, (rows, sparse), generator=g),
        dense=torch.randn(rows, NUM_DENSE, generator=g),
        domain=torch.randint(0, NUM_DOMAINS, (rows,), generator=g),
        labels=torch.randint(0, 2, (rows, NUM_TASKS), generator=g).float(),
        label_mask=torch.rand(rows, NUM_TASKS, generator=g) < 0.9,
        group=torch.randint(0, rows // 10 + 1, (rows,), generator=g),
    )
    return batch, fm


class RowDataset(Dataset):
    """The common per-row dataset: one dict of tensors per ``__getitem__``."""

    def __init__(self, batch: Batch) -> None:
        self.b = batch

    def __len__(self) -> int:
        return len(self.b)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b = self.b
        return {
            "sparse": b.sparse[i],
            "dense": b.dense[i],
            "domain": b.domain[i],
            "labels": b.labels[i],
            "label_mask": b.label_mask[i],
            "group": b.group[i],
        }


def time_epoch(iterable, limit_rows: int | None = None) -> tuple[float, int]:
    """Seconds and rows to iterate (until ``limit_rows`` rows when given)."""
    rows = 0
    t0 = time.perf_counter()
    for b in iterable:
        rows += len(b) if isinstance(b, Batch) else int(b["domain"].shape[0])
        if limit_rows is not None and rows >= limit_rows:
            break
    return time.perf_counter() - t0, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--sparse", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--ref-rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "loader_speed.json")
    args = ap.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    info = machine()
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
    split, fm = make_split(args.rows, args.sparse)
    bs = args.batch_size

    it = BatchIterator(split, batch_size=bs, shuffle=True, seed=0)
    fast = min((time_epoch(it) for _ in range(args.repeats)), key=lambda r: r[0])
    fast_rps = fast[1] / fast[0]
    plain = min((time_epoch(BatchIterator(split, batch_size=bs)) for _ in range(args.repeats)), key=lambda r: r[0])
    print(
        f"BatchIterator (shuffled): {fast[1]:,} rows in {fast[0]:.3f} s = {fast_rps / 1e6:.1f} M rows/s "
        f"(unshuffled: {plain[1] / plain[0] / 1e6:.1f} M rows/s)"
    )

    loader = DataLoader(RowDataset(split), batch_size=bs, shuffle=True, num_workers=0)
    ref_s, ref_rows = time_epoch(loader, limit_rows=min(args.ref_rows, args.rows))
    ref_rps = ref_rows / ref_s
    ratio = fast_rps / ref_rps
    print(
        f"reference DataLoader(per-row Dataset, default collate): {ref_rows:,} rows in {ref_s:.2f} s = "
        f"{ref_rps / 1e3:.0f} K rows/s; BatchIterator is {ratio:.0f}x faster"
    )

    stream_res: dict[str, float | int] | None = None
    if not args.no_stream:
        import pyarrow.parquet as pq

        with tempfile.TemporaryDirectory() as tmp:
            shard_rows = 250_000
            paths = []
            for k, start in enumerate(range(0, args.rows, shard_rows)):
                p = Path(tmp) / f"part-{k:05d}.parquet"
                pq.write_table(batch_to_arrow(split.slice(start, start + shard_rows), fm), p, row_group_size=131_072)
                paths.append(p)
            stream = ParquetStream(paths, fm, batch_size=bs, shuffle=True, seed=0)
            st_s, st_rows = time_epoch(stream)
        stream_res = {"rows": st_rows, "seconds": st_s, "rows_per_sec": st_rows / st_s, "shard_rows": shard_rows}
        print(f"ParquetStream (shuffled, buffer 200,000): {st_rows:,} rows in {st_s:.2f} s = {st_rows / st_s / 1e6:.2f} M rows/s")

    out = {
        "machine": info,
        "rows": args.rows,
        "sparse_features": args.sparse,
        "dense_features": NUM_DENSE,
        "tasks": NUM_TASKS,
        "batch_size": bs,
        "batch_iterator": {"rows": fast[1], "seconds": fast[0], "rows_per_sec": fast_rps, "shuffle": True},
        "batch_iterator_unshuffled_rows_per_sec": plain[1] / plain[0],
        "reference_dataloader": {"rows": ref_rows, "seconds": ref_s, "rows_per_sec": ref_rps},
        "speedup_vs_reference": ratio,
        "over_1M_rows_per_sec": fast_rps > 1e6,
        "parquet_stream": stream_res,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
