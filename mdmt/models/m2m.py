"""M2M: multi-scenario multi-task meta learning (Zhang et al., CIKM 2022, "Leaving No One Behind").

A **meta unit** turns the scenario (domain) knowledge ``S`` into the weights of a small network:
every layer ``i`` has ``W_i = Reshape(V_i S + b_V)`` and ``b_i = U_i S + b_U``, and computes
``h_i = σ(W_i h_{i-1} + b_i)``. With the input ``x``, ``K`` experts ``E_k`` and a learned task
embedding ``T_t``::

    E_k      = expert_k(x)                                     # expert view representation
    S        = emb(scenario)                                   # scenario knowledge
    a_{t,k}  = vᵀ MetaUnit_att([E_k ‖ T_t]; S)                 # meta attention module
    R_t      = Σ_k softmax_k(a_{t,k}) E_k
    L_t^0    = R_t,  L_t^j = σ(MetaUnit_t^j(L_t^{j-1}; S)) + L_t^{j-1}   # meta tower module (residual)
    y_t      = w_tᵀ L_t^J + c_t                                # logit; ŷ_t = sigmoid(y_t) outside

Here the scenario knowledge is the embedding of the domain id, so each meta unit generates one
weight set per domain; every row is then routed through its own domain's generated weights with
segment GEMMs (:class:`~mdmt.layers.DomainSegments`), never through another domain's. The
paper's experts are Transformer layers over advertiser sequences; here they are MLPs over the
shared input (a backbone can be put below them).

Example::

    model = build_model("m2m", spec, feature_map, {"num_experts": 4, "expert_hidden": [64]})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import Activation, DomainSegments, Norm, ParallelMLP, activation, segment_mm
from ..schema import DatasetSpec, StrictModel
from .backbones import BackboneConfig, BackboneKind, build_backbone
from .base import MDMTModel, ModelOutput, register

__all__ = ["M2MConfig", "MetaLinear", "M2M"]


class M2MConfig(StrictModel):
    """Config of ``m2m``.

    Attributes:
        backbone, backbone_params: what the experts read (``none`` = the flat input).
        num_experts: ``K``.
        expert_hidden: widths of each expert MLP (its output width ``d`` is the last).
        scenario_dim: width of the scenario knowledge ``S``.
        task_dim: width of the task embeddings ``T_t``.
        attention_dim: width of the meta attention unit.
        tower_layers: ``J`` residual meta layers per task tower (width ``d``).
        act: ``σ`` of the experts and meta units.
        norm: normalisation of the expert hidden layers (``none``, ``layernorm``, ``batchnorm``).
    """

    backbone: BackboneKind = "none"
    backbone_params: BackboneConfig = BackboneConfig()
    num_experts: PositiveInt = 4
    expert_hidden: list[PositiveInt] = Field(default_factory=lambda: [64], min_length=1)
    scenario_dim: PositiveInt = 16
    task_dim: PositiveInt = 16
    attention_dim: PositiveInt = 32
    tower_layers: PositiveInt = 2
    act: Activation = "relu"
    norm: Norm = "none"


class MetaLinear(nn.Module):
    """The affine part of one meta-unit layer, generated from scenario knowledge.

    ``G`` generated layers at once (e.g. one per task): ``W_g(S) = Reshape(V_g S + b_V,g)``
    ``[in, out]`` and ``b_g(S) = U_g S + b_U,g``. :meth:`weights` takes ``S`` of every domain
    ``[D, s]`` and returns the per-(group, domain) weights ``[G·D, in, out]`` (segment ``g·D + d``)
    and biases ``[G, D, out]``.
    """

    def __init__(self, in_dim: int, out_dim: int, scenario_dim: int, groups: int = 1) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.groups = in_dim, out_dim, groups
        bound = 1.0 / math.sqrt(in_dim)
        self.V = nn.Parameter(torch.empty(groups, scenario_dim, in_dim * out_dim).uniform_(-bound, bound) / math.sqrt(scenario_dim))
        self.bV = nn.Parameter(torch.empty(groups, in_dim * out_dim).uniform_(-bound, bound))
        self.U = nn.Parameter(torch.empty(groups, scenario_dim, out_dim).uniform_(-bound, bound) / math.sqrt(scenario_dim))
        self.bU = nn.Parameter(torch.empty(groups, out_dim).uniform_(-bound, bound))

    def weights(self, s: Tensor) -> tuple[Tensor, Tensor]:
        D = s.shape[0]
        w = torch.einsum("ds,gsk->gdk", s, self.V) + self.bV.unsqueeze(1)  # V S + b_V: [G, D, in·out]
        b = torch.einsum("ds,gso->gdo", s, self.U) + self.bU.unsqueeze(1)  # U S + b_U: [G, D, out]
        return w.reshape(self.groups * D, self.in_dim, self.out_dim), b


@register("m2m", paper="Zhang et al., CIKM 2022")
class M2M(MDMTModel):
    """Experts, a meta attention module and residual meta towers conditioned on the scenario.

    Shapes: ``x`` ``[B, H]`` -> experts ``[B, K, d]`` -> attention ``[B, T, K]`` -> ``R`` ``[B, T, d]``
    -> meta towers ``[B, T, d]`` -> logits ``{t: [B]}``.
    """

    config_class = M2MConfig
    domain_aware: ClassVar[bool] = True

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: M2MConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        T, D = self.num_tasks, self.num_domains
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        self.experts = ParallelMLP(self.backbone.out_dim, cfg.expert_hidden, cfg.num_experts, act=cfg.act, norm=cfg.norm)
        d = self.experts.out_dim
        self.scenario = nn.Embedding(D, cfg.scenario_dim)  # S
        nn.init.normal_(self.scenario.weight, std=1.0)
        self.task_embedding = nn.Parameter(torch.randn(T, cfg.task_dim) * 0.1)  # T_t
        self.att_expert = MetaLinear(d, cfg.attention_dim, cfg.scenario_dim)  # the E_k part of W_att
        self.att_task = MetaLinear(cfg.task_dim, cfg.attention_dim, cfg.scenario_dim)  # the T_t part
        self.att_v = nn.Parameter(torch.empty(cfg.attention_dim).uniform_(-0.1, 0.1))  # v
        self.tower = nn.ModuleList([MetaLinear(d, d, cfg.scenario_dim, groups=T) for _ in range(cfg.tower_layers)])
        self.act = activation(cfg.act)
        self.out = ParallelMLP(d, [], T, 1)  # w_t, c_t

    def forward(self, batch: Batch) -> ModelOutput:
        T, D, K = self.num_tasks, self.num_domains, self.cfg.num_experts
        seg = DomainSegments(batch.domain, D)
        x = seg.sort(self.backbone.embed(batch, self.embeddings))  # rows sorted by domain: [B, H]
        B, dom = x.shape[0], seg.domain
        s = self.scenario.weight  # S of every domain: [D, s]
        e = self.experts(x)  # E_k: [B, K, d]
        # meta attention: σ(W(S)[E_k ‖ T_t] + b(S)) = σ(W_E(S) E_k + W_T(S) T_t + b(S))
        we, be = self.att_expert.weights(s)
        wt, bt = self.att_task.weights(s)
        ek = segment_mm(e.reshape(B * K, -1), we, seg.offsets * K).view(B, K, -1)  # [B, K, A]
        tt = torch.einsum("tj,dja->dta", self.task_embedding, wt) + (be + bt).transpose(0, 1)  # [D, T, A]
        a = self.act(ek.unsqueeze(1) + tt.index_select(0, dom).unsqueeze(2))  # [B, T, K, A]
        att = torch.softmax(a @ self.att_v, dim=-1)  # softmax_k vᵀ MetaUnit(...): [B, T, K]
        r = torch.bmm(att, e)  # R_t: [B, T, d]
        # meta towers: L^j = σ(MetaUnit_t^j(L^{j-1}; S)) + L^{j-1}, rows of task t in segment t·D + d
        offsets = seg.repeat_offsets(T)
        layer = r.transpose(0, 1).reshape(T * B, -1)  # [T·B, d]
        for meta in self.tower:
            w, b = meta.weights(s)
            bias = b.index_select(1, dom).reshape(T * B, -1)
            layer = self.act(segment_mm(layer, w, offsets) + bias) + layer
        z = self.out(layer.view(T, B, -1).transpose(0, 1))[..., 0]  # y_t = w_tᵀ L_t + c_t: [B, T]
        z = seg.unsort(z)
        return ModelOutput({name: z[:, t] for t, name in enumerate(self.task_names)})
