"""MMoE: Multi-gate Mixture-of-Experts (Ma et al., KDD 2018).

``E`` experts ``f_i`` read the shared input; each task ``k`` has its own softmax gate ``g^k``
over the experts and its own tower ``h^k``::

    x       = H(batch)                              # input (a backbone; identity by default)
    g^k(x)  = softmax(W_gk x)                       # gating network of task k: [E]
    f^k(x)  = Σ_i g^k(x)_i f_i(x)                   # task k's mixture of experts
    y_k     = h^k(f^k(x))                           # task tower -> logit

Composition: backbone H (``none``) -> ``mmoe`` block (:class:`~mdmt.models.blocks.MMoEBlock`) ->
head (plain towers).

Example::

    model = build_model("mmoe", spec, feature_map, {"num_experts": 4, "expert_hidden": [64]})
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
from .compose import CompositionConfig
from .heads import build_head

__all__ = ["MMoEConfig", "MMoE"]


class MMoEConfig(CompositionConfig):
    """Config of ``mmoe``: the fields of :class:`~mdmt.models.compose.CompositionConfig` (backbone
    ``none`` = the flat input, head, tower widths, dropout, act, norm), plus:

    Attributes:
        num_experts: ``E``.
        expert_hidden: widths of each expert MLP (its output is the last width).
    """

    num_experts: PositiveInt = 4
    expert_hidden: list[PositiveInt] = Field(default_factory=lambda: [64], min_length=1)


@register("mmoe", paper="Ma et al., KDD 2018")
class MMoE(MDMTModel):
    """Multi-gate Mixture-of-Experts.

    Shapes: ``x`` ``[B, H]`` -> experts ``[B, E, He]`` -> gates ``[B, T, E]`` -> mixtures
    ``[B, T, He]`` -> towers -> logits ``{t: [B]}``.
    """

    config_class = MMoEConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: MMoEConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        self.block = MMoEBlock(self.backbone.out_dim, self.num_tasks, cfg.num_experts, cfg.expert_hidden,
                               cfg.dropout, cfg.act, cfg.norm)
        self.head = build_head(cfg.head, self.block.out_dim, self.num_tasks, cfg.towers(), cfg.head_params, embeddings)

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.embeddings.pooled(batch)
        x = self.backbone.embed(batch, self.embeddings, pooled)  # [B, H]
        mixed = self.block(x, batch.domain)  # f^k(x) = Σ_i softmax(W_gk x)_i f_i(x): [B, T, He]
        return self.output(self.head(mixed, self.head.gate_input(self.embeddings, batch, pooled)))  # y_k = h^k(f^k(x))
