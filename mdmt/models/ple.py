"""PLE: Progressive Layered Extraction (Tang et al., RecSys 2020).

PLE stacks ``N`` levels of Customized Gate Control (CGC). At level ``j`` task ``k`` owns
``m_k`` specific experts ``E_{k,·}``; ``m_s`` shared experts ``E_{s,·}`` serve every task::

    S^{k,j}(x)  = [E_{k,1}, ..., E_{k,m_k}, E_{s,1}, ..., E_{s,m_s}]      # task k's selected experts
    w^{k,j}(x)  = softmax(W_g^{k,j} g^{k,j-1}(x))                        # task k's gate
    g^{k,j}(x)  = w^{k,j}(x) S^{k,j}(x)                                  # task k's fused output
    g^{s,j}(x)  = softmax(W_g^{s,j} g^{s,j-1}(x)) [all experts of level j]   # shared gate (levels < N)
    y^k(x)      = t^k(g^{k,N}(x))                                        # task tower -> logit

with ``g^{k,0}(x) = g^{s,0}(x) = x``. Task ``k``'s experts read ``g^{k,j-1}``, the shared experts
read ``g^{s,j-1}``. The last level has no shared gate; its task outputs feed the towers.

Composition: backbone H (``none``) -> ``ple`` block (:class:`~mdmt.models.blocks.PLEBlock`, one
:class:`~mdmt.models.blocks.CGCLevel` per level) -> head (plain towers). In a level the experts
(``T·m_k + m_s``) run as one :class:`~mdmt.layers.ParallelMLP`; each expert's input and each
gate's expert set are picked with fixed index buffers.

Example::

    model = build_model("ple", spec, feature_map, {"num_levels": 2, "specific_experts": 1, "shared_experts": 1})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, NonNegativeInt, PositiveInt

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..schema import DatasetSpec
from .backbones import build_backbone
from .base import MDMTModel, ModelOutput, register
from .blocks import BlockConfig, CGCLevel, PLEBlock
from .compose import CompositionConfig
from .heads import build_head

__all__ = ["PLEConfig", "CGCLevel", "PLE"]


class PLEConfig(CompositionConfig):
    """Config of ``ple``: the fields of :class:`~mdmt.models.compose.CompositionConfig` (backbone
    ``none`` = the flat input, head, tower widths, dropout, act, norm), plus:

    Attributes:
        num_levels: ``N`` CGC levels (1 = a single CGC).
        specific_experts: ``m_k``, task-specific experts per task and level.
        shared_experts: ``m_s``, shared experts per level.
        expert_hidden: widths of each expert MLP (its output is the last width).
    """

    num_levels: PositiveInt = 2
    specific_experts: NonNegativeInt = 1
    shared_experts: PositiveInt = 1
    expert_hidden: list[PositiveInt] = Field(default_factory=lambda: [64], min_length=1)

    def block(self) -> BlockConfig:
        return BlockConfig(num_levels=self.num_levels, specific_experts=self.specific_experts,
                           shared_experts=self.shared_experts, expert_hidden=self.expert_hidden)


@register("ple", paper="Tang et al., RecSys 2020")
class PLE(MDMTModel):
    """Progressive Layered Extraction: ``num_levels`` CGC levels and one tower per task.

    Shapes: ``x`` ``[B, H]`` -> levels ``[B, T+1, He]`` ... -> last ``[B, T, He]`` -> towers
    -> logits ``{t: [B]}``.
    """

    config_class = PLEConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: PLEConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        self.block = PLEBlock(self.backbone.out_dim, self.num_tasks, cfg.block(), cfg.dropout, cfg.act, cfg.norm)
        self.head = build_head(cfg.head, self.block.out_dim, self.num_tasks, cfg.towers(), cfg.head_params, embeddings)

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.embeddings.pooled(batch)
        x = self.backbone.embed(batch, self.embeddings, pooled)  # g^{k,0} = g^{s,0} = x: [B, H]
        g = self.block(x, batch.domain)  # N CGC levels: g^{k,N}: [B, T, He]
        return self.output(self.head(g, self.head.gate_input(self.embeddings, batch, pooled)))  # y^k = t^k(g^{k,N})
