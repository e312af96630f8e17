"""PLE-MD: PLE extended to multi-domain learning, the baseline of PEPNet (Chang et al., KDD'23,
§3.1.2) and PMTA (CIKM'25, §3.1.2).

PEPNet: "PLE-MD extends PLE to multi-domain scenarios, which shares the input Embedding layer
across different domains"; PMTA: "PLE-MD extends PLE by sharing input embedding layers across
domains to facilitate cross-domain knowledge transfer". One PLE (Tang et al., RecSys'20) is
trained on every domain's rows with one embedding layer; each (domain, task) has its own tower,
the domain-specific top that separates it from a PLE trained per domain::

    g^{k,N}(x) = PLE(x)                         # N CGC levels, shared by the domains  [B, T, He]
    y_k        = tower_{p,k}(g^{k,N}(x))        # the tower of task k in the row's domain p

Composition: backbone H (``none``) -> ``ple`` block -> head with ``D·T`` towers, read through
:func:`~mdmt.models.heads.domain_task_logits`.

Example::

    model = build_model("ple-md", spec, feature_map, {"num_levels": 2})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..schema import DatasetSpec
from .backbones import build_backbone
from .base import MDMTModel, ModelOutput, register
from .blocks import PLEBlock
from .heads import build_head, domain_task_logits
from .ple import PLEConfig

__all__ = ["PLEMD"]


@register("ple-md", paper="PEPNet (Chang et al., KDD 2023) and PMTA (CIKM 2025) §3.1.2; PLE (Tang et al., RecSys 2020)")
class PLEMD(MDMTModel):
    """PLE over every domain with shared embeddings and one tower per (domain, task).

    Config: :class:`~mdmt.models.ple.PLEConfig` (levels, experts, backbone, head, towers).

    Shapes: ``x`` ``[B, H]`` -> PLE ``[B, T, He]`` -> every domain's towers ``[B, D, T]`` ->
    the row's domain ``[B, T]`` -> logits ``{t: [B]}``.
    """

    config_class = PLEConfig
    domain_aware: ClassVar[bool] = True

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: PLEConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        self.block = PLEBlock(self.backbone.out_dim, self.num_tasks, cfg.block(), cfg.dropout, cfg.act, cfg.norm)
        D, T = self.num_domains, self.num_tasks
        self.head = build_head(cfg.head, self.block.out_dim, D * T, cfg.towers(), cfg.head_params, embeddings)

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.embeddings.pooled(batch)  # one embedding layer for every domain
        x = self.backbone.embed(batch, self.embeddings, pooled)  # [B, H]
        g = self.block(x, batch.domain)  # PLE: g^{k,N}(x): [B, T, He]
        gate = self.head.gate_input(self.embeddings, batch, pooled)
        return self.output(domain_task_logits(self.head, g, batch.domain, self.num_domains, gate))  # tower_{p,k}
