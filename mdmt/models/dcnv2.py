"""DCN-V2: Deep & Cross Network V2 (Wang et al., WWW 2021), multi-task.

The cross network builds explicit feature crosses of bounded degree from ``x_0`` (the flat
input)::

    x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l                          # cross layer, W_l [d, d]
    W_l     = U_l V_lᵀ                                             # low rank (low_rank = r)
    x_{l+1} = Σ_i G_i(x_l) E_i(x_l) + x_l,                         # mixture of low-rank experts
    E_i(x_l)= x_0 ⊙ (U_l^i g(C_l^i g(V_l^iᵀ x_l)) + b_l)           # (cross_experts > 1, g = tanh)

and is combined with a deep MLP, **stacked** (``h = MLP(x_L)``) or **parallel**
(``h = x_L ⊕ MLP(x_0)``). Multi-task: one tower per task on ``h``.

Example::

    model = build_model("dcnv2", spec, feature_map, {"cross_layers": 3, "low_rank": 16})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveInt, model_validator

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import Activation, Norm, ParallelMLP
from ..schema import DatasetSpec, StrictModel
from .backbones import DCNv2Backbone
from .base import MDMTModel, ModelOutput, register

__all__ = ["DCNv2Config", "DCNv2"]


class DCNv2Config(StrictModel):
    """Config of ``dcnv2``.

    Attributes:
        cross_layers: ``L`` cross layers.
        low_rank: rank ``r`` of ``W_l = U_l V_lᵀ``; None = full-rank ``W_l``.
        cross_experts: low-rank experts per cross layer (> 1 needs ``low_rank``).
        structure: ``stacked`` (cross then deep) or ``parallel`` (cross ⊕ deep).
        deep_hidden: widths of the deep MLP.
        tower_hidden: hidden widths of each task tower (a final Linear -> 1 follows).
        dropout, act: of the hidden layers.
        norm: normalisation of every hidden layer (``none``, ``layernorm``, ``batchnorm``).
    """

    cross_layers: PositiveInt = 3
    low_rank: PositiveInt | None = None
    cross_experts: PositiveInt = 1
    structure: Literal["stacked", "parallel"] = "parallel"
    deep_hidden: list[PositiveInt] = Field(default_factory=lambda: [64])
    tower_hidden: list[PositiveInt] = Field(default_factory=lambda: [32])
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"
    norm: Norm = "none"

    @model_validator(mode="after")
    def _check(self) -> "DCNv2Config":
        if self.cross_experts > 1 and self.low_rank is None:
            raise ValueError("cross_experts > 1 (a mixture of low-rank experts) needs low_rank")
        return self


@register("dcnv2", paper="Wang et al., WWW 2021")
class DCNv2(MDMTModel):
    """Cross network + deep MLP (stacked or parallel) and one tower per task.

    Shapes: ``x_0`` ``[B, d]`` -> ``h`` ``[B, H]`` (``H = deep_hidden[-1]`` stacked,
    ``d + deep_hidden[-1]`` parallel) -> towers ``[B, T, 1]`` -> logits ``{t: [B]}``.
    """

    config_class = DCNv2Config
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: DCNv2Config) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.body = DCNv2Backbone(
            embeddings.input_dim, cfg.deep_hidden, cfg.cross_layers, cfg.low_rank, cfg.cross_experts,
            cfg.structure, cfg.dropout, cfg.act, cfg.norm,
        )
        self.towers = ParallelMLP(self.body.out_dim, cfg.tower_hidden, self.num_tasks, 1, cfg.dropout, cfg.act, cfg.norm)

    def forward(self, batch: Batch) -> ModelOutput:
        x0 = self.embeddings.flat_input(batch)  # x_0: [B, d]
        h = self.body(x0)  # cross layers and deep MLP, stacked or parallel: [B, H]
        z = self.towers(h)[..., 0]  # per-task towers: [B, T]
        return ModelOutput({name: z[:, t] for t, name in enumerate(self.task_names)})
