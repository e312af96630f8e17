"""MovieLens loaders on the real official files, the leak-free temporal protocol, and downloads."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mdmt.data.base import DataError, RawData
from mdmt.data.download import (
    MOVIELENS_FILE_SHA256,
    download,
    extract_zip,
    fetch_movielens,
    sha256_file,
    verify_sha256,
)
from mdmt.data.history import history_columns
from mdmt.data.movielens import (
    AGE_DOMAINS,
    MovieLensConfig,
    build_frame,
    load,
    read_movielens,
    resolve_path,
)
from mdmt.schema import ConfigError, parse_config

SEQ_LEN = 10
K = 10.0


# ---------------------------------------------------------------------------------------------
# helpers: an independent reading of the official files (plain Python / NumPy)
# ---------------------------------------------------------------------------------------------
def _ratings_100k(data_dir: Path) -> np.ndarray:
    """[N, 4] int64: user, movie, rating, timestamp, straight from u.data."""
    return np.loadtxt(data_dir / "ml-100k" / "u.data", dtype=np.int64, delimiter="\t")


def _age_bucket(age: int) -> str:
    return "age<25" if age < 25 else ("age25-34" if age < 35 else "age35+")


@pytest.fixture(scope="module")
def ml100k_temporal() -> RawData:
    import os

    if not os.environ.get("MDMT_DATA_DIR"):
        pytest.skip("MDMT_DATA_DIR is not set; it must point at the directory holding ml-100k/ etc.")
    return load(MovieLensConfig(variant="ml-100k", protocol="temporal", seq_len=SEQ_LEN))


# ---------------------------------------------------------------------------------------------
# ML-100K, m3oe protocol
# ---------------------------------------------------------------------------------------------
def test_ml100k_counts_domains_and_labels(data_dir: Path) -> None:
    raw = load(MovieLensConfig(variant="ml-100k", protocol="m3oe"), data_dir=data_dir)
    f = raw.frame
    assert f.height == 100_000
    assert f["user_id"].n_unique() == 943
    assert f["movie_id"].n_unique() == 1682
    assert raw.meta["rows"] == 100_000 and raw.meta["users"] == 943 and raw.meta["movies"] == 1682
    assert all(raw.meta["official_sha256_match"].values())
    assert raw.meta["files"]["u.data"] == MOVIELENS_FILE_SHA256["ml-100k"]["u.data"]

    # domains: a direct recount from u.user
    ages = {}
    for line in (data_dir / "ml-100k" / "u.user").read_text(encoding="latin-1").splitlines():
        uid, age, *_ = line.split("|")
        ages[int(uid)] = int(age)
    r = _ratings_100k(data_dir)
    expected = {d: 0 for d in AGE_DOMAINS}
    for uid, cnt in zip(*np.unique(r[:, 0], return_counts=True)):
        expected[_age_bucket(ages[int(uid)])] += int(cnt)
    got = dict(f.group_by("domain").len().iter_rows())
    assert got == expected
    assert raw.meta["domain_rows"] == expected
    # per row: the domain follows the row's own age
    assert (f["domain"] == f["age"].map_elements(_age_bucket, return_dtype=pl.String)).all()

    # labels: a NumPy recount
    assert int(f["click"].sum()) == int((r[:, 2] > 3).sum())
    assert int(f["like"].sum()) == int((r[:, 2] > 4).sum())
    assert f["click"].mean() == pytest.approx((r[:, 2] > 3).mean())
    assert f["like"].mean() == pytest.approx((r[:, 2] > 4).mean())
    assert ((f["like"] == 1) & (f["click"] == 0)).sum() == 0  # like implies click

    # joined user columns equal the file's values
    user1 = f.filter(pl.col("user_id") == 1).row(0, named=True)
    assert (user1["age"], user1["gender"], user1["occupation"], user1["zip"]) == (24, "M", "technician", "85711")


def test_ml100k_first_genre(data_dir: Path) -> None:
    _, _, movies = read_movielens(data_dir / "ml-100k", "ml-100k")
    genre = dict(zip(movies["movie_id"].to_list(), movies["genre"].to_list()))
    assert genre[1] == "Animation"  # Toy Story: Animation|Children's|Comedy
    assert genre[2] == "Action"  # GoldenEye: Action|Adventure|Thriller
    assert genre[3] == "Thriller"  # Four Rooms: Thriller
    assert genre[267] == "unknown"  # only the 'unknown' flag is set
    assert len(genre) == 1682


def test_m3oe_protocol_orders_by_user(data_dir: Path) -> None:
    raw = load(MovieLensConfig(variant="ml-100k", protocol="m3oe"), data_dir=data_dir)
    spec = raw.spec
    assert spec.split.method == "sequential"
    assert spec.split.order_by[0] == "user_id" and spec.split.ratios == (0.8, 0.1, 0.1)
    assert [c for c in spec.split.order_by if c not in raw.frame.columns] == []
    assert spec.domain_names == AGE_DOMAINS and spec.domain.column == "domain"
    assert spec.task_names == ["click", "like"] and [t.label for t in spec.tasks] == ["click", "like"]
    assert [f.name for f in spec.features] == ["user_id", "movie_id", "gender", "age", "occupation", "zip", "genre"]
    assert all(f.kind == "sparse" for f in spec.features)
    assert spec.group == "user_id"
    u = raw.frame["user_id"].to_numpy()
    assert (np.diff(u) >= 0).all()  # rows already ordered by user
    assert raw.frame.sort(spec.split.order_by, maintain_order=True).equals(raw.frame)
    assert not any(c.startswith("hist_") for c in raw.frame.columns)


# ---------------------------------------------------------------------------------------------
# ML-1M (sample)
# ---------------------------------------------------------------------------------------------
def test_ml1m_sample(data_dir: Path) -> None:
    cfg = MovieLensConfig(variant="ml-1m-sample", protocol="m3oe")
    expected_dir = data_dir / "ml-1m-sample"
    assert resolve_path(cfg, data_dir) == expected_dir
    raw = load(cfg, data_dir=data_dir)
    f = raw.frame
    n_lines = sum(1 for line in (expected_dir / "ratings.dat").read_text().splitlines() if line)
    assert f.height == n_lines == 100_000 and raw.meta["complete"] is False
    assert raw.spec.name == "movielens-1m-sample-m3oe" and "ratings.dat" not in raw.meta["official_sha256_match"]

    users = {}
    for line in (expected_dir / "users.dat").read_text(encoding="latin-1").splitlines():
        uid, gender, age, occ, zipc = line.split("::")
        users[int(uid)] = (gender, int(age), occ, zipc)
    assert len(users) == 6040
    code_to_domain = {1: "age<25", 18: "age<25", 25: "age25-34", 35: "age35+", 45: "age35+", 50: "age35+", 56: "age35+"}
    sample = f.sample(500, seed=0).to_dicts()
    for row in sample:
        gender, age, occ, zipc = users[row["user_id"]]
        assert (row["gender"], row["age"], row["occupation"], row["zip"]) == (gender, age, occ, zipc)
        assert row["domain"] == code_to_domain[age]
    # age-code mapping over all rows
    mapped = f["age"].replace_strict(code_to_domain, return_dtype=pl.String)
    assert (mapped == f["domain"]).all()
    assert set(f["age"].unique().to_list()) <= set(code_to_domain)

    movies = {}
    for line in (expected_dir / "movies.dat").read_bytes().decode("latin-1").splitlines():
        mid, _title, genres = line.split("::")
        movies[int(mid)] = genres.split("|")[0]
    assert len(movies) == 3883
    for row in sample:
        assert row["genre"] == movies[row["movie_id"]]
    assert movies[1] == "Animation"

    stars = np.array([int(line.split("::")[2]) for line in (expected_dir / "ratings.dat").read_text().splitlines() if line])
    assert int(f["click"].sum()) == int((stars > 3).sum())
    assert int(f["like"].sum()) == int((stars > 4).sum())
    assert all(raw.meta["official_sha256_match"].values())


# ---------------------------------------------------------------------------------------------
# temporal protocol: no feature of a row uses an event at or after its timestamp
# ---------------------------------------------------------------------------------------------
def test_temporal_spec(ml100k_temporal: RawData) -> None:
    spec = ml100k_temporal.spec
    assert spec.split.method == "temporal" and spec.timestamp == "timestamp"
    by = {f.name: f for f in spec.features}
    for task in spec.tasks:
        assert task.related_features == [
            f"user_{task.name}_count", f"user_{task.name}_rate", f"item_{task.name}_count", f"item_{task.name}_rate",
        ]  # fmt: skip
        seq = by[f"hist_{task.name}"]
        assert seq.kind == "sequence" and seq.vocab == "movie_id" and seq.max_len == SEQ_LEN and seq.behaviour == task.name
    assert by["hist_all"].vocab == "movie_id"
    assert by["user_click_count"].transform == "log_standard" and by["item_like_rate"].transform == "standard"
    ts = ml100k_temporal.frame["timestamp"].to_numpy()
    assert (np.diff(ts) >= 0).all()
    for c in sum(history_columns(["click", "like"]).values(), []):
        assert c in ml100k_temporal.frame.columns
        assert ml100k_temporal.frame[c].null_count() == 0


def _brute_force_row(r: np.ndarray, user: int, movie: int, t: int) -> dict[str, object]:
    """Features of one row from raw ratings [N, 4], using only events with timestamp < t."""
    past = r[r[:, 3] < t]
    up = past[past[:, 0] == user]
    ip = past[past[:, 1] == movie]
    out: dict[str, object] = {"user_events": len(up), "item_events": len(ip)}
    # most recent first; a tie in time is ordered by movie id (the frame's row order)
    order = np.lexsort((up[:, 1], up[:, 3]))[::-1]
    up_sorted = up[order]
    for name, thr in (("click", 3), ("like", 4)):
        prior = ((past[:, 2] > thr).sum() + 1) / (len(past) + 2)
        for side, evs in (("user", up), ("item", ip)):
            pos = int((evs[:, 2] > thr).sum())
            out[f"{side}_{name}_count"] = pos
            out[f"{side}_{name}_rate"] = (pos + K * prior) / (len(evs) + K)
        out[f"hist_{name}"] = up_sorted[up_sorted[:, 2] > thr][:SEQ_LEN, 1].tolist()
    out["hist_all"] = up_sorted[:SEQ_LEN, 1].tolist()
    return out


def test_temporal_features_use_only_strictly_earlier_events(ml100k_temporal: RawData, data_dir: Path) -> None:
    r = _ratings_100k(data_dir)
    f = ml100k_temporal.frame
    # rows sharing their timestamp with another event of the same user, and with an event of
    # another user (a tie in the global prior). ML-100K has no two ratings of one movie in the same
    # second; item-level ties are covered by the brute-force tests of tests/test_history.py.
    tie_user = f.filter(pl.len().over(["user_id", "timestamp"]) > 1)
    tie_global = f.filter(pl.col("user_id").n_unique().over("timestamp") > 1)
    assert tie_user.height > 1000 and tie_global.height > 100  # ML-100K really has such ties
    rows = pl.concat([tie_user.sample(150, seed=1), tie_global.sample(60, seed=2), f.sample(120, seed=3)])
    cols = sum(history_columns(["click", "like"]).values(), [])
    checked_tie_with_history = 0
    for row in rows.iter_rows(named=True):
        exp = _brute_force_row(r, row["user_id"], row["movie_id"], row["timestamp"])
        for c in cols:
            if c.endswith("_rate"):
                assert row[c] == pytest.approx(exp[c], rel=1e-12), (c, row["user_id"], row["movie_id"])
            else:
                assert row[c] == exp[c], (c, row["user_id"], row["movie_id"])
        same_time = r[(r[:, 0] == row["user_id"]) & (r[:, 3] == row["timestamp"])]
        if len(same_time) > 1 and row["user_events"] > 0:
            checked_tie_with_history += 1
            # none of the simultaneous events (the row itself included) is in the sequences
            assert not set(same_time[:, 1].tolist()) & set(row["hist_all"])
    assert checked_tie_with_history > 50


def test_changing_future_labels_changes_no_past_feature(data_dir: Path) -> None:
    ratings, users, movies = read_movielens(data_dir / "ml-100k", "ml-100k")
    kw = dict(variant="ml-100k", protocol="temporal", seq_len=SEQ_LEN)
    base = build_frame(ratings, users, movies, **kw)
    t = int(np.quantile(ratings["timestamp"].to_numpy(), 0.6))
    flipped_ratings = ratings.with_columns(
        pl.when(pl.col("timestamp") >= t).then(6 - pl.col("rating")).otherwise(pl.col("rating")).alias("rating")
    )
    flipped = build_frame(flipped_ratings, users, movies, **kw)
    feats = sum(history_columns(["click", "like"]).values(), [])
    key = ["user_id", "movie_id"]
    a = base.filter(pl.col("timestamp") <= t).select(key + feats).sort(key)
    b = flipped.filter(pl.col("timestamp") <= t).select(key + feats).sort(key)
    assert a.height > 50_000 and a.equals(b)
    # and the perturbation does reach later rows, so the comparison above is not vacuous
    a_late = base.filter(pl.col("timestamp") > t).select(key + feats).sort(key)
    b_late = flipped.filter(pl.col("timestamp") > t).select(key + feats).sort(key)
    assert not a_late.select("user_click_count").equals(b_late.select("user_click_count"))
    assert not a_late.select("hist_like").equals(b_late.select("hist_like"))
    # the labels themselves did change at and after t
    assert not base.filter(pl.col("timestamp") >= t).sort(key)["click"].equals(flipped.filter(pl.col("timestamp") >= t).sort(key)["click"])


# ---------------------------------------------------------------------------------------------
# errors, config, paths (tiny data sets in the official format written to tmp_path)
# ---------------------------------------------------------------------------------------------
def _write_tiny_100k(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "u.data").write_text("1\t1\t5\t100\n1\t2\t3\t101\n2\t1\t4\t100\n")
    (d / "u.user").write_bytes(b"1|24|M|technician|85711\r\n2|53|F|other|94043\r\n")  # CRLF is accepted
    flags_none = "|".join(["0"] * 19)
    flags_drama = "|".join(["1" if j in (8, 14) else "0" for j in range(19)])
    (d / "u.item").write_bytes(
        f"1|Caf\xe9 \x85 (1995)|01-Jan-1995||http://x|{flags_drama}\n2|Nothing (1996)|01-Jan-1996||http://y|{flags_none}\n".encode("latin-1")
    )


def test_tiny_official_format_and_genre_fallback(tmp_path: Path) -> None:
    _write_tiny_100k(tmp_path / "ml-100k")
    raw = load(MovieLensConfig(variant="ml-100k", path=str(tmp_path / "ml-100k")))
    assert raw.frame.height == 3
    genre = dict(zip(raw.frame["movie_id"].to_list(), raw.frame["genre"].to_list()))
    assert genre == {1: "Drama", 2: "unknown"}  # first flag set; none set -> unknown
    assert raw.frame.filter(pl.col("user_id") == 2)["domain"].to_list() == ["age35+"]
    assert raw.meta["official_sha256_match"]["u.data"] is False
    _, users, movies = read_movielens(tmp_path / "ml-100k", "ml-100k")
    assert users["zip"].to_list() == ["85711", "94043"]
    assert movies["title"].to_list() == ["Caf\xe9 \x85 (1995)", "Nothing (1996)"]  # latin-1, one line


def test_bad_files_raise_clear_errors(tmp_path: Path) -> None:
    d = tmp_path / "ml-100k"
    _write_tiny_100k(d)
    (d / "u.data").write_text("1\t1\t5\t100\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"u\.data: line 2 has 3 fields"):
        load(MovieLensConfig(path=str(d)))
    (d / "u.data").write_text("1\t1\t5\t100\n1\tx\t3\t100\n")
    with pytest.raises(DataError, match=r"u\.data: column 'movie_id' line 2"):
        load(MovieLensConfig(path=str(d)))
    (d / "u.data").write_text("1\t1\t5\t100\n7\t1\t3\t100\n")
    with pytest.raises(DataError, match=r"line 2: user_id 7 has no entry"):
        load(MovieLensConfig(path=str(d)))
    (d / "u.data").write_text("1\t1\t9\t100\n")
    with pytest.raises(DataError, match=r"rating 9 is not in 1\.\.5"):
        load(MovieLensConfig(path=str(d)))
    (d / "u.data").unlink()
    with pytest.raises(DataError, match=r"u\.data"):
        load(MovieLensConfig(path=str(d)))
    ml1m = tmp_path / "ml-1m"
    ml1m.mkdir()
    (ml1m / "ratings.dat").write_text("1::1::5::100\n")
    (ml1m / "users.dat").write_text("1::F::30::10::48067\n")
    (ml1m / "movies.dat").write_text("1::Toy Story (1995)::Animation|Comedy\n")
    with pytest.raises(DataError, match=r"users\.dat: column 'age' line 1: unknown ML-1M age code 30"):
        load(MovieLensConfig(variant="ml-1m", path=str(ml1m)))


def test_nothing_found_names_the_places_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MDMT_DATA_DIR", raising=False)
    cfg = MovieLensConfig(variant="ml-1m", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"empty/ml-1m.*cache/ml-1m.*download"):
        load(cfg, data_dir=tmp_path / "empty")


def test_ml1m_never_silently_uses_the_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MDMT_DATA_DIR", raising=False)
    sample = tmp_path / "data" / "ml-1m-sample"
    sample.mkdir(parents=True)
    (sample / "ratings.dat").write_text("1::1::5::100\n")
    (sample / "users.dat").write_text("1::F::25::10::48067\n")
    (sample / "movies.dat").write_text("1::Toy Story (1995)::Animation|Comedy\n")
    cfg = MovieLensConfig(variant="ml-1m", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"ml-1m: only a sample.*variant: ml-1m-sample"):
        load(cfg, data_dir=tmp_path / "data")
    raw = load(MovieLensConfig(variant="ml-1m-sample", cache_dir=str(tmp_path / "cache")), data_dir=tmp_path / "data")
    assert raw.frame.height == 1 and raw.meta["complete"] is False
    # the sample's files named as ml-1m by path: the count of ratings gives it away
    with pytest.raises(DataError, match=r"ratings\.dat: 1 ratings, but the complete ML-1M has 1,000,209"):
        load(MovieLensConfig(variant="ml-1m", path=str(sample)))
    with pytest.raises(DataError, match="cannot be downloaded"):
        load(MovieLensConfig(variant="ml-1m-sample", download=True, cache_dir=str(tmp_path / "c2")), data_dir=tmp_path / "x")


def test_config_is_strict() -> None:
    with pytest.raises(ConfigError, match="unknown key 'seqlen'"):
        parse_config({"variant": "ml-1m", "seqlen": 5}, MovieLensConfig, "exp.yaml")
    with pytest.raises(ConfigError, match="protocol"):
        parse_config({"protocol": "random"}, MovieLensConfig, "exp.yaml")


# ---------------------------------------------------------------------------------------------
# download (file:// URLs; no network)
# ---------------------------------------------------------------------------------------------
def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("progress", [False, True])
def test_download_file_url_with_checksum(tmp_path: Path, progress: bool) -> None:
    archive = _zip(tmp_path / "src.zip", {"folder/a.txt": b"hello", "folder/b.txt": b"x" * 100_000})
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "sub" / "got.zip"
    out = download(archive.as_uri(), dest, sha256=digest, progress=progress)
    assert out == dest and dest.read_bytes() == archive.read_bytes()
    assert sha256_file(dest) == digest
    verify_sha256(dest, digest.upper())
    assert list(dest.parent.glob("*.part")) == []
    extract_zip(dest, tmp_path / "x")
    assert (tmp_path / "x" / "folder" / "a.txt").read_bytes() == b"hello"


def test_download_checksum_mismatch(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "src.zip", {"a.txt": b"hello"})
    dest = tmp_path / "cache" / "got.zip"
    with pytest.raises(DataError, match="sha256 mismatch: expected 0{64}, got [0-9a-f]{64}"):
        download(archive.as_uri(), dest, sha256="0" * 64, progress=False)
    assert not dest.exists()
    assert list(dest.parent.glob("*")) == []  # no partial file left behind
    with pytest.raises(DataError, match="sha256 mismatch"):
        verify_sha256(archive, "f" * 64)
    with pytest.raises(DataError, match="cannot download"):
        download((tmp_path / "missing.zip").as_uri(), dest, progress=False)


def test_extract_zip_refuses_escaping_members(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "evil.zip", {"../escape.txt": b"x"})
    with pytest.raises(DataError, match="outside"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_fetch_movielens_from_a_local_archive(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = data_dir / "ml-100k"
    files = {f"ml-100k/{n}": (src / n).read_bytes() for n in ("u.data", "u.user", "u.item", "u.genre")}
    archive = _zip(tmp_path / "ml-100k.zip", files)
    cache = tmp_path / "cache"
    monkeypatch.delenv("MDMT_DATA_DIR", raising=False)
    cfg = MovieLensConfig(variant="ml-100k", download=True, cache_dir=str(cache), url=archive.as_uri())
    raw = load(cfg, data_dir=tmp_path / "no-data-here")
    assert raw.frame.height == 100_000
    assert Path(raw.meta["path"]) == cache / "ml-100k"
    # a second load reuses the cache (the archive is gone)
    archive.unlink()
    assert load(cfg, data_dir=tmp_path / "no-data-here").frame.height == 100_000
    # an archive whose u.data differs from the official file is refused, naming the file
    files["ml-100k/u.data"] = files["ml-100k/u.data"].replace(b"196\t242\t3", b"196\t242\t4", 1)
    bad = _zip(tmp_path / "bad.zip", files)
    with pytest.raises(DataError, match=r"u\.data: sha256 mismatch"):
        fetch_movielens("ml-100k", tmp_path / "cache2", url=bad.as_uri(), progress=False)
    assert not (tmp_path / "cache2" / "ml-100k").exists()
    assert not (tmp_path / "cache2" / "ml-100k.zip").exists()  # a bad archive is not kept


def test_extract_tar_is_available(tmp_path: Path) -> None:
    from mdmt.data.download import extract_tar

    src = tmp_path / "src"
    src.mkdir()
    (src / "f.csv").write_text("a\n1\n")
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tf:
        tf.add(src / "f.csv", arcname="top/f.csv")
    extract_tar(tmp_path / "a.tar.gz", tmp_path / "out")
    assert (tmp_path / "out" / "top" / "f.csv").read_text() == "a\n1\n"
    shutil.rmtree(tmp_path / "out")
