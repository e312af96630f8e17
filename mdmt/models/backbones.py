"""Backbones H: the plug-in bottoms that map a batch's inputs to one representation ``h`` (DESIGN §2).

A multi-task block (SharedBottom, MMoE, PLE) or a head runs on top of ``h``; choosing the
backbone is configuration (``backbone: mlp``), not a new model. Every backbone takes tensors,
not the Batch, so a plug-in that rewrites the inputs first (e.g. a gate scaling the embeddings)
can feed its own ``x``:

* ``x``: ``[B, input_dim]``, the flat input (``EmbeddingCollection.flat_input``);
* ``fields``: ``[B, F, d]``, the stacked field embeddings (``EmbeddingCollection.stacked``),
  only for backbones with ``needs_fields`` (DeepFM).

:meth:`Backbone.embed` does the usual thing: look the batch up in the collection and run.

Kinds:

======== ===============================================================================
none     ``h = x`` (identity on the flat input), ``out_dim = input_dim``
mlp      ``h = MLP(x)``
dcnv2    DCN-V2 cross network and deep MLP, ``stacked`` (``MLP(Cross(x))``) or
         ``parallel`` (``Cross(x) ⊕ MLP(x)``)
deepfm   ``h = MLP(x) ⊕ ½((Σ_i v_i)² − Σ_i v_i²)``: the deep output and the FM bi-interaction
         vector of the fields
dcn      DCN (v1): ``h = Cross_v1(x) ⊕ MLP(x)``, the input of DCN's combination layer
xdeepfm  xDeepFM: ``h = MLP(x) ⊕ CIN(fields)``, the deep output and the pooled CIN feature maps
======== ===============================================================================

Example::

    >>> from mdmt.schema import *
    >>> from mdmt.featuremap import FeatureMap
    >>> from mdmt.embeddings import EmbeddingCollection
    >>> spec = DatasetSpec(name="t", features=[FeatureSpec(name="u"), FeatureSpec(name="i")],
    ...     domain=DomainSpec(column="d", names=["a"]), tasks=[TaskSpec(name="y", label="y")], default_dim=4)
    >>> emb = EmbeddingCollection(spec, FeatureMap.layout_of(spec, vocabs={"u": ["1"], "i": ["1"]}))
    >>> bb = build_backbone("deepfm", emb, BackboneConfig(hidden=[16]))
    >>> bb.out_dim
    20
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor, nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import CIN, MLP, Activation, CrossNet, CrossNetV1, Norm, fm_bi_interaction
from ..schema import ConfigError, StrictModel

__all__ = [
    "BackboneKind",
    "BackboneConfig",
    "Backbone",
    "IdentityBackbone",
    "MLPBackbone",
    "DCNv2Backbone",
    "DeepFMBackbone",
    "DCNBackbone",
    "XDeepFMBackbone",
    "build_backbone",
]

BackboneKind = Literal["none", "mlp", "dcnv2", "deepfm", "dcn", "xdeepfm"]


class BackboneConfig(StrictModel):
    """Settings of a backbone; each kind reads the fields it needs.

    Attributes:
        hidden: MLP widths (``mlp``; the deep part of ``dcnv2``, ``deepfm``, ``dcn``, ``xdeepfm``).
        cross_layers: number of cross layers (``dcnv2``, ``dcn``).
        low_rank: rank ``r`` of ``W = U Vᵀ`` in the cross layers, or None for full rank (``dcnv2``).
        cross_experts: low-rank experts per cross layer (``dcnv2``; > 1 needs ``low_rank``).
        structure: ``stacked`` or ``parallel`` cross and deep parts (``dcnv2``).
        cin_layers: feature maps ``H_k`` of each CIN layer (``xdeepfm``).
        dropout, act: of the MLP hidden layers.
    """

    hidden: list[PositiveInt] = Field(default_factory=lambda: [64])
    cross_layers: int = Field(default=2, ge=1)
    low_rank: int | None = Field(default=None, ge=1)
    cross_experts: int = Field(default=1, ge=1)
    structure: Literal["stacked", "parallel"] = "parallel"
    cin_layers: list[PositiveInt] = Field(default_factory=lambda: [32, 32], min_length=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"

    @model_validator(mode="after")
    def _check(self) -> "BackboneConfig":
        if self.cross_experts > 1 and self.low_rank is None:
            raise ValueError("cross_experts > 1 (a mixture of low-rank experts) needs low_rank")
        return self


class Backbone(nn.Module):
    """Base: ``forward(x [B, input_dim], fields [B, F, d] | None) -> h [B, out_dim]``."""

    out_dim: int
    needs_fields: bool = False

    def forward(self, x: Tensor, fields: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, batch: Batch, embeddings: EmbeddingCollection, pooled: dict[str, Tensor] | None = None) -> Tensor:
        """Look ``batch`` up in ``embeddings`` (once; or reuse ``pooled``) and run the backbone: ``[B, out_dim]``."""
        pooled = embeddings.pooled(batch) if pooled is None else pooled
        fields = embeddings.stacked(batch, pooled=pooled) if self.needs_fields else None
        return self(embeddings.flat_input(batch, pooled=pooled), fields)


class IdentityBackbone(Backbone):
    """``h = x``."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: Tensor, fields: Tensor | None = None) -> Tensor:
        return x


