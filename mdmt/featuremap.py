"""The feature map: everything needed to encode a raw row the way the training data was encoded.

``feature_map.json`` plus a model's weights are all a scorer needs (DESIGN §7). It is fitted on the
train split only by :func:`mdmt.data.preprocess.fit_feature_map` and applied by
:func:`mdmt.data.preprocess.encode`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from .schema import DatasetSpec, StrictModel

__all__ = ["DenseStats", "FeatureMap", "PAD", "OOV", "FIRST_ID"]

PAD = 0  #: padding index (sequences only); its embedding row is fixed at zero
OOV = 1  #: out-of-vocabulary index: ids unseen in train, or below min_count; a trained row
FIRST_ID = 2  #: index of the first known id


class DenseStats(StrictModel):
    """Train-split statistics of one dense feature."""

    mean: float = 0.0
    std: float = 1.0
    min: float = 0.0
    max: float = 1.0
    boundaries: list[float] = Field(default_factory=list)  # bucketize only (quantile cut points)


class FeatureMap(StrictModel):
    """Encoded layout of a data set.

    Attributes:
        spec: the schema it was fitted for.
        vocabs: ``{vocab name: [raw id as string, ...]}``; raw id ``vocabs[v][i]`` encodes to ``i + FIRST_ID``.
        dense_stats: ``{feature: DenseStats}`` for dense features (normalised and bucketised).
        sparse / dense / sequences: feature names in the column order of ``Batch.sparse``,
            ``Batch.dense`` and the keys of ``Batch.sequences``.
        num_rows: rows per split at fit time (informational).
    """

    spec: DatasetSpec
    vocabs: dict[str, list[str]] = Field(default_factory=dict)
    dense_stats: dict[str, DenseStats] = Field(default_factory=dict)
    sparse: list[str] = Field(default_factory=list)
    dense: list[str] = Field(default_factory=list)
    sequences: list[str] = Field(default_factory=list)
    num_rows: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def layout_of(cls, spec: DatasetSpec, **kw) -> "FeatureMap":
        """An empty map with the column order the schema implies."""
        return cls(
            spec=spec,
            sparse=[f.name for f in spec.sparse_features()],
            dense=[f.name for f in spec.dense_features()],
            sequences=[f.name for f in spec.sequence_features()],
            **kw,
        )

    def vocab_size(self, feature: str) -> int:
        """Rows an embedding table needs for ``feature``: padding + OOV + known ids."""
        f = self.spec.feature(feature)
        if f.kind == "dense":  # bucketised
            return FIRST_ID + len(self.dense_stats[feature].boundaries) + 1
        return FIRST_ID + len(self.vocabs.get(f.vocab_name, []))

    def sparse_index(self, feature: str) -> int:
        return self.sparse.index(feature)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.model_dump_json(indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureMap":
        return cls.model_validate(json.loads(Path(path).read_text()))
