"""Streaming batch scoring: a CSV or Parquet file of raw rows -> Parquet of per-task probabilities.

The file is read ``chunk_rows`` rows at a time (Parquet: ``pyarrow.parquet.ParquetFile.iter_batches``;
CSV: Polars' streaming ``scan_csv(...).collect_batches``), each chunk is encoded through the run's
feature map by the data layer's :func:`~mdmt.data.preprocess.encode_for_scoring` (unseen ids ->
OOV), scored, and appended to the output as one Parquet row group. Memory therefore depends on
``chunk_rows``, not on the file's size. The output is written to a temporary file beside ``out``
and renamed when every row is scored, so a bad row never leaves a partial output behind.

Output columns: ``row`` (0-based row number in the input file), the ``keep`` columns, then one
Float32 column per task, named ``<score_prefix><task>`` (probability; NaN where the run has no
model for the row's cell).

A bad row is named by its row number in the file (not in the chunk).

Example::

    scorer = open_scorer("runs/my-run")
    n = score_file(scorer, "rows.parquet", "scores.parquet", keep=["user_id"])
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..data.base import DataError
from ..data.preprocess import _check_columns, _required_columns, encode_for_scoring
from ..schema import DatasetSpec
from .engine import Scorer

__all__ = ["ROW", "ChunkStats", "raw_columns", "read_chunks", "score_file", "default_threads"]

ROW = "row"  #: the row-key column of the output
_ROW_IN_MESSAGE = re.compile(r"\brow (\d+) \(0-based\)")


@dataclass
class ChunkStats:
    """What one chunk cost: rows and seconds spent reading, encoding, scoring and writing (reading
    and encoding, and writing, run in background threads, overlapping the scoring of other chunks)."""

    first_row: int
    rows: int
    read_s: float
    encode_s: float
    score_s: float
    write_s: float


def default_threads() -> int:
    """Intra-op threads of the engine for ``mdmt predict`` when ``--threads`` is not given: every
    core this process may run on but one, which is left to reading and encoding the next chunk
    (a background thread). On 2 cores: 1, so the two stages never wait on each other's spinning
    worker threads."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def raw_columns(spec: DatasetSpec) -> list[str]:
    """The raw columns a row to score must hold: every feature's column and the domain column."""
    cols = [f.raw_column for f in spec.features] + [spec.domain.column]
    return list(dict.fromkeys(cols))


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _typed_ids(frame: pl.DataFrame, spec: DatasetSpec) -> pl.DataFrame:
    """CSV id columns are read as text (so a later non-integer id can never break the stream); a
    chunk whose ids are all integers gets them back as Int64 (the encoder's fast path, same keys),
    all numbers as Float64 (whole numbers then key as integers, as they do when a reader infers floats)."""
    cols = []
    for f in spec.features:
        c = f.raw_column
        if f.kind == "dense" or c not in frame.columns or frame[c].dtype != pl.String:
            continue
        text = frame[c].str.strip_chars()
        for dtype in (pl.Int64, pl.Float64):  # "5.0" keys as "5", as when a reader infers floats
            typed = text.cast(dtype, strict=False)
            if typed.null_count() == frame[c].null_count():
                cols.append(typed)
                break
    return frame.with_columns(cols) if cols else frame


def _check(have: list[str], spec: DatasetSpec, extra: list[str], path: Path) -> None:
    required = _required_columns(spec, labels=False, split=False) + [(c, "--keep column") for c in extra]
    _check_columns(pl.DataFrame(schema={c: pl.Null for c in have}), required, str(path))


