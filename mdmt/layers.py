"""Generic layers shared by models: MLP, experts, gates, towers, cross and FM layers.

Only generic building blocks live here (DESIGN §5.5); anything specific to one paper stays in
that paper's model file. Every layer uses tensor operations only (no Python loop over rows or
domains, no ``.item()``, no branch on tensor values), so models built from them export to ONNX.

Contents:

* :func:`domain_select`: the one per-domain routing helper (gather per-domain parameters or
  per-domain outputs by ``batch.domain``).
* :class:`MLP`: a fully connected stack, with the one normalisation option :data:`Norm`.
* :class:`ParallelMLP`: ``K`` independent MLPs evaluated in one batched op (experts, towers),
  normalised by :class:`StackedNorm`.
* :class:`Gate`: ``G`` softmax gates over ``E`` experts and the gated mixture (MMoE, PLE).
* :class:`CrossNet`: the DCN-V2 cross network (full rank, low rank, mixture of low-rank experts).
* :func:`fm_bi_interaction`: the FM pairwise interaction as a vector ``½((Σv)² − Σv²)``.
* :class:`PartitionedNorm` and :class:`StarLinear`: STAR's per-domain normalisation and
  star-topology linear layer, both routed through :func:`domain_select`.
* :func:`stop_gradient` and :func:`tap`: a paper's ⊘ (stop-gradient) and a named activation,
  so tests can check gradient paths (:mod:`mdmt.testing`).
* :func:`masked_softmax`, :class:`MultiHeadAttention`, :class:`MultiHeadSelfAttention`,
  :class:`TransformerLayer` (post-LN), and the target attentions :class:`DINAttention` and
  :class:`DotTargetAttention`, all with masks for padded positions.
* :class:`GateNU`: PEPNet's gate neural unit, prior information -> a gate in ``(0, γ)``.
* :class:`CrossNetV1` (DCN's cross network) and :class:`CIN` (xDeepFM's compressed interaction
  network).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Activation",
    "activation",
    "Norm",
    "norm_layer",
    "StackedNorm",
    "domain_select",
    "MLP",
    "ParallelMLP",
    "Gate",
    "CrossNet",
    "fm_bi_interaction",
    "PartitionedNorm",
    "StarLinear",
    "stop_gradient",
    "tap",
    "short_softmax",
    "masked_softmax",
    "MultiHeadAttention",
    "MultiHeadSelfAttention",
    "TransformerLayer",
    "DINAttention",
    "DotTargetAttention",
    "GateNU",
    "CrossNetV1",
    "CIN",
    "segment_linear",
    "segment_mm",
    "DomainSegments",
]

Activation = Literal["relu", "gelu", "silu", "tanh", "sigmoid", "prelu"]

#: Normalisation of every hidden layer of an MLP block (backbones, experts, towers, auxiliary
#: nets): ``none``, ``layernorm`` or ``batchnorm``. One option, one default (``none``) for all models.
Norm = Literal["none", "layernorm", "batchnorm"]


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (``relu``, ``gelu``, ``silu``, ``tanh``, ``sigmoid``, ``prelu``)."""
    kinds = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "prelu": nn.PReLU}
    return kinds[name]()


