"""DCN-V2: Deep & Cross Network V2 (Wang et al., WWW 2021), multi-task.

The cross network builds explicit feature crosses of bounded degree from ``x_0`` (the flat
input)::

    x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l                          # cross layer, W_l [d, d]
    W_l     = U_l V_lᵀ                                             # low rank (low_rank = r)
    x_{l+1} = Σ_i G_i(x_l) E_i(x_l) + x_l,                         # mixture of low-rank experts
    E_i(x_l)= x_0 ⊙ (U_l^i g(C_l^i g(V_l^iᵀ x_l)) + b_l)           # (cross_experts > 1, g = tanh)

and is combined with a deep MLP, **stacked** (``h = MLP(x_L)``) or **parallel**
(``h = x_L ⊕ MLP(x_0)``). Multi-task: one tower per task on ``h``.

Composition: the ``dcnv2`` backbone (:class:`~mdmt.models.backbones.DCNv2Backbone`) -> ``shared``
block -> head (plain towers).

Example::

    model = build_model("dcnv2", spec, feature_map, {"cross_layers": 3, "low_rank": 16})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveInt, model_validator

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..schema import DatasetSpec
from .backbones import BackboneConfig, build_backbone
from .base import MDMTModel, ModelOutput, register
from .blocks import SharedBlock
from .compose import HeadedConfig
from .heads import build_head, reads_shared_input

__all__ = ["DCNv2Config", "DCNv2"]


class DCNv2Config(HeadedConfig):
    """Config of ``dcnv2``: the fields of :class:`~mdmt.models.compose.HeadedConfig` (head, tower
    widths, dropout, act, norm), plus:

    Attributes:
        cross_layers: ``L`` cross layers.
        low_rank: rank ``r`` of ``W_l = U_l V_lᵀ``; None = full-rank ``W_l``.
        cross_experts: low-rank experts per cross layer (> 1 needs ``low_rank``).
        structure: ``stacked`` (cross then deep) or ``parallel`` (cross ⊕ deep).
        deep_hidden: widths of the deep MLP.
    """

    cross_layers: PositiveInt = 3
    low_rank: PositiveInt | None = None
    cross_experts: PositiveInt = 1
    structure: Literal["stacked", "parallel"] = "parallel"
    deep_hidden: list[PositiveInt] = Field(default_factory=lambda: [64])

    @model_validator(mode="after")
    def _check(self) -> "DCNv2Config":
        if self.cross_experts > 1 and self.low_rank is None:
            raise ValueError("cross_experts > 1 (a mixture of low-rank experts) needs low_rank")
        return self

    def backbone(self) -> BackboneConfig:
        """The ``dcnv2`` backbone's settings."""
        return BackboneConfig(hidden=self.deep_hidden, cross_layers=self.cross_layers, low_rank=self.low_rank,
                              cross_experts=self.cross_experts, structure=self.structure, dropout=self.dropout,
                              act=self.act)


@register("dcnv2", paper="Wang et al., WWW 2021")
class DCNv2(MDMTModel):
    """Cross network + deep MLP (stacked or parallel) and one tower per task.

    Shapes: ``x_0`` ``[B, d]`` -> ``h`` ``[B, H]`` (``H = deep_hidden[-1]`` stacked,
    ``d + deep_hidden[-1]`` parallel) -> towers -> logits ``{t: [B]}``.
    """

    config_class = DCNv2Config
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: DCNv2Config) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.backbone = build_backbone("dcnv2", embeddings, cfg.backbone(), cfg.norm)
        self.block = SharedBlock(self.backbone.out_dim, self.num_tasks, expand=not reads_shared_input(cfg.head))
        self.head = build_head(cfg.head, self.block.out_dim, self.num_tasks, cfg.towers(), cfg.head_params, embeddings)

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.embeddings.pooled(batch)
        h = self.backbone.embed(batch, self.embeddings, pooled)  # cross layers on x_0 and deep MLP: [B, H]
        z = self.block(h, batch.domain)  # every task reads h: [B, T, H] ([B, H] for a shared_input head)
        return self.output(self.head(z, self.head.gate_input(self.embeddings, batch, pooled)))  # per-task towers
