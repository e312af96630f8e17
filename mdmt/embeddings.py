"""EmbeddingCollection: the one place that turns a Batch into embeddings (DESIGN §2).

Tables come from :meth:`DatasetSpec.effective_tables`. Each lookup is keyed ``"feature@table"``.
A per-domain table stores ``num_domains`` blocks of rows and is routed by ``batch.domain``, so a
feature declared in a shared and a per-domain table yields PMTA's e^g and e^d side by side.

Three settings of :class:`EmbeddingConfig` (the experiment's ``model.embedding`` section) apply
to every model alike:

* ``dim``: the embedding size of every table (None keeps the schema's dims);
* ``domain_input``: the domain id is an input feature of its own (key :data:`DOMAIN_KEY`, which
  has no ``@`` and so never collides with a ``feature@table`` key, whatever the features are named);
* ``id_dropout``: in training, each id of the *id features* is replaced by the OOV id with this
  probability, so the OOV row that unseen test ids map to is trained. The id features are the
  ``id_dropout_features`` when given; otherwise every one-id ``sparse`` feature with
  ``source: user`` or ``source: item`` whose train vocabulary holds at least
  ``id_dropout_min_vocab`` ids (user ids, item ids, zip codes; not gender or a genre).

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
    ['u@g', 'u@d', '<domain>']
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from .batch import Batch
from .featuremap import OOV, PAD, FeatureMap
from .schema import ConfigError, DatasetSpec, StrictModel

__all__ = ["EmbeddingConfig", "EmbeddingCollection", "DOMAIN_KEY", "check_embedding_config", "id_dropout_features"]

#: Key of the domain-id embedding (no ``@``, so it never equals a ``feature@table`` key).
DOMAIN_KEY = "<domain>"


class EmbeddingConfig(StrictModel):
    """Embedding settings shared by every model (the experiment's ``model.embedding`` section).

    Attributes:
        dim: embedding size of every table, declared or default (None: the schema's dims).
        domain_input: the domain id is an input feature (its own embedding, key :data:`DOMAIN_KEY`).
        id_dropout: in training, the probability that an id of an id feature is replaced by the
            OOV id (each id independently, every batch); 0 switches it off. Never in eval mode.
        id_dropout_features: the id features by name; None = the rule of :func:`id_dropout_features`.
        id_dropout_min_vocab: the rule's minimum train vocabulary size.
        per_domain: every table holds one block of rows per domain (domain-specific embeddings
            of every feature, as SpecificAll has); False keeps each table's own ``per_domain``.
    """

    dim: PositiveInt | None = None
    domain_input: bool = True
    id_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    id_dropout_features: list[str] | None = None
    id_dropout_min_vocab: PositiveInt = 100
    per_domain: bool = False


def check_embedding_config(cfg: EmbeddingConfig, spec: DatasetSpec) -> None:
    """Check ``cfg`` against the schema alone (no data needed): the listed id dropout features exist
    and are one-id sparse features. Raises a :class:`ConfigError` naming the option and feature."""
    for name in cfg.id_dropout_features or []:
        if name not in {f.name for f in spec.features}:
            raise ConfigError(f"model.embedding.id_dropout_features: unknown feature {name!r}; "
                              f"features: {[f.name for f in spec.features]}")
        if spec.feature(name).kind != "sparse":
            raise ConfigError(f"model.embedding.id_dropout_features: {name!r} is a {spec.feature(name).kind} "
                              "feature; id dropout applies to one-id sparse features only")


def id_dropout_features(spec: DatasetSpec, feature_map: FeatureMap, cfg: EmbeddingConfig) -> list[str]:
    """The features whose ids :class:`EmbeddingCollection` drops to OOV in training.

    ``cfg.id_dropout_features`` when given (each must be a one-id ``sparse`` feature), else every
    ``sparse`` feature of ``source`` user or item with at least ``cfg.id_dropout_min_vocab`` ids in
    its train vocabulary. Bucketised dense features and sequences are never id features.
    """
    if cfg.id_dropout_features is not None:
        check_embedding_config(cfg, spec)
        return list(cfg.id_dropout_features)
    return [
        f.name for f in spec.features
        if f.kind == "sparse" and f.source in ("user", "item")
        and len(feature_map.vocabs.get(f.vocab_name, [])) >= cfg.id_dropout_min_vocab
    ]


class _WeightedBag(torch.autograd.Function):
    """``out_b = Σ_l w_bl · weight[ids_bl]``: ``ids``, ``w`` ``[B, L]`` -> ``[B, dim]``.

    Forward: ``embedding_bag`` in sum mode with per-sample weights, one pass with no ``[B, L, dim]``
    tensor. Backward: ``grad_weight[ids_bl] += w_bl · grad_out_b`` with one ``index_add_``, about
    half the time of ``embedding_bag``'s own CPU backward (a sort of the ids, then a reduction).
    ``w`` is data (from the ids and lengths) and gets no gradient.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, ids: Tensor, w: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(ids, w)
        ctx.rows = weight.shape[0]
        return F.embedding_bag(ids, weight, mode="sum", per_sample_weights=w)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        ids, w = ctx.saved_tensors
        per_id = (w.unsqueeze(-1) * grad.unsqueeze(1)).reshape(-1, grad.shape[-1])  # w_bl · grad_out_b
        out = grad.new_zeros(ctx.rows, grad.shape[-1])
        return out.index_add_(0, ids.reshape(-1), per_id), None, None


def _module_key(table: str) -> str:
    """A ``ModuleDict`` key for any table name: prefixed, so ``items``/``keys``/``update`` never meet
    ``ModuleDict``'s own attributes, with ``%`` and ``.`` escaped (one-to-one)."""
    return "t_" + table.replace("%", "%25").replace(".", "%2E")


class EmbeddingCollection(nn.Module):
    """Embedding tables for a schema, the domain-id embedding, plus the dense features.

    Args:
        spec: the data set schema.
        feature_map: the fitted feature map (vocabulary sizes, column order).
        init_std: std of the normal initialisation of every row (padding rows stay 0).
        cfg: :class:`EmbeddingConfig` (dim, domain input, id dropout).

    Attributes:
        keys: every lookup key: sparse keys, the domain key (when ``domain_input``), then sequences.
        sparse_keys / sequence_keys: the keys of one-id features and of sequence features.
        domain_key: :data:`DOMAIN_KEY` when the domain is an input, else None.
        dims: ``{key: embedding dim}``.
        num_dense: number of dense features appended by :meth:`flat_input`.
        input_dim: width of :meth:`flat_input`.
        dropout_features: the id features of id dropout.
        priors / domain_features: the schema's named groups (PEPNet's priors, EPNet's domain side).
        related_features: ``{task: [feature, ...]}``, each task's prompt inputs (PMTA's e_u^t, e_v^t).
        dense_dim: width of a dense feature's projection in :meth:`features`.

    Access by meaning (never by column position): :meth:`features` returns the embedding of
    named features (dense ones through a learned projection declared with :meth:`use`);
    :meth:`group_keys` / :meth:`group` the user-side, item-side or context keys (the schema's
    ``source``) of shared or per-domain tables; :meth:`feature_keys` one feature's keys.
    """

    def __init__(
        self, spec: DatasetSpec, feature_map: FeatureMap, init_std: float = 0.01, cfg: EmbeddingConfig | None = None
    ) -> None:
        super().__init__()
        cfg = cfg or EmbeddingConfig()
        self.cfg = cfg
        self.num_domains = spec.num_domains
        self.tables = nn.ModuleDict()
        self._rows: dict[str, int] = {}
        self._per_domain: dict[str, bool] = {}
        # lookups: (key, feature, table, kind, column index in Batch.sparse or -1)
        self._lookups: list[tuple[str, str, str, str, int]] = []
        self.dims: dict[str, int] = {}
        order = {f.name: i for i, f in enumerate(spec.features)}
        table_dims = []
        for t in spec.effective_tables():
            if cfg.per_domain:
                t = t.model_copy(update={"per_domain": True})
            dim = cfg.dim or t.dim
            table_dims.append(dim)
            rows = max(feature_map.vocab_size(f) for f in t.features)
            n = rows * (self.num_domains if t.per_domain else 1)
            table = nn.Embedding(n, dim)
            nn.init.normal_(table.weight, std=init_std)
            with torch.no_grad():  # padding rows (every domain block) are zero
                table.weight[PAD::rows] = 0.0
            self.tables[_module_key(t.name)] = table
            self._rows[t.name] = rows
            self._per_domain[t.name] = t.per_domain
            for f in t.features:
                kind = spec.feature(f).kind
                kind = "sequence" if kind == "sequence" else "sparse"
                col = feature_map.sparse.index(f) if kind == "sparse" else -1
                self._lookups.append((f"{f}@{t.name}", f, t.name, kind, col))
                self.dims[f"{f}@{t.name}"] = dim
        self._lookups.sort(key=lambda x: (x[3] == "sequence", order[x[1]]))
        self.sparse_keys = [k for k, _, _, kind, _ in self._lookups if kind == "sparse"]
        self.sequence_keys = [k for k, _, _, kind, _ in self._lookups if kind == "sequence"]
        # the domain id as an input feature: its own table, D rows
        self.domain_key: str | None = None
        self.domain_table: nn.Embedding | None = None
        if cfg.domain_input:
            dim = cfg.dim or (table_dims[0] if len(set(table_dims)) == 1 else spec.default_dim)
            self.domain_table = nn.Embedding(self.num_domains, dim)
            nn.init.normal_(self.domain_table.weight, std=init_std)
            self.domain_key = DOMAIN_KEY
            self.dims[DOMAIN_KEY] = dim
        self.keys = self.sparse_keys + ([DOMAIN_KEY] if cfg.domain_input else []) + self.sequence_keys
        self.num_dense = len(feature_map.dense)
        self.input_dim = sum(self.dims.values()) + self.num_dense
        # id dropout: which columns of Batch.sparse hold id features
        self.dropout_features = id_dropout_features(spec, feature_map, cfg)
        self.id_dropout = cfg.id_dropout if self.dropout_features else 0.0
        cols = torch.zeros(len(feature_map.sparse), dtype=torch.bool)
        for f in self.dropout_features:
            cols[feature_map.sparse.index(f)] = True
        self.register_buffer("dropout_columns", cols, persistent=False)
        # access by meaning: each feature's source and keys, the dense columns, the named groups
        self._source = {f.name: f.source for f in spec.features}
        self._dense_col = {name: i for i, name in enumerate(feature_map.dense)}
        self.dense_dim = cfg.dim or spec.default_dim
        self.dense_projections = nn.ModuleDict()  # created by use(), for the dense features a model names
        self.priors = list(spec.priors)
        self.domain_features = list(spec.domain_features)
        self.related_features = {t.name: list(t.related_features) for t in spec.tasks}

    def table(self, name: str) -> nn.Embedding:
        """The ``nn.Embedding`` of table ``name`` (per-domain tables: ``D`` blocks of rows)."""
        return self.tables[_module_key(name)]

    # ---- access by meaning ------------------------------------------------------------------
    def feature_keys(self, name: str) -> list[str]:
        """The lookup keys of feature ``name``, one per table it sits in (e.g. its shared and its
        per-domain table: ``e^g`` then ``e^d``); ``[]`` for a dense (not bucketised) feature."""
        if name not in self._source:
            raise KeyError(f"no feature named {name!r}; features: {sorted(self._source)}")
        return [k for k, f, *_ in self._lookups if f == name]

    def group_keys(
        self,
        source: Literal["user", "item", "context"] | None = None,
        per_domain: bool | None = None,
        kind: Literal["sparse", "sequence"] | None = None,
    ) -> list[str]:
        """Keys of the features of one side (the schema's ``source``), of shared (``per_domain=False``)
        or per-domain (``True``) tables, and of one kind; None leaves that criterion out.

        PMTA's ``e_u^g`` is ``group_keys("user", per_domain=False)``, ``e_v^d`` is
        ``group_keys("item", per_domain=True)``. Order: the keys' order in :attr:`keys`.
        """
        return [
            k for k, f, t, kd, _ in self._lookups
            if (source is None or self._source[f] == source)
            and (per_domain is None or self._per_domain[t] == per_domain)
            and (kind is None or kd == kind)
        ]

    def use(self, names: list[str]) -> int:
        """Declare that a model reads ``names`` with :meth:`features`; returns that call's width.

        A dense feature (a normalised number, not bucketised) gets its learned projection here,
        ``e_f = x_f · w_f + b_f`` with ``w_f, b_f`` of width :attr:`dense_dim`, so only models that
        read it have the parameters. Call it in the model's constructor.
        """
        width = 0
        for name in names:
            keys = self.feature_keys(name)
            if keys:
                width += sum(self.dims[k] for k in keys)
                continue
            if name not in self._dense_col:
                raise KeyError(f"feature {name!r} has no embedding table and is not a dense feature")
            if _module_key(name) not in self.dense_projections:
                proj = nn.Linear(1, self.dense_dim)
                nn.init.normal_(proj.weight, std=0.01)
                nn.init.zeros_(proj.bias)
                self.dense_projections[_module_key(name)] = proj
            width += self.dense_dim
        return width

    def features(self, batch: Batch, names: list[str], pooled: dict[str, Tensor] | None = None) -> Tensor:
        """The embeddings of the named features, concatenated in the given order: ``[B, use(names)]``.

        A feature in several tables gives all its keys (:meth:`feature_keys`); a sequence its
        mean-pooled embedding; a dense feature its learned projection (declare it first with
        :meth:`use`). Pass ``pooled`` to reuse one lookup.
        """
        pooled = self.pooled(batch) if pooled is None else pooled
        parts: list[Tensor] = []
        for name in names:
            keys = self.feature_keys(name)
            if keys:
                parts.extend(pooled[k] for k in keys)
                continue
            key = _module_key(name)
            if key not in self.dense_projections:
                raise KeyError(f"dense feature {name!r} has no projection: call use([{name!r}]) in the model's constructor")
            col = self._dense_col[name]
            parts.append(self.dense_projections[key](batch.dense[:, col : col + 1]))  # x_f · w_f + b_f
        return torch.cat(parts, dim=-1)

    def group(
        self,
        batch: Batch,
        source: Literal["user", "item", "context"] | None = None,
        per_domain: bool | None = None,
        pooled: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """The concatenated embeddings of :meth:`group_keys` (sequences mean-pooled): ``[B, Σ dims]``."""
        keys = self.group_keys(source, per_domain)
        if not keys:
            raise ValueError(f"no embedding of source={source!r}, per_domain={per_domain!r} in {self.keys}")
        pooled = self.pooled(batch) if pooled is None else pooled
        return torch.cat([pooled[k] for k in keys], dim=-1)

    def drop_ids(self, sparse: Tensor) -> Tensor:
        """Id dropout: each id of an id feature becomes OOV with probability ``id_dropout``.

        Only in training mode; in eval mode (and with ``id_dropout = 0``) ``sparse`` is returned
        unchanged. Padding ids stay padding. Shapes: ``[B, F]`` -> ``[B, F]``.
        """
        if not self.training or self.id_dropout <= 0.0:
            return sparse
        drop = (torch.rand(sparse.shape, device=sparse.device) < self.id_dropout) & self.dropout_columns & (sparse != PAD)
        return torch.where(drop, torch.full_like(sparse, OOV), sparse)

    def _lookup(self, table: str, ids: Tensor, domain: Tensor) -> Tensor:
        """Rows of ``table`` for ``ids`` ``[B]`` or ``[B, L]`` -> ``[B, dim]`` or ``[B, L, dim]``.

        ``index_select`` rather than ``nn.functional.embedding``: its backward is a plain
        scatter-add, about twice as fast on CPU as the embedding backward's sort-and-reduce.
        """
        if self._per_domain[table]:
            offset = domain * self._rows[table]
            ids = ids + offset.view(-1, *([1] * (ids.dim() - 1)))
        weight = self.table(table).weight
        return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[1])

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``{key: [B, dim]}`` for sparse keys and the domain key, ``{key: [B, L, dim]}`` for sequence keys.

        Padded sequence positions are zero vectors (also in per-domain tables). In training, id
        dropout (:meth:`drop_ids`) is drawn once per call and shared by every table of a feature.
        """
        out: dict[str, Tensor] = {}
        sparse = self.drop_ids(batch.sparse)
        if self.domain_table is not None:
            out[DOMAIN_KEY] = self.domain_table.weight.index_select(0, batch.domain)
        for key, feat, table, kind, col in self._lookups:
            if kind == "sparse":
                out[key] = self._lookup(table, sparse[:, col], batch.domain)
            else:
                ids = batch.sequences[feat]
                emb = self._lookup(table, ids, batch.domain)
                # zero at padding, and no gradient into the padding rows (they stay 0)
                out[key] = emb * (ids != PAD).unsqueeze(-1).to(emb.dtype)
        return out

    def pool(self, table: str, ids: Tensor, lengths: Tensor, domain: Tensor) -> Tensor:
        """Mean of a sequence's embeddings over its true length: ``ids`` ``[B, L]`` -> ``[B, dim]``.

        ``pooled_b = Σ_l w_bl · e(ids_bl)`` with ``w_bl = [ids_bl ≠ PAD] / max(len_b, 1)``: padded
        positions weigh 0 (and get no gradient), an empty sequence pools to the zero vector. This
        equals the masked mean of :meth:`forward`'s ``[B, L, dim]`` output, without making it.

        In PyTorch it is one ``embedding_bag`` (sum mode with the weights ``w``): gather and
        weighted sum in one pass, its backward one scatter-add (:class:`_WeightedBag`). While exporting (``torch.export``, ONNX) it
        is a gather and a batched ``[1, L] @ [L, dim]`` product: the ONNX translation of
        ``embedding_bag`` is a loop over the bags, far slower in onnxruntime.
        """
        weight = self.table(table).weight
        w = (ids != PAD).to(weight.dtype) / lengths.clamp(min=1).to(weight.dtype).unsqueeze(-1)  # [B, L]
        if self._per_domain[table]:
            ids = ids + (domain * self._rows[table]).unsqueeze(-1)
        if torch.compiler.is_exporting():
            emb = weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[1])  # [B, L, dim]
            return torch.matmul(w.unsqueeze(1), emb).squeeze(1)
        return _WeightedBag.apply(weight, ids, w)

    def pooled(self, batch: Batch, emb: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Like :meth:`forward`, with each sequence mean-pooled over its true length -> ``[B, dim]``.

        Without ``emb`` the sequences are pooled by :meth:`pool` (no ``[B, L, dim]`` tensor is
        made); with ``emb`` (the output of :meth:`forward`) they are pooled from it.
        """
        out: dict[str, Tensor] = {}
        if emb is None:
            sparse = self.drop_ids(batch.sparse)
            for key, feat, table, kind, col in self._lookups:
                if kind == "sparse":
                    out[key] = self._lookup(table, sparse[:, col], batch.domain)
                else:
                    out[key] = self.pool(table, batch.sequences[feat], batch.seq_lengths[feat], batch.domain)
            if self.domain_table is not None:
                out[DOMAIN_KEY] = self.domain_table.weight.index_select(0, batch.domain)
            return out
        for key, feat, _, kind, _ in self._lookups:
            if kind == "sequence":
                length = batch.seq_lengths[feat].clamp(min=1).to(emb[key].dtype).unsqueeze(-1)
                out[key] = emb[key].sum(1) / length
            else:
                out[key] = emb[key]
        if self.domain_key is not None:
            out[self.domain_key] = emb[self.domain_key]
        return out

    def flat_input(
        self, batch: Batch, keys: list[str] | None = None, pooled: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Concatenated embeddings (sequences mean-pooled) and dense features: ``[B, input_dim]``.

        With ``keys`` only those embeddings are used (dense features are then left out). Pass
        ``pooled`` (from :meth:`pooled`) to reuse one lookup (one id-dropout draw) for several views.
        """
        pooled = self.pooled(batch) if pooled is None else pooled
        if keys is not None:
            return torch.cat([pooled[k] for k in keys], dim=-1)
        parts = [pooled[k] for k in self.keys]
        if self.num_dense:
            parts.append(batch.dense)
        return torch.cat(parts, dim=-1)

    def stacked(self, batch: Batch, pooled: dict[str, Tensor] | None = None) -> Tensor:
        """Embeddings of every key as fields ``[B, num_keys, dim]`` (all dims must be equal)."""
        if len(set(self.dims.values())) != 1:
            raise ValueError(f"stacked() needs one embedding dim for every table, got {self.dims}")
        pooled = self.pooled(batch) if pooled is None else pooled
        return torch.stack([pooled[k] for k in self.keys], dim=1)
