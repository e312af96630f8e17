"""M3oE: Multi-Domain Multi-Task Mixture-of-Experts (Zhang et al., SIGIR 2024).

For a row ``x_d`` of domain ``d`` and each task ``t`` (the paper's section 2)::

    f_DR(x_d) = (W_d ⊙ W_sh) x_d + b_d + b_sh                               # Eq. 1
    h_d       = W_c f_DR(x_d) + b_c + f_DA(x_d)                             # Eq. 2
    f_E^e(h)  = ReLU(LayerNorm(W_e h + b_e))          (per expert layer)    # Eq. 3
    S(h_d)    = softmax(f_gate^{d,t}(h_d)) · [f_E^1(h_d) .. f_E^N(h_d)]     # Eq. 4 (D×T gates)
    D(h_d)    = β_d f_E^d(h_d) + (1 − β_d)/(D − 1) Σ_{d'≠d} f_E^{d'}(h_d)   # Eq. 5 (domain experts)
    T(h_d)    = β_t f_E^t(h_d) + (1 − β_t)/(T − 1) Σ_{t'≠t} f_E^{t'}(h_d)   # Eq. 6 (task experts)
    h̄_{d,t}   = S(h_d) + α_d D(h_d) + α_t T(h_d)                            # Eq. 7
    logit     = W²_{d,t} ReLU(W¹_{d,t} h̄_{d,t} + b¹_{d,t}) + b²_{d,t}       # Eq. 8 (D×T towers)
    ŷ_{d,t}   = sigmoid(logit)                        (outside the model)   # Eq. 9
    w         = sigmoid(e_w),  w ∈ {α_d, α_t, β_d, β_t}                     # Eq. 10

Eq. 7 as printed pairs ``α_d`` with the task module; the text of §2.4.4 ("α_d controls the overall
weight of the domain expert module") and the released code pair ``α_d`` with the domain module,
as done here. The architecture weights ``e_w`` are optimised bi-level (Eq. 11): they form their
own optimizer group (``step_on="valid"``), stepped by the trainer on held-out training rows
(``train.arch_holdout``, cadence ``train.arch_every``) and never by the main optimizer.

**Every row runs through its own domain's weights only.** The rows are sorted by domain once
(:class:`~mdmt.layers.DomainSegments`); the per-domain maps of Eq. 1, the D×T gates of Eq. 4 and
the D×T towers of Eq. 8 are segment GEMMs (:func:`~mdmt.layers.segment_mm`), so no FLOP is spent
on another domain's parameters and ``forward`` has no loop over domains. The domain experts of
Eq. 5 do read every row: the equation feeds ``h_d`` to every domain's expert.

Table 3 ablations (config switches): ``automl: false`` (α, β fixed at ``fixed_weight`` = 0.5),
``fusion: concat`` (``[S; α_d D; α_t T]`` concatenated instead of added), ``fusion: gated``
(softmax gates instead of α and β: over the domain experts, over the task experts and over the
modules), ``domain_module: false``, ``task_module: false`` (both: neither).

Defaults: the paper's MovieLens setup (§3.3: one-layer experts, one shared expert, two-layer
towers) with the released code's widths (f_DR 512, h 256, experts 64, towers 64, α/β logits
initialised at 1, architecture learning rate 1e-3).

Example::

    model = build_model("m3oe", spec, feature_map, {"num_shared_experts": 1})
    logits = model(batch).logits          # {task: [B]}
    model.report_values()                 # {"alpha_d": 0.73, "alpha_t": 0.73, "beta_d": ..., "beta_t": ...}
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor, nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import DomainSegments, StarLinear, _linear_init_, segment_linear
from ..schema import DatasetSpec, StrictModel
from .base import MDMTModel, ModelOutput, OptimGroup, register

__all__ = ["M3oEConfig", "M3oE", "ARCH_WEIGHTS"]

#: the four AutoML-optimised fusion weights (Eq. 10), in this order
ARCH_WEIGHTS = ("alpha_d", "alpha_t", "beta_d", "beta_t")


class M3oEConfig(StrictModel):
    """Config of ``m3oe``.

    Attributes:
        dr_dim: width of the domain representation ``f_DR`` (Eq. 1).
        hidden_dim: width of ``h_d`` (Eq. 2): the output of ``W_c`` and of ``f_DA``.
        da_hidden: hidden widths of ``f_DA`` before its last layer to ``hidden_dim``; every
            layer is Linear -> LayerNorm -> ReLU.
        num_shared_experts: ``N`` shared experts (Eq. 3-4).
        expert_hidden: widths of every expert's layers (Eq. 3: Linear -> LayerNorm -> ReLU each).
        tower_hidden: width of the hidden layer of each of the D×T towers (Eq. 8).
        fusion: ``weighted`` (Eq. 5-7), ``concat`` or ``gated`` (Table 3 ablations).
        domain_module, task_module: keep the domain / task expert module (Table 3 ablations).
        automl: learn α, β (Eq. 10-11); false fixes them at ``fixed_weight``.
        fixed_weight: α and β without AutoML.
        init_logit: initial ``e_w`` of the learned weights (``sigmoid(1) ≈ 0.73``).
        arch_lr: learning rate of the architecture optimizer; ``arch_optimizer`` its kind.
    """

    dr_dim: PositiveInt = 512
    hidden_dim: PositiveInt = 256
    da_hidden: list[PositiveInt] = Field(default_factory=list)
    num_shared_experts: PositiveInt = 1
    expert_hidden: list[PositiveInt] = Field(default_factory=lambda: [64], min_length=1)
    tower_hidden: PositiveInt = 64
    fusion: Literal["weighted", "concat", "gated"] = "weighted"
    domain_module: bool = True
    task_module: bool = True
    automl: bool = True
    fixed_weight: float = Field(default=0.5, gt=0.0, lt=1.0)
    init_logit: float = 1.0
    arch_lr: PositiveFloat = 1e-3
    arch_optimizer: Literal["adam", "adamw", "adagrad", "sgd"] = "adam"


class _LayerNormExperts(nn.Module):
    """``K`` experts of Eq. 3 on one input, each layer ``ReLU(LayerNorm(W_e h + b_e))``.

    Shapes: ``h`` ``[B, in]`` -> ``[B, K, out]``. The first layer is one GEMM against
    ``[in, K·width]``; deeper layers are one batched GEMM over the experts.
    """

    def __init__(self, in_dim: int, hidden: list[int], num: int) -> None:
        super().__init__()
        dims = [in_dim, *hidden]
        self.num, self.out_dim = num, dims[-1]
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(num, a, b)) for a, b in zip(dims[:-1], dims[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.empty(num, b)) for b in dims[1:]])
        self.ln_weight = nn.ParameterList([nn.Parameter(torch.ones(num, b)) for b in dims[1:]])
        self.ln_bias = nn.ParameterList([nn.Parameter(torch.zeros(num, b)) for b in dims[1:]])
        for w, b in zip(self.weights, self.biases):
            _linear_init_(w, b, w.shape[1])

    def forward(self, h: Tensor) -> Tensor:
        x = h
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            K, din, dout = w.shape
            if i == 0:  # one shared input: a single GEMM
                x = torch.addmm(b.reshape(-1), x, w.permute(1, 0, 2).reshape(din, K * dout)).view(-1, K, dout)
            else:  # one input per expert: a batched GEMM over the experts
                x = torch.baddbmm(b.unsqueeze(1), x.transpose(0, 1), w).transpose(0, 1)
            # Eq. 3: ReLU(LayerNorm(·)) with expert k's affine γ_k, β_k; the product, then in place the
            # shift and the ReLU (addcmul's backward would spend a full pass scaling by its unit value)
            x = torch.relu_(torch.mul(F.layer_norm(x, (dout,)), self.ln_weight[i]).add_(self.ln_bias[i]))
        return x


@register("m3oe", paper="Zhang et al., SIGIR 2024")
class M3oE(MDMTModel):
    """Multi-domain multi-task mixture of experts with two-level fusion and AutoML fusion weights.

    Shapes (``B`` rows, ``D`` domains, ``T`` tasks, ``N`` shared experts, ``E`` expert width):
    ``x`` ``[B, in]`` -> ``f_DR`` ``[B, dr_dim]`` -> ``h`` ``[B, hidden_dim]`` -> experts
    ``[B, K = N + D + T, E]`` -> ``h̄`` ``[B, T, E]`` = the fusion weights ``[B, T, K]`` (Eq. 4-7,
    :meth:`_fusion_weights`) times the experts (``[B, T, 3E]``, ``[S; α_d D; α_t T]``, with
    ``fusion: concat``) -> towers -> logits ``{t: [B]}``.
    """

    config_class = M3oEConfig
    domain_aware: ClassVar[bool] = True

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: M3oEConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        D, T, N = self.num_domains, self.num_tasks, cfg.num_shared_experts
        in_dim, H = embeddings.input_dim, cfg.hidden_dim
        self.use_domain = cfg.domain_module
        self.use_task = cfg.task_module
        # Eq. 1: W_d ⊙ W_sh, b_d + b_sh (W_d starts at ones: training starts from the shared map)
        self.dr = StarLinear(in_dim, cfg.dr_dim, D)
        # Eq. 2: W_c, b_c and the domain-agnostic network f_DA
        self.w_c = nn.Linear(cfg.dr_dim, H)
        da = [*cfg.da_hidden, H]
        self.f_da = _MLPWithNorm(in_dim, da)
        # Eq. 3: N shared experts, then D domain experts, then T task experts, in one stack
        self.num_domain_experts = D if self.use_domain else 0
        self.num_task_experts = T if self.use_task else 0
        K = N + self.num_domain_experts + self.num_task_experts
        self.experts = _LayerNormExperts(H, cfg.expert_hidden, K)
        E = self.experts.out_dim
        # Eq. 4: D×T softmax gates over the shared experts, as [D, H, T·N] (row's domain only);
        # with one shared expert every gate is the constant 1 and has nothing to learn
        if N > 1:
            self.gate_weight = nn.Parameter(torch.empty(D, H, T * N))
            self.gate_bias = nn.Parameter(torch.empty(D, T * N))
            _linear_init_(self.gate_weight, self.gate_bias, H)
        modules = 1 + int(self.use_domain) + int(self.use_task)
        if cfg.fusion == "gated":  # Table 3 "fully gated": input-dependent softmax gates replace α, β
            if self.use_domain:  # per domain d: a gate over the D domain experts
                self.domain_gate_weight = nn.Parameter(torch.empty(D, H, D))
                self.domain_gate_bias = nn.Parameter(torch.empty(D, D))
                _linear_init_(self.domain_gate_weight, self.domain_gate_bias, H)
            if self.use_task:  # per task t: a gate over the T task experts
                self.task_gate = nn.Linear(H, T * T)
            # per objective (d, t): a gate over the modules
            self.module_gate_weight = nn.Parameter(torch.empty(D, H, T * modules))
            self.module_gate_bias = nn.Parameter(torch.empty(D, T * modules))
            _linear_init_(self.module_gate_weight, self.module_gate_bias, H)
        self.num_modules = modules
        # Eq. 10: e_w for α_d, α_t, β_d, β_t (parameters with AutoML; without, constants fixed_weight)
        if cfg.automl and cfg.fusion != "gated":
            for name in self._used_weights():
                setattr(self, f"arch_{name}", nn.Parameter(torch.full((1,), cfg.init_logit)))
        tower_in = E * modules if cfg.fusion == "concat" else E
        # Eq. 8: D×T towers, segment (t, d) = t·D + d
        self.tower_w1 = nn.Parameter(torch.empty(T * D, tower_in, cfg.tower_hidden))
        self.tower_b1 = nn.Parameter(torch.empty(T * D, cfg.tower_hidden))
        self.tower_w2 = nn.Parameter(torch.empty(T, D, cfg.tower_hidden))
        self.tower_b2 = nn.Parameter(torch.empty(T, D))
        _linear_init_(self.tower_w1, self.tower_b1, tower_in)
        _linear_init_(self.tower_w2, self.tower_b2, cfg.tower_hidden)

    # ---- the architecture weights (Eq. 10) ---------------------------------------------------
    @classmethod
    def has_arch_weights(cls, cfg: M3oEConfig) -> bool:  # type: ignore[override]
        return cfg.automl and cfg.fusion != "gated" and (cfg.domain_module or cfg.task_module)

    def _used_weights(self) -> list[str]:
        """The fusion weights this configuration uses (a removed module takes its α, β along; β_d
        needs two domains or more, β_t two tasks or more)."""
        used = []
        if self.use_domain:
            used += ["alpha_d"] + (["beta_d"] if self.num_domains > 1 else [])
        if self.use_task:
            used += ["alpha_t"] + (["beta_t"] if self.num_tasks > 1 else [])
        return [w for w in ARCH_WEIGHTS if w in used]

    def fusion_weight(self, name: str) -> Tensor:
        """``w = sigmoid(e_w)`` (Eq. 10), or the fixed weight without AutoML: a ``[1]`` tensor."""
        param = getattr(self, f"arch_{name}", None)
        if param is None:
            return torch.full((1,), self.cfg.fixed_weight, device=self.w_c.bias.device)
        return torch.sigmoid(param)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [getattr(self, f"arch_{n}") for n in ARCH_WEIGHTS if hasattr(self, f"arch_{n}")]

    def optim_groups(self) -> list[OptimGroup]:
        arch = self.arch_parameters()
        ids = {id(p) for p in arch}
        groups = [OptimGroup("main", [p for p in self.parameters() if p.requires_grad and id(p) not in ids])]
        if arch:  # Eq. 11: α, β have their own optimizer, stepped on held-out training rows
            groups.append(OptimGroup("arch", arch, optimizer=self.cfg.arch_optimizer, lr=self.cfg.arch_lr,
                                     step_on="valid"))
        return groups

    def report_values(self) -> dict[str, float]:
        if self.cfg.fusion == "gated":
            return {}
        with torch.no_grad():
            return {n: float(self.fusion_weight(n)) for n in self._used_weights()}

    # ---- fusion (Eq. 5-6) ---------------------------------------------------------------------
    def _domain_coefficients(self, dom: Tensor, dtype: torch.dtype) -> Tensor:
        """Eq. 5's weights of the domain experts per row: ``β_d`` on the row's own domain,
        ``(1 − β_d)/(D − 1)`` on every other one -> ``[B, D]`` (``[B, 1]`` of ones when ``D = 1``)."""
        D = self.num_domains
        if D == 1:
            return torch.ones(dom.shape[0], 1, dtype=dtype, device=dom.device)
        beta = self.fusion_weight("beta_d")
        c = (1 - beta) / (D - 1)
        return c + (beta - c) * F.one_hot(dom, D).to(dtype)  # [B, D]

    def _domain_module(self, dom_exp: Tensor, dom: Tensor) -> Tensor:
        """Eq. 5 for every row: ``β_d f^d + (1 − β_d)/(D − 1) Σ_{d'≠d} f^{d'}`` -> ``[B, E]``."""
        return (dom_exp * self._domain_coefficients(dom, dom_exp.dtype).unsqueeze(-1)).sum(1)

    def _task_coefficients(self) -> tuple[Tensor, Tensor]:
        """Eq. 6 as ``c Σ_all f + k f^t``: ``c = (1 − β_t)/(T − 1)`` and ``k = β_t − c``."""
        T = self.num_tasks
        beta = self.fusion_weight("beta_t")
        if T == 1:
            return torch.zeros_like(beta), torch.ones_like(beta)
        c = (1 - beta) / (T - 1)
        return c, beta - c

    def _fusion_weights(self, gate: Tensor | None, dom: Tensor, dtype: torch.dtype) -> Tensor:
        """Eq. 4-7 as the weight of every expert in ``h̄_{d,t}`` -> ``[B, T, K]`` (experts in their
        stack order: shared, domain, task)::

            h̄_{d,t} = Σ_n g^{d,t}_n f^n                                       # S, Eq. 4
                    + α_d (β_d f^d + (1 − β_d)/(D − 1) Σ_{d'≠d} f^{d'})       # α_d D, Eq. 5, 7
                    + α_t (β_t f^t + (1 − β_t)/(T − 1) Σ_{t'≠t} f^{t'})       # α_t T, Eq. 6, 7

        ``gate``: the softmax gates ``[B, T, N]`` (None with one shared expert: its weight is 1).
        """
        B, T = dom.shape[0], self.num_tasks
        parts = [gate if gate is not None else torch.ones(B, T, 1, dtype=dtype, device=dom.device)]  # Eq. 4
        if self.use_domain:  # Eq. 5, times α_d: the same weights for every task
            w_d = self.fusion_weight("alpha_d") * self._domain_coefficients(dom, dtype)  # [B, D]
            parts.append(w_d.unsqueeze(1).expand(B, T, -1))
        if self.use_task:  # Eq. 6, times α_t: c on every task expert, β_t = c + k on the task's own
            c, k = self._task_coefficients()
            eye = torch.eye(T, dtype=dtype, device=dom.device)
            parts.append((self.fusion_weight("alpha_t") * (c + k * eye)).unsqueeze(0).expand(B, T, T))
        return torch.cat(parts, dim=-1)

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, batch: Batch) -> ModelOutput:
        cfg, D, T, N = self.cfg, self.num_domains, self.num_tasks, self.cfg.num_shared_experts
        seg = DomainSegments(batch.domain, D)  # rows sorted by domain, once (ids, before the lookup)
        x = self.embeddings.flat_input(batch.index(seg.order))  # x_d: [B, in]
        B = x.shape[0]
        dom = seg.domain  # [B]
        # Eq. 1: f_DR(x_d) = (W_d ⊙ W_sh) x_d + b_d + b_sh, each row with its own domain's W_d
        w_hat, b_hat = self.dr.domain_weights()
        f_dr = seg.linear(x, w_hat, b_hat)  # [B, dr_dim]
        # Eq. 2: h_d = W_c f_DR(x_d) + b_c + f_DA(x_d)
        h = self.w_c(f_dr) + self.f_da(x)  # [B, H]
        # Eq. 3: every expert on h_d (shared, then domain, then task experts)
        experts = self.experts(h)  # [B, K, E]
        # Eq. 4: the D×T softmax gates over the shared experts, by segment GEMM (one expert: every gate is 1)
        gate = torch.softmax(seg.linear(h, self.gate_weight, self.gate_bias).view(B, T, N), dim=-1) if N > 1 else None
        if cfg.fusion == "weighted":
            # Eq. 4-7: h̄_{d,t} = S + α_d D + α_t T, one weighted sum over the expert stack; its
            # backward gives the experts' gradient as one tensor
            h_bar = torch.bmm(self._fusion_weights(gate, dom, experts.dtype), experts)  # [B, T, E]
        else:
            shared, dom_exp, task_exp = experts.split([N, self.num_domain_experts, self.num_task_experts], dim=1)
            s = torch.bmm(gate, shared) if gate is not None else shared.expand(B, T, shared.shape[-1])  # S: [B, T, E]
            parts = [s]
            if cfg.fusion == "gated":
                mod_g = torch.softmax(seg.linear(h, self.module_gate_weight, self.module_gate_bias)
                                      .view(B, T, self.num_modules), dim=-1)  # [B, T, M]
                if self.use_domain:
                    dg = torch.softmax(seg.linear(h, self.domain_gate_weight, self.domain_gate_bias), dim=-1)
                    parts.append(torch.bmm(dg.unsqueeze(1), dom_exp).expand(B, T, -1))  # [B, T, E]
                if self.use_task:
                    tg = torch.softmax(self.task_gate(h).view(B, T, T), dim=-1)
                    parts.append(torch.bmm(tg, task_exp))  # [B, T, E]
                h_bar = (torch.stack(parts, dim=-1) * mod_g.unsqueeze(2)).sum(-1)  # [B, T, E]
            else:  # Table 3 "concat modules": [S; α_d D; α_t T]
                if self.use_domain:
                    d_mod = self._domain_module(dom_exp, dom)  # Eq. 5: [B, E]
                    parts.append(self.fusion_weight("alpha_d") * d_mod.unsqueeze(1).expand(B, T, -1))
                if self.use_task:
                    c, k = self._task_coefficients()  # Eq. 6
                    parts.append(self.fusion_weight("alpha_t") * (c * task_exp.sum(1, keepdim=True) + k * task_exp))
                h_bar = torch.cat(parts, dim=-1)
        # Eq. 8: tower (d, t) on h̄_{d,t}; rows of task t stacked after task t-1, segments t·D + d
        z = h_bar.transpose(0, 1).reshape(T * B, -1)  # [T·B, in]
        offsets = seg.repeat_offsets(T)
        a = torch.relu_(segment_linear(z, self.tower_w1, self.tower_b1, offsets))  # [T·B, Ht]
        w2 = self.tower_w2.view(T * D, -1, 1)
        logits = segment_linear(a, w2, self.tower_b2.view(T * D, 1), offsets).view(T, B)  # [T, B]
        logits = seg.unsort(logits.t())  # back to the batch's row order: [B, T]
        return ModelOutput({name: logits[:, t] for t, name in enumerate(self.task_names)})


class _MLPWithNorm(nn.Sequential):
    """``f_DA``: layers Linear -> LayerNorm -> ReLU, ``[B, in] -> [B, widths[-1]]``."""

    def __init__(self, in_dim: int, widths: list[int]) -> None:
        layers: list[nn.Module] = []
        for w in widths:
            # in place: LayerNorm's backward reads its input, never its output
            layers += [nn.Linear(in_dim, w), nn.LayerNorm(w), nn.ReLU(inplace=True)]
            in_dim = w
        super().__init__(*layers)
