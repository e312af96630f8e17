"""DCNv2-MT: DCN-V2 extended to multi-task learning, the baseline of PEPNet (Chang et al., KDD'23,
§3.1.2) and PMTA (CIKM'25, §3.1.2).

PEPNet: "DCNv2-MT extends DCNv2 to multi-task scenarios, which shares the main model between
different tasks and use different DNN layers to generate preference scores"; PMTA: it "adapts
DCNv2 for multi-task learning through task-specific parameter customization". Here the shared
main model is the DCN-V2 network (Wang et al., WWW'21; cross layers and deep MLP) and the
task-specific customisation is an MMoE layer (Ma et al., KDD'18) in front of the task towers::

    h       = DCNv2(x_0)                          # cross network ⊕ / ∘ deep MLP   [B, H]
    f^k(h)  = Σ_i softmax(W_gk h)_i f_i(h)        # task k's mixture of E experts  [B, He]
    y_k     = tower_k(f^k(h))                     # task tower -> logit

Plain ``dcnv2`` is the variant without the mixture (every task's tower reads ``h``).

Composition: the ``dcnv2`` backbone -> ``mmoe`` block -> head (plain towers).

Example::

    model = build_model("dcnv2-mt", spec, feature_map, {"cross_layers": 2, "num_experts": 4})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, PositiveInt

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..schema import DatasetSpec
from .backbones import build_backbone
from .base import MDMTModel, ModelOutput, register
from .blocks import MMoEBlock
from .dcnv2 import DCNv2Config
from .heads import build_head

__all__ = ["DCNv2MTConfig", "DCNv2MT"]


class DCNv2MTConfig(DCNv2Config):
    """Config of ``dcnv2-mt``: the fields of :class:`~mdmt.models.dcnv2.DCNv2Config` (cross layers,
    low rank, structure, deep MLP, head, towers, dropout, act, norm), plus:

    Attributes:
        num_experts: ``E`` experts of the task-specific mixture.
        expert_hidden: widths of each expert MLP (its output is the last width).
    """

    num_experts: PositiveInt = 4
    expert_hidden: list[PositiveInt] = Field(default_factory=lambda: [64], min_length=1)


@register("dcnv2-mt", paper="PEPNet (Chang et al., KDD 2023) and PMTA (CIKM 2025) §3.1.2; DCN-V2 (Wang et al., WWW 2021)")
class DCNv2MT(MDMTModel):
    """DCN-V2 shared by the tasks, an MMoE mixture per task, one tower per task.

    Shapes: ``x_0`` ``[B, d]`` -> ``h`` ``[B, H]`` -> mixtures ``[B, T, He]`` -> logits ``{t: [B]}``.
    """

    config_class = DCNv2MTConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: DCNv2MTConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.backbone = build_backbone("dcnv2", embeddings, cfg.backbone(), cfg.norm)
        self.block = MMoEBlock(self.backbone.out_dim, self.num_tasks, cfg.num_experts, cfg.expert_hidden,
                               cfg.dropout, cfg.act, cfg.norm)
        self.head = build_head(cfg.head, self.block.out_dim, self.num_tasks, cfg.towers(), cfg.head_params, embeddings)

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.embeddings.pooled(batch)
        h = self.backbone.embed(batch, self.embeddings, pooled)  # shared main model DCNv2(x_0): [B, H]
        mixed = self.block(h, batch.domain)  # f^k(h) = Σ_i softmax(W_gk h)_i f_i(h): [B, T, He]
        return self.output(self.head(mixed, self.head.gate_input(self.embeddings, batch, pooled)))  # y_k
