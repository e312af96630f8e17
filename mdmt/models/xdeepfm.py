"""xDeepFM (Lian et al., KDD 2018): a linear part, a plain DNN and a Compressed Interaction
Network (CIN), multi-task.

With ``a`` the raw input, ``X^0 ∈ R^{m×D}`` the ``m`` field embeddings and ``e`` their
concatenation::

    x^1_dnn   = σ(W^1 e + b^1),  x^k_dnn = σ(W^k x^{k-1}_dnn + b^k)                  # Eq. 2–3: DNN
    X^k_{h,*} = Σ_{i=1..H_{k-1}} Σ_{j=1..m} W^{k,h}_{ij} (X^{k-1}_{i,*} ∘ X^0_{j,*})  # Eq. 6: CIN layer k
    p^k_h     = Σ_j X^k_{h,j},   p^+ = [p^1, ..., p^K]                                # Eq. 7: sum pooling
    ŷ         = σ(w_linᵀ a + w_dnnᵀ x_dnn + w_cinᵀ p^+ + b)                            # Eq. 8: output unit

Multi-task: the DNN and the CIN are shared; each task has its own linear part ``w_lin,t`` and its
own tower over ``x_dnn ⊕ p^+`` (``tower_hidden: []`` is Eq. 8's linear output unit). The linear
part reads the flat input (embeddings and dense features), as in ``deepfm``: an id's first-order
weight is tied to its embedding. The sigmoid is applied outside. The CIN needs one embedding dim
for every table.

Composition: the ``xdeepfm`` backbone (:class:`~mdmt.models.backbones.XDeepFMBackbone`,
``x_dnn ⊕ p^+``) -> ``shared`` block -> head (plain towers by default), plus the linear part.

Example::

    model = build_model("xdeepfm", spec, feature_map, {"cin_layers": [32, 32], "dnn_hidden": [64]})
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

__all__ = ["XDeepFMConfig", "XDeepFM"]


class XDeepFMConfig(HeadedConfig):
    """Config of ``xdeepfm``: the fields of :class:`~mdmt.models.compose.HeadedConfig` (head, tower
    widths = each task's output tower, ``[]`` for Eq. 8's linear unit; dropout, act, norm), plus:

    Attributes:
        cin_layers: feature maps ``H_k`` of each CIN layer (Eq. 6).
        dnn_hidden: widths of the plain DNN (Eq. 2–3).
    """

    cin_layers: list[PositiveInt] = Field(default_factory=lambda: [32, 32], min_length=1)
    dnn_hidden: list[PositiveInt] = Field(default_factory=lambda: [64])

    def backbone(self) -> BackboneConfig:
        """The ``xdeepfm`` backbone's settings."""
        return BackboneConfig(hidden=self.dnn_hidden, cin_layers=self.cin_layers, dropout=self.dropout, act=self.act)


@register("xdeepfm", paper="Lian et al., KDD 2018")
class XDeepFM(MDMTModel):
    """Linear + DNN + CIN with per-task output towers.

    Shapes: ``a`` ``[B, input_dim]``, ``X^0`` ``[B, m, D]`` -> ``x_dnn ⊕ p^+``
    ``[B, dnn_hidden[-1] + Σ H_k]`` -> logits ``{t: [B]}``.
    """

    config_class = XDeepFMConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: XDeepFMConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.linear = nn.Linear(embeddings.input_dim, self.num_tasks)  # w_lin,t and b_t
        self.backbone = build_backbone("xdeepfm", embeddings, cfg.backbone(), cfg.norm)  # DNN ⊕ CIN
        self.block = SharedBlock(self.backbone.out_dim, self.num_tasks, expand=not reads_shared_input(cfg.head))
        self.head = build_head(cfg.head, self.block.out_dim, self.num_tasks, cfg.towers(), cfg.head_params, embeddings)

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.embeddings.pooled(batch)  # one lookup for every view
        a = self.embeddings.flat_input(batch, pooled=pooled)  # [B, input_dim]
        h = self.backbone(a, self.embeddings.stacked(batch, pooled=pooled))  # Eq. 2–3, Eq. 6–7: x_dnn ⊕ p^+
        z = self.block(h, batch.domain)  # every task reads h: [B, T, H] ([B, H] for a shared_input head)
        towers = self.head(z, self.head.gate_input(self.embeddings, batch, pooled))  # [B, T]
        return self.output(self.linear(a) + towers)  # Eq. 8 per task: w_linᵀa + b + tower_t(x_dnn ⊕ p^+)