class MLPBackbone(Backbone):
    """``h = MLP(x)``: ``[B, in_dim] -> [B, hidden[-1]]``."""

    def __init__(
        self, in_dim: int, hidden: list[int], dropout: float = 0.0, act: str = "relu", norm: Norm = "none"
    ) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, hidden, dropout=dropout, act=act, norm=norm)
        self.out_dim = self.mlp.out_dim

    def forward(self, x: Tensor, fields: Tensor | None = None) -> Tensor:
        return self.mlp(x)


class DCNv2Backbone(Backbone):
    """DCN-V2 (Wang et al., WWW'21) cross network with a deep MLP.

    * ``stacked``: ``h = MLP(Cross(x_0))``, ``out_dim = hidden[-1]`` (``in_dim`` if no hidden);
    * ``parallel``: ``h = Cross(x_0) ⊕ MLP(x_0)``, ``out_dim = in_dim + hidden[-1]``.

    Shapes: ``x`` ``[B, in_dim]`` -> ``[B, out_dim]``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        cross_layers: int,
        low_rank: int | None = None,
        cross_experts: int = 1,
        structure: Literal["stacked", "parallel"] = "parallel",
        dropout: float = 0.0,
        act: str = "relu",
        norm: Norm = "none",
    ) -> None:
        super().__init__()
        self.structure = structure
        self.cross = CrossNet(in_dim, cross_layers, low_rank=low_rank, num_experts=cross_experts)
        self.deep = MLP(in_dim, hidden, dropout=dropout, act=act, norm=norm)
        self.out_dim = self.deep.out_dim if structure == "stacked" else in_dim + self.deep.out_dim

    def forward(self, x: Tensor, fields: Tensor | None = None) -> Tensor:
        if self.structure == "stacked":
            return self.deep(self.cross(x))
        return torch.cat([self.cross(x), self.deep(x)], dim=-1)


class DeepFMBackbone(Backbone):
    """DeepFM (Guo et al., IJCAI'17) as a representation: ``h = MLP(x) ⊕ ½((Σ_i v_i)² − Σ_i v_i²)``.

    Shapes: ``x`` ``[B, in_dim]``, ``fields`` ``[B, F, d]`` -> ``[B, hidden[-1] + d]``.
    """

    needs_fields = True

    def __init__(
        self, in_dim: int, field_dim: int, hidden: list[int], dropout: float = 0.0, act: str = "relu",
        norm: Norm = "none",
    ) -> None:
        super().__init__()
        self.deep = MLP(in_dim, hidden, dropout=dropout, act=act, norm=norm)
        self.out_dim = self.deep.out_dim + field_dim

    def forward(self, x: Tensor, fields: Tensor | None = None) -> Tensor:
        if fields is None:
            raise ValueError("the deepfm backbone needs the stacked field embeddings")
        return torch.cat([self.deep(x), fm_bi_interaction(fields)], dim=-1)


class DCNBackbone(Backbone):
    """DCN (Wang et al., ADKDD'17) as a representation: the cross network (Eq. 3) and the deep
    network (Eq. 4) side by side, ``h = x_L ⊕ h_L``: the input of DCN's combination layer (Eq. 5).

    Shapes: ``x`` ``[B, in_dim]`` -> ``[B, in_dim + hidden[-1]]``.
    """

    def __init__(self, in_dim: int, hidden: list[int], cross_layers: int, dropout: float = 0.0, act: str = "relu",
                 norm: Norm = "none") -> None:
        super().__init__()
        self.cross = CrossNetV1(in_dim, cross_layers)
        self.deep = MLP(in_dim, hidden, dropout=dropout, act=act, norm=norm)
        self.out_dim = in_dim + self.deep.out_dim

    def forward(self, x: Tensor, fields: Tensor | None = None) -> Tensor:
        return torch.cat([self.cross(x), self.deep(x)], dim=-1)  # [x_L, h_L]


class XDeepFMBackbone(Backbone):
    """xDeepFM (Lian et al., KDD'18) as a representation: the plain DNN (Eq. 2–3) and the CIN's
    pooled feature maps (Eq. 6–7), ``h = x_dnn ⊕ p^+``: what the output unit (Eq. 8) reads
    besides the linear part.

    Shapes: ``x`` ``[B, in_dim]``, ``fields`` ``[B, m, D]`` -> ``[B, hidden[-1] + Σ_k H_k]``.
    """

    needs_fields = True

    def __init__(self, in_dim: int, num_fields: int, hidden: list[int], cin_layers: list[int], dropout: float = 0.0,
                 act: str = "relu", norm: Norm = "none") -> None:
        super().__init__()
        self.deep = MLP(in_dim, hidden, dropout=dropout, act=act, norm=norm)
        self.cin = CIN(num_fields, cin_layers)
        self.out_dim = self.deep.out_dim + self.cin.out_dim

    def forward(self, x: Tensor, fields: Tensor | None = None) -> Tensor:
        if fields is None:
            raise ValueError("the xdeepfm backbone needs the stacked field embeddings")
        return torch.cat([self.deep(x), self.cin(fields)], dim=-1)


def field_dim(embeddings: EmbeddingCollection, who: str) -> int:
    """The one embedding dim of every key (FM needs equal dims), or a clear ConfigError."""
    dims = set(embeddings.dims.values())
    if len(dims) != 1:
        raise ConfigError(f"{who} needs one embedding dim for every table, got {embeddings.dims}")
    return dims.pop()


def build_backbone(
    kind: BackboneKind, embeddings: EmbeddingCollection, cfg: BackboneConfig | None = None, norm: Norm = "none"
) -> Backbone:
    """Build backbone ``kind`` for the inputs of ``embeddings``; the result has ``.out_dim``.

    ``norm`` is the model's one normalisation option, applied to the backbone's MLP too.
    """
    cfg = cfg or BackboneConfig()
    in_dim = embeddings.input_dim
    if kind == "none":
        return IdentityBackbone(in_dim)
    if kind == "mlp":
        return MLPBackbone(in_dim, cfg.hidden, cfg.dropout, cfg.act, norm)
    if kind == "dcnv2":
        return DCNv2Backbone(
            in_dim, cfg.hidden, cfg.cross_layers, cfg.low_rank, cfg.cross_experts, cfg.structure, cfg.dropout, cfg.act,
            norm,
        )
    if kind == "deepfm":
        return DeepFMBackbone(
            in_dim, field_dim(embeddings, "the deepfm backbone"), cfg.hidden, cfg.dropout, cfg.act, norm
        )
    if kind == "dcn":
        return DCNBackbone(in_dim, cfg.hidden, cfg.cross_layers, cfg.dropout, cfg.act, norm)
    if kind == "xdeepfm":
        field_dim(embeddings, "the xdeepfm backbone")  # CIN needs one embedding dim
        return XDeepFMBackbone(in_dim, len(embeddings.keys), cfg.hidden, cfg.cin_layers, cfg.dropout, cfg.act, norm)
    raise ConfigError(f"unknown backbone {kind!r}; choose one of none, mlp, dcnv2, deepfm, dcn, xdeepfm")
