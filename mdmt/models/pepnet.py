"""PEPNet: Parameter and Embedding Personalized Network (Chang et al., KDD 2023).

PEPNet injects prior information at two places of a shared multi-task network, through the
Gate Neural Unit ``𝒰`` (:class:`~mdmt.layers.GateNU`, Eq. 2–3: ``δ = γ·sigmoid(ReLU(xW+b)W'+b')``,
``δ ∈ (0, γ)``, ``γ = 2``)::

    E        = E(F_S) ⊕ E(F_D)                               # Eq. 4  shared embedding layer
    δ_domain = 𝒰_ep(E(F_d) ⊕ ⊘(E))                           # Eq. 5  EPNet gate, ⊘ = stop-gradient
    O_ep     = δ_domain ⊗ E                                  # Eq. 6  personalised embedding
    O_prior  = E(F_u) ⊕ E(F_i) ⊕ E(F_a)                      # Eq. 7  user / item / author priors
    δ_task   = 𝒰_pp(O_prior ⊕ ⊘(O_ep))                       # Eq. 7  PPNet gate (one per tower layer)
    O_pp^(l) = δ_task^(l) ⊗ H^(l)                            # Eq. 8  split into T task blocks
    H^(l+1)  = f(O_pp^(l) W^(l) + b^(l)),  l = 1..L          # Eq. 9  every layer of every tower

Here ``F_d`` is the schema's ``domain_features`` plus the domain id (the embedding collection's
domain-id embedding when the domain is an input, ``model.embedding.domain_input``, else PEPNet's
own), and ``F_u/F_i/F_a`` is the schema's ``priors``. The task towers read ``O_ep``
(through an optional backbone ``H``, identity by default: PEPNet's towers sit directly on the
personalised embedding); they are ``[100, 64]`` and a last layer to the logit, as in §3.1.3.
``f`` is ReLU on hidden layers (after the model's ``norm``, as in every tower here); the last
layer's sigmoid is applied outside the model.

**Fallbacks** when the schema declares no groups: with no ``priors``, the user-side and
item-side id features (``source: user|item``, sequences excluded) are the priors, or every id
feature when there are none of those; with no ``domain_features``, the domain-side input is the
domain id embedding alone. Dense features in either group enter as their normalised value.

**Optimizers** (§2.3): the embedding tables (every ``nn.Embedding``, the domain id's included) on
Adagrad with lr 0.05, the dense weights on Adam with the trainer's learning rate; both are
configurable.

**Ablations** (Fig. 4(a), Fig. 5(d)), as config switches:

* ``epnet: false`` -- w/o EPNet (``O_ep = E``); ``ppnet: false`` -- w/o PPNet (plain towers of the
  same widths); both false -- w/o both.
* ``extra_input``: the general input of the gates (``⊘(E)`` in EPNet, ``⊘(O_ep)`` in PPNet) with
  ``stop_gradient`` (the paper's choice), with ``backprop`` (no ⊘), or ``none`` (left out).

Example::

    model = build_model("pepnet", spec, feature_map, {"epnet_gating": "field", "tower_hidden": [100, 64]})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor, nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import Activation, GateNU, Norm, ParallelMLP, StackedNorm, _linear_init_, activation
from ..schema import ConfigError, DatasetSpec, StrictModel
from .backbones import BackboneConfig, BackboneKind, build_backbone
from .base import MDMTModel, ModelOutput, OptimGroup, register

__all__ = ["PEPNetConfig", "EPNet", "PPNetHead", "PEPNet", "ExtraInput"]

ExtraInput = Literal["stop_gradient", "backprop", "none"]
Optimizer = Literal["adam", "adamw", "adagrad", "sgd"]


def extra_input(x: Tensor, mode: ExtraInput) -> list[Tensor]:
    """The general input of a gate, per Fig. 5(d): ``[⊘(x)]``, ``[x]`` or ``[]``."""
    if mode == "none":
        return []
    return [x.detach() if mode == "stop_gradient" else x]


class PEPNetConfig(StrictModel):
    """Config of ``pepnet``.

    Attributes:
        epnet: use EPNet (False: ``O_ep = E``, the "w/o EPNet" ablation).
        ppnet: use PPNet (False: plain towers of the same widths, "w/o PPNet").
        epnet_gating: ``element`` (one gate value per embedding unit, Eq. 6) or ``field`` (one
            per feature field, broadcast over its units; the paper's vector-wise option).
        extra_input: the gates' general input ``⊘(E)`` / ``⊘(O_ep)``: ``stop_gradient``,
            ``backprop`` or ``none`` (Fig. 5(d)).
        gamma: ``γ`` of every Gate NU (gate values in ``(0, γ)``).
        gate_hidden: width of a Gate NU's first layer (default: its input width).
        domain_dim: width of PEPNet's own domain id embedding, used when the domain is not an input
            of the embedding collection (default: the schema's ``default_dim``).
        backbone, backbone_params: an optional ``H`` between ``O_ep`` and the towers (``none`` =
            the towers read ``O_ep``).
        tower_hidden: hidden widths of every task tower (a last layer -> 1 logit follows).
        dropout, act: of the tower hidden layers.
        norm: normalisation of every hidden layer of the towers and the backbone (``none``,
            ``layernorm``, ``batchnorm``).
        embedding_optimizer, embedding_lr: the embeddings' optimizer (§2.3: Adagrad, 0.05).
        dense_optimizer, dense_lr: the other weights' optimizer (Adam; ``None`` = the trainer's lr).
    """

    epnet: bool = True
    ppnet: bool = True
    epnet_gating: Literal["element", "field"] = "element"
    extra_input: ExtraInput = "stop_gradient"
    gamma: PositiveFloat = 2.0
    gate_hidden: PositiveInt | None = None
    domain_dim: PositiveInt | None = None
    backbone: BackboneKind = "none"
    backbone_params: BackboneConfig = BackboneConfig()
    tower_hidden: list[PositiveInt] = Field(default_factory=lambda: [100, 64], min_length=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"
    norm: Norm = "none"
    embedding_optimizer: Optimizer = "adagrad"
    embedding_lr: PositiveFloat = 0.05
    dense_optimizer: Optimizer = "adam"
    dense_lr: PositiveFloat | None = None


class EPNet(nn.Module):
    """Embedding Personalized Network (Eq. 5–6): a domain-side gate on the shared embedding.

    Args:
        domain_dim: width ``k`` of the domain-side input ``E(F_d)``.
        field_widths: the widths of the fields of ``E`` in order (their sum is ``e``).
        gating: ``element`` (``δ ∈ (0, γ)^e``) or ``field`` (``δ ∈ (0, γ)^F``, each value scaling
            all units of its field).
        extra: the general input ``⊘(E)`` (see :func:`extra_input`).
        gamma, hidden: of the Gate NU.

    Shapes: ``domain_side`` ``[B, k]``, ``E`` ``[B, e]`` -> ``O_ep`` ``[B, e]``.
    """

    def __init__(self, domain_dim: int, field_widths: list[int], gating: Literal["element", "field"] = "element",
                 extra: ExtraInput = "stop_gradient", gamma: float = 2.0, hidden: int | None = None) -> None:
        super().__init__()
        e = sum(field_widths)
        self.extra, self.gating = extra, gating
        in_dim = domain_dim + (e if extra != "none" else 0)
        self.gate = GateNU(in_dim, e if gating == "element" else len(field_widths), hidden, gamma)  # 𝒰_ep
        field_of_unit = torch.repeat_interleave(torch.arange(len(field_widths)), torch.tensor(field_widths))
        self.register_buffer("field_of_unit", field_of_unit, persistent=False)

    def forward(self, domain_side: Tensor, E: Tensor) -> Tensor:
        delta = self.gate(torch.cat([domain_side, *extra_input(E, self.extra)], dim=-1))  # Eq. 5: δ_domain
        if self.gating == "field":
            delta = delta.index_select(1, self.field_of_unit)  # one value per field, over its units
        return delta * E  # Eq. 6: O_ep = δ_domain ⊗ E


class PPNetHead(nn.Module):
    """Parameter Personalized Network towers (Eq. 7–9): ``T`` towers whose every layer input is gated.

    Tower ``t`` has ``L = len(hidden) + 1`` layers (widths ``in -> hidden... -> 1``). Layer ``l``
    has its own Gate NU ``𝒰_pp^(l)`` on the gate input ``g`` giving ``δ_task^(l) ∈ (0, γ)^{h_l·T}``,
    split into ``T`` blocks of ``h_l``::

        O^(l)_t   = δ^(l)_t ⊗ H^(l)_t                  # Eq. 8
        H^(l+1)_t = f(O^(l)_t W^(l)_t + b^(l)_t)       # Eq. 9 (f = norm then act; the last layer is the logit)

    ``H^(1)_t`` is the tower's input. Head contract: :meth:`first` gives ``C_1 = H^(2)`` (the first
    layer's output), :meth:`rest` the logits from it, ``forward = rest ∘ first``.

    Args:
        in_dim: width of the tower input.
        num_tasks: ``T``.
        gate_dim: width of the gate input ``g`` (``O_prior ⊕ ⊘(O_ep)`` in PEPNet).
        hidden: hidden widths of every tower (at least one).
        gamma, gate_hidden: of the Gate NUs.
        dropout, act, norm: of the hidden layers.

    Shapes: ``x`` ``[B, in_dim]`` (the same input for every tower) or ``[B, T, in_dim]``,
    ``gate_input`` ``[B, gate_dim]`` -> logits ``[B, T]``; :meth:`first` -> ``[B, T, hidden[0]]``.

    Example::

        >>> import torch
        >>> head = PPNetHead(8, num_tasks=3, gate_dim=5, hidden=[6, 4])
        >>> head(torch.randn(2, 3, 8), torch.randn(2, 5)).shape
        torch.Size([2, 3])
    """

    def __init__(self, in_dim: int, num_tasks: int, gate_dim: int, hidden: list[int], gamma: float = 2.0,
                 gate_hidden: int | None = None, dropout: float = 0.0, act: str = "relu", norm: Norm = "none") -> None:
        super().__init__()
        if not hidden:
            raise ValueError("a PPNet tower needs at least one hidden layer")
        T = num_tasks
        dims = [in_dim, *hidden, 1]
        self.num_tasks, self.in_dim, self.gate_dim = T, in_dim, gate_dim
        self.first_dim = hidden[0]
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(T, a, b)) for a, b in zip(dims[:-1], dims[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.empty(T, b)) for b in dims[1:]])
        for w, b in zip(self.weights, self.biases):
            _linear_init_(w, b, w.shape[1])
        self.gates = nn.ModuleList([GateNU(gate_dim, T * a, gate_hidden, gamma) for a in dims[:-1]])  # 𝒰_pp^(l)
        self.acts = nn.ModuleList([activation(act) for _ in hidden])
        self.norms = nn.ModuleList([StackedNorm(T, h, norm) for h in hidden] if norm != "none" else [])
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _layer(self, l: int, h: Tensor, g: Tensor) -> Tensor:
        """Layer ``l`` (0-based) of every tower: ``[B, T, h_l] -> [B, T, h_{l+1}]``."""
        delta = self.gates[l](g).view(h.shape[0], self.num_tasks, -1)  # δ_task^(l) split into T blocks
        o = delta * h  # Eq. 8: O^(l) = δ^(l) ⊗ H^(l)
        # Eq. 9: O^(l) W^(l) + b^(l), one batched GEMM over the T towers
        z = torch.baddbmm(self.biases[l].unsqueeze(1), o.transpose(0, 1), self.weights[l]).transpose(0, 1)
        if l < len(self.acts):
            if len(self.norms):
                z = self.norms[l](z)
            z = self.dropout(self.acts[l](z))  # f = ReLU on hidden layers
        return z

    def first(self, x: Tensor, gate_input: Tensor | None = None) -> Tensor:
        """``C_1``: the first layer's output of every tower, ``[B, T, hidden[0]]``."""
        if gate_input is None:
            raise ValueError("the PPNet head needs its gate input (the priors)")
        if x.dim() == 2:
            x = x.unsqueeze(1).expand(-1, self.num_tasks, -1)
        return self._layer(0, x, gate_input)

    def rest(self, c1: Tensor, gate_input: Tensor | None = None) -> Tensor:
        """The logits from ``C_1``: ``[B, T]``."""
        if gate_input is None:
            raise ValueError("the PPNet head needs its gate input (the priors)")
        h = c1
        for l in range(1, len(self.weights)):
            h = self._layer(l, h, gate_input)
        return h.squeeze(-1)  # last layer: the logit (its sigmoid is applied outside)

    def forward(self, x: Tensor, gate_input: Tensor | None = None) -> Tensor:
        return self.rest(self.first(x, gate_input), gate_input)


def _group_keys(embeddings: EmbeddingCollection, features: list[str]) -> list[str]:
    """The one-id (non-sequence) lookup keys ``"feature@table"`` of ``features``, in key order."""
    wanted = set(features)
    return [k for k, f, _, kind, _ in embeddings._lookups if f in wanted and kind == "sparse"]


def _fallback_priors(spec: DatasetSpec) -> list[str]:
    """User- and item-side id features (or every id feature): PPNet's priors when the schema has none."""
    ids = spec.sparse_features()
    return [f.name for f in ids if f.source in ("user", "item")] or [f.name for f in ids]


class _Group(nn.Module):
    """A named feature group as one vector: the embeddings of its id features ⊕ its dense values.

    Shapes: ``batch`` -> ``[B, width]``.
    """

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, features: list[str]) -> None:
        super().__init__()
        self.keys = _group_keys(embeddings, features)
        dense = [f.name for f in spec.dense_features()]
        cols = [dense.index(f) for f in features if f in dense]
        seq = [f for f in features if spec.feature(f).kind == "sequence"]
        if seq:
            raise ConfigError(f"pepnet: sequence features cannot be priors or domain features: {seq}")
        self.register_buffer("dense_cols", torch.tensor(cols, dtype=torch.long), persistent=False)
        self.width = sum(embeddings.dims[k] for k in self.keys) + len(cols)

    def forward(self, batch: Batch, pooled: dict[str, Tensor]) -> list[Tensor]:
        parts = [pooled[k] for k in self.keys]
        if self.dense_cols.numel():
            parts.append(batch.dense.index_select(1, self.dense_cols))
        return parts


