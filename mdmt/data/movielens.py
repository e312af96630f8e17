"""MovieLens-100K / MovieLens-1M in the official GroupLens file formats.

Variants: ``ml-100k``, ``ml-1m`` (the complete 1,000,209 ratings; a copy with fewer is an error)
and ``ml-1m-sample`` (the ML-1M files with a random sample of the ratings, named as such).

Files read:

* ML-100K: ``u.data`` (``user \\t item \\t rating \\t timestamp``), ``u.user``
  (``id|age|gender|occupation|zip``), ``u.item`` (``id|title|release|video release|url|19 genre
  flags``, latin-1) and, when present, ``u.genre`` (the flag names).
* ML-1M: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), ``users.dat``
  (``UserID::Gender::Age::Occupation::Zip-code``), ``movies.dat`` (``MovieID::Title::Genres``,
  latin-1, genres ``A|B|C``).

Schema (both variants, both protocols):

* domains by age: ``age<25``, ``age25-34``, ``age35+``. ML-1M age codes {1, 18} / {25} /
  {35, 45, 50, 56}; ML-100K raw ages bucketed the same way (< 25, 25-34, >= 35);
* tasks ``click`` = rating > 3 and ``like`` = rating > 4;
* sparse features ``user_id``, ``movie_id``, ``gender``, ``age``, ``occupation``, ``zip`` and
  ``genre`` (the first genre: ML-100K the first genre flag set in ``u.genre`` order, ``unknown``
  when none is set; ML-1M the first name of ``A|B|C``); ``group = "user_id"``.

Protocols:

* ``m3oe`` (M3oE, section 3): rows ordered by user, then by timestamp within the user (ties by
  movie id), and cut 8:1:1 by position (``SplitSpec(method="sequential", order_by=["user_id",
  "timestamp", "movie_id"])``), so test users are mostly unseen in train. Ordering by timestamp
  inside a user makes the split independent of the order of lines in the file.
* ``temporal``: rows ordered by timestamp and cut 8:1:1 by position (ties stay in the earlier
  split). Adds leak-free history features (:mod:`mdmt.data.history`): per-task user and item
  past positive counts and smoothed rates, past event counts, and the behaviour sequences
  ``hist_click`` / ``hist_like`` / ``hist_all`` (movie ids, most recent first), all computed from
  events strictly before the row's timestamp. Each task's ``related_features`` are its four
  statistics.

Example::

    >>> raw = load(MovieLensConfig(variant="ml-100k", protocol="temporal"))  # doctest: +SKIP
    >>> raw.frame.height, raw.spec.domain_names  # doctest: +SKIP
    (100000, ['age<25', 'age25-34', 'age35+'])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from ..schema import DatasetSpec, DomainSpec, FeatureSpec, SplitSpec, StrictModel, TaskSpec
from .base import DataError, RawData
from .download import MOVIELENS_FILE_SHA256, MOVIELENS_FILES, fetch_movielens, sha256_file
from .history import add_history_features, history_feature_specs

__all__ = [
    "MovieLensConfig",
    "AGE_DOMAINS",
    "ML1M_AGE_DOMAIN",
    "ML100K_GENRES",
    "ML1M_RATINGS",
    "load",
    "resolve_path",
    "read_movielens",
    "build_frame",
    "build_spec",
]

#: Domain names, in index order.
AGE_DOMAINS: list[str] = ["age<25", "age25-34", "age35+"]

#: ML-1M age code -> domain.
ML1M_AGE_DOMAIN: dict[int, str] = {
    1: "age<25",
    18: "age<25",
    25: "age25-34",
    35: "age35+",
    45: "age35+",
    50: "age35+",
    56: "age35+",
}

#: The 19 genre flags of ML-100K ``u.item``, in order (used when ``u.genre`` is absent).
ML100K_GENRES: list[str] = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip

#: Number of ratings in the complete ML-1M ``ratings.dat``.
ML1M_RATINGS = 1_000_209

LABELS = ["click", "like"]


class MovieLensConfig(StrictModel):
    """Parameters of the MovieLens source (``data.params`` of an experiment).

    Attributes:
        variant: ``ml-100k``, ``ml-1m`` (the complete 1,000,209 ratings) or ``ml-1m-sample``
            (the ML-1M files with a random sample of the ratings; never used in place of ``ml-1m``).
        protocol: ``m3oe`` (ordered by user, cut by position) or ``temporal`` (cut by time, with
            leak-free history features).
        path: directory holding the official files. Default: ``<data_dir>/<variant>``, then
            ``<cache_dir>/<variant>``; ``data_dir`` is the ``load`` argument or ``MDMT_DATA_DIR``.
        download: when no directory is found, download the official archive into ``cache_dir``.
        cache_dir: download cache (``~`` expanded).
        url: archive URL override (a mirror, or a ``file://`` copy); default the GroupLens URL.
        seq_len: length of the ``temporal`` protocol's behaviour sequences.
        min_count: ids seen fewer times in train map to OOV (user_id, movie_id, zip).
        prior_strength: ``k`` of the smoothed per-task rates (``temporal``).
    """

    variant: Literal["ml-100k", "ml-1m", "ml-1m-sample"] = "ml-100k"
    protocol: Literal["m3oe", "temporal"] = "m3oe"
    path: str | None = None
    download: bool = False
    cache_dir: str = "~/.cache/mdmt"
    url: str | None = None
    seq_len: int = Field(default=10, ge=1)
    min_count: int = Field(default=1, ge=1)
    prior_strength: float = Field(default=10.0, ge=0.0)


# ---------------------------------------------------------------------------------------------
# reading the official files
# ---------------------------------------------------------------------------------------------
def _read_fields(path: Path, sep: str, names: list[str], encoding: str = "latin-1") -> pl.DataFrame:
    """Read a headerless ``sep``-separated text file into String columns ``names``.

    Every non-empty line must have exactly ``len(names)`` fields; otherwise a :class:`DataError`
    names the file and the line. Empty lines (a trailing newline) are skipped.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    text = path.read_bytes().decode(encoding)
    # split on "\n" only: str.splitlines would also break on latin-1 control characters (0x85...)
    lines = pl.Series("line", text.split("\n"), dtype=pl.String).str.strip_suffix("\r")
    line_no = pl.Series("line_no", np.arange(1, len(lines) + 1))
    df = pl.DataFrame([lines, line_no]).filter(pl.col("line").str.len_bytes() > 0)
    parts = df["line"].str.split(sep)
    n_fields = parts.list.len()
    bad = (n_fields != len(names)).arg_true()
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{path}: line {int(df['line_no'][i])} has {int(n_fields[i])} fields separated by {sep!r}, "
            f"expected {len(names)} ({', '.join(names)})"
        )
    out = pl.DataFrame({name: parts.list.get(j) for j, name in enumerate(names)})
    return out.with_columns(df["line_no"].alias("_line"))


