"""DeepFM (Guo et al., IJCAI 2017), multi-task.

An FM component and a deep component share the embeddings ``v_i`` of the ``F`` fields::

    y_FM   = <w, x> + Σ_{i<j} <v_i, v_j>                      # first order + pairwise
           = <w, x> + Σ_k ½((Σ_i v_ik)² − Σ_i v_ik²)           # O(F·d) form
    a^(0)  = x = [e_1, ..., e_m, dense]                       # flat input
    a^(l+1)= σ(W^(l) a^(l) + b^(l))                           # deep component
    ŷ      = sigmoid(y_FM + y_DNN)

Multi-task: the first-order, FM and DNN bottom are shared; each task ``t`` has its own DNN
head, so ``logit_t = <w, x> + w_0 + y_pairwise + DNN_t(a^(L))``.

First-order terms: a Linear over the flat input (the embeddings and the dense features) instead
of an extra 1-dim embedding table. Per field ``f`` this is ``<w_f, e_f>``; since every id's
embedding ``e_f`` is free, it can express any per-id scalar weight (it ties it to the embedding),
and the dense features get their first-order weights in the same layer.

The FM part reads :meth:`EmbeddingCollection.stacked`, so every table must share one dim
(sequences enter as their mean-pooled embedding, dense features only the linear and deep parts).

Composition: the ``deepfm`` backbone (:class:`~mdmt.models.backbones.DeepFMBackbone`, the DNN
bottom ⊕ the FM bi-interaction vector ``½((Σ_i v_i)² − Σ_i v_i²)``, whose sum is the pairwise
term) -> ``shared`` block over the DNN part -> head (plain towers, the per-task DNN heads).

Example::

    model = build_model("deepfm", spec, feature_map, {"dnn_hidden": [64], "tower_hidden": [32]})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, PositiveInt
from torch import nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..schema import DatasetSpec
from .backbones import BackboneConfig, build_backbone
from .base import MDMTModel, ModelOutput, register
from .blocks import SharedBlock
from .compose import HeadedConfig
from .heads import build_head, reads_shared_input

__all__ = ["DeepFMConfig", "DeepFM"]


class DeepFMConfig(HeadedConfig):
    """Config of ``deepfm``: the fields of :class:`~mdmt.models.compose.HeadedConfig` (head, tower
    widths = each task's DNN head, dropout, act, norm), plus:

    Attributes:
        dnn_hidden: widths of the shared DNN bottom.
    """

    dnn_hidden: list[PositiveInt] = Field(default_factory=lambda: [64])


@register("deepfm", paper="Guo et al., IJCAI 2017")
class DeepFM(MDMTModel):
    """First-order + FM pairwise + per-task DNN heads over a shared DNN bottom.

    Shapes: ``x`` ``[B, input_dim]``, ``v`` ``[B, F, d]`` -> linear ``[B, 1]``, FM ``[B, 1]``,
    DNN ``[B, T]`` -> logits ``{t: [B]}``.
    """

    config_class = DeepFMConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: DeepFMConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.linear = nn.Linear(embeddings.input_dim, 1)  # <w, x> + w_0
        deep = BackboneConfig(hidden=cfg.dnn_hidden, dropout=cfg.dropout, act=cfg.act)
        self.backbone = build_backbone("deepfm", embeddings, deep, cfg.norm)  # DNN ⊕ FM vector
        self.deep_dim = self.backbone.deep.out_dim
        self.block = SharedBlock(self.deep_dim, self.num_tasks, expand=not reads_shared_input(cfg.head))
        self.head = build_head(cfg.head, self.deep_dim, self.num_tasks, cfg.towers(), cfg.head_params, embeddings)

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embeddings.pooled(batch)  # one lookup for both views
        x = self.embeddings.flat_input(batch, pooled=e)  # [B, input_dim]
        v = self.embeddings.stacked(batch, pooled=e)  # [B, F, d]
        h = self.backbone(x, v)  # shared DNN bottom a^(L) ⊕ ½((Σ v_i)² − Σ v_i²): [B, H + d]
        y_first = self.linear(x)  # first order <w, x> + w_0: [B, 1]
        y_pair = h[:, self.deep_dim :].sum(-1, keepdim=True)  # Σ_{i<j} <v_i, v_j>: [B, 1]
        z = self.block(h[:, : self.deep_dim], batch.domain)  # every task's DNN head reads a^(L): [B, T, H] ([B, H] for a shared_input head)
        y_dnn = self.head(z, self.head.gate_input(self.embeddings, batch, e))  # per-task DNN heads: [B, T]
        return self.output(y_first + y_pair + y_dnn)  # logit_t = y_FM + y_DNN_t