def read_chunks(
    path: str | Path, spec: DatasetSpec, chunk_rows: int, extra: list[str] | None = None, separator: str = ",",
    sequence_separator: str = "|",
) -> Iterator[pl.DataFrame]:
    """Raw rows of ``path`` (CSV or Parquet), ``chunk_rows`` at a time, with the schema's raw
    columns (sequences as list columns) plus ``extra`` columns. Missing columns raise a DataError
    naming the file and the column before anything is read."""
    from ..data.table import parse_sequences

    path = Path(path)
    if not path.exists():
        raise DataError(f"input file {path} not found")
    extra = list(extra or [])
    need = raw_columns(spec)
    if _is_parquet(path):
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err})") from err
        have = pf.schema_arrow.names
        _check(have, spec, extra, path)
        reader: Iterator = (pl.from_arrow(pa.Table.from_batches([b])) for b in
                            pf.iter_batches(batch_size=chunk_rows, columns=list(dict.fromkeys(need + extra))))
    else:
        seq = {f.raw_column: pl.String for f in spec.sequence_features()}
        ids = {f.raw_column: pl.String for f in spec.features if f.kind == "sparse"}
        dense = {f.raw_column: pl.Float64 for f in spec.features if f.kind == "dense"}
        try:
            lf = pl.scan_csv(path, separator=separator, schema_overrides={**ids, **dense, **seq},
                             infer_schema_length=10_000)
            have = lf.collect_schema().names()
        except pl.exceptions.PolarsError as err:
            raise DataError(f"{path}: not a readable CSV file ({str(err).splitlines()[0]})") from err
        _check(have, spec, extra, path)
        reader = lf.select(list(dict.fromkeys(need + extra))).collect_batches(chunk_size=chunk_rows, lazy=True)
    first = 0
    try:
        for chunk in reader:
            for start in range(0, chunk.height, chunk_rows):  # re-cut: a reader may hand out larger chunks
                part = chunk.slice(start, chunk_rows)
                if not _is_parquet(path):
                    try:
                        part = parse_sequences(part, spec, sequence_separator, source=str(path))
                    except DataError as err:
                        raise _absolute_rows(err, first, str(path)) from err
                    part = _typed_ids(part, spec)
                yield part
                first += part.height
    except pl.exceptions.PolarsError as err:  # a cell that does not parse (e.g. text in a dense column)
        raise DataError(f"{path}: rows from {first} (0-based) on do not parse: {str(err).splitlines()[0]}") from err


def _absolute_rows(err: DataError, first_row: int, source: str) -> DataError:
    """Chunk-relative 'row k (0-based)' in the encoder's message -> the row number in the file."""
    msg = _ROW_IN_MESSAGE.sub(lambda m: f"row {int(m.group(1)) + first_row} (0-based)", str(err))
    return DataError(msg if source in msg else f"{source}: {msg}")


_DONE = object()