def _to_int(df: pl.DataFrame, path: Path, columns: list[str]) -> pl.DataFrame:
    """Cast String columns to Int64; a non-integer value raises naming file, column and line."""
    for col in columns:
        cast = df[col].str.strip_chars().cast(pl.Int64, strict=False)
        bad = cast.is_null().arg_true()
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{path}: column {col!r} line {int(df['_line'][i])}: {df[col][i]!r} is not an integer")
        df = df.with_columns(cast.alias(col))
    return df


def _check_unique(df: pl.DataFrame, path: Path, col: str) -> None:
    dup = df[col].is_duplicated().arg_true()
    if len(dup):
        i = int(dup[0])
        raise DataError(f"{path}: column {col!r} line {int(df['_line'][i])}: id {df[col][i]} appears more than once")


def _read_ml100k(directory: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    p = directory / "u.data"
    ratings = _to_int(_read_fields(p, "\t", ["user_id", "movie_id", "rating", "timestamp"]), p, ["user_id", "movie_id", "rating", "timestamp"])
    p = directory / "u.user"
    users = _to_int(_read_fields(p, "|", ["user_id", "age", "gender", "occupation", "zip"]), p, ["user_id", "age"])
    _check_unique(users, p, "user_id")
    genres = ML100K_GENRES
    gpath = directory / "u.genre"
    if gpath.is_file():
        g = _to_int(_read_fields(gpath, "|", ["name", "index"]), gpath, ["index"]).sort("index")
        if g["index"].to_list() != list(range(len(ML100K_GENRES))):
            raise DataError(f"{gpath}: expected genre indices 0..{len(ML100K_GENRES) - 1}, got {g['index'].to_list()}")
        genres = g["name"].to_list()
    p = directory / "u.item"
    flag_cols = [f"g{j}" for j in range(len(genres))]
    items = _read_fields(p, "|", ["movie_id", "title", "release", "video_release", "url", *flag_cols])
    items = _to_int(items, p, ["movie_id", *flag_cols])
    _check_unique(items, p, "movie_id")
    flags = items.select(flag_cols).to_numpy()
    bad = np.flatnonzero(~np.isin(flags, (0, 1)).all(axis=1))
    if len(bad):
        raise DataError(f"{p}: line {int(items['_line'][int(bad[0])])}: genre flags must be 0 or 1")
    first = np.where(flags.any(axis=1), np.asarray(genres, dtype=object)[flags.argmax(axis=1)], "unknown")
    movies = items.select("movie_id", "title", "_line").with_columns(pl.Series("genre", first.tolist(), dtype=pl.String))
    return ratings, users, movies


def _read_ml1m(directory: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    p = directory / "ratings.dat"
    ratings = _to_int(_read_fields(p, "::", ["user_id", "movie_id", "rating", "timestamp"]), p, ["user_id", "movie_id", "rating", "timestamp"])
    p = directory / "users.dat"
    users = _to_int(_read_fields(p, "::", ["user_id", "gender", "age", "occupation", "zip"]), p, ["user_id", "age"])
    _check_unique(users, p, "user_id")
    bad = (~users["age"].is_in(list(ML1M_AGE_DOMAIN))).arg_true()
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{p}: column 'age' line {int(users['_line'][i])}: unknown ML-1M age code {users['age'][i]} (known: {sorted(ML1M_AGE_DOMAIN)})")
    p = directory / "movies.dat"
    movies = _to_int(_read_fields(p, "::", ["movie_id", "title", "genres"]), p, ["movie_id"])
    _check_unique(movies, p, "movie_id")
    first = pl.col("genres").str.split("|").list.first().str.strip_chars()
    movies = movies.with_columns(pl.when(first.is_null() | (first == "")).then(pl.lit("unknown")).otherwise(first).alias("genre"))
    return ratings, users, movies.select("movie_id", "title", "genre", "_line")


def read_movielens(directory: str | Path, variant: str) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Read the official files of ``variant`` from ``directory``.

    Returns:
        ``(ratings, users, movies)``: ratings ``user_id, movie_id, rating, timestamp`` (Int64);
        users ``user_id`` (Int64), ``gender`` (String), ``age`` (Int64: raw age for ML-100K, age
        code for ML-1M), ``occupation``, ``zip`` (String); movies ``movie_id`` (Int64), ``title``,
        ``genre`` (first genre, String). Each also has ``_line``, the 1-based line in its file.
    """
    directory = Path(directory)
    if variant == "ml-100k":
        ratings, users, movies = _read_ml100k(directory)
    elif variant in ("ml-1m", "ml-1m-sample"):
        ratings, users, movies = _read_ml1m(directory)
    else:
        raise DataError(f"unknown MovieLens variant {variant!r}")
    bad = (~ratings["rating"].is_between(1, 5)).arg_true()
    if len(bad):
        i = int(bad[0])
        fname = "u.data" if variant == "ml-100k" else "ratings.dat"
        raise DataError(f"{directory / fname}: column 'rating' line {int(ratings['_line'][i])}: rating {ratings['rating'][i]} is not in 1..5")
    return ratings, users, movies


# ---------------------------------------------------------------------------------------------
# frame and schema
# ---------------------------------------------------------------------------------------------
def _age_domain(variant: str) -> pl.Expr:
    age = pl.col("age")
    if variant == "ml-100k":
        return pl.when(age < 25).then(pl.lit(AGE_DOMAINS[0])).when(age < 35).then(pl.lit(AGE_DOMAINS[1])).otherwise(pl.lit(AGE_DOMAINS[2]))
    return age.replace_strict(ML1M_AGE_DOMAIN, return_dtype=pl.String)


def build_frame(
    ratings: pl.DataFrame,
    users: pl.DataFrame,
    movies: pl.DataFrame,
    *,
    variant: str,
    protocol: str,
    seq_len: int = 10,
    prior_strength: float = 10.0,
    source: str = "ratings",
) -> pl.DataFrame:
    """Join ratings with users and movies, add domain and labels, order rows for ``protocol``.

    Returns one row per rating with columns ``user_id, movie_id, rating, timestamp, gender, age,
    occupation, zip, genre, domain, click, like`` (labels Int8) and, for ``temporal``, the history
    columns of :func:`mdmt.data.history.add_history_features` (labels ``click``/``like``, user
    ``user_id``, item ``movie_id``). ``m3oe`` rows are ordered by (user, timestamp, movie);
    ``temporal`` rows by (timestamp, user, movie).

    Raises:
        DataError: a rating names a user or movie missing from the user/movie file.
    """
    for name, ids, table in (("user_id", ratings["user_id"], users), ("movie_id", ratings["movie_id"], movies)):
        missing = (~ids.is_in(table[name].implode())).arg_true()
        if len(missing):
            i = int(missing[0])
            line = ratings["_line"][i] if "_line" in ratings.columns else i
            raise DataError(f"{source}: line {line}: {name} {ids[i]} has no entry in the {name.split('_')[0]} file")
    frame = (
        ratings.select("user_id", "movie_id", "rating", "timestamp")
        .join(users.select("user_id", "gender", "age", "occupation", "zip"), on="user_id", how="left")
        .join(movies.select("movie_id", "genre"), on="movie_id", how="left")
        .with_columns(
            _age_domain(variant).alias("domain"),
            (pl.col("rating") > 3).cast(pl.Int8).alias("click"),
            (pl.col("rating") > 4).cast(pl.Int8).alias("like"),
        )
    )
    if protocol == "m3oe":
        return frame.sort(["user_id", "timestamp", "movie_id"], maintain_order=True)
    if protocol == "temporal":
        frame = frame.sort(["timestamp", "user_id", "movie_id"], maintain_order=True)
        return add_history_features(
            frame, user="user_id", item="movie_id", timestamp="timestamp", labels=LABELS,
            seq_len=seq_len, prior_strength=prior_strength,
        )  # fmt: skip
    raise DataError(f"unknown MovieLens protocol {protocol!r}")


def build_spec(variant: str, protocol: str, *, seq_len: int = 10, min_count: int = 1) -> DatasetSpec:
    """The :class:`DatasetSpec` of a MovieLens variant under ``protocol`` (module docstring)."""
    features = [
        FeatureSpec(name="user_id", source="user", min_count=min_count),
        FeatureSpec(name="movie_id", source="item", min_count=min_count),
        FeatureSpec(name="gender", source="user"),
        FeatureSpec(name="age", source="user"),
        FeatureSpec(name="occupation", source="user"),
        FeatureSpec(name="zip", source="user", min_count=min_count),
        FeatureSpec(name="genre", source="item"),
    ]
    related: dict[str, list[str]] = {label: [] for label in LABELS}
    if protocol == "m3oe":
        split = SplitSpec(method="sequential", order_by=["user_id", "timestamp", "movie_id"])
    elif protocol == "temporal":
        split = SplitSpec(method="temporal")
        hist, related = history_feature_specs(LABELS, seq_len=seq_len, item_vocab="movie_id")
        features += hist
    else:
        raise DataError(f"unknown MovieLens protocol {protocol!r}")
    return DatasetSpec(
        name=f"movielens-{variant.removeprefix('ml-')}-{protocol}",
        features=features,
        domain=DomainSpec(column="domain", names=AGE_DOMAINS),
        tasks=[TaskSpec(name=label, label=label, related_features=related[label]) for label in LABELS],
        group="user_id",
        timestamp="timestamp",
        split=split,
        priors=["user_id", "movie_id"],
    )


def _official(variant: str) -> str:
    """The official release a variant's files follow (``ml-1m-sample`` -> ``ml-1m``)."""
    return "ml-1m" if variant == "ml-1m-sample" else variant


def resolve_path(cfg: MovieLensConfig, data_dir: str | Path | None = None) -> Path:
    """The directory holding the official files of ``cfg.variant`` (see :class:`MovieLensConfig`).

    Raises:
        DataError: nothing found and ``download`` is off; the message lists the places tried.
    """
    needed = MOVIELENS_FILES[_official(cfg.variant)]
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        missing = [str(path / n) for n in needed if not (path / n).is_file()]
        if missing:
            raise DataError(f"MovieLens {cfg.variant}: missing official file(s) {missing}")
        return path
    root = data_dir if data_dir is not None else os.environ.get("MDMT_DATA_DIR")
    candidates: list[Path] = []
    if root:
        candidates.append(Path(root).expanduser() / cfg.variant)
    candidates.append(Path(cfg.cache_dir).expanduser() / cfg.variant)
    for cand in candidates:
        if all((cand / n).is_file() for n in needed):
            return cand
    if cfg.download:
        if cfg.variant == "ml-1m-sample":
            raise DataError(
                "MovieLens ml-1m-sample: the sample is not distributed by GroupLens, so it cannot be downloaded; "
                "use variant 'ml-1m' with 'download: true' for the complete data set"
            )
        return fetch_movielens(cfg.variant, cfg.cache_dir, url=cfg.url)
    if cfg.variant == "ml-1m" and root:
        sample = Path(root).expanduser() / "ml-1m-sample"
        if all((sample / n).is_file() for n in needed):
            raise DataError(
                f"MovieLens ml-1m: only a sample of its ratings is present ({sample}), not the complete "
                f"{ML1M_RATINGS:,} ratings (tried {[str(c) for c in candidates]}); set 'variant: ml-1m-sample' "
                "to use the sample, or provide the complete files ('path', MDMT_DATA_DIR/ml-1m or 'download: true')"
            )
    raise DataError(
        f"MovieLens {cfg.variant}: no directory with {needed} found (tried {[str(c) for c in candidates]}); "
        "set 'path', the MDMT_DATA_DIR environment variable, or 'download: true'"
    )


def load(cfg: MovieLensConfig, data_dir: str | Path | None = None) -> RawData:
    """Read a MovieLens variant from its official files and describe it for ``cfg.protocol``.

    Args:
        cfg: the source config.
        data_dir: root of the data sets (default: ``MDMT_DATA_DIR``).

    Returns:
        :class:`RawData` with the frame of :func:`build_frame`, the spec of :func:`build_spec` and
        ``meta``: variant, protocol, path, files used with their sha256, whether pinned files
        match the official digests, row/user/movie counts, rows per domain and, for ML-1M, whether
        ``ratings.dat`` is complete.
    """
    path = resolve_path(cfg, data_dir)
    ratings, users, movies = read_movielens(path, cfg.variant)
    if cfg.variant == "ml-1m" and ratings.height != ML1M_RATINGS:
        raise DataError(
            f"{path / 'ratings.dat'}: {ratings.height:,} ratings, but the complete ML-1M has {ML1M_RATINGS:,}; "
            "this is a sample or a damaged copy: set 'variant: ml-1m-sample' to use it as a sample"
        )
    files = list(MOVIELENS_FILES[_official(cfg.variant)])
    if cfg.variant == "ml-100k" and (path / "u.genre").is_file():
        files.append("u.genre")
    digests = {name: sha256_file(path / name) for name in files}
    pinned = {
        n: d for n, d in MOVIELENS_FILE_SHA256[_official(cfg.variant)].items()
        if not (cfg.variant == "ml-1m-sample" and n == "ratings.dat")
    }  # fmt: skip
    ratings_file = path / files[0]
    frame = build_frame(
        ratings, users, movies, variant=cfg.variant, protocol=cfg.protocol,
        seq_len=cfg.seq_len, prior_strength=cfg.prior_strength, source=str(ratings_file),
    )  # fmt: skip
    spec = build_spec(cfg.variant, cfg.protocol, seq_len=cfg.seq_len, min_count=cfg.min_count)
    domain_rows = dict(frame.group_by("domain").len().iter_rows())
    meta = {
        "variant": cfg.variant,
        "protocol": cfg.protocol,
        "path": str(path),
        "files": digests,
        "official_sha256_match": {n: digests[n] == d for n, d in pinned.items() if n in digests},
        "rows": frame.height,
        "users": int(frame["user_id"].n_unique()),
        "movies": int(frame["movie_id"].n_unique()),
        "domain_rows": {d: int(domain_rows.get(d, 0)) for d in AGE_DOMAINS},
    }
    if cfg.variant != "ml-100k":
        meta["complete"] = frame.height == ML1M_RATINGS
    return RawData(spec=spec, frame=frame, source=str(path), meta=meta)
