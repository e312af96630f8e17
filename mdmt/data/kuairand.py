"""KuaiRand-Pure in the official file format.

Files read (all CSV with a header, as released):

* interaction logs, by default the two standard logs ``log_standard_4_08_to_4_21_pure.csv`` and
  ``log_standard_4_22_to_5_08_pure.csv`` (add ``log_random_4_22_to_5_08_pure.csv`` through
  ``logs`` for the randomly exposed videos). Columns: :data:`LOG_COLUMNS`.
* ``user_features_pure.csv`` (joined on ``user_id``) and ``video_features_basic_pure.csv``
  (joined on ``video_id``). They may sit in another directory (``features_path``).

M3oE protocol (M3oE, section 3): the domain is the ``tab`` column (the app page the impression
was shown on) and the tasks are ``is_click`` and ``long_view``. By default the three tabs 0, 1
and 2 are kept, one domain each (``tab0``, ``tab1``, ``tab2``), which gives M3oE's three-domain
setting with one dominant domain; ``tabs: null`` keeps every tab present in the logs, and
``tab_mapping`` groups tabs into named domains (e.g. ``{"main": [1], "other": [0, 2, 4]}``).
Rows of tabs that are not kept are dropped (their count is in ``meta``). Any other behaviour
column (``is_like``, ``is_follow``, ``is_comment``, ``is_forward``, ``is_hate``,
``is_profile_enter``) can be a task.

Features (all sparse): ``user_id`` and the user profile (``user_active_degree``,
``is_lowactive_period``, ``is_live_streamer``, ``is_video_author``, the four ``*_range`` columns
and ``onehot_feat0..17``), ``video_id`` and the video profile (``author_id``, ``video_type``,
``upload_type``, ``visible_status``, ``music_type`` and ``tag``, the first of the video's
comma-separated tags), and the context ``hour`` (``hourmin // 100``). Profile values are kept as
the strings of the file; a user or video absent from the profile files, or a missing value in
them, is null (preprocessing maps it to OOV). With ``history`` (default) the leak-free per-task
statistics and behaviour sequences of :mod:`mdmt.data.history` are added (``time_ms`` is the
timestamp), and each task's ``related_features`` are its four statistics.

Split: 8:1:1 by ``time_ms`` (``temporal``, default; ties stay in the earlier split), or a seeded
``random`` split.

Example::

    >>> raw = load(KuaiRandConfig(path="KuaiRand-Pure/data"))  # doctest: +SKIP
    >>> raw.spec.domain_names, raw.spec.task_names  # doctest: +SKIP
    (['tab0', 'tab1', 'tab2'], ['is_click', 'long_view'])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import Field, field_validator, model_validator

from ..schema import DatasetSpec, DomainSpec, FeatureSpec, SplitSpec, StrictModel, TaskSpec
from .base import DataError, RawData
from .download import KUAIRAND_FILE_SHA256, fetch_kuairand_pure, sha256_file
from .history import add_history_features, history_feature_specs

__all__ = [
    "KuaiRandConfig",
    "LOG_COLUMNS",
    "BEHAVIOURS",
    "STANDARD_LOGS",
    "USER_FEATURES",
    "VIDEO_FEATURES",
    "USER_FEATURES_FILE",
    "VIDEO_FEATURES_FILE",
    "load",
    "read_logs",
    "read_user_features",
    "read_video_features",
    "build_frame",
    "build_spec",
]

#: Columns of the official interaction logs, in file order.
LOG_COLUMNS: list[str] = [
    "user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow",
    "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms",
    "profile_stay_time", "comment_stay_time", "is_profile_enter", "is_rand", "tab",
]  # fmt: skip

#: 0/1 behaviour columns of the logs (possible tasks).
BEHAVIOURS: list[str] = [
    "is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view", "is_profile_enter",
]  # fmt: skip

STANDARD_LOGS: list[str] = ["log_standard_4_08_to_4_21_pure.csv", "log_standard_4_22_to_5_08_pure.csv"]
USER_FEATURES_FILE = "user_features_pure.csv"
VIDEO_FEATURES_FILE = "video_features_basic_pure.csv"

#: User profile columns used as sparse features.
USER_FEATURES: list[str] = [
    "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
    "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range",
    *[f"onehot_feat{i}" for i in range(18)],
]  # fmt: skip

#: Video profile columns used as sparse features (``tag`` = first tag).
VIDEO_FEATURES: list[str] = ["author_id", "video_type", "upload_type", "visible_status", "music_type", "tag"]

_KEY_LOG_COLUMNS = ["user_id", "video_id", "date", "hourmin", "time_ms", "tab"]


class KuaiRandConfig(StrictModel):
    """Parameters of the KuaiRand-Pure source (``data.params`` of an experiment).

    Attributes:
        path: directory holding the logs. Default: the first of ``<data_dir>/KuaiRand-Pure``,
            ``<data_dir>/kuairand-pure`` (or their ``data/`` folder, the archive's layout) and
            ``<cache_dir>/KuaiRand-Pure`` that holds every log; ``data_dir`` is the ``load``
            argument or ``MDMT_DATA_DIR``.
        features_path: directory holding ``user_features_pure.csv`` and
            ``video_features_basic_pure.csv``. Default: ``path``, its parent, then
            ``<data_dir>/kuairand-pure-features``.
        logs: log file names inside ``path``.
        tasks: behaviour columns used as tasks.
        tabs: tabs kept, one domain each (``tab<n>``); ``None`` keeps every tab present.
        tab_mapping: ``{domain name: [tab, ...]}``; replaces ``tabs`` when set.
        split: ``temporal`` (by ``time_ms``) or ``random``.
        history: add the leak-free per-task statistics and behaviour sequences.
        seq_len / prior_strength: see :func:`mdmt.data.history.add_history_features`.
        min_count: ids seen fewer times in train map to OOV (user_id, video_id, author_id).
        download / cache_dir / url: fetch the official archive when no logs are found.
    """

    path: str | None = None
    features_path: str | None = None
    logs: list[str] = Field(default_factory=lambda: list(STANDARD_LOGS), min_length=1)
    tasks: list[str] = Field(default_factory=lambda: ["is_click", "long_view"], min_length=1)
    tabs: list[int] | None = Field(default_factory=lambda: [0, 1, 2])
    tab_mapping: dict[str, list[int]] | None = None
    split: Literal["temporal", "random"] = "temporal"
    history: bool = True
    seq_len: int = Field(default=10, ge=1)
    prior_strength: float = Field(default=10.0, ge=0.0)
    min_count: int = Field(default=1, ge=1)
    download: bool = False
    cache_dir: str = "~/.cache/mdmt"
    url: str | None = None

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: list[str]) -> list[str]:
        unknown = [t for t in v if t not in BEHAVIOURS]
        if unknown:
            raise ValueError(f"unknown KuaiRand behaviours {unknown}; known: {BEHAVIOURS}")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate tasks in {v}")
        return v

    @model_validator(mode="after")
    def _check_tabs(self) -> "KuaiRandConfig":
        if self.tab_mapping is not None:
            seen: dict[int, str] = {}
            for name, tabs in self.tab_mapping.items():
                if not tabs:
                    raise ValueError(f"tab_mapping[{name!r}] is empty")
                for t in tabs:
                    if t in seen:
                        raise ValueError(f"tab {t} is mapped to both {seen[t]!r} and {name!r}")
                    seen[t] = name
        return self


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _read_csv_strings(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"{path}: cannot read as CSV: {err}") from None


def _require(df: pl.DataFrame, path: Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {df.columns}")


def _cast_int(df: pl.DataFrame, path: Path, col: str, allow_null: bool) -> pl.Series:
    """String column -> Int64 (values like ``"1"`` or ``"1.0"``); bad values name file, column, row."""
    if df[col].null_count() == 0:
        try:  # fast path: clean integer strings
            return df[col].cast(pl.Int64).alias(col)
        except pl.exceptions.InvalidOperationError:
            pass
    raw = df[col].str.strip_chars()
    empty = raw.is_null() | (raw == "")
    num = raw.cast(pl.Float64, strict=False)
    bad = ((num.is_null() & ~empty) | (num.is_not_null() & (num.round(0) != num))).arg_true()
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{path}: column {col!r} data row {i + 1}: {df[col][i]!r} is not an integer")
    if not allow_null and empty.any():
        i = int(empty.arg_true()[0])
        raise DataError(f"{path}: column {col!r} data row {i + 1}: missing value")
    return num.cast(pl.Int64).alias(col)


def read_logs(directory: str | Path, logs: list[str], tasks: list[str]) -> pl.DataFrame:
    """Read and concatenate the interaction logs.

    Returns every column of :data:`LOG_COLUMNS` as Int64 (``user_id, video_id, date, hourmin,
    time_ms, tab`` never null; the others null where the file has no value), with the behaviour
    columns of ``tasks`` as Int8 0/1, plus ``log`` (the file name).

    Raises:
        DataError: a file is missing (its path is named), lacks an official column, or holds a
            non-integer id/time/label.
    """
    directory = Path(directory)
    frames = []
    for name in logs:
        path = directory / name
        if not path.is_file():
            raise DataError(f"{path}: KuaiRand log file not found")
        df = _read_csv_strings(path)
        _require(df, path, LOG_COLUMNS)
        cols = []
        for c in LOG_COLUMNS:
            s = _cast_int(df, path, c, allow_null=c not in _KEY_LOG_COLUMNS)
            if c in tasks:
                bad = (~s.is_in([0, 1]) & s.is_not_null()).arg_true()
                if len(bad):
                    i = int(bad[0])
                    raise DataError(f"{path}: column {c!r} data row {i + 1}: label {s[i]} is not 0 or 1")
                s = s.cast(pl.Int8)
            cols.append(s)
        frames.append(pl.DataFrame(cols).with_columns(pl.lit(name).alias("log")))
    return pl.concat(frames, how="vertical")


def read_user_features(path: str | Path) -> pl.DataFrame:
    """``user_id`` (Int64) plus :data:`USER_FEATURES` (String) from ``user_features_pure.csv``."""
    path = Path(path)
    df = _read_csv_strings(path)
    _require(df, path, ["user_id", *USER_FEATURES])
    out = df.select(USER_FEATURES).with_columns(_cast_int(df, path, "user_id", allow_null=False))
    return out.select("user_id", *USER_FEATURES).unique("user_id", keep="first", maintain_order=True)


def read_video_features(path: str | Path) -> pl.DataFrame:
    """``video_id`` (Int64) plus :data:`VIDEO_FEATURES` (String; ``tag`` = first tag)."""
    path = Path(path)
    df = _read_csv_strings(path)
    _require(df, path, ["video_id", *VIDEO_FEATURES])
    first_tag = pl.col("tag").str.split(",").list.first().str.strip_chars()
    out = df.select(VIDEO_FEATURES).with_columns(
        _cast_int(df, path, "video_id", allow_null=False),
        pl.when(first_tag == "").then(None).otherwise(first_tag).alias("tag"),
    )
    return out.select("video_id", *VIDEO_FEATURES).unique("video_id", keep="first", maintain_order=True)


# ---------------------------------------------------------------------------------------------
# frame and schema
# ---------------------------------------------------------------------------------------------
def _domains(cfg: KuaiRandConfig, present: list[int]) -> dict[str, list[int]]:
    """Domain name -> tabs, in domain index order."""
    if cfg.tab_mapping is not None:
        return {k: list(v) for k, v in cfg.tab_mapping.items()}
    tabs = sorted(present) if cfg.tabs is None else list(dict.fromkeys(cfg.tabs))
    if not tabs:
        raise DataError("KuaiRand: no tab to keep (the logs are empty)")
    return {f"tab{t}": [t] for t in tabs}


def build_frame(
    logs: pl.DataFrame, users: pl.DataFrame, videos: pl.DataFrame, cfg: KuaiRandConfig
) -> tuple[pl.DataFrame, dict[str, list[int]], int]:
    """Keep the configured tabs, join profiles, add ``domain`` and ``hour``, order by time.

    Returns:
        ``(frame, domains, dropped)``: rows ordered by ``time_ms`` (file order among ties), the
        domain -> tabs map, and the number of log rows of tabs that were not kept.
    """
    domains = _domains(cfg, logs["tab"].unique().sort().to_list())
    tab_to_domain = {t: name for name, tabs in domains.items() for t in tabs}
    kept = logs.filter(pl.col("tab").is_in(list(tab_to_domain)))
    frame = (
        kept.with_columns(
            pl.col("tab").replace_strict(tab_to_domain, return_dtype=pl.String).alias("domain"),
            (pl.col("hourmin") // 100).alias("hour"),
        )
        .join(users, on="user_id", how="left", maintain_order="left")
        .join(videos, on="video_id", how="left", maintain_order="left")
        .sort("time_ms", maintain_order=True)
    )
    if cfg.history:
        frame = add_history_features(
            frame, user="user_id", item="video_id", timestamp="time_ms", labels=list(cfg.tasks),
            seq_len=cfg.seq_len, prior_strength=cfg.prior_strength,
        )  # fmt: skip
    return frame, domains, logs.height - kept.height


def build_spec(cfg: KuaiRandConfig, domain_names: list[str]) -> DatasetSpec:
    """The :class:`DatasetSpec` of KuaiRand-Pure under ``cfg`` (module docstring)."""
    mc = cfg.min_count
    features = [
        FeatureSpec(name="user_id", source="user", min_count=mc),
        *[FeatureSpec(name=c, source="user") for c in USER_FEATURES],
        FeatureSpec(name="video_id", source="item", min_count=mc),
        FeatureSpec(name="author_id", source="item", min_count=mc),
        *[FeatureSpec(name=c, source="item") for c in VIDEO_FEATURES if c != "author_id"],
        FeatureSpec(name="hour", source="context"),
    ]
    related: dict[str, list[str]] = {t: [] for t in cfg.tasks}
    if cfg.history:
        hist, related = history_feature_specs(list(cfg.tasks), seq_len=cfg.seq_len, item_vocab="video_id")
        features += hist
    split = SplitSpec(method="temporal") if cfg.split == "temporal" else SplitSpec(method="random")
    return DatasetSpec(
        name="kuairand-pure",
        features=features,
        domain=DomainSpec(column="domain", names=domain_names),
        tasks=[TaskSpec(name=t, label=t, related_features=related[t]) for t in cfg.tasks],
        group="user_id",
        timestamp="time_ms",
        split=split,
        priors=["user_id", "video_id", "author_id"],
    )


# ---------------------------------------------------------------------------------------------
# paths and entry point
# ---------------------------------------------------------------------------------------------
def _has_logs(d: Path, logs: list[str]) -> bool:
    return all((d / n).is_file() for n in logs)


def _resolve_log_dir(cfg: KuaiRandConfig, root: Path | None) -> Path:
    if cfg.path is not None:
        return Path(cfg.path).expanduser()  # read_logs names any missing file
    candidates: list[Path] = []
    if root is not None:
        for name in ("KuaiRand-Pure", "kuairand-pure"):
            candidates += [root / name, root / name / "data"]
    candidates.append(Path(cfg.cache_dir).expanduser() / "KuaiRand-Pure")
    for cand in candidates:
        if _has_logs(cand, cfg.logs):
            return cand
    if cfg.download:
        return fetch_kuairand_pure(cfg.cache_dir, url=cfg.url)
    raise DataError(
        f"KuaiRand-Pure: no directory holding the logs {cfg.logs} found (tried {[str(c) for c in candidates]}); "
        "set 'path', the MDMT_DATA_DIR environment variable, or 'download: true'"
    )


def _resolve_features_dir(cfg: KuaiRandConfig, log_dir: Path, root: Path | None) -> Path:
    needed = [USER_FEATURES_FILE, VIDEO_FEATURES_FILE]
    if cfg.features_path is not None:
        candidates = [Path(cfg.features_path).expanduser()]
    else:
        candidates = [log_dir, log_dir.parent]
        if root is not None:
            candidates.append(root / "kuairand-pure-features")
    for cand in candidates:
        if all((cand / n).is_file() for n in needed):
            return cand
    raise DataError(f"KuaiRand-Pure: {needed} not found in {[str(c) for c in candidates]}; set 'features_path'")


def load(cfg: KuaiRandConfig, data_dir: str | Path | None = None) -> RawData:
    """Read KuaiRand-Pure from its official files (see the module docstring).

    Args:
        cfg: the source config.
        data_dir: root of the data sets (default: ``MDMT_DATA_DIR``).

    Returns:
        :class:`RawData` whose ``meta`` holds the files used with their sha256, whether the
        profile files match the official digests, the domain -> tabs map, rows kept / dropped,
        rows per domain and the share of log rows whose user / video has a profile.
    """
    root_s = data_dir if data_dir is not None else os.environ.get("MDMT_DATA_DIR")
    root = Path(root_s).expanduser() if root_s else None
    log_dir = _resolve_log_dir(cfg, root)
    feat_dir = _resolve_features_dir(cfg, log_dir, root)
    logs = read_logs(log_dir, cfg.logs, cfg.tasks)
    users = read_user_features(feat_dir / USER_FEATURES_FILE)
    videos = read_video_features(feat_dir / VIDEO_FEATURES_FILE)
    frame, domains, dropped = build_frame(logs, users, videos, cfg)
    spec = build_spec(cfg, list(domains))
    files = {str(log_dir / n): sha256_file(log_dir / n) for n in cfg.logs}
    digests = {n: sha256_file(feat_dir / n) for n in (USER_FEATURES_FILE, VIDEO_FEATURES_FILE)}
    files.update({str(feat_dir / n): d for n, d in digests.items()})
    per_domain = dict(frame.group_by("domain").len().iter_rows())
    n = max(frame.height, 1)
    meta = {
        "source": "kuairand-pure",
        "log_dir": str(log_dir),
        "features_dir": str(feat_dir),
        "files": files,
        "official_sha256_match": {k: digests[k] == v for k, v in KUAIRAND_FILE_SHA256.items()},
        "domains": domains,
        "rows": frame.height,
        "rows_dropped_other_tabs": dropped,
        "domain_rows": {d: int(per_domain.get(d, 0)) for d in domains},
        "users": int(frame["user_id"].n_unique()),
        "videos": int(frame["video_id"].n_unique()),
        "user_profile_coverage": int(frame["user_id"].is_in(users["user_id"].implode()).sum()) / n,
        "video_profile_coverage": int(frame["video_id"].is_in(videos["video_id"].implode()).sum()) / n,
    }
    return RawData(spec=spec, frame=frame, source=str(log_dir), meta=meta)