def _encoded_chunks(
    path, fm, chunk_rows: int, keep: list[str], separator: str, source: str, sequence_separator: str
) -> Iterator[tuple]:
    """``(first_row, frame, batch, read_s, encode_s)`` per chunk, produced one chunk ahead in a
    thread: reading and encoding (Polars, Arrow) overlap the model (onnxruntime, torch), which all
    release the GIL. At most two chunks wait, so memory stays bounded by the chunk size."""
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce() -> None:
        first = 0
        try:
            chunks = read_chunks(path, fm.spec, chunk_rows, extra=keep, separator=separator,
                                 sequence_separator=sequence_separator)
            t0 = time.perf_counter()
            for frame in chunks:
                t1 = time.perf_counter()
                try:
                    batch = encode_for_scoring(frame, fm, source=source)
                except DataError as err:
                    raise _absolute_rows(err, first, source) from err
                item = (first, frame, batch, t1 - t0, time.perf_counter() - t1)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
                first += frame.height
                t0 = time.perf_counter()
            q.put(_DONE)
        except BaseException as err:  # handed to the consumer, raised there
            q.put(err)

    thread = threading.Thread(target=produce, name="mdmt-predict-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.1)


class _ChunkWriter:
    """Scored chunks -> row groups of one Parquet file, written in order by a background thread.

    The scoring thread hands over ``(first_row, frame, probs)`` and goes on with the next chunk
    while this thread builds the output table and writes it (Arrow and Parquet release the GIL).
    At most two chunks wait, so memory stays bounded. ``on_chunk`` is called here, after each
    chunk is written, in chunk order. An error in this thread is raised in the scoring thread at
    its next :meth:`put` or at :meth:`finish`.
    """

    def __init__(self, path: Path, keep: list[str], tasks: list[str], on_chunk: Callable[[ChunkStats], None] | None) -> None:
        self.path, self.keep, self.tasks, self.on_chunk = path, keep, tasks, on_chunk
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0
        self.thread = threading.Thread(target=self._run, name="mdmt-predict-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # after an error: only drain, so put() never blocks
            first, frame, probs, stats = item
            try:
                t0 = time.perf_counter()
                cols: dict[str, pa.Array] = {ROW: pa.array(np.arange(first, first + frame.height, dtype=np.int64))}
                for c in self.keep:
                    cols[c] = frame[c].to_arrow()
                for j, t in enumerate(self.tasks):
                    cols[t] = pa.array(probs[:, j].astype(np.float32, copy=False))
                table = pa.table(cols)
                if self.writer is None:
                    self.writer = pq.ParquetWriter(self.path, table.schema)
                self.writer.write_table(table)
                self.rows += table.num_rows
                stats.write_s = time.perf_counter() - t0
                if self.on_chunk is not None:
                    self.on_chunk(stats)
            except BaseException as err:  # raised in the scoring thread
                self.error = err

    def put(self, first: int, frame: pl.DataFrame, probs: np.ndarray, stats: ChunkStats) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((first, frame, probs, stats))

    def finish(self, raise_error: bool = True) -> bool:
        """Wait until every chunk is written and close the file; True when it holds a row.
        Raises the writer thread's error (unless ``raise_error`` is False). Idempotent."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except BaseException as err:
                self.error = self.error or err
        if raise_error and self.error is not None:
            raise self.error
        return self.rows > 0


def score_file(
    scorer: Scorer,
    path: str | Path,
    out: str | Path,
    *,
    keep: list[str] | None = None,
    chunk_rows: int = 65_536,
    separator: str = ",",
    on_chunk: Callable[[ChunkStats], None] | None = None,
    model_rows: int = 4096,
    model_workers: int = 1,
    score_prefix: str = "",
    sequence_separator: str = "|",
) -> int:
    """Score every row of ``path`` into the Parquet file ``out``; returns the number of rows.

    Args:
        scorer: from :func:`mdmt.serve.engine.open_scorer`.
        path: CSV or Parquet file of raw rows; labels are not needed.
        out: output Parquet file (replaced only when every row is scored).
        keep: input columns copied to the output.
        chunk_rows: rows read, encoded and scored at a time (sets the memory used).
        separator: CSV separator.
        on_chunk: called after each chunk with its :class:`ChunkStats`.
        model_workers: threads that run model calls of a chunk side by side (each with the engine's
            intra-op threads; both engines release the GIL while they compute). 1: the calling thread.
        model_rows: rows per model call within a chunk (activations of this many rows stay in cache;
            4096 was the fastest of 256 to 16,384 for MMoE on the demo schema).
        score_prefix: prefix of the score columns (``p_`` -> ``p_click``), e.g. to keep a label column.
        sequence_separator: how a CSV joins the ids of a sequence cell (the run's, see ``Scorer``).

    The next chunk is read and encoded in a background thread while the current one is scored, and
    the chunk before is written in another (see :func:`_encoded_chunks` and :class:`_ChunkWriter`).
    """
    if chunk_rows < 1:
        raise DataError(f"--chunk-rows must be at least 1, got {chunk_rows}")
    if model_workers < 1:
        raise DataError(f"--model-workers must be at least 1, got {model_workers}")
    model_rows = max(1, model_rows)
    fm = scorer.feature_map
    tasks = [f"{score_prefix}{t}" for t in fm.spec.task_names]
    keep = list(keep or [])
    clash = sorted(set(keep) & ({ROW} | set(tasks)))
    if clash:
        raise DataError(f"--keep {clash}: the output already has a column of that name (the row key {ROW!r} and the "
                        f"score columns {tasks}); name the score columns apart with --score-prefix")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    writer = _ChunkWriter(tmp, keep, tasks, on_chunk)
    pool = ThreadPoolExecutor(model_workers, thread_name_prefix="mdmt-predict-model") if model_workers > 1 else None
    n = 0
    source = str(path)
    try:
        for first, frame, batch, read_s, encode_s in _encoded_chunks(path, fm, chunk_rows, keep, separator, source,
                                                                          sequence_separator):
            t2 = time.perf_counter()
            slices = [batch.slice(s, s + model_rows) for s in range(0, len(batch), model_rows)]
            probs = np.concatenate(list(pool.map(scorer.score, slices)) if pool is not None else [scorer.score(b) for b in slices])
            writer.put(first, frame, probs, ChunkStats(first, frame.height, read_s, encode_s, time.perf_counter() - t2, 0.0))
            n = first + frame.height
        if not writer.finish():
            raise DataError(f"{path}: no rows to score")
        tmp.replace(out)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        writer.finish(raise_error=False)
        tmp.unlink(missing_ok=True)
    return n
