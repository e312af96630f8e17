"""EmbeddingCollection: the one place that turns a Batch into embeddings (DESIGN §2).

Tables come from :meth:`DatasetSpec.effective_tables`. Each lookup is keyed ``"feature@table"``.
A per-domain table stores ``num_domains`` blocks of rows and is routed by ``batch.domain``, so a
feature declared in a shared and a per-domain table yields PMTA's e^g and e^d side by side.

Example::

    >>> from mdmt.schema import *
    >>> from mdmt.featuremap import FeatureMap
    >>> spec = DatasetSpec(name="t", features=[FeatureSpec(name="u")],
    ...     tables=[TableSpec(name="g", dim=4, features=["u"]),
    ...             TableSpec(name="d", dim=4, features=["u"], per_domain=True)],
    ...     domain=DomainSpec(column="dom", names=["a", "b"]), tasks=[TaskSpec(name="y", label="y")])
    >>> fm = FeatureMap.layout_of(spec, vocabs={"u": ["x", "y", "z"]})
    >>> emb = EmbeddingCollection(spec, fm)
    >>> emb.keys
    ['u@g', 'u@d']
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .batch import Batch
from .featuremap import PAD, FeatureMap
from .schema import DatasetSpec

__all__ = ["EmbeddingCollection"]


class EmbeddingCollection(nn.Module):
    """Embedding tables for a schema, plus the dense features.

    Args:
        spec: the data set schema.
        feature_map: the fitted feature map (vocabulary sizes, column order).
        init_std: std of the normal initialisation of every row (padding rows stay 0).

    Attributes:
        keys: every lookup key, sparse first then sequences, in schema order.
        sparse_keys / sequence_keys: the keys of one-id features and of sequence features.
        dims: ``{key: embedding dim}``.
        num_dense: number of dense features appended by :meth:`flat_input`.
        input_dim: width of :meth:`flat_input`.
    """

    def __init__(self, spec: DatasetSpec, feature_map: FeatureMap, init_std: float = 0.01) -> None:
        super().__init__()
        self.num_domains = spec.num_domains
        self.tables = nn.ModuleDict()
        self._rows: dict[str, int] = {}
        self._per_domain: dict[str, bool] = {}
        # lookups: (key, feature, table, kind, column index in Batch.sparse or -1)
        self._lookups: list[tuple[str, str, str, str, int]] = []
        self.dims: dict[str, int] = {}
        order = {f.name: i for i, f in enumerate(spec.features)}
        for t in spec.effective_tables():
            rows = max(feature_map.vocab_size(f) for f in t.features)
            n = rows * (self.num_domains if t.per_domain else 1)
            table = nn.Embedding(n, t.dim)
            nn.init.normal_(table.weight, std=init_std)
            with torch.no_grad():  # padding rows (every domain block) are zero
                table.weight[PAD::rows] = 0.0
            self.tables[t.name] = table
            self._rows[t.name] = rows
            self._per_domain[t.name] = t.per_domain
            for f in t.features:
                kind = spec.feature(f).kind
                kind = "sequence" if kind == "sequence" else "sparse"
                col = feature_map.sparse.index(f) if kind == "sparse" else -1
                self._lookups.append((f"{f}@{t.name}", f, t.name, kind, col))
                self.dims[f"{f}@{t.name}"] = t.dim
        self._lookups.sort(key=lambda x: (x[3] == "sequence", order[x[1]]))
        self.keys = [k for k, *_ in self._lookups]
        self.sparse_keys = [k for k, _, _, kind, _ in self._lookups if kind == "sparse"]
        self.sequence_keys = [k for k, _, _, kind, _ in self._lookups if kind == "sequence"]
        self.num_dense = len(feature_map.dense)
        self.input_dim = sum(self.dims.values()) + self.num_dense

    def _lookup(self, table: str, ids: Tensor, domain: Tensor) -> Tensor:
        """Rows of ``table`` for ``ids`` ``[B]`` or ``[B, L]`` -> ``[B, dim]`` or ``[B, L, dim]``.

        ``index_select`` rather than ``nn.functional.embedding``: its backward is a plain
        scatter-add, about twice as fast on CPU as the embedding backward's sort-and-reduce.
        """
        if self._per_domain[table]:
            offset = domain * self._rows[table]
            ids = ids + offset.view(-1, *([1] * (ids.dim() - 1)))
        weight = self.tables[table].weight
        return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[1])

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``{key: [B, dim]}`` for sparse keys and ``{key: [B, L, dim]}`` for sequence keys.

        Padded sequence positions are zero vectors (also in per-domain tables).
        """
        out: dict[str, Tensor] = {}
        for key, feat, table, kind, col in self._lookups:
            if kind == "sparse":
                out[key] = self._lookup(table, batch.sparse[:, col], batch.domain)
            else:
                ids = batch.sequences[feat]
                emb = self._lookup(table, ids, batch.domain)
                # zero at padding, and no gradient into the padding rows (they stay 0)
                out[key] = emb * (ids != PAD).unsqueeze(-1).to(emb.dtype)
        return out

    def pooled(self, batch: Batch, emb: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Like :meth:`forward`, with each sequence mean-pooled over its true length -> ``[B, dim]``."""
        emb = self.forward(batch) if emb is None else emb
        out = {}
        for key, feat, _, kind, _ in self._lookups:
            if kind == "sequence":
                length = batch.seq_lengths[feat].clamp(min=1).to(emb[key].dtype).unsqueeze(-1)
                out[key] = emb[key].sum(1) / length
            else:
                out[key] = emb[key]
        return out

    def flat_input(self, batch: Batch, keys: list[str] | None = None) -> Tensor:
        """Concatenated embeddings (sequences mean-pooled) and dense features: ``[B, input_dim]``.

        With ``keys`` only those embeddings are used (dense features are then left out).
        """
        pooled = self.pooled(batch)
        if keys is not None:
            return torch.cat([pooled[k] for k in keys], dim=-1)
        parts = [pooled[k] for k in self.keys]
        if self.num_dense:
            parts.append(batch.dense)
        return torch.cat(parts, dim=-1)

    def stacked(self, batch: Batch) -> Tensor:
        """Embeddings of every key as fields ``[B, num_keys, dim]`` (all dims must be equal)."""
        if len(set(self.dims.values())) != 1:
            raise ValueError(f"stacked() needs one embedding dim for every table, got {self.dims}")
        pooled = self.pooled(batch)
        return torch.stack([pooled[k] for k in self.keys], dim=1)
