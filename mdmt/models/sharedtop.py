"""SharedTop: domain-specific bottoms under task towers shared by the domains, a multi-domain
multi-task baseline of PEPNet (Chang et al., KDD'23, §3.1.2) and PMTA (CIKM'25, §3.1.2).

PEPNet: "SharedTop first shares input Embedding layer like PLE-MD, and shares the top DNN task
towers across different domains, unlike SharedBottom which shares the bottom DNN layer"; PMTA:
SharedTop shares the top-layer DNN, "keeping domain-specific bottom layers". So, for a row of
domain ``p``::

    x    = E(batch)                    # one embedding layer for every domain
    h    = Bottom_p(x)                 # the bottom MLP of the row's domain p    [B, H]
    y_t  = tower_t(h)                  # task towers shared by the domains

The ``D`` bottoms run on every row as one batched op and
:func:`~mdmt.layers.domain_select` keeps the row's own domain.

Composition: a per-domain MLP bottom (this model's own) -> ``shared`` block -> head (plain towers).

Example::

    model = build_model("sharedtop", spec, feature_map, {"bottom_hidden": [64]})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, PositiveInt

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import ParallelMLP, domain_select
from ..schema import DatasetSpec
from .base import MDMTModel, ModelOutput, register
from .blocks import SharedBlock
from .compose import HeadedConfig
from .heads import build_head, reads_shared_input

__all__ = ["SharedTopConfig", "SharedTop"]


class SharedTopConfig(HeadedConfig):
    """Config of ``sharedtop``: the fields of :class:`~mdmt.models.compose.HeadedConfig` (head, tower
    widths, dropout, act, norm), plus:

    Attributes:
        bottom_hidden: widths of each domain's bottom MLP.
    """

    bottom_hidden: list[PositiveInt] = Field(default_factory=lambda: [64], min_length=1)


@register("sharedtop", paper="PEPNet (Chang et al., KDD 2023) and PMTA (CIKM 2025) §3.1.2")
class SharedTop(MDMTModel):
    """A bottom MLP per domain, task towers shared by the domains.

    Shapes: ``x`` ``[B, input_dim]`` -> every domain's bottom ``[B, D, H]`` -> the row's
    domain ``[B, H]`` -> towers -> logits ``{t: [B]}``.
    """

    config_class = SharedTopConfig
    domain_aware: ClassVar[bool] = True

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: SharedTopConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.bottoms = ParallelMLP(embeddings.input_dim, cfg.bottom_hidden, self.num_domains, dropout=cfg.dropout,
                                   act=cfg.act, norm=cfg.norm)
        self.block = SharedBlock(self.bottoms.out_dim, self.num_tasks, expand=not reads_shared_input(cfg.head))
        self.head = build_head(cfg.head, self.block.out_dim, self.num_tasks, cfg.towers(), cfg.head_params, embeddings)

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.embeddings.pooled(batch)
        x = self.embeddings.flat_input(batch, pooled=pooled)  # shared embedding layer: [B, input_dim]
        every = self.bottoms(x)  # Bottom_p(x) for every domain p: [B, D, H]
        h = domain_select(every.transpose(0, 1), batch.domain, rows=True)  # the row's domain: [B, H]
        z = self.block(h, batch.domain)  # every task reads h: [B, T, H] ([B, H] for a shared_input head)
        return self.output(self.head(z, self.head.gate_input(self.embeddings, batch, pooled)))  # shared towers
