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

Implementation: one level's experts (``T·m_k + m_s``) run as one :class:`ParallelMLP`; each
expert's input and each gate's expert set are picked with fixed index buffers.

Example::

    model = build_model("ple", spec, feature_map, {"num_levels": 2, "specific_experts": 1, "shared_experts": 1})
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

__all__ = ["PLEConfig", "CGCLevel", "PLE"]


class PLEConfig(StrictModel):
    """Config of ``ple``.

    Attributes:
        backbone: what the first level reads (``none`` = the flat input).
        backbone_params: the backbone's settings.
        num_levels: ``N`` CGC levels (1 = a single CGC).
        specific_experts: ``m_k``, task-specific experts per task and level.
        shared_experts: ``m_s``, shared experts per level.
        expert_hidden: widths of each expert MLP (its output is the last width).
        tower_hidden: hidden widths of each task tower (a final Linear -> 1 follows).
        dropout, act: of the expert and tower hidden layers.
        norm: normalisation of every hidden layer (``none``, ``layernorm``, ``batchnorm``).
    """

    backbone: BackboneKind = "none"
    backbone_params: BackboneConfig = BackboneConfig()
    num_levels: PositiveInt = 2
    specific_experts: NonNegativeInt = 1
    shared_experts: PositiveInt = 1
    expert_hidden: list[PositiveInt] = Field(default_factory=lambda: [64], min_length=1)
    tower_hidden: list[PositiveInt] = Field(default_factory=lambda: [32])
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"
    norm: Norm = "none"


class CGCLevel(nn.Module):
    """One CGC level of PLE.

    Experts are laid out task by task (task ``k``: ``[k·m_k, (k+1)·m_k)``), then the shared ones.

    Shapes:
        input: ``[B, in]`` at the first level (every expert and gate reads ``x``), else
        ``[B, T+1, in]`` = ``(g^{1,j-1}, ..., g^{T,j-1}, g^{s,j-1})``.
        output: ``[B, T+1, He]`` (task outputs, then the shared one), or ``[B, T, He]`` at the last level.
    """

    def __init__(
        self,
        in_dim: int,
        num_tasks: int,
        specific: int,
        shared: int,
        hidden: list[int],
        last: bool,
        dropout: float = 0.0,
        act: str = "relu",
        norm: Norm = "none",
    ) -> None:
        super().__init__()
        T, m, s = num_tasks, specific, shared
        self.num_tasks, self.last = T, last
        self.experts = ParallelMLP(in_dim, hidden, T * m + s, dropout=dropout, act=act, norm=norm)
        self.out_dim = self.experts.out_dim
        self.task_gates = Gate(in_dim, m + s, num_gates=T)
        self.shared_gate = None if last else Gate(in_dim, T * m + s, num_gates=1)
        # which input each expert reads: its task's output (0..T-1) or the shared output (T)
        group = torch.cat([torch.arange(T).repeat_interleave(m), torch.full((s,), T)])
        # S^k: the experts task k's gate fuses (its own, then the shared ones): [T, m + s]
        own = torch.arange(T).unsqueeze(1) * m + torch.arange(m).unsqueeze(0)
        selected = torch.cat([own, (T * m + torch.arange(s)).unsqueeze(0).expand(T, s)], dim=1)
        self.register_buffer("expert_group", group, persistent=False)
        self.register_buffer("task_experts", selected, persistent=False)

    def forward(self, g: Tensor) -> Tensor:
        first = g.dim() == 2
        # index_select (backward: a scatter-add) rather than advanced indexing (an index_put)
        e = self.experts(g if first else g.index_select(1, self.expert_group))  # level j's experts: [B, E, He]
        task_sel = g if first else g[:, : self.num_tasks]  # g^{k,j-1}: [B, in] or [B, T, in]
        sel = e.index_select(1, self.task_experts.reshape(-1)).view(e.shape[0], *self.task_experts.shape, -1)
        out = self.task_gates(task_sel, sel)  # g^{k,j} = w^{k,j} S^{k,j}: [B, T, He]
        if self.shared_gate is None:
            return out
        shared_sel = g if first else g[:, self.num_tasks :]  # g^{s,j-1}
        shared = self.shared_gate(shared_sel, e)  # g^{s,j} over all experts: [B, 1, He]
        return torch.cat([out, shared], dim=1)


@register("ple", paper="Tang et al., RecSys 2020")
class PLE(MDMTModel):
    """Progressive Layered Extraction: ``num_levels`` CGC levels and one tower per task.

    Shapes: ``x`` ``[B, H]`` -> levels ``[B, T+1, He]`` ... -> last ``[B, T, He]`` -> towers
    ``[B, T, 1]`` -> logits ``{t: [B]}``.
    """

    config_class = PLEConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: PLEConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        levels, d = [], self.backbone.out_dim
        for j in range(cfg.num_levels):
            level = CGCLevel(
                d, self.num_tasks, cfg.specific_experts, cfg.shared_experts, cfg.expert_hidden,
                last=j == cfg.num_levels - 1, dropout=cfg.dropout, act=cfg.act, norm=cfg.norm,
            )
            levels.append(level)
            d = level.out_dim
        self.levels = nn.ModuleList(levels)
        self.towers = ParallelMLP(d, cfg.tower_hidden, self.num_tasks, 1, cfg.dropout, cfg.act, cfg.norm)

    def forward(self, batch: Batch) -> ModelOutput:
        g = self.backbone.embed(batch, self.embeddings)  # g^{k,0} = g^{s,0} = x: [B, H]
        for level in self.levels:
            g = level(g)  # CGC level j
        z = self.towers(g)[..., 0]  # y^k = t^k(g^{k,N}): [B, T]
        return ModelOutput({name: z[:, t] for t, name in enumerate(self.task_names)})
