"""Heads: turn each task's representation ``[B, T, d]`` into one logit per task (DESIGN §2).

A head is the last of the three plug-in parts (backbone H × multi-task block × head). Every head
keeps one contract, so a model composes any of them:

* ``forward(x [B, T, d], gate_input [B, g] | None) -> logits [B, T]``;
* ``first(x, gate_input) -> C_1 [B, T, h_1]``: the output of each task tower's first layer
  (after its norm, activation and dropout), e.g. for PMTA's Eq. 3;
* ``rest(c1, gate_input) -> logits [B, T]``: the remaining layers, so that
  ``forward(x, g) == rest(first(x, g), g)``.

A head with ``shared_input = True`` also accepts ``x`` ``[B, d]``: one representation read by
every task (what the ``shared`` block hands it). That is the same as the expanded ``[B, T, d]``
but skips a ``[B, T, d]`` gradient in the backward pass.

``gate_input`` is for heads whose towers are gated by an extra input (PPNet); a head that wants
one says so with :meth:`Head.gate_width` and builds it with :meth:`Head.gate_input`, so a model
never checks which head it holds. Plain towers take none.

Heads are registered by name (``plain``, ``ppnet``; other modules add theirs with :func:`register_head`)
and built with :func:`build_head`. Each head class has its own strict ``config_class`` for its
``head_params``; the tower widths, dropout, activation and norm are the model's
(:class:`TowerConfig`), shared by every head.

Per-domain towers (one tower per (domain, task), as SpecificTop and PLE-MD have) are any head
with ``D·T`` towers read through :func:`domain_task_logits`.

Example::

    >>> import torch
    >>> head = build_head("plain", in_dim=8, num_tasks=3, towers=TowerConfig(hidden=[16, 4]))
    >>> x = torch.randn(5, 3, 8)
    >>> head(x).shape, head.first(x).shape
    (torch.Size([5, 3]), torch.Size([5, 3, 16]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor, nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import Activation, GateNU, Norm, ParallelMLP, StackedNorm, _linear_init_, activation, domain_select
from ..schema import ConfigError, StrictModel, parse_config

__all__ = [
    "TowerConfig",
    "NoParams",
    "Head",
    "PlainHead",
    "HeadInfo",
    "HEADS",
    "register_head",
    "head_config",
    "reads_shared_input",
    "build_head",
    "domain_task_logits",
    "PPNetParams",
    "PPNetHead",
    "prior_width",
    "prior_input",
]


class TowerConfig(StrictModel):
    """What every head's task towers share, set by the model's config.

    Attributes:
        hidden: hidden widths of each task tower (a last affine layer to one logit follows).
        dropout, act, norm: of the hidden layers (``norm``: the models' one normalisation option).
    """

    hidden: list[PositiveInt] = Field(default_factory=lambda: [32])
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"
    norm: Norm = "none"


class NoParams(StrictModel):
    """A head without options of its own (``head_params`` must be empty)."""


class Head(nn.Module):
    """Base of every head. See the module docstring for the contract.

    Args:
        in_dim: ``d``, the width of each task's representation.
        num_tasks: ``T``, the number of towers.
        towers: the tower widths, dropout, activation and norm.
        cfg: the head's own settings (an instance of ``config_class``).
        gate_dim: width of ``gate_input`` (0 for heads that take none).
    """

    config_class: ClassVar[type[StrictModel]] = NoParams
    registry_name: ClassVar[str] = ""
    #: the head also accepts ``x`` ``[B, d]``, one representation for every task
    shared_input: ClassVar[bool] = False

    def __init__(self, in_dim: int, num_tasks: int, towers: TowerConfig, cfg: StrictModel, gate_dim: int = 0) -> None:
        super().__init__()
        self.in_dim, self.num_tasks = in_dim, num_tasks
        self.first_dim: int = in_dim  # h_1, the width of first(); set by subclasses

    @classmethod
    def gate_width(cls, embeddings: EmbeddingCollection, cfg: StrictModel) -> int:
        """Width of the ``gate_input`` this head wants from a model over ``embeddings``; 0 = none."""
        return 0

    def gate_input(self, embeddings: EmbeddingCollection, batch: Batch, pooled: dict[str, Tensor]) -> Tensor | None:
        """Build ``gate_input`` ``[B, gate_width]`` from the batch's embeddings (``pooled``, from
        :meth:`EmbeddingCollection.pooled`); None for heads that take none. A model with its own
        gate input (PEPNet's ⊘(O_ep)) passes that to the head instead."""
        return None

    def first(self, x: Tensor, gate_input: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def rest(self, c1: Tensor, gate_input: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, gate_input: Tensor | None = None) -> Tensor:
        """``[B, T, d]`` -> logits ``[B, T]``: ``rest(first(x))``."""
        return self.rest(self.first(x, gate_input), gate_input)


@dataclass
class HeadInfo:
    name: str
    cls: type[Head]


HEADS: dict[str, HeadInfo] = {}


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator: ``@register_head("ppnet")``. Names are lower-case and unique."""
    if name != name.lower():
        raise ValueError(f"head names are lower-case, got {name!r}")

    def deco(cls: type[Head]) -> type[Head]:
        if name in HEADS and HEADS[name].cls is not cls:
            raise ValueError(f"head name {name!r} is already registered")
        cls.registry_name = name
        HEADS[name] = HeadInfo(name, cls)
        return cls

    return deco


def reads_shared_input(kind: str) -> bool:
    """Whether head ``kind`` accepts one ``[B, d]`` representation for every task (``shared_input``)."""
    return kind in HEADS and HEADS[kind].cls.shared_input


def head_config(kind: str, params: dict[str, Any] | None = None) -> StrictModel:
    """Validate ``params`` against head ``kind``'s config (unknown keys raise, naming ``head_params``)."""
    if kind not in HEADS:
        raise ConfigError(f"unknown head {kind!r}; registered: {', '.join(sorted(HEADS))}")
    return parse_config(params or {}, HEADS[kind].cls.config_class, f"head '{kind}' head_params")


def build_head(
    kind: str,
    in_dim: int,
    num_tasks: int,
    towers: TowerConfig | None = None,
    params: dict[str, Any] | StrictModel | None = None,
    embeddings: EmbeddingCollection | None = None,
) -> Head:
    """Build head ``kind`` with ``num_tasks`` towers over ``[B, T, in_dim]``.

    ``embeddings`` (the model's collection) sizes the ``gate_input`` of heads that take one.
    """
    cfg = params if isinstance(params, StrictModel) else head_config(kind, params)
    cls = HEADS[kind].cls
    gate = cls.gate_width(embeddings, cfg) if embeddings is not None else 0
    return cls(in_dim, num_tasks, towers or TowerConfig(), cfg, gate)


@register_head("plain")
class PlainHead(Head):
    """Plain task towers: tower ``t`` is an MLP ``[d] -> hidden -> 1`` on task ``t``'s representation.

    ``first`` is each tower's first hidden layer, ``C_1^t = act(norm(x_t W_1^t + b_1^t))``, and
    ``rest`` the remaining hidden layers and the logit layer. With no hidden layer ``C_1^t = x_t``.
    All towers run as one :class:`~mdmt.layers.ParallelMLP` per part.

    Shapes: ``x`` ``[B, T, d]`` (or ``[B, d]``, the same input for every tower) -> ``C_1``
    ``[B, T, hidden[0]]`` -> logits ``[B, T]``.
    """

    shared_input: ClassVar[bool] = True

    def __init__(self, in_dim: int, num_tasks: int, towers: TowerConfig, cfg: StrictModel, gate_dim: int = 0) -> None:
        super().__init__(in_dim, num_tasks, towers, cfg, gate_dim)
        t = towers
        first = t.hidden[:1]
        self.first_layer = ParallelMLP(in_dim, first, num_tasks, dropout=t.dropout, act=t.act, norm=t.norm)
        self.first_dim = self.first_layer.out_dim
        self.rest_layers = ParallelMLP(self.first_dim, t.hidden[1:], num_tasks, 1, t.dropout, t.act, t.norm)

    def first(self, x: Tensor, gate_input: Tensor | None = None) -> Tensor:
        return self.first_layer(x)  # C_1^t: [B, T, h_1]

    def rest(self, c1: Tensor, gate_input: Tensor | None = None) -> Tensor:
        return self.rest_layers(c1)[..., 0]  # [B, T]


def domain_task_logits(head: Head, x: Tensor, domain: Tensor, num_domains: int, gate_input: Tensor | None = None) -> Tensor:
    """Logits of per-(domain, task) towers: ``head`` holds ``D·T`` towers, tower ``p·T + t`` is
    task ``t``'s tower of domain ``p``; every row keeps its own domain's ``T`` logits.

    All ``D`` tower sets run on every row (one batched op) and
    :func:`~mdmt.layers.domain_select` picks the row's domain, so ``forward`` stays tensor-only.

    Shapes: ``x`` ``[B, T, d]`` (or ``[B, d]`` for a head with ``shared_input``), ``domain``
    ``[B]`` -> ``[B, T]``.
    """
    every = x if x.dim() == 2 else x.repeat(1, num_domains, 1)  # task t's input for tower p·T + t
    z = head(every, gate_input)  # [B, D·T]: every domain's towers
    B, T = z.shape[0], z.shape[1] // num_domains
    return domain_select(z.view(B, num_domains, T).transpose(0, 1), domain, rows=True)  # [B, T]


# ---------------------------------------------------------------------------------------------
# PPNet: PEPNet's parameter-personalised towers (Chang et al., KDD'23, Eq. 7-9)
# ---------------------------------------------------------------------------------------------
def _prior_keys(embeddings: EmbeddingCollection) -> list[str]:
    """The fallback priors when the schema names none: the user- and item-side one-id keys, or
    every one-id key when there are none of those."""
    side = set(embeddings.group_keys("user", kind="sparse")) | set(embeddings.group_keys("item", kind="sparse"))
    keys = [k for k in embeddings.keys if k in side]
    return keys or list(embeddings.sparse_keys)


def prior_width(embeddings: EmbeddingCollection) -> int:
    """Width of :func:`prior_input`; declares the dense priors' projections (call it in a constructor)."""
    if embeddings.priors:
        return embeddings.use(embeddings.priors)
    keys = _prior_keys(embeddings)
    if not keys:
        raise ConfigError("the PPNet head needs prior features: the schema has no 'priors' and no id features")
    return sum(embeddings.dims[k] for k in keys)


def prior_input(embeddings: EmbeddingCollection, batch: Batch, pooled: dict[str, Tensor]) -> Tensor:
    """PEPNet's ``O_prior = E(F_u) ⊕ E(F_i) ⊕ E(F_a)`` (Eq. 7): the schema's ``priors`` (dense ones
    through their learned projection), or without them the user- and item-side id embeddings.

    Shapes: -> ``[B, prior_width(embeddings)]``.
    """
    if embeddings.priors:
        return embeddings.features(batch, embeddings.priors, pooled)
    return embeddings.flat_input(batch, keys=_prior_keys(embeddings), pooled=pooled)


class PPNetParams(StrictModel):
    """``head_params`` of ``ppnet``.

    Attributes:
        gamma: ``γ`` of every Gate NU (gate values in ``(0, γ)``).
        gate_hidden: width of a Gate NU's first layer (default: its input width).
    """

    gamma: PositiveFloat = 2.0
    gate_hidden: PositiveInt | None = None


@register_head("ppnet")
class PPNetHead(Head):
    """Parameter Personalized Network towers (PEPNet, Chang et al., KDD'23, Eq. 7–9).

    Tower ``t`` has ``L = len(hidden) + 1`` layers (widths ``d -> hidden... -> 1``). Layer ``l``
    has its own Gate NU ``𝒰_pp^(l)`` (:class:`~mdmt.layers.GateNU`) on the gate input ``g``,
    giving ``δ_task^(l) ∈ (0, γ)^{h_l·T}``, split into ``T`` blocks of ``h_l``::

        δ_task^(l) = 𝒰_pp^(l)(g)                        # Eq. 7 (g = O_prior ⊕ ⊘(O_ep) in PEPNet)
        O^(l)_t    = δ^(l)_t ⊗ H^(l)_t                   # Eq. 8
        H^(l+1)_t  = f(O^(l)_t W^(l)_t + b^(l)_t)        # Eq. 9, l = 1..L

    ``H^(1)_t`` is the tower's input, so every layer of every tower is gated; ``f`` is the norm
    then the activation on hidden layers, and the last layer gives the logit (its sigmoid is
    applied outside). In a composition the gate input is the priors, :func:`prior_input`
    (:meth:`gate_input`); PEPNet passes ``O_prior ⊕ ⊘(O_ep)`` itself.

    Head contract: :meth:`first` is the first layer, ``C_1 = H^(2)`` (``x`` itself when the
    towers have no hidden layer), :meth:`rest` the remaining layers, ``forward = rest ∘ first``.

    Shapes: ``x`` ``[B, T, d]`` (or ``[B, d]``, the same input for every tower), ``gate_input``
    ``[B, gate_dim]`` -> logits ``[B, T]``; :meth:`first` -> ``[B, T, hidden[0]]``.

    Example::

        >>> import torch
        >>> head = PPNetHead(8, 3, TowerConfig(hidden=[6, 4]), PPNetParams(), gate_dim=5)
        >>> head(torch.randn(2, 3, 8), torch.randn(2, 5)).shape
        torch.Size([2, 3])
    """

    config_class = PPNetParams
    shared_input = True  # [B, d] is broadcast to the towers; the per-task gates make it [B, T, d]

    def __init__(self, in_dim: int, num_tasks: int, towers: TowerConfig, cfg: StrictModel, gate_dim: int = 0) -> None:
        super().__init__(in_dim, num_tasks, towers, cfg, gate_dim)
        assert isinstance(cfg, PPNetParams)
        if gate_dim <= 0:
            raise ConfigError("the ppnet head needs a gate input (the priors); build it with the model's embeddings")
        T, hidden = num_tasks, list(towers.hidden)
        dims = [in_dim, *hidden, 1]
        self.gate_dim_ = gate_dim
        self.num_first = 1 if hidden else 0  # layers in first(): the first hidden layer, if any
        self.first_dim = hidden[0] if hidden else in_dim
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(T, a, b)) for a, b in zip(dims[:-1], dims[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.empty(T, b)) for b in dims[1:]])
        for w, b in zip(self.weights, self.biases):
            _linear_init_(w, b, w.shape[1])
        self.gates = nn.ModuleList([GateNU(gate_dim, T * a, cfg.gate_hidden, cfg.gamma) for a in dims[:-1]])  # 𝒰_pp^(l)
        self.acts = nn.ModuleList([activation(towers.act) for _ in hidden])
        self.norms = nn.ModuleList([StackedNorm(T, h, towers.norm) for h in hidden] if towers.norm != "none" else [])
        self.dropout = nn.Dropout(towers.dropout) if towers.dropout > 0 else nn.Identity()

    @classmethod
    def gate_width(cls, embeddings: EmbeddingCollection, cfg: StrictModel) -> int:
        return prior_width(embeddings)

    def gate_input(self, embeddings: EmbeddingCollection, batch: Batch, pooled: dict[str, Tensor]) -> Tensor | None:
        return prior_input(embeddings, batch, pooled)  # O_prior

    def _layer(self, l: int, h: Tensor, g: Tensor) -> Tensor:
        """Layer ``l`` (0-based) of every tower: ``[B, T, h_l] -> [B, T, h_{l+1}]``."""
        delta = self.gates[l](g).view(h.shape[0], self.num_tasks, -1)  # δ_task^(l), split into T blocks
        o = delta * h  # Eq. 8: O^(l) = δ^(l) ⊗ H^(l)
        # Eq. 9: O^(l) W^(l) + b^(l), one batched GEMM over the T towers
        z = torch.baddbmm(self.biases[l].unsqueeze(1), o.transpose(0, 1), self.weights[l]).transpose(0, 1)
        if l < len(self.acts):  # f on hidden layers: norm, activation (ReLU), dropout
            if len(self.norms):
                z = self.norms[l](z)
            z = self.dropout(self.acts[l](z))
        return z

    @staticmethod
    def _need(gate_input: Tensor | None) -> Tensor:
        if gate_input is None:
            raise ValueError("the ppnet head needs its gate input (the priors)")
        return gate_input

    def first(self, x: Tensor, gate_input: Tensor | None = None) -> Tensor:
        g = self._need(gate_input)
        if x.dim() == 2:
            x = x.unsqueeze(1).expand(-1, self.num_tasks, -1)
        for l in range(self.num_first):
            x = self._layer(l, x, g)
        return x  # C_1: [B, T, h_1]

    def rest(self, c1: Tensor, gate_input: Tensor | None = None) -> Tensor:
        g = self._need(gate_input)
        h = c1
        for l in range(self.num_first, len(self.weights)):
            h = self._layer(l, h, g)
        return h.squeeze(-1)  # the last layer's logit: [B, T]
