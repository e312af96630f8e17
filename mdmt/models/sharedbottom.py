"""Shared-Bottom multi-task model (Caruana, Machine Learning 1997; the "ShBot" baseline of M3oE).

Every task reads one shared representation and has its own tower::

    h   = H(x)                      # shared bottom: a backbone (MLP by default)
    y_t = tower_t(h)                # per-task tower -> 1 logit

Composition: backbone H -> ``shared`` block -> head (plain towers by default).

Example::

    model = build_model("sharedbottom", spec, feature_map, {"backbone": "dcnv2", "tower_hidden": [32]})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..schema import DatasetSpec
from .backbones import BackboneKind, build_backbone
from .base import MDMTModel, ModelOutput, register
from .blocks import SharedBlock
from .compose import CompositionConfig
from .heads import build_head, reads_shared_input

__all__ = ["SharedBottomConfig", "SharedBottom"]


class SharedBottomConfig(CompositionConfig):
    """Config of ``sharedbottom``: the fields of :class:`~mdmt.models.compose.CompositionConfig`
    (backbone, head, tower widths, dropout, act, norm), with an MLP bottom by default.

    Attributes:
        backbone: the shared bottom H (``none``, ``mlp``, ``dcnv2``, ``deepfm``).
    """

    backbone: BackboneKind = "mlp"


@register("sharedbottom", paper="Caruana, Machine Learning 1997 (multi-task shared bottom)")
class SharedBottom(MDMTModel):
    """Shared bottom H and one tower per task.

    Shapes: ``x`` ``[B, input_dim]`` -> ``h`` ``[B, H]`` -> towers ``[B, T]`` -> logits ``{t: [B]}``.
    """

    config_class = SharedBottomConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: SharedBottomConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        self.block = SharedBlock(self.backbone.out_dim, self.num_tasks, expand=not reads_shared_input(cfg.head))
        self.head = build_head(cfg.head, self.block.out_dim, self.num_tasks, cfg.towers(), cfg.head_params, embeddings)

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.embeddings.pooled(batch)
        h = self.backbone.embed(batch, self.embeddings, pooled)  # shared bottom: [B, H]
        z = self.block(h, batch.domain)  # every task reads h: [B, T, H] ([B, H] for a shared_input head)
        return self.output(self.head(z, self.head.gate_input(self.embeddings, batch, pooled)))  # towers: [B, T]
