"""Data: sources -> RawData -> preprocessing -> Batch (DESIGN §1).

Sources (imported lazily, so one missing or broken source never breaks the others):

* ``synthetic``: :mod:`mdmt.data.synthetic` (``SyntheticConfig``, ``generate(cfg)``)
* ``movielens``: :mod:`mdmt.data.movielens` (``MovieLensConfig``, ``load(cfg, data_dir)``)
* ``kuairand``: :mod:`mdmt.data.kuairand` (``KuaiRandConfig``, ``load(cfg, data_dir)``)
* ``table``: :mod:`mdmt.data.table` (``TableConfig``, ``load(cfg, data_dir)``): your CSV/Parquet + YAML schema

Example::

    >>> from mdmt.config import DataConfig
    >>> data = load_prepared(DataConfig(source="synthetic", params={}), progress=False)  # doctest: +SKIP
    >>> it = BatchIterator(data.splits["train"], batch_size=2048, shuffle=True)          # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from ..config import DataConfig
from ..schema import ConfigError, StrictModel, parse_config
from .base import DataError, RawData
from .loader import BatchIterator, ParquetStream
from .preprocess import (
    PreparedData,
    encode,
    encode_for_scoring,
    fit_feature_map,
    prepare,
    split_frame,
    validate,
)

__all__ = [
    "RawData",
    "DataError",
    "PreparedData",
    "BatchIterator",
    "ParquetStream",
    "encode",
    "encode_for_scoring",
    "fit_feature_map",
    "prepare",
    "split_frame",
    "validate",
    "load_raw",
    "load_prepared",
    "SOURCES",
]

#: source name -> (module, name of its config class)
SOURCES: dict[str, tuple[str, str]] = {
    "synthetic": ("mdmt.data.synthetic", "SyntheticConfig"),
    "movielens": ("mdmt.data.movielens", "MovieLensConfig"),
    "kuairand": ("mdmt.data.kuairand", "KuaiRandConfig"),
    "table": ("mdmt.data.table", "TableConfig"),
}


def _config_class(module: ModuleType, preferred: str) -> type[StrictModel]:
    cls = getattr(module, preferred, None)
    if isinstance(cls, type) and issubclass(cls, StrictModel):
        return cls
    found = [
        v
        for k, v in vars(module).items()
        if k.endswith("Config") and isinstance(v, type) and issubclass(v, StrictModel) and v.__module__ == module.__name__
    ]
    if len(found) != 1:
        raise ConfigError(f"data source module {module.__name__} has no config class {preferred!r}")
    return found[0]


def load_raw(data_cfg: DataConfig, data_dir: str | None = None) -> RawData:
    """Read the raw rows of ``data_cfg.source``, its ``params`` validated strictly by the source's config.

    ``data_dir`` defaults to the ``MDMT_DATA_DIR`` environment variable (unused by ``synthetic``).
    """
    if data_cfg.source not in SOURCES:
        raise ConfigError(f"data.source: unknown source {data_cfg.source!r}; choose one of {sorted(SOURCES)}")
    module_name, cfg_name = SOURCES[data_cfg.source]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise ConfigError(f"data.source: source {data_cfg.source!r} is not available ({module_name} missing)") from None
        raise
    cfg = parse_config(dict(data_cfg.params), _config_class(module, cfg_name), "data.params")
    if data_cfg.source == "synthetic":
        raw = module.generate(cfg)
    else:
        if data_dir is None:
            data_dir = os.environ.get("MDMT_DATA_DIR") or None
        raw = module.load(cfg, data_dir)
    if data_cfg.domain_specific:
        try:
            raw.spec = raw.spec.with_domain_tables(data_cfg.domain_specific)
        except ValueError as err:
            raise ConfigError(f"data.domain_specific: {err} (data set {raw.spec.name!r})") from None
    return raw


def load_prepared(data_cfg: DataConfig, data_dir: str | None = None, progress: bool = True) -> PreparedData:
    """Load a source and prepare it: validate, split, fit on train only, encode, cache.

    Args:
        data_cfg: ``source``, its ``params`` and ``cache_dir`` (None = no caching).
        data_dir: root of real data sets; defaults to ``MDMT_DATA_DIR``.
        progress: show one status line per stage.
    """
    raw = load_raw(data_cfg, data_dir)
    return prepare(raw, cache_dir=data_cfg.cache_dir, progress=progress)
