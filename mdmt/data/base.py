"""The contract between data sources and preprocessing.

A source (synthetic generator, MovieLens, KuaiRand, a user's CSV/Parquet) returns a
:class:`RawData`: a Polars frame of raw columns plus the :class:`~mdmt.schema.DatasetSpec` that
describes it. Preprocessing (:mod:`mdmt.data.preprocess`) splits it, fits the feature map on the
train split only and encodes every split into tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from ..schema import DatasetSpec

__all__ = ["RawData", "DataError"]


class DataError(ValueError):
    """Bad input data. The message names the file, the column and, where it can, the row."""


@dataclass
class RawData:
    """Raw rows and their schema.

    Attributes:
        spec: the schema.
        frame: one row per impression, raw columns named as the spec's ``FeatureSpec.raw_column``,
            ``DomainSpec.column``, ``TaskSpec.label`` (0/1, null = unobserved), the timestamp and,
            for sequences, list columns of raw ids (most recent first).
        source: where the rows came from (a file path or a generator description), for errors.
        oracle: ``{task: column}`` of true probabilities when the data is synthetic; they give the
            oracle AUC of each cell. These columns are never features.
        meta: free-form facts about the source (preset name, sizes, checksums...).
    """

    spec: DatasetSpec
    frame: pl.DataFrame
    source: str
    oracle: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
