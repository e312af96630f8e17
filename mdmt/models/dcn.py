"""DCN: Deep & Cross Network (Wang, Fu, Fu and Wang, ADKDD 2017), multi-task.

The stacked input ``x_0`` (embeddings and dense features, Eq. 1–2) feeds a cross network and a
deep network in parallel::

    x_{l+1} = x_0 x_lᵀ w_l + b_l + x_l                 # Eq. 3: cross layer, w_l, b_l ∈ R^d
    h_{l+1} = ReLU(W_l h_l + b_l),   h_0 = x_0         # Eq. 4: deep layer
    p       = sigmoid([x_L, h_L] w_logits + b_logits)  # Eq. 5: combination layer

Multi-task: the cross and deep networks are shared; each task has its own combination layer.
With ``tower_hidden: []`` it is Eq. 5's single linear layer per task; by default (as for the
other baselines here) a small tower ``[32]`` precedes the logit. The sigmoid is applied outside.
It is the ``dcn`` backbone (:class:`~mdmt.models.backbones.DCNBackbone`) with per-task towers.

Example::

    model = build_model("dcn", spec, feature_map, {"cross_layers": 3, "deep_hidden": [64]})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, PositiveInt

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import Activation, Norm, ParallelMLP
from ..schema import DatasetSpec, StrictModel
from .backbones import DCNBackbone
from .base import MDMTModel, ModelOutput, register

__all__ = ["DCNConfig", "DCN"]


class DCNConfig(StrictModel):
    """Config of ``dcn``.

    Attributes:
        cross_layers: ``L`` cross layers (Eq. 3).
        deep_hidden: widths of the deep network (Eq. 4).
        tower_hidden: hidden widths of each task's combination tower (``[]`` = Eq. 5 exactly).
        dropout, act: of the hidden layers.
        norm: normalisation of every hidden layer (``none``, ``layernorm``, ``batchnorm``).
    """

    cross_layers: PositiveInt = 3
    deep_hidden: list[PositiveInt] = Field(default_factory=lambda: [64])
    tower_hidden: list[PositiveInt] = Field(default_factory=lambda: [32])
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"
    norm: Norm = "none"


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
        self.body = DCNBackbone(embeddings.input_dim, cfg.deep_hidden, cfg.cross_layers, cfg.dropout, cfg.act, cfg.norm)
        self.towers = ParallelMLP(self.body.out_dim, cfg.tower_hidden, self.num_tasks, 1, cfg.dropout, cfg.act, cfg.norm)

    def forward(self, batch: Batch) -> ModelOutput:
        x0 = self.embeddings.flat_input(batch)  # Eq. 1–2: x_0 = [x_embed,1, ..., x_embed,k, x_dense]
        h = self.body(x0)  # Eq. 3 ∥ Eq. 4: [x_L, h_L]
        z = self.towers(h)[..., 0]  # Eq. 5 per task: [B, T]
        return ModelOutput({name: z[:, t] for t, name in enumerate(self.task_names)})
