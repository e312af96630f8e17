"""A damaged data cache is rebuilt with a message; an interrupted cache write leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mdmt.data.preprocess as pp
from mdmt.data.base import RawData
from mdmt.data.preprocess import clean_stale_temporaries, prepare

from .test_preprocess import assert_batches_equal, make_frame, make_spec

REPO = Path(__file__).resolve().parents[1]


def _raw() -> RawData:
    return RawData(make_spec(), make_frame(300), "toy.csv")


def _damage_shard(cache: Path) -> None:
    shard = cache / "valid" / "part-00000.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated: no Parquet footer


def _damage_feature_map(cache: Path) -> None:
    (cache / "feature_map.json").write_text('{"spec": {"name": "toy", "featu')


def _damage_meta(cache: Path) -> None:
    (cache / "meta.json").write_text("\x00\x01 not json")


def _drop_rows(cache: Path) -> None:  # a valid Parquet file holding fewer rows than meta.json says
    import pyarrow.parquet as pq

    shard = cache / "test" / "part-00000.parquet"
    pq.write_table(pq.read_table(shard).slice(0, 3), shard)


@pytest.mark.parametrize("damage", [_damage_shard, _damage_feature_map, _damage_meta, _drop_rows])
def test_a_damaged_cache_is_rebuilt_with_a_message(tmp_path: Path, damage, capsys):
    raw = _raw()
    first = prepare(raw, cache_dir=tmp_path, progress=False)
    capsys.readouterr()
    damage(first.cache_path)
    again = prepare(raw, cache_dir=tmp_path, progress=False)
    err = capsys.readouterr().err
    assert f"data cache {first.cache_path}" in err and "rebuilding it" in err, err
    for s in ("train", "valid", "test"):
        assert_batches_equal(first.splits[s], again.splits[s])
    third = prepare(raw, cache_dir=tmp_path, progress=False)  # the rebuilt cache is whole again
    assert capsys.readouterr().err == ""
    assert_batches_equal(first.splits["valid"], third.splits["valid"])


def test_an_exception_during_the_write_leaves_no_temporary_directory(tmp_path: Path, monkeypatch):
    calls = []
    real = pp.batch_to_arrow

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("interrupted while writing the second split")
        return real(*a, **k)

    monkeypatch.setattr(pp, "batch_to_arrow", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare(_raw(), cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither a temporary nor a half-written cache
    monkeypatch.undo()
    assert prepare(_raw(), cache_dir=tmp_path, progress=False).cache_path.is_dir()


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import mdmt.data.preprocess as pp
    from tests.test_preprocess import make_frame, make_spec
    from mdmt.data.base import RawData

    marker = Path(sys.argv[2])
    real = pp.batch_to_arrow
    def slow(*a, **k):
        out = real(*a, **k)
        marker.write_text("writing")   # one shard is written: now wait to be killed
        time.sleep(60)
        return out
    pp.batch_to_arrow = slow
    pp.prepare(RawData(make_spec(), make_frame(300), "toy.csv"), cache_dir=sys.argv[1], progress=False)
    """
)


def test_a_killed_write_is_cleaned_up_by_the_next_run(tmp_path: Path, capsys):
    cache_dir, marker = tmp_path / "cache", tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(cache_dir), str(marker)], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the writer ended before it was killed"
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    orphans = [p for p in cache_dir.iterdir() if ".tmp-" in p.name]
    assert len(orphans) == 1 and (orphans[0] / "train").is_dir()  # what the kill left

    data = prepare(_raw(), cache_dir=cache_dir, progress=False)
    assert "interrupted" in capsys.readouterr().err
    assert [p.name for p in cache_dir.iterdir()] == [data.cache_path.name]


def test_live_writers_and_young_foreign_temporaries_are_kept(tmp_path: Path):
    mine = tmp_path / f".toy-x.tmp-{__import__('socket').gethostname()}-{os.getpid()}"
    foreign = tmp_path / ".toy-y.tmp-otherhost-123"
    old_foreign = tmp_path / ".toy-z.tmp-otherhost-456"
    for d in (mine, foreign, old_foreign):
        d.mkdir()
    os.utime(old_foreign, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    assert clean_stale_temporaries(tmp_path) == [old_foreign]
    assert mine.is_dir() and foreign.is_dir()


def test_data_prepare_rebuilds_a_damaged_cache_and_exits_0(tmp_path: Path, capsys):
    from mdmt.cli import main

    from .shop import write_project

    project = write_project(tmp_path)
    exp = project / "exp.yaml"
    exp.write_text(exp.read_text().replace("data: {source: table,", f"data: {{cache_dir: {tmp_path / 'cache'}, source: table,"))
    assert main(["data", "prepare", str(exp)]) == 0
    (cache,) = [p for p in (tmp_path / "cache").iterdir()]
    (cache / "feature_map.json").write_text("{")
    capsys.readouterr()
    assert main(["data", "prepare", str(exp)]) == 0
    err = capsys.readouterr().err
    assert "feature_map.json" in err and "rebuilding it" in err and "Traceback" not in err
