"""AITM: Adaptive Information Transfer Multi-task framework (Xi et al., KDD 2021).

The tasks form a sequence (the schema's task order, e.g. click -> like): task ``t`` receives
information transferred from task ``t-1``. With ``x`` the shared input::

    q_t   = f_t(x)                                       # task t's tower representation
    p_t-1 = g_{t-1}(z_{t-1})                             # information transferred from task t-1
    ŵ_u   = <h1(u), h2(u)> / sqrt(k),   u ∈ {p_{t-1}, q_t}
    w_u   = exp(ŵ_u) / Σ_u' exp(ŵ_u')                     # attention over the two inputs
    z_t   = Σ_u w_u h3(u)             (z_1 = q_1)         # the AIT module
    y_t   = MLP_t(z_t)                                   # logit; ŷ_t = sigmoid(y_t) outside

``h1, h2, h3`` are linear maps to ``k`` dimensions, ``g`` a one-layer MLP. The behavioural
expectation calibrator adds ``α · Σ_{t≥2} mean(max(ŷ_t − ŷ_{t−1}, 0))`` to the loss
(``ModelOutput.aux_loss``): a later step in the sequence should not be likelier than an earlier one.

Example::

    model = build_model("aitm", spec, feature_map, {"tower_hidden": [64, 32], "calibrator_weight": 0.6})
    out = model(batch)                    # out.logits {task: [B]}, out.aux_loss: the calibrator
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field, PositiveInt
from torch import nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import Activation, Norm, ParallelMLP, activation
from ..schema import DatasetSpec, StrictModel
from .backbones import BackboneConfig, BackboneKind, build_backbone
from .base import MDMTModel, ModelOutput, register

__all__ = ["AITMConfig", "AITM"]


class AITMConfig(StrictModel):
    """Config of ``aitm``.

    Attributes:
        backbone, backbone_params: what the towers read (``none`` = the flat input).
        tower_hidden: widths of each task's ``f_t`` (its output, width ``k``, is the last width).
        head_hidden: hidden widths of each task's output MLP (a final Linear -> 1 follows).
        calibrator_weight: ``α`` of the behavioural expectation calibrator (0 = off).
        dropout, act: of the hidden layers.
        norm: normalisation of every hidden layer of the towers and heads (``none``, ``layernorm``, ``batchnorm``).
    """

    backbone: BackboneKind = "none"
    backbone_params: BackboneConfig = BackboneConfig()
    tower_hidden: list[PositiveInt] = Field(default_factory=lambda: [64, 32], min_length=1)
    head_hidden: list[PositiveInt] = Field(default_factory=list)
    calibrator_weight: float = Field(default=0.6, ge=0.0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"
    norm: Norm = "none"


@register("aitm", paper="Xi et al., KDD 2021")
class AITM(MDMTModel):
    """Sequential tasks with attention-based information transfer from each task to the next.

    Shapes: ``x`` ``[B, H]`` -> ``q`` ``[B, T, k]`` -> ``z`` ``[B, T, k]`` -> logits ``{t: [B]}``.
    """

    config_class = AITMConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: AITMConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        T = self.num_tasks
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        self.towers = ParallelMLP(self.backbone.out_dim, cfg.tower_hidden, T, dropout=cfg.dropout, act=cfg.act,
                                  norm=cfg.norm)
        k = self.towers.out_dim
        self.k = k
        n = max(T - 1, 1)
        self.transfer = nn.ModuleList([nn.Sequential(nn.Linear(k, k), activation(cfg.act)) for _ in range(n)])  # g
        self.h1 = nn.ModuleList([nn.Linear(k, k) for _ in range(n)])
        self.h2 = nn.ModuleList([nn.Linear(k, k) for _ in range(n)])
        self.h3 = nn.ModuleList([nn.Linear(k, k) for _ in range(n)])
        self.heads = ParallelMLP(k, cfg.head_hidden, T, 1, cfg.dropout, cfg.act, cfg.norm)

    def forward(self, batch: Batch) -> ModelOutput:
        x = self.backbone.embed(batch, self.embeddings)  # [B, H]
        q = self.towers(x)  # q_t = f_t(x): [B, T, k]
        z = [q[:, 0]]  # z_1 = q_1
        for t in range(1, self.num_tasks):  # the task sequence (a fixed, small T)
            i = t - 1
            u = torch.stack([self.transfer[i](z[-1]), q[:, t]], dim=1)  # u ∈ {p_{t-1}, q_t}: [B, 2, k]
            score = (self.h1[i](u) * self.h2[i](u)).sum(-1) / math.sqrt(self.k)  # ŵ_u: [B, 2]
            w = torch.softmax(score, dim=1)  # w_u
            z.append((w.unsqueeze(-1) * self.h3[i](u)).sum(1))  # z_t = Σ_u w_u h3(u)
        logits = self.heads(torch.stack(z, dim=1))[..., 0]  # [B, T]
        aux = None
        if self.cfg.calibrator_weight > 0 and self.num_tasks > 1:
            p = torch.sigmoid(logits)
            aux = self.cfg.calibrator_weight * torch.relu(p[:, 1:] - p[:, :-1]).mean(0).sum()  # calibrator
        return ModelOutput({name: logits[:, t] for t, name in enumerate(self.task_names)}, aux_loss=aux)
