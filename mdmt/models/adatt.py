"""AdaTT: Adaptive Task-to-Task Fusion Network (Li et al., KDD 2023), and AdaTT-sp.

``L`` fusion levels. At level ``l`` task ``t`` owns ``m`` task-specific experts that read its
fused output of the previous level ``x_t^{l-1}`` (``x^0`` = the input); AdaTT also has ``m_s``
shared experts reading the shared path ``x_s^{l-1}``. Let ``E^l`` stack the outputs of every
expert of the level (all tasks', then the shared ones) and ``E_t^l`` task ``t``'s own::

    w_t^l(x)   = softmax(W_t^l x_t^{l-1})                  # adaptive task-to-task fusion gate
    g_t^l(x)   = v_tᵀ E_t^l     (= E_t^l when m = 1)        # NAS-free residual of the task's own experts
    x_t^l      = w_t^l(x)ᵀ E^l + g_t^l(x)                  # task t's fusion output
    x_s^l      = softmax(W_s^l x_s^{l-1})ᵀ E^l             # shared path (AdaTT, levels < L)
    y_t        = tower_t(x_t^L)                            # task tower -> logit

``adatt-sp`` is the variant without shared experts (the paper's AdaTT-sp): ``E^l`` holds only the
task-specific experts and there is no shared path.

Example::

    model = build_model("adatt", spec, feature_map, {"num_levels": 2, "specific_experts": 1, "shared_experts": 1})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import Tensor, nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import Activation, Gate, Norm, ParallelMLP
from ..schema import DatasetSpec, StrictModel
from .backbones import BackboneConfig, BackboneKind, build_backbone
from .base import MDMTModel, ModelOutput, register

__all__ = ["AdaTTConfig", "AdaTTSPConfig", "AdaTTLevel", "AdaTT", "AdaTTSP"]


class AdaTTSPConfig(StrictModel):
    """Config of ``adatt-sp``.

    Attributes:
        backbone, backbone_params: what the first level reads (``none`` = the flat input).
        num_levels: ``L`` fusion levels.
        specific_experts: ``m``, task-specific experts per task and level.
        expert_hidden: widths of each expert MLP (its output is the last width).
        tower_hidden: hidden widths of each task tower (a final Linear -> 1 follows).
        dropout, act: of the expert and tower hidden layers.
        norm: normalisation of every hidden layer (``none``, ``layernorm``, ``batchnorm``).
    """

    backbone: BackboneKind = "none"
    backbone_params: BackboneConfig = BackboneConfig()
    num_levels: PositiveInt = 2
    specific_experts: PositiveInt = 1
    expert_hidden: list[PositiveInt] = Field(default_factory=lambda: [64], min_length=1)
    tower_hidden: list[PositiveInt] = Field(default_factory=lambda: [32])
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"
    norm: Norm = "none"


class AdaTTConfig(AdaTTSPConfig):
    """Config of ``adatt``: that of ``adatt-sp`` plus ``shared_experts`` (``m_s``) per level."""

    shared_experts: NonNegativeInt = 1


class AdaTTLevel(nn.Module):
    """One fusion level. Experts are laid out task by task (``t``: ``[t·m, (t+1)·m)``), then shared.

    Shapes: input ``[B, in]`` at the first level, else ``[B, T (+1), in]`` (task paths, then the
    shared path); output ``[B, T (+1), He]`` (no shared path at the last level or without shared experts).
    """

    def __init__(self, in_dim: int, num_tasks: int, specific: int, shared: int, hidden: list[int], last: bool,
                 dropout: float = 0.0, act: str = "relu", norm: Norm = "none") -> None:
        super().__init__()
        T, m, s = num_tasks, specific, shared
        self.num_tasks, self.specific = T, m
        self.experts = ParallelMLP(in_dim, hidden, T * m + s, dropout=dropout, act=act, norm=norm)
        self.out_dim = self.experts.out_dim
        self.task_gates = Gate(in_dim, T * m + s, num_gates=T)  # w_t over every expert of the level
        self.shared_gate = Gate(in_dim, T * m + s, num_gates=1) if (s > 0 and not last) else None
        # v_t: weights of task t's own experts in the residual (fixed to 1 when m = 1)
        self.residual = nn.Parameter(torch.ones(T, m)) if m > 1 else None
        group = torch.cat([torch.arange(T).repeat_interleave(m), torch.full((s,), T)])
        self.register_buffer("expert_group", group, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        first = x.dim() == 2
        B, T, m = x.shape[0], self.num_tasks, self.specific
        e = self.experts(x if first else x.index_select(1, self.expert_group))  # E^l: [B, T·m + s, He]
        task_in = x if first else x[:, :T]
        fused = self.task_gates(task_in, e)  # w_t^lᵀ E^l: [B, T, He]
        own = e[:, : T * m].view(B, T, m, -1)  # E_t^l
        if self.residual is None:
            fused = fused + own[:, :, 0]  # g_t = E_t (m = 1)
        else:
            fused = fused + torch.einsum("tm,btmh->bth", self.residual, own)  # g_t = v_tᵀ E_t
        if self.shared_gate is None:
            return fused
        shared_in = x if first else x[:, T:]
        return torch.cat([fused, self.shared_gate(shared_in, e)], dim=1)  # + x_s^l


@register("adatt", paper="Li et al., KDD 2023")
class AdaTT(MDMTModel):
    """Adaptive task-to-task fusion with task-specific and shared experts and a NAS-free residual.

    Shapes: ``x`` ``[B, H]`` -> levels ``[B, T (+1), He]`` -> towers ``[B, T, 1]`` -> logits ``{t: [B]}``.
    """

    config_class: ClassVar[type[StrictModel]] = AdaTTConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: AdaTTSPConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        shared = getattr(cfg, "shared_experts", 0)
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        levels, d = [], self.backbone.out_dim
        for j in range(cfg.num_levels):
            level = AdaTTLevel(d, self.num_tasks, cfg.specific_experts, shared, cfg.expert_hidden,
                               last=j == cfg.num_levels - 1, dropout=cfg.dropout, act=cfg.act, norm=cfg.norm)
            levels.append(level)
            d = level.out_dim
        self.levels = nn.ModuleList(levels)
        self.towers = ParallelMLP(d, cfg.tower_hidden, self.num_tasks, 1, cfg.dropout, cfg.act, cfg.norm)

    def forward(self, batch: Batch) -> ModelOutput:
        x = self.backbone.embed(batch, self.embeddings)  # x^0: [B, H]
        for level in self.levels:
            x = level(x)  # fusion level l
        z = self.towers(x[:, : self.num_tasks])[..., 0]  # y_t = tower_t(x_t^L): [B, T]
        return ModelOutput({name: z[:, t] for t, name in enumerate(self.task_names)})


@register("adatt-sp", paper="Li et al., KDD 2023")
class AdaTTSP(AdaTT):
    """AdaTT-sp: adaptive task-to-task fusion of task-specific experts only (no shared experts)."""

    config_class = AdaTTSPConfig