@register("pepnet", paper="Chang et al., KDD 2023")
class PEPNet(MDMTModel):
    """EPNet on the shared embedding, an optional backbone, PPNet-gated task towers.

    Shapes: ``E`` ``[B, e]`` -> ``O_ep`` ``[B, e]`` -> ``h = H(O_ep)`` ``[B, d]`` -> towers
    (every layer gated by ``δ_task^(l)``) -> logits ``{t: [B]}``.
    """

    config_class = PEPNetConfig
    domain_aware: ClassVar[bool] = True

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: PEPNetConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        e = embeddings.input_dim
        self.field_keys = list(embeddings.keys)
        widths = [embeddings.dims[k] for k in embeddings.keys] + [1] * embeddings.num_dense  # fields of E
        if cfg.epnet:
            self.domain_key = embeddings.domain_key  # the domain id, as an input of the collection
            if self.domain_key is None:  # or PEPNet's own domain id embedding
                self.domain_embedding = nn.Embedding(self.num_domains, cfg.domain_dim or spec.default_dim)
                nn.init.normal_(self.domain_embedding.weight, std=0.01)
                domain_dim = self.domain_embedding.embedding_dim
            else:
                domain_dim = embeddings.dims[self.domain_key]
            self.domain_side = _Group(spec, embeddings, spec.domain_features)  # E(F_d) besides the domain id
            k = domain_dim + self.domain_side.width
            self.epnet = EPNet(k, widths, cfg.epnet_gating, cfg.extra_input, cfg.gamma, cfg.gate_hidden)
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        d, T = self.backbone.out_dim, self.num_tasks
        if cfg.ppnet:
            self.priors = _Group(spec, embeddings, spec.priors or _fallback_priors(spec))  # F_u ⊕ F_i ⊕ F_a
            if self.priors.width == 0:
                raise ConfigError("pepnet: no prior features (the schema has no 'priors' and no id features)")
            gate_dim = self.priors.width + (e if cfg.extra_input != "none" else 0)
            self.head = PPNetHead(d, T, gate_dim, cfg.tower_hidden, cfg.gamma, cfg.gate_hidden, cfg.dropout, cfg.act,
                                  cfg.norm)
        else:
            self.head = ParallelMLP(d, cfg.tower_hidden, T, 1, cfg.dropout, cfg.act, cfg.norm)

    def forward(self, batch: Batch) -> ModelOutput:
        cfg = self.cfg
        pooled = self.embeddings.pooled(batch)
        E = self.embeddings.flat_input(batch, pooled=pooled)  # Eq. 4: E = E(F_S) ⊕ E(F_D): [B, e]
        if cfg.epnet:
            domain_id = pooled[self.domain_key] if self.domain_key is not None else self.domain_embedding(batch.domain)
            domain_side = torch.cat([domain_id, *self.domain_side(batch, pooled)], dim=-1)
            o_ep = self.epnet(domain_side, E)  # Eq. 5–6: O_ep = 𝒰_ep(E(F_d) ⊕ ⊘(E)) ⊗ E
        else:
            o_ep = E  # w/o EPNet
        fields = None
        if self.backbone.needs_fields:  # the gated field embeddings, [B, F, d]
            fields = o_ep[:, : E.shape[1] - self.embeddings.num_dense].reshape(E.shape[0], len(self.field_keys), -1)
        h = self.backbone(o_ep, fields)  # H (identity by default): [B, d]
        if cfg.ppnet:
            g = torch.cat([*self.priors(batch, pooled), *extra_input(o_ep, cfg.extra_input)], dim=-1)  # Eq. 7
            z = self.head(h, g)  # Eq. 8–9: every tower layer gated by δ_task^(l): [B, T]
        else:
            z = self.head(h)[..., 0]  # w/o PPNet: plain towers
        return ModelOutput({name: z[:, t] for t, name in enumerate(self.task_names)})

    def optim_groups(self) -> list[OptimGroup]:
        """§2.3: dense weights on Adam, embeddings on Adagrad (lr 0.05); both configurable."""
        emb = [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]
        ids = {id(p) for p in emb}
        dense = [p for p in self.parameters() if id(p) not in ids and p.requires_grad]
        return [
            OptimGroup("dense", dense, optimizer=self.cfg.dense_optimizer, lr=self.cfg.dense_lr),
            OptimGroup("embeddings", [p for p in emb if p.requires_grad], optimizer=self.cfg.embedding_optimizer,
                       lr=self.cfg.embedding_lr),
        ]
