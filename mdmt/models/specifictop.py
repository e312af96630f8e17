"""SpecificTop: a shared bottom under one task tower per (domain, task), a multi-domain multi-task
baseline of PEPNet (Chang et al., KDD'23, §3.1.2) and PMTA (CIKM'25, §3.1.2).

PEPNet: "Different from SharedTop, this model adopts different task towers for the same task on
different domains, while the bottom Embedding layer is still shared across domains"; PMTA:
SpecificTop shares the embeddings and introduces "domain-specific task towers". For a row of
domain ``p``::

    x    = E(batch)                    # one embedding layer for every domain
    h    = H(x)                        # shared bottom (an MLP by default)       [B, H]
    y_t  = tower_{p,t}(h)              # the tower of task t in the row's domain p

Composition: backbone H (``mlp``) -> ``shared`` block -> head with ``D·T`` towers, read through
:func:`~mdmt.models.heads.domain_task_logits`. ``specificall`` adds domain-specific embeddings.

Example::

    model = build_model("specifictop", spec, feature_map, {"tower_hidden": [32]})
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
from .heads import build_head, domain_task_logits, reads_shared_input

__all__ = ["SpecificTopConfig", "SpecificTop"]


class SpecificTopConfig(CompositionConfig):
    """Config of ``specifictop``: the fields of :class:`~mdmt.models.compose.CompositionConfig`
    (backbone, head, tower widths, dropout, act, norm), with an MLP bottom by default.

    Attributes:
        backbone: the shared bottom H.
    """

    backbone: BackboneKind = "mlp"


@register("specifictop", paper="PEPNet (Chang et al., KDD 2023) and PMTA (CIKM 2025) §3.1.2")
class SpecificTop(MDMTModel):
    """Shared embeddings and bottom, one tower per (domain, task).

    Shapes: ``x`` ``[B, input_dim]`` -> ``h`` ``[B, H]`` -> every domain's towers ``[B, D, T]`` ->
    the row's domain -> logits ``{t: [B]}``.
    """

    config_class = SpecificTopConfig
    domain_aware: ClassVar[bool] = True

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: SpecificTopConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        self.block = SharedBlock(self.backbone.out_dim, self.num_tasks, expand=not reads_shared_input(cfg.head))
        D, T = self.num_domains, self.num_tasks
        self.head = build_head(cfg.head, self.block.out_dim, D * T, cfg.towers(), cfg.head_params, embeddings)

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.embeddings.pooled(batch)
        h = self.backbone.embed(batch, self.embeddings, pooled)  # shared bottom H(x): [B, H]
        z = self.block(h, batch.domain)  # every task reads h: [B, T, H] ([B, H] for a shared_input head)
        gate = self.head.gate_input(self.embeddings, batch, pooled)
        return self.output(domain_task_logits(self.head, z, batch.domain, self.num_domains, gate))  # tower_{p,t}(h)
