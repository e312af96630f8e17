"""Shared-Bottom multi-task model (Caruana, Machine Learning 1997; the "ShBot" baseline of M3oE).

Every task reads one shared representation and has its own tower::

    h   = H(x)                      # shared bottom: a backbone (MLP by default)
    y_t = tower_t(h)                # per-task MLP -> 1 logit

Example::

    model = build_model("sharedbottom", spec, feature_map, {"backbone": "dcnv2", "tower_hidden": [32]})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, PositiveInt

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import Activation, Norm, ParallelMLP
from ..schema import DatasetSpec, StrictModel
from .backbones import BackboneConfig, BackboneKind, build_backbone
from .base import MDMTModel, ModelOutput, register

__all__ = ["SharedBottomConfig", "SharedBottom"]


class SharedBottomConfig(StrictModel):
    """Config of ``sharedbottom``.

    Attributes:
        backbone: the shared bottom H (``none``, ``mlp``, ``dcnv2``, ``deepfm``).
        backbone_params: its settings (default: one hidden layer of 64).
        tower_hidden: hidden widths of each task tower (a final Linear -> 1 follows).
        dropout, act: of the tower hidden layers.
        norm: normalisation of every hidden layer (``none``, ``layernorm``, ``batchnorm``).
    """

    backbone: BackboneKind = "mlp"
    backbone_params: BackboneConfig = BackboneConfig()
    tower_hidden: list[PositiveInt] = Field(default_factory=lambda: [32])
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"
    norm: Norm = "none"


@register("sharedbottom", paper="Caruana, Machine Learning 1997 (multi-task shared bottom)")
class SharedBottom(MDMTModel):
    """Shared bottom H and one tower per task.

    Shapes: ``x`` ``[B, input_dim]`` -> ``h`` ``[B, H]`` -> towers ``[B, T, 1]`` -> logits ``{t: [B]}``.
    """

    config_class = SharedBottomConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: SharedBottomConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        self.towers = ParallelMLP(self.backbone.out_dim, cfg.tower_hidden, self.num_tasks, 1, cfg.dropout, cfg.act, cfg.norm)

    def forward(self, batch: Batch) -> ModelOutput:
        h = self.backbone.embed(batch, self.embeddings)  # shared bottom: [B, H]
        z = self.towers(h)[..., 0]  # per-task towers: [B, T]
        return ModelOutput({name: z[:, t] for t, name in enumerate(self.task_names)})
