"""Streaming batch scoring (issue 15, item 2): ``mdmt predict`` reads, encodes, scores and writes chunk
by chunk, gives the same scores as encoding the whole file at once, names bad rows by their row
number in the file, sends unseen ids to OOV and keeps memory flat in the file's size."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mdmt.cli import main
from mdmt.data.preprocess import encode_for_scoring
from mdmt.data.table import parse_sequences
from mdmt.serve.engine import open_scorer, retain_freed_memory
from mdmt.serve.score import ChunkStats, score_file

from .shop import shop_table, write_project


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> tuple[Path, Path]:
    root = write_project(tmp_path_factory.mktemp("shop"), model="mmoe", epochs=1)
    run_dir = root / "runs" / "r"
    assert main(["train", str(root / "exp.yaml"), "--run-dir", str(run_dir)]) == 0
    return root, run_dir


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_chunked_scores_equal_whole_file_scores(shop, tmp_path, fmt):
    root, run_dir = shop
    frame = shop_table(1000, seed=4).with_columns(pl.col("user_id") + pl.Series(np.arange(1000) % 3 * 1000))
    src = tmp_path / f"rows.{fmt}"
    frame.write_csv(src) if fmt == "csv" else parse_sequences(frame, open_scorer(run_dir).feature_map.spec).write_parquet(src)
    scorer = open_scorer(run_dir)
    chunks: list[ChunkStats] = []
    n = score_file(scorer, src, tmp_path / "s.parquet", keep=["user_id"], chunk_rows=128, on_chunk=chunks.append)
    assert n == 1000
    assert [c.rows for c in chunks] == [128] * 7 + [104]  # processed chunk by chunk
    assert [c.first_row for c in chunks] == list(range(0, 1000, 128))
    out = pl.read_parquet(tmp_path / "s.parquet")
    assert out.columns == ["row", "user_id", "click", "order"]
    assert out["row"].to_list() == list(range(1000))
    whole = scorer.score(encode_for_scoring(parse_sequences(frame, scorer.feature_map.spec), scorer.feature_map, "x"))
    np.testing.assert_allclose(out.select("click", "order").to_numpy(), whole, atol=1e-6)
    # two thirds of the users are unseen: they score via the OOV row, finite and in (0, 1)
    assert out["click"].is_between(0, 1, closed="none").all()


def test_model_calls_side_by_side_give_the_same_scores_in_order(shop, tmp_path):
    root, run_dir = shop
    src = tmp_path / "rows.csv"
    shop_table(1000, seed=9).write_csv(src)
    for workers in (1, 3):
        n = score_file(open_scorer(run_dir), src, tmp_path / f"s{workers}.parquet", chunk_rows=300, model_rows=64,
                       model_workers=workers)
        assert n == 1000
    one, three = pl.read_parquet(tmp_path / "s1.parquet"), pl.read_parquet(tmp_path / "s3.parquet")
    assert three["row"].to_list() == list(range(1000))
    np.testing.assert_array_equal(one.to_numpy(), three.to_numpy())


def test_bad_row_is_named_by_its_row_in_the_file_and_leaves_no_output(shop, tmp_path, capsys):
    _, run_dir = shop
    frame = shop_table(1000, seed=5)
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 777).then(pl.lit("nowhere")).otherwise(pl.col("tab"))
                               .alias("tab"))
    frame.write_csv(tmp_path / "bad.csv")
    out = tmp_path / "s.parquet"
    assert main(["predict", str(run_dir), str(tmp_path / "bad.csv"), "--out", str(out), "--chunk-rows", "100"]) == 2
    err = capsys.readouterr().err
    assert "row 777 (0-based)" in err and "bad.csv" in err and "'tab'" in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.glob(".*part")) == []


def test_an_error_while_writing_stops_scoring_and_leaves_no_output(shop, tmp_path):
    """Chunks are written by a background thread; its error surfaces in the caller, nothing is left behind."""
    _, run_dir = shop
    src = tmp_path / "rows.csv"
    shop_table(1000, seed=8).write_csv(src)
    seen: list[int] = []

    def fail_on_third(stats: ChunkStats) -> None:
        seen.append(stats.first_row)
        if stats.first_row == 256:
            raise OSError("no space left on device")

    out = tmp_path / "s.parquet"
    with pytest.raises(OSError, match="no space left"):
        score_file(open_scorer(run_dir), src, out, chunk_rows=128, on_chunk=fail_on_third)
    assert seen == [0, 128, 256]  # in order, and no chunk written after the error
    assert not out.exists() and list(tmp_path.glob(".*part")) == []


def test_a_late_non_integer_id_in_a_csv_scores_via_oov(shop, tmp_path):
    """Ids are read as text, so an id that is not a number far into the file (past any type
    inference) neither breaks the stream nor matches a known id."""
    _, run_dir = shop
    frame = shop_table(3000, seed=6).with_columns(pl.col("user_id").cast(pl.String))
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 2900).then(pl.lit("u-new")).otherwise(pl.col("user_id"))
                               .alias("user_id"))
    frame.write_csv(tmp_path / "rows.csv")
    assert main(["predict", str(run_dir), str(tmp_path / "rows.csv"), "--out", str(tmp_path / "s.parquet"),
                 "--chunk-rows", "500"]) == 0
    out = pl.read_parquet(tmp_path / "s.parquet")
    assert out.height == 3000 and out["click"].is_finite().all()


def test_memory_stays_flat_in_the_file_size(shop, tmp_path):
    """RSS read after every chunk of a file 60 chunks long stops growing after the first chunks.

    Scoring the 240,000 rows at once would hold their encoded tensors and the model's activations
    (MMoE's experts alone: 240,000 x 4 x 64 float32 = 240 MB); chunk by chunk the process grows by
    less than 16 MB from chunk 10 to chunk 60 (allocator noise)."""
    _, run_dir = shop
    big = shop_table(3000, seed=7)
    big = pl.concat([big] * 80).with_columns(pl.int_range(pl.len()).alias("ts"))  # 240,000 rows
    spec = open_scorer(run_dir).feature_map.spec
    parse_sequences(big, spec).write_parquet(tmp_path / "big.parquet")
    del big
    page = 4096

    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * page / 2**20

    rss: list[float] = []
    scorer = open_scorer(run_dir)
    n = score_file(scorer, tmp_path / "big.parquet", tmp_path / "s.parquet", chunk_rows=4000,
                   on_chunk=lambda c: rss.append(rss_mb()))
    assert n == 240_000 and len(rss) == 60
    settled = float(np.median(rss[10:20]))
    assert max(rss[-10:]) - settled < 16.0, [round(x) for x in rss]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="tunes glibc's allocator; elsewhere it is a no-op")
def test_scoring_keeps_freed_memory_on_glibc():
    """The allocator setting every scorer applies (no page faults on reused activations) takes on glibc."""
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True  # idempotent
