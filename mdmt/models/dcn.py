"""DCN: Deep & Cross Network (Wang, Fu, Fu and Wang, ADKDD 2017), multi-task.

The stacked input ``x_0`` (embeddings and dense features, Eq. 1–2) feeds a cross network and a
deep network in parallel::

    x_{l+1} = x_0 x_lᵀ w_l + b_l + x_l                 # Eq. 3: cross layer, w_l, b_l ∈ R^d
    h_{l+1} = ReLU(W_l h_l + b_l),   h_0 = x_0         # Eq. 4: deep layer
    p       = sigmoid([x_L, h_L] w_logits + b_logits)  # Eq. 5: combination layer

Multi-task: the cross and deep networks are shared; each task has its own combination layer.
With ``tower_hidden: []`` it is Eq. 5's single linear layer per task; by default (as for the
other baselines here) a small tower ``[32]`` precedes the logit. The sigmoid is applied outside.

Composition: the ``dcn`` backbone (:class:`~mdmt.models.backbones.DCNBackbone`, Eq. 3 ∥ Eq. 4)
-> ``shared`` block -> head (plain towers by default: Eq. 5 per task).

Example::

    model = build_model("dcn", spec, feature_map, {"cross_layers": 3, "deep_hidden": [64]})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, PositiveInt

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..schema import DatasetSpec
from .backbones import BackboneConfig, build_backbone
from .base import MDMTModel, ModelOutput, register
from .blocks import SharedBlock
from .compose import HeadedConfig
from .heads import build_head, reads_shared_input

__all__ = ["DCNConfig", "DCN"]


class DCNConfig(HeadedConfig):
    """Config of ``dcn``: the fields of :class:`~mdmt.models.compose.HeadedConfig` (head, tower
    widths = each task's combination tower, ``[]`` for Eq. 5 exactly; dropout, act, norm), plus:

    Attributes:
        cross_layers: ``L`` cross layers (Eq. 3).
        deep_hidden: widths of the deep network (Eq. 4).
    """

    cross_layers: PositiveInt = 3
    deep_hidden: list[PositiveInt] = Field(default_factory=lambda: [64])

    def backbone(self) -> BackboneConfig:
        """The ``dcn`` backbone's settings."""
        return BackboneConfig(hidden=self.deep_hidden, cross_layers=self.cross_layers, dropout=self.dropout,
                              act=self.act)


@register("dcn", paper="Wang et al., ADKDD 2017")
class DCN(MDMTModel):
    """Cross network ∥ deep network, then one combination tower per task.

    Shapes: ``x_0`` ``[B, d]`` -> ``[x_L, h_L]`` ``[B, d + deep_hidden[-1]]`` -> logits ``{t: [B]}``.
    """

    config_class = DCNConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: DCNConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.backbone = build_backbone("dcn", embeddings, cfg.backbone(), cfg.norm)
        self.block = SharedBlock(self.backbone.out_dim, self.num_tasks, expand=not reads_shared_input(cfg.head))
        self.head = build_head(cfg.head, self.block.out_dim, self.num_tasks, cfg.towers(), cfg.head_params, embeddings)

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.embeddings.pooled(batch)
        # Eq. 1–2: x_0 = [x_embed,1, ..., x_embed,k, x_dense]; Eq. 3 ∥ Eq. 4: [x_L, h_L]
        h = self.backbone.embed(batch, self.embeddings, pooled)
        z = self.block(h, batch.domain)  # every task reads [x_L, h_L]: [B, T, H] ([B, H] for a shared_input head)
        return self.output(self.head(z, self.head.gate_input(self.embeddings, batch, pooled)))  # Eq. 5 per task
