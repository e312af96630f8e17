"""MMoE: Multi-gate Mixture-of-Experts (Ma et al., KDD 2018).

``E`` experts ``f_i`` read the shared input; each task ``k`` has its own softmax gate ``g^k``
over the experts and its own tower ``h^k``::

    x       = H(batch)                              # input (a backbone; identity by default)
    g^k(x)  = softmax(W_gk x)                       # gating network of task k: [E]
    f^k(x)  = Σ_i g^k(x)_i f_i(x)                   # task k's mixture of experts
    y_k     = h^k(f^k(x))                           # task tower -> logit

Example::

    model = build_model("mmoe", spec, feature_map, {"num_experts": 4, "expert_hidden": [64]})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, PositiveInt

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import Activation, Gate, Norm, ParallelMLP
from ..schema import DatasetSpec, StrictModel
from .backbones import BackboneConfig, BackboneKind, build_backbone
from .base import MDMTModel, ModelOutput, register

__all__ = ["MMoEConfig", "MMoE"]


class MMoEConfig(StrictModel):
    """Config of ``mmoe``.

    Attributes:
        backbone: what the experts and gates read (``none`` = the flat input).
        backbone_params: the backbone's settings.
        num_experts: ``E``.
        expert_hidden: widths of each expert MLP (its output is the last width).
        tower_hidden: hidden widths of each task tower (a final Linear -> 1 follows).
        dropout, act: of the expert and tower hidden layers.
        norm: normalisation of every hidden layer (``none``, ``layernorm``, ``batchnorm``).
    """

    backbone: BackboneKind = "none"
    backbone_params: BackboneConfig = BackboneConfig()
    num_experts: PositiveInt = 4
    expert_hidden: list[PositiveInt] = Field(default_factory=lambda: [64], min_length=1)
    tower_hidden: list[PositiveInt] = Field(default_factory=lambda: [32])
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"
    norm: Norm = "none"


@register("mmoe", paper="Ma et al., KDD 2018")
class MMoE(MDMTModel):
    """Multi-gate Mixture-of-Experts.

    Shapes: ``x`` ``[B, H]`` -> experts ``[B, E, He]`` -> gates ``[B, T, E]`` -> mixtures
    ``[B, T, He]`` -> towers ``[B, T, 1]`` -> logits ``{t: [B]}``.
    """

    config_class = MMoEConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: MMoEConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        d = self.backbone.out_dim
        self.experts = ParallelMLP(d, cfg.expert_hidden, cfg.num_experts, dropout=cfg.dropout, act=cfg.act, norm=cfg.norm)
        self.gates = Gate(d, cfg.num_experts, num_gates=self.num_tasks)
        self.towers = ParallelMLP(self.experts.out_dim, cfg.tower_hidden, self.num_tasks, 1, cfg.dropout, cfg.act, cfg.norm)

    def forward(self, batch: Batch) -> ModelOutput:
        x = self.backbone.embed(batch, self.embeddings)  # [B, H]
        f = self.experts(x)  # expert outputs f_i(x): [B, E, He]
        mixed = self.gates(x, f)  # f^k(x) = Σ_i softmax(W_gk x)_i f_i(x): [B, T, He]
        z = self.towers(mixed)[..., 0]  # y_k = h^k(f^k(x)): [B, T]
        return ModelOutput({name: z[:, t] for t, name in enumerate(self.task_names)})