def norm_layer(kind: Norm, dim: int) -> nn.Module:
    """A fresh normalisation of ``dim`` features by :data:`Norm` kind (``none`` = ``nn.Identity``)."""
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    if kind == "batchnorm":
        return nn.BatchNorm1d(dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be none, layernorm or batchnorm, got {kind!r}")


def _linear_init_(weight: Tensor, bias: Tensor | None, fan_in: int) -> None:
    """``nn.Linear``'s default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for stacked weights."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    nn.init.uniform_(weight, -bound, bound)
    if bias is not None:
        nn.init.uniform_(bias, -bound, bound)


# ---------------------------------------------------------------------------------------------
# Per-domain routing
# ---------------------------------------------------------------------------------------------
def domain_select(stacked: Tensor, domain: Tensor, rows: bool = False) -> Tensor:
    """Pick, for every row, the entry of its domain. The one per-domain routing helper (DESIGN §5.3).

    Two forms:

    * ``rows=False``: ``stacked`` holds per-domain parameters ``[D, *S]``; returns ``[B, *S]``
      with ``out[b] = stacked[domain[b]]`` (e.g. per-row normalisation statistics).
    * ``rows=True``: ``stacked`` holds per-domain outputs for every row ``[D, B, *S]`` (a layer
      applied once per domain); returns ``[B, *S]`` with ``out[b] = stacked[domain[b], b]``.

    Args:
        stacked: ``[D, *S]`` or ``[D, B, *S]`` (see above).
        domain: ``[B]`` int64 domain index of each row, in ``[0, D)``.

    Example::

        >>> import torch
        >>> p = torch.tensor([[1.0], [2.0], [3.0]])                  # [D=3, 1]
        >>> domain_select(p, torch.tensor([2, 0])).flatten().tolist()
        [3.0, 1.0]
        >>> y = torch.arange(6.0).view(3, 2)                         # [D=3, B=2]
        >>> domain_select(y, torch.tensor([2, 0]), rows=True).tolist()
        [4.0, 1.0]
    """
    if not rows:
        return stacked.index_select(0, domain)
    idx = domain.view(1, -1, *([1] * (stacked.dim() - 2))).expand(1, *stacked.shape[1:])
    return stacked.gather(0, idx).squeeze(0)


# ---------------------------------------------------------------------------------------------
# MLPs, experts, gates
# ---------------------------------------------------------------------------------------------
class MLP(nn.Sequential):
    """Fully connected stack ``[B, in_dim] -> [B, out]``.

    Args:
        in_dim: input width.
        hidden: hidden widths; each is Linear -> norm -> activation -> (Dropout).
        out_dim: optional final Linear without norm or activation (e.g. 1 for a tower's logit).
        dropout, act: per hidden layer.
        norm: ``none``, ``layernorm`` or ``batchnorm`` after each hidden Linear (:data:`Norm`).

    Example::

        >>> import torch
        >>> MLP(8, [16, 4], out_dim=1)(torch.randn(2, 8)).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        out_dim: int | None = None,
        dropout: float = 0.0,
        act: str = "relu",
        norm: Norm = "none",
    ) -> None:
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if norm != "none":
                layers.append(norm_layer(norm, h))
            layers.append(activation(act))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = d
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:  # noqa: D401 - same as Sequential
        return super().forward(x)


class StackedNorm(nn.Module):
    """The normalisation of ``K`` independent MLP layers at once: ``[B, K, dim] -> [B, K, dim]``.

    * ``layernorm``: each ``[dim]`` vector is normalised over its features, then MLP ``k``'s own
      affine ``γ_k, β_k`` is applied (as ``K`` separate ``nn.LayerNorm(dim)``).
    * ``batchnorm``: each of the ``K·dim`` units is normalised over the batch with its own running
      statistics and affine (as ``K`` separate ``nn.BatchNorm1d(dim)``).

    Example::

        >>> import torch
        >>> StackedNorm(3, 4, "layernorm")(torch.randn(2, 3, 4)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(self, num: int, dim: int, kind: Norm) -> None:
        super().__init__()
        if kind not in ("layernorm", "batchnorm"):
            raise ValueError(f"StackedNorm kind must be layernorm or batchnorm, got {kind!r}")
        self.kind, self.num, self.dim = kind, num, dim
        if kind == "layernorm":
            self.weight = nn.Parameter(torch.ones(num, dim))
            self.bias = nn.Parameter(torch.zeros(num, dim))
        else:
            self.bn = nn.BatchNorm1d(num * dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, (self.dim,)) * self.weight + self.bias
        return self.bn(x.reshape(x.shape[0], self.num * self.dim)).view_as(x)


class ParallelMLP(nn.Module):
    """``K`` independent MLPs of one shape, evaluated in one batched op: experts or task towers.

    MLP ``k`` computes ``a_{l+1} = act(norm_k(a_l W_l[k] + b_l[k]))`` for each hidden layer and,
    with ``out_dim``, a last affine layer without norm or activation. Weights are stacked
    ``[K, in, out]``; the norm of the ``K`` MLPs is one :class:`StackedNorm` per layer.

    Args:
        in_dim: input width.
        hidden: hidden widths (each followed by the norm, the activation and optional dropout).
        num: ``K``, the number of MLPs.
        out_dim: optional final affine layer (1 for towers that output a logit).
        dropout, act: per hidden layer.
        norm: ``none``, ``layernorm`` or ``batchnorm`` after each hidden affine layer (:data:`Norm`).

    Shapes:
        ``x``: ``[B, in_dim]`` (the same input for every MLP) or ``[B, K, in_dim]`` (one input
        per MLP) -> ``[B, K, out]`` where ``out = out_dim or hidden[-1] or in_dim``.

    Example::

        >>> import torch
        >>> experts = ParallelMLP(8, [16], num=4)
        >>> experts(torch.randn(2, 8)).shape
        torch.Size([2, 4, 16])
        >>> towers = ParallelMLP(16, [8], num=3, out_dim=1)
        >>> towers(torch.randn(2, 3, 16)).shape
        torch.Size([2, 3, 1])
    """

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        num: int,
        out_dim: int | None = None,
        dropout: float = 0.0,
        act: str = "relu",
        norm: Norm = "none",
    ) -> None:
        super().__init__()
        dims = [in_dim, *hidden] + ([out_dim] if out_dim is not None else [])
        self.num = num
        self.in_dim = in_dim
        self.out_dim = dims[-1]
        self.num_hidden = len(hidden)
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(num, a, b)) for a, b in zip(dims[:-1], dims[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.empty(num, b)) for b in dims[1:]])
        self.acts = nn.ModuleList([activation(act) for _ in hidden])
        self.norm = norm
        self.norms = nn.ModuleList([StackedNorm(num, h, norm) for h in hidden] if norm != "none" else [])
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for w, b in zip(self.weights, self.biases):
            _linear_init_(w, b, w.shape[1])

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3 and x.shape[1] == self.num and x.stride(1) == 0 and self.weights:
            x = x[:, 0]  # one input expanded to every MLP (a view): run it as a shared input
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            K, din, dout = w.shape
            if x.dim() == 2:  # shared input [B, in]: one GEMM against [in, K*out]
                x = torch.addmm(b.reshape(-1), x, w.permute(1, 0, 2).reshape(din, K * dout)).view(-1, K, dout)
            else:  # per-MLP input [B, K, in]: one batched GEMM over K
                x = torch.baddbmm(b.unsqueeze(1), x.transpose(0, 1), w).transpose(0, 1)
            if i < self.num_hidden:
                if self.norm != "none":
                    x = self.norms[i](x)
                x = self.dropout(self.acts[i](x))
        if x.dim() == 2:  # no layers at all: identity, broadcast to every MLP
            x = x.unsqueeze(1).expand(-1, self.num, -1)
        return x


class Gate(nn.Module):
    """``G`` softmax gates over ``E`` experts (MMoE's and PLE's gating networks).

    Gate ``g`` computes ``w_g(x) = softmax(x W_g + b_g)`` (``[E]``) and the mixture
    ``Σ_e w_g(x)_e · f_e`` of the expert outputs ``f_e``.

    Args:
        in_dim: selector input width.
        num_experts: ``E``.
        num_gates: ``G`` (e.g. one per task).

    Shapes:
        :meth:`weights`: ``x`` ``[B, in]`` (one selector input for every gate) or ``[B, G, in]``
        -> ``[B, G, E]``, rows summing to one.
        :meth:`forward`: ``x`` as above and ``experts`` ``[B, E, H]`` (the same experts for every
        gate) or ``[B, G, E, H]`` (each gate its own experts) -> ``[B, G, H]``.

    Example::

        >>> import torch
        >>> gate = Gate(8, num_experts=3, num_gates=2)
        >>> gate(torch.randn(5, 8), torch.randn(5, 3, 4)).shape
        torch.Size([5, 2, 4])
    """

    def __init__(self, in_dim: int, num_experts: int, num_gates: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_gates, in_dim, num_experts))
        self.bias = nn.Parameter(torch.empty(num_gates, num_experts))
        _linear_init_(self.weight, self.bias, in_dim)

    def weights(self, x: Tensor) -> Tensor:
        """Softmax weights ``[B, G, E]``."""
        G, din, E = self.weight.shape
        if x.dim() == 2:  # one selector input for every gate: one GEMM against [in, G*E]
            z = torch.addmm(self.bias.reshape(-1), x, self.weight.permute(1, 0, 2).reshape(din, G * E)).view(-1, G, E)
        else:
            z = torch.einsum("bgi,gie->bge", x, self.weight) + self.bias
        return short_softmax(z)

    def forward(self, x: Tensor, experts: Tensor) -> Tensor:
        w = self.weights(x)
        if experts.dim() == 3:  # the same experts for every gate: [B, G, E] @ [B, E, H]
            return torch.bmm(w, experts)
        # one expert set per gate: [B, G, 1, E] @ [B, G, E, H] -> [B, G, H]
        return torch.matmul(w.unsqueeze(2), experts).squeeze(2)


# ---------------------------------------------------------------------------------------------
# Feature crossing: DCN-V2 cross network and FM
# ---------------------------------------------------------------------------------------------
class CrossNet(nn.Module):
    """DCN-V2 cross network (Wang et al., WWW'21): explicit bounded-degree feature crosses.

    Layer ``l`` maps ``x_l`` to ``x_{l+1}`` (``x_0`` is the input, ``d`` its width):

    * full rank:  ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l`` with ``W_l`` ``[d, d]``;
    * low rank ``r`` (``low_rank=r``): ``W_l = U_l V_lᵀ``, i.e.
      ``x_{l+1} = x_0 ⊙ (U_l (V_lᵀ x_l) + b_l) + x_l`` with ``U_l, V_l`` ``[d, r]``;
    * mixture of ``K`` low-rank experts (``num_experts=K > 1``, needs ``low_rank``):
      ``x_{l+1} = Σ_i G_i(x_l) E_i(x_l) + x_l`` with
      ``E_i(x_l) = x_0 ⊙ (U_l^i g(C_l^i g(V_l^{iᵀ} x_l)) + b_l)``, ``g = tanh``,
      ``C_l^i`` ``[r, r]`` and ``G(x_l) = softmax(x_l W_g)`` over the experts.

    Shapes: ``x0`` ``[B, d]`` -> ``[B, d]``.

    Example::

        >>> import torch
        >>> CrossNet(6, num_layers=2, low_rank=3)(torch.randn(4, 6)).shape
        torch.Size([4, 6])
    """

    def __init__(self, in_dim: int, num_layers: int, low_rank: int | None = None, num_experts: int = 1) -> None:
        super().__init__()
        if num_experts > 1 and low_rank is None:
            raise ValueError("a mixture of cross experts needs low_rank")
        self.in_dim = self.out_dim = in_dim
        self.num_layers = num_layers
        self.low_rank = low_rank
        self.num_experts = num_experts
        d, L, K = in_dim, num_layers, num_experts
        self.bias = nn.Parameter(torch.zeros(L, d))
        if low_rank is None:
            self.W = nn.Parameter(torch.empty(L, d, d))  # x @ W[l] = (W_l x)ᵀ
            nn.init.xavier_normal_(self.W)
        else:
            r = low_rank
            self.V = nn.Parameter(torch.empty(L, K, d, r))
            self.U = nn.Parameter(torch.empty(L, K, r, d))
            nn.init.xavier_normal_(self.V.view(L * K, d, r))
            nn.init.xavier_normal_(self.U.view(L * K, r, d))
            if K > 1:
                self.C = nn.Parameter(torch.empty(L, K, r, r))
                nn.init.xavier_normal_(self.C.view(L * K, r, r))
                self.gate = nn.Parameter(torch.empty(L, d, K))
                nn.init.xavier_normal_(self.gate)

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for l in range(self.num_layers):
            if self.low_rank is None:
                # full-rank cross: x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l
                x = x0 * (x @ self.W[l] + self.bias[l]) + x
            elif self.num_experts == 1:
                # low-rank cross: W_l = U_l V_lᵀ
                x = x0 * ((x @ self.V[l, 0]) @ self.U[l, 0] + self.bias[l]) + x
            else:
                # mixture of low-rank experts: E_i(x_l) = x_0 ⊙ (U g(C g(Vᵀ x_l)) + b_l)
                z = torch.tanh(torch.einsum("bd,kdr->bkr", x, self.V[l]))
                z = torch.tanh(torch.einsum("bkr,krs->bks", z, self.C[l]))
                experts = x0.unsqueeze(1) * (torch.einsum("bkr,krd->bkd", z, self.U[l]) + self.bias[l])  # [B, K, d]
                g = torch.softmax(x @ self.gate[l], dim=-1)  # G(x_l): [B, K]
                x = torch.einsum("bk,bkd->bd", g, experts) + x
        return x


def fm_bi_interaction(v: Tensor) -> Tensor:
    """FM pairwise interaction as a vector: ``½((Σ_i v_i)² − Σ_i v_i²)``.

    Summed over the embedding dimension it is FM's second-order term ``Σ_{i<j} <v_i, v_j>``
    (Rendle, ICDM'10; DeepFM, Guo et al., IJCAI'17), computed in ``O(F·d)``.

    Shapes: ``v`` ``[B, F, d]`` (``F`` fields) -> ``[B, d]``.

    Example::

        >>> import torch
        >>> v = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
        >>> fm_bi_interaction(v).sum(-1).tolist()   # <v1, v2> = 3 + 8
        [11.0]
    """
    s = v.sum(dim=1)
    return 0.5 * (s * s - (v * v).sum(dim=1))


# ---------------------------------------------------------------------------------------------
# Per-domain layers (STAR)
# ---------------------------------------------------------------------------------------------
class PartitionedNorm(nn.Module):
    """Partitioned Normalization (STAR, Sheng et al., CIKM'21): batch norm with per-domain statistics.

    For a row of domain ``p``::

        z' = (γ · γ_p) ⊙ (z − μ_p) / sqrt(σ²_p + ε) + (β + β_p)

    ``γ, β`` are shared, ``γ_p, β_p`` belong to domain ``p``. In training ``μ_p, σ²_p`` are the
    mean and (biased) variance of the batch rows of domain ``p``, and the per-domain running
    statistics (buffers ``[D, dim]``) are updated with them by an exponential moving average;
    a domain absent from the batch keeps its running statistics. In eval mode the running
    statistics are used, so a row's output never depends on the other rows of its batch.
    Everything is vectorised with a one-hot matrix ``[B, D]``.

    Shapes: ``x`` ``[B, dim]``, ``domain`` ``[B]`` -> ``[B, dim]``.

    Example::

        >>> import torch
        >>> pn = PartitionedNorm(4, num_domains=2)
        >>> pn(torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])).shape
        torch.Size([6, 4])
    """

    def __init__(self, dim: int, num_domains: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_domains = num_domains
        self.eps = eps
        self.momentum = momentum
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.domain_gamma = nn.Parameter(torch.ones(num_domains, dim))
        self.domain_beta = nn.Parameter(torch.zeros(num_domains, dim))
        self.register_buffer("running_mean", torch.zeros(num_domains, dim))
        self.register_buffer("running_var", torch.ones(num_domains, dim))

    def forward(self, x: Tensor, domain: Tensor) -> Tensor:
        if self.training:
            onehot = F.one_hot(domain, self.num_domains).to(x.dtype)  # [B, D]
            count = onehot.sum(0).unsqueeze(-1)  # [D, 1]
            mean = onehot.t() @ x / count.clamp(min=1.0)  # μ_p over the rows of domain p: [D, dim]
            centred = x - domain_select(mean, domain)
            var = onehot.t() @ (centred * centred) / count.clamp(min=1.0)  # biased σ²_p: [D, dim]
            with torch.no_grad():
                m = self.momentum
                seen = count > 0
                self.running_mean.copy_(torch.where(seen, (1 - m) * self.running_mean + m * mean, self.running_mean))
                unbiased = var * count / (count - 1.0).clamp(min=1.0)
                updated_var = (1 - m) * self.running_var + m * unbiased
                self.running_var.copy_(torch.where(count > 1, updated_var, self.running_var))
            row_var = domain_select(var, domain)
        else:
            centred = x - domain_select(self.running_mean, domain)
            row_var = domain_select(self.running_var, domain)
        scale = self.gamma * domain_select(self.domain_gamma, domain)  # γ · γ_p
        shift = self.beta + domain_select(self.domain_beta, domain)  # β + β_p
        return scale * centred / torch.sqrt(row_var + self.eps) + shift


class StarLinear(nn.Module):
    """Star-topology linear layer (STAR, Sheng et al., CIKM'21).

    Domain ``p`` uses the weight ``W*_p = W ⊙ W_p`` and bias ``b*_p = b + b_p``: the shared
    parameters ``W, b`` are the centre of the star, ``W_p, b_p`` its domain-specific arms.
    ``W_p`` starts at ones and ``b_p`` at zero, so training starts from the shared layer.

    The layer is applied to every row for every domain (``[D, B, out]``, one batched matmul)
    and each row keeps its own domain's output via :func:`domain_select`. That costs ``D``
    times a plain linear layer but never materialises a ``[B, in, out]`` weight per row.

    Shapes: ``x`` ``[B, in_dim]``, ``domain`` ``[B]`` -> ``[B, out_dim]``.

    Example::

        >>> import torch
        >>> layer = StarLinear(4, 3, num_domains=2)
        >>> layer(torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])).shape
        torch.Size([5, 3])
    """

    def __init__(self, in_dim: int, out_dim: int, num_domains: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(out_dim))
        _linear_init_(self.weight, self.bias, in_dim)
        self.domain_weight = nn.Parameter(torch.ones(num_domains, in_dim, out_dim))
        self.domain_bias = nn.Parameter(torch.zeros(num_domains, out_dim))

    def domain_weights(self) -> tuple[Tensor, Tensor]:
        """``(W ⊙ W_p, b + b_p)`` for every domain: ``[D, in, out]`` and ``[D, out]``."""
        return self.weight * self.domain_weight, self.bias + self.domain_bias

    def forward(self, x: Tensor, domain: Tensor) -> Tensor:
        w, b = self.domain_weights()
        y = torch.einsum("bi,dio->dbo", x, w) + b.unsqueeze(1)  # every domain's output: [D, B, out]
        return domain_select(y, domain, rows=True)


# ---------------------------------------------------------------------------------------------
# Gradient paths: stop-gradient and named activations
# ---------------------------------------------------------------------------------------------
#: Recorders of named activations, pushed by :func:`mdmt.testing.record_activations` (tests only).
_RECORDERS: list[dict[str, Tensor]] = []


def tap(x: Tensor, name: str) -> Tensor:
    """Identity that names the activation ``x``: under :func:`mdmt.testing.record_activations`
    it is recorded as ``name`` (with its autograd graph), so a test can ask which gradients
    reach it. Outside a recording it does nothing (and traces to nothing).

    Example::

        >>> import torch
        >>> tap(torch.ones(2), "E").tolist()
        [1.0, 1.0]
    """
    if _RECORDERS:
        _RECORDERS[-1][name] = x
    return x


def stop_gradient(x: Tensor, name: str | None = None) -> Tensor:
    """A paper's ⊘: ``x`` in the forward pass, no gradient into ``x`` in the backward pass.

    With ``name``, the input is tapped as ``name`` (before the cut) and the output as
    ``name + "/stopped"``, so :func:`mdmt.testing.assert_stop_gradient` can check the path.
    """
    if name is not None:
        tap(x, name)
    out = x.detach()
    if name is not None:
        tap(out, name + "/stopped")
    return out


# ---------------------------------------------------------------------------------------------
# Attention: multi-head (self-)attention, target attention, a post-LN Transformer layer
# ---------------------------------------------------------------------------------------------
def short_softmax(z: Tensor) -> Tensor:
    """Softmax over a short last dimension (a few experts): ``exp(z - max) / Σ exp(z - max)``.

    The same values as ``torch.softmax(z, -1)``, several times faster on CPU when the last
    dimension is only a few entries wide (the library kernel vectorises along that dimension).
    """
    e = (z - z.amax(dim=-1, keepdim=True)).exp()
    return e / e.sum(dim=-1, keepdim=True)


def masked_softmax(scores: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` restricted to the positions where ``mask`` is True.

    Masked positions get weight exactly 0. A row whose positions are all masked (an empty
    behaviour sequence) gets all-zero weights, so it attends to nothing instead of to padding,
    and never produces NaN (``torch.finfo.min`` is used instead of ``-inf``).

    Shapes: ``scores`` ``[..., L]``, ``mask`` bool broadcastable to it (True = a real position).

    Example::

        >>> import torch
        >>> masked_softmax(torch.zeros(2, 3), torch.tensor([[True, True, False], [False, False, False]])).tolist()
        [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]
    """
    if mask is None:
        return torch.softmax(scores, dim=dim)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=dim) * mask.to(scores.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al., NeurIPS'17; PMTA Eq. 4–5).

    With ``h`` heads of width ``d_h = dim / h``::

        head_i    = Attention(Q W_i^Q, K W_i^K, V W_i^V)                     # Eq. 4b
        Attention = softmax(Q Kᵀ / sqrt(d_h)) V   (masked keys get weight 0) # Eq. 5
        MHA       = Concat(head_1, ..., head_h) W^O                          # Eq. 4a

    Every projection is an affine ``nn.Linear`` (``bias=False`` drops the biases), laid out like
    ``torch.nn.MultiheadAttention``'s ``in_proj`` / ``out_proj``.

    Args:
        dim: query and output width (a multiple of ``num_heads``).
        num_heads: ``h``.
        kdim, vdim: key and value input widths (default ``dim``; ``vdim`` defaults to ``kdim``).
        bias: affine projections.
        dropout: on the attention weights (training only).

    Shapes:
        ``query`` ``[B, Lq, dim]``, ``key`` ``[B, Lk, kdim]``, ``value`` ``[B, Lk, vdim]`` (default:
        ``key``), ``key_mask`` ``[B, Lk]`` bool (True = a real position) -> ``[B, Lq, dim]``. A query
        whose keys are all masked gets ``out_proj``'s bias (zero context).

    Example::

        >>> import torch
        >>> mha = MultiHeadAttention(8, num_heads=2)
        >>> mha(torch.randn(3, 1, 8), torch.randn(3, 5, 8), key_mask=torch.ones(3, 5, dtype=torch.bool)).shape
        torch.Size([3, 1, 8])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not a multiple of num_heads={num_heads}")
        kdim = kdim or dim
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.q_proj = nn.Linear(dim, dim, bias=bias)  # W^Q (all heads)
        self.k_proj = nn.Linear(kdim, dim, bias=bias)  # W^K
        self.v_proj = nn.Linear(vdim or kdim, dim, bias=bias)  # W^V
        self.out_proj = nn.Linear(dim, dim, bias=bias)  # W^O
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _heads(self, x: Tensor) -> Tensor:
        """``[B, L, dim] -> [B, h, L, d_h]``."""
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim).transpose(-3, -2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        value = key if value is None else value
        q = self._heads(self.q_proj(query))  # Q W_i^Q: [B, h, Lq, d_h]
        k = self._heads(self.k_proj(key))  # K W_i^K: [B, h, Lk, d_h]
        v = self._heads(self.v_proj(value))  # V W_i^V: [B, h, Lk, d_h]
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # Eq. 5: Q Kᵀ / sqrt(d_k): [B, h, Lq, Lk]
        mask = None if key_mask is None else key_mask[:, None, None, :]
        w = self.dropout(masked_softmax(scores, mask))
        heads = (w @ v).transpose(-3, -2)  # head_i, Eq. 4b: [B, Lq, h, d_h]
        return self.out_proj(heads.reshape(*heads.shape[:-2], self.dim))  # Eq. 4a: Concat(...) W^O


class MultiHeadSelfAttention(MultiHeadAttention):
    """Multi-head self-attention: :class:`MultiHeadAttention` with ``Q = K = V = X``.

    Shapes: ``x`` ``[B, L, dim]``, ``mask`` ``[B, L]`` bool (True = a real position) ->
    ``[B, L, dim]``. Padded positions are never attended to; their own outputs are computed like
    any other row and must be ignored (masked or pooled away) by the caller.

    Example::

        >>> import torch
        >>> MultiHeadSelfAttention(8, num_heads=4)(torch.randn(2, 3, 8)).shape
        torch.Size([2, 3, 8])
    """

    def __init__(self, dim: int, num_heads: int = 1, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__(dim, num_heads, bias=bias, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return super().forward(x, x, x, key_mask=mask)


class TransformerLayer(nn.Module):
    """Post-LN Transformer encoder layer (PMTA Eq. 4–7; Vaswani et al., NeurIPS'17)::

        FFN(X)  = ReLU(X W_1 + b_1) W_2 + b_2                 # Eq. 6
        X^SA    = LN(MHA(X) + X)                              # Eq. 7a
        X'      = LN(FFN(X^SA) + X^SA)                        # Eq. 7b

    Args:
        dim: token width.
        num_heads: attention heads (``dim`` must be a multiple).
        ffn_dim: hidden width of the FFN (default ``4 * dim``).
        dropout: on the attention weights and after the attention and FFN outputs.
        eps: LayerNorm epsilon.

    Shapes: ``x`` ``[B, L, dim]``, ``mask`` ``[B, L]`` bool (True = a real position) ->
    ``[B, L, dim]``; padded positions are never attended to, and their outputs are to be ignored.

    Example::

        >>> import torch
        >>> TransformerLayer(8, num_heads=2, ffn_dim=16)(torch.randn(2, 3, 8)).shape
        torch.Size([2, 3, 8])
    """

    def __init__(self, dim: int, num_heads: int = 1, ffn_dim: int | None = None, dropout: float = 0.0,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.attn = MultiHeadSelfAttention(dim, num_heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, ffn_dim or 4 * dim)  # W_1, b_1
        self.linear2 = nn.Linear(ffn_dim or 4 * dim, dim)  # W_2, b_2
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def ffn(self, x: Tensor) -> Tensor:
        """Eq. 6: ``ReLU(X W_1 + b_1) W_2 + b_2``."""
        return self.linear2(self.dropout(torch.relu(self.linear1(x))))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.dropout(self.attn(x, mask)))  # Eq. 7a: X^SA = LN(MHA(X) + X)
        return self.norm2(x + self.dropout(self.ffn(x)))  # Eq. 7b: LN(FFN(X^SA) + X^SA)


class DINAttention(nn.Module):
    """DIN target attention (Zhou et al., KDD'18, "Deep Interest Network"; its activation unit).

    A target (the candidate item) weighs each behaviour ``e_j`` of a sequence with an MLP of the
    pair, and the weighted sum is the user's interest in that target::

        a_j = MLP([e_j, q, e_j − q, e_j ⊙ q])     # activation unit -> a scalar per position
        v_U(q) = Σ_j a_j e_j                     # over the real (unmasked) positions

    DIN leaves the weights unnormalised (``normalize=False``) so the sum keeps the intensity of
    the interest; ``normalize=True`` takes a masked softmax of ``a`` over the positions instead.
    The query may be one target per row (``[B, d]``) or one query per position (``[B, L, d]``,
    e.g. ADS's generated multi-queries).

    Args:
        dim: width of the query and of the sequence items (equal, as in DIN).
        hidden: hidden widths of the activation unit (a final Linear -> 1 follows).
        act: its activation.
        normalize: softmax-normalise the weights over the real positions.

    Shapes: ``query`` ``[B, d]`` or ``[B, L, d]``, ``keys`` ``[B, L, d]``, ``mask`` ``[B, L]`` bool
    (True = a real position) -> ``[B, d]``.

    Example::

        >>> import torch
        >>> att = DINAttention(4, hidden=[8])
        >>> att(torch.randn(2, 4), torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.bool)).shape
        torch.Size([2, 4])
    """

    def __init__(self, dim: int, hidden: list[int] | None = None, act: str = "prelu", normalize: bool = False) -> None:
        super().__init__()
        self.unit = MLP(4 * dim, [36] if hidden is None else hidden, out_dim=1, act=act)
        self.normalize = normalize

    def weights(self, query: Tensor, keys: Tensor, mask: Tensor | None = None) -> Tensor:
        """The attention weights ``a_j``: ``[B, L]`` (0 at masked positions)."""
        q = query.unsqueeze(1).expand_as(keys) if query.dim() == 2 else query
        a = self.unit(torch.cat([keys, q, keys - q, keys * q], dim=-1)).squeeze(-1)  # a_j: [B, L]
        if self.normalize:
            return masked_softmax(a, mask)
        return a if mask is None else a * mask.to(a.dtype)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor | None = None) -> Tensor:
        return torch.einsum("bl,bld->bd", self.weights(query, keys, mask), keys)  # Σ_j a_j e_j


class DotTargetAttention(MultiHeadAttention):
    """Scaled dot-product target attention: one target query over a masked sequence.

    With the projections of :class:`MultiHeadAttention` and ``h`` heads::

        s_{i,j} = (q W_i^Q) · (k_j W_i^K) / sqrt(d_h)              # one score per head and position
        head_i  = Σ_j softmax_j(s_{i,j}) (v_j W_i^V)                # over the real positions
        out     = Concat(head_1, ..., head_h) W^O

    With one query per row (``[B, dq]``) this is :class:`MultiHeadAttention` with ``Lq = 1``.
    With one query per position (``[B, L, dq]``, ADS's generated multi-queries) position ``j`` is
    scored with its own query ``q_j``.

    Args:
        dim: attention and output width (a multiple of ``num_heads``); also the query width.
        num_heads: ``h``.
        kdim: width of the sequence items (default ``dim``).
        bias, dropout: as in :class:`MultiHeadAttention`.

    Shapes: ``query`` ``[B, dim]`` or ``[B, L, dim]``, ``keys`` ``[B, L, kdim]``, ``mask``
    ``[B, L]`` bool (True = a real position) -> ``[B, dim]`` (a row with no real position gets
    ``out_proj``'s bias).

    Example::

        >>> import torch
        >>> att = DotTargetAttention(8, num_heads=2, kdim=6)
        >>> att(torch.randn(3, 8), torch.randn(3, 5, 6), torch.ones(3, 5, dtype=torch.bool)).shape
        torch.Size([3, 8])
    """

    def __init__(self, dim: int, num_heads: int = 1, kdim: int | None = None, bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__(dim, num_heads, kdim=kdim, bias=bias, dropout=dropout)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        B, L = keys.shape[0], keys.shape[1]
        q = self.q_proj(query).reshape(B, -1, self.num_heads, self.head_dim)  # [B, 1 or L, h, d_h]
        k = self.k_proj(keys).reshape(B, L, self.num_heads, self.head_dim)  # [B, L, h, d_h]
        v = self.v_proj(keys).reshape(B, L, self.num_heads, self.head_dim)
        scores = (q * k).sum(-1) / math.sqrt(self.head_dim)  # s_{i,j}: [B, L, h]
        w = self.dropout(masked_softmax(scores, None if mask is None else mask.unsqueeze(-1), dim=1))
        heads = torch.einsum("blh,blhe->bhe", w, v)  # head_i: [B, h, d_h]
        return self.out_proj(heads.reshape(B, self.dim))


# ---------------------------------------------------------------------------------------------
# Gates from prior information (PEPNet's Gate NU)
# ---------------------------------------------------------------------------------------------
class GateNU(nn.Module):
    """Gate Neural Unit (PEPNet, Chang et al., KDD'23, §2.2.1): prior information -> a scaling gate.

    Two layers::

        x' = ReLU(x W + b)                       # Eq. 2
        δ  = γ · sigmoid(x' W' + b')             # Eq. 3, every entry in (0, γ)

    With ``γ = 2`` the gate is centred at 1: it can amplify (up to 2x) or damp each unit it scales.

    Args:
        in_dim: width of the prior input ``x``.
        out_dim: number of gate values (the width of what the gate scales).
        hidden: width of ``x'`` (default ``in_dim``).
        gamma: ``γ``, the scale of the sigmoid.

    Shapes: ``x`` ``[..., in_dim]`` -> ``δ`` ``[..., out_dim]``.

    Example::

        >>> import torch
        >>> g = GateNU(6, 4)(torch.randn(3, 6))
        >>> g.shape, bool(((g > 0) & (g < 2)).all())
        (torch.Size([3, 4]), True)
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.in_dim, self.out_dim = in_dim, out_dim
        self.layer1 = nn.Linear(in_dim, hidden or in_dim)  # W, b
        self.layer2 = nn.Linear(hidden or in_dim, out_dim)  # W', b'

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.layer1(x))  # Eq. 2: x' = ReLU(xW + b)
        return self.gamma * torch.sigmoid(self.layer2(h))  # Eq. 3: δ = γ·sigmoid(x'W' + b')


# ---------------------------------------------------------------------------------------------
# Feature crossing: DCN's cross network (v1) and xDeepFM's compressed interaction network
# ---------------------------------------------------------------------------------------------
class CrossNetV1(nn.Module):
    """The cross network of DCN (Wang et al., ADKDD'17, "Deep & Cross Network", Eq. 3).

    Layer ``l`` maps ``x_l`` to ``x_{l+1}`` with a weight vector ``w_l`` and a bias ``b_l`` (both
    ``[d]``)::

        x_{l+1} = x_0 x_lᵀ w_l + b_l + x_l  =  x_0 · (x_l · w_l) + b_l + x_l

    so each layer adds one degree of crossing with ``2d`` parameters.

    Shapes: ``x0`` ``[B, d]`` -> ``[B, d]``.

    Example::

        >>> import torch
        >>> CrossNetV1(6, num_layers=2)(torch.randn(4, 6)).shape
        torch.Size([4, 6])
    """

    def __init__(self, in_dim: int, num_layers: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = in_dim
        self.num_layers = num_layers
        self.weight = nn.Parameter(torch.empty(num_layers, in_dim))  # w_l
        self.bias = nn.Parameter(torch.zeros(num_layers, in_dim))  # b_l
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / (in_dim + 1)))  # Xavier for each [d, 1] w_l

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for l in range(self.num_layers):
            # Eq. 3: x_{l+1} = x_0 x_lᵀ w_l + b_l + x_l (x_lᵀ w_l is a scalar per row)
            x = x0 * (x @ self.weight[l]).unsqueeze(-1) + self.bias[l] + x
        return x


class CIN(nn.Module):
    """Compressed Interaction Network of xDeepFM (Lian et al., KDD'18, Eq. 6–7).

    ``X^0 ∈ R^{m×D}`` holds the ``m`` field embeddings. Layer ``k`` has ``H_k`` feature maps::

        X^k_{h,*} = Σ_{i=1..H_{k-1}} Σ_{j=1..m} W^{k,h}_{ij} (X^{k-1}_{i,*} ∘ X^0_{j,*})    # Eq. 6
        p^k_h     = Σ_{j=1..D} X^k_{h,j}                                                  # Eq. 7
        p^+       = [p^1, ..., p^K]                                                       # [Σ_k H_k]

    interactions at the vector level whose degree grows by one per layer. Every layer's feature
    maps feed the next layer and the pooled output (no split).

    Args:
        num_fields: ``m``.
        layers: ``[H_1, ..., H_K]``.

    Shapes: ``x0`` ``[B, m, D]`` -> ``p^+`` ``[B, Σ_k H_k]``.

    Example::

        >>> import torch
        >>> CIN(3, [4, 2])(torch.randn(5, 3, 6)).shape
        torch.Size([5, 6])
    """

    def __init__(self, num_fields: int, layers: list[int]) -> None:
        super().__init__()
        sizes = [num_fields, *layers]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.empty(h, h_prev * num_fields)) for h_prev, h in zip(sizes[:-1], sizes[1:])]
        )  # W^k: [H_k, H_{k-1} · m]
        for w in self.weights:
            _linear_init_(w, None, w.shape[1])
        self.out_dim = sum(layers)

    def forward(self, x0: Tensor) -> Tensor:
        B, m, D = x0.shape
        x, pooled = x0, []
        for w in self.weights:
            z = (x.unsqueeze(2) * x0.unsqueeze(1)).reshape(B, -1, D)  # X^{k-1}_i ∘ X^0_j: [B, H_{k-1}·m, D]
            x = torch.matmul(w, z)  # Eq. 6: Σ_{i,j} W^{k,h}_{ij} (...): [B, H_k, D]
            pooled.append(x.sum(-1))  # Eq. 7: sum pooling over the embedding dim: [B, H_k]
        return torch.cat(pooled, dim=-1)  # p^+


# ---------------------------------------------------------------------------------------------
# Rows sorted by domain: segment GEMMs (each row through its own domain's weights, no waste)
# ---------------------------------------------------------------------------------------------
def _segments(offsets: Tensor) -> list[tuple[int, int, int]]:
    """``(segment, start, end)`` of every non-empty segment (one host read of the offsets)."""
    out, start = [], 0
    for g, end in enumerate(offsets.tolist()):
        if end > start:
            out.append((g, start, end))
        start = end
    return out


@torch.library.custom_op("mdmt::segment_linear", mutates_args=())
def segment_linear(x: Tensor, weight: Tensor, bias: Tensor | None, offsets: Tensor) -> Tensor:
    """Segment GEMM: rows ``offsets[g-1]:offsets[g]`` of ``x`` times ``weight[g]``, plus ``bias[g]``.

    Args:
        x: ``[N, in]``, rows grouped by segment (e.g. sorted by domain).
        weight: ``[G, in, out]``, one matrix per segment.
        bias: ``[G, out]`` or None.
        offsets: ``[G]`` int32/int64, the cumulative end of each segment (``offsets[-1] = N``);
            a segment may be empty.

    Returns:
        ``[N, out]``. Every row is multiplied by its own segment's matrix only: ``N·in·out``
        multiply-adds whatever ``G``, the bias added inside the GEMM. One custom op
        (``mdmt::segment_linear``, with autograd and a FLOP formula), so ``torch.export`` keeps it
        as one node with a symbolic row count. The kernel runs one GEMM per non-empty segment.

    Example::

        >>> import torch
        >>> w = torch.stack([torch.eye(2), 2 * torch.eye(2)])
        >>> segment_linear(torch.ones(3, 2), w, None, torch.tensor([1, 3])).tolist()
        [[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]]
    """
    out = x.new_empty(x.shape[0], weight.shape[-1])
    for g, start, end in _segments(offsets):
        if bias is None:
            torch.mm(x[start:end], weight[g], out=out[start:end])
        else:
            torch.addmm(bias[g], x[start:end], weight[g], out=out[start:end])
    return out


@segment_linear.register_fake
def _segment_linear_fake(x: Tensor, weight: Tensor, bias: Tensor | None, offsets: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[-1])


@torch.library.custom_op("mdmt::segment_linear_param_grad", mutates_args=())
def segment_linear_param_grad(x: Tensor, grad: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """Per segment ``g``: ``x[seg]ᵀ @ grad[seg]`` ``[G, in, out]`` and ``grad[seg].sum(0)`` ``[G, out]``."""
    gw = x.new_zeros(offsets.shape[0], x.shape[1], grad.shape[1])
    gb = grad.new_zeros(offsets.shape[0], grad.shape[1])
    for g, start, end in _segments(offsets):
        torch.mm(x[start:end].t(), grad[start:end], out=gw[g])
        torch.sum(grad[start:end], dim=0, out=gb[g])
    return gw, gb


@segment_linear_param_grad.register_fake
def _segment_linear_param_grad_fake(x: Tensor, grad: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    return x.new_empty(offsets.shape[0], x.shape[1], grad.shape[1]), grad.new_empty(offsets.shape[0], grad.shape[1])


def _segment_linear_setup(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library signature
    x, weight, bias, offsets = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, offsets)


def _segment_linear_backward(ctx, grad: Tensor):  # noqa: ANN001 - torch.library signature
    x, weight, offsets = ctx.saved_tensors
    grad = grad.contiguous()
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        gx = segment_linear(grad, weight.transpose(1, 2), None, offsets)
    if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
        gw, gb = segment_linear_param_grad(x, grad, offsets)
    return gx, gw, (gb if ctx.has_bias else None), None


segment_linear.register_autograd(_segment_linear_backward, setup_context=_segment_linear_setup)


def segment_mm(x: Tensor, weight: Tensor, offsets: Tensor) -> Tensor:
    """:func:`segment_linear` without a bias: ``x [N, in]``, ``weight [G, in, out]`` -> ``[N, out]``."""
    return segment_linear(x, weight, None, offsets)


class DomainSegments:
    """Rows of a batch sorted by domain, for segment GEMMs (:func:`segment_mm`).

    ``order`` sorts the rows by domain (stable), ``offsets`` ``[D]`` (int64) are the cumulative
    row counts of domains ``0..D-1`` in that order, and :meth:`unsort` puts sorted rows back.
    Tensor ops only (no ``.item()``, fixed shapes), so it exports with a symbolic batch.

    Example::

        >>> import torch
        >>> seg = DomainSegments(torch.tensor([1, 0, 1]), num_domains=2)
        >>> seg.order.tolist(), seg.offsets.tolist()
        ([1, 0, 2], [1, 3])
        >>> seg.unsort(torch.tensor([10, 20, 30])).tolist()
        [20, 10, 30]
    """

    def __init__(self, domain: Tensor, num_domains: int) -> None:
        self.num_domains = num_domains
        self.order = torch.argsort(domain, stable=True)  # [B]
        self.domain = domain.index_select(0, self.order)  # sorted domains: [B]
        counts = F.one_hot(domain, num_domains).sum(0)  # [D] (fixed size, unlike bincount)
        self.offsets = counts.cumsum(0)  # [D]

    def sort(self, x: Tensor) -> Tensor:
        """``x[order]`` along dim 0."""
        return x.index_select(0, self.order)

    def unsort(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`sort` along dim 0."""
        return torch.empty_like(x).index_copy(0, self.order, x)

    def repeat_offsets(self, times: int) -> Tensor:
        """Offsets of ``times`` stacked copies of the sorted rows (``[times·B]``): ``[times·D]``,
        segment ``k·D + d`` = domain ``d`` of copy ``k`` (e.g. one copy per task)."""
        n = self.order.shape[0]
        shift = torch.arange(times, device=self.offsets.device, dtype=self.offsets.dtype) * n
        return (shift.unsqueeze(1) + self.offsets.unsqueeze(0)).reshape(-1)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """Per-domain affine map of sorted rows: ``x [B, in]``, ``weight [D, in, out]``, ``bias [D, out]``."""
        return segment_linear(x, weight, bias, self.offsets)


def _register_segment_flops() -> None:
    """Teach ``torch.utils.flop_counter`` the segment GEMMs' cost (``2·N·in·out`` each)."""
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.mdmt.segment_linear)
    def _fwd(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
        return 2 * x_shape[0] * x_shape[1] * w_shape[-1]

    @register_flop_formula(torch.ops.mdmt.segment_linear_param_grad)
    def _wgrad(x_shape, g_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
        return 2 * x_shape[0] * x_shape[1] * g_shape[1]


_register_segment_flops()
