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

Composition: EPNet on the embedding -> backbone ``H`` (``none`` by default: the towers sit on
``O_ep``) -> multi-task block (``shared`` by default) -> head ``ppnet``
(:class:`~mdmt.models.heads.PPNetHead`, Eq. 7–9) with towers ``[100, 64]`` and a last layer to
the logit (§3.1.3). ``f`` is ReLU on hidden layers (after the model's ``norm``); the last layer's
sigmoid is applied outside the model.

``F_d`` is the domain id plus the schema's ``domain_features`` (dense ones through their learned
projection, :meth:`EmbeddingCollection.features`); the domain id is the collection's ``<domain>``
input (``model.embedding.domain_input``, on by default) or, when that is off, PEPNet's own
embedding. ``F_u/F_i/F_a`` is the schema's ``priors`` (:func:`~mdmt.models.heads.prior_input`).

**Fallbacks** when the schema declares no groups: with no ``priors``, the user-side and
item-side id features (``source: user|item``, sequences excluded) are the priors, or every id
feature when there are none of those; with no ``domain_features``, EPNet reads the domain id
embedding alone.

**Optimizers** (§2.3): the embedding tables (every ``nn.Embedding``, the domain id's included) on
Adagrad with lr 0.05, the dense weights (dense features' projections included) on Adam with the
trainer's learning rate; both are configurable.

**Ablations** (Fig. 4(a), Fig. 5(d)), as config switches:

* ``epnet: false`` -- w/o EPNet (``O_ep = E``); ``head: plain`` -- w/o PPNet (plain towers of the
  same widths); both -- w/o both.
* ``extra_input``: the general input of both gates (``⊘(E)`` in EPNet, ``⊘(O_ep)`` in PPNet):
  ``stop_gradient`` (the paper's choice), ``backprop`` (no ⊘) or ``none`` (left out).

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
from ..layers import GateNU, stop_gradient, tap
from ..schema import DatasetSpec, StrictModel
from .backbones import BackboneKind, build_backbone
from .base import MDMTModel, ModelOutput, OptimGroup, register
from .blocks import BlockConfig, BlockKind, build_block
from .compose import CompositionConfig
from .heads import PPNetHead, PPNetParams, build_head, prior_input, prior_width, reads_shared_input

__all__ = ["PEPNetConfig", "EPNet", "PEPNet", "ExtraInput", "extra_input"]

ExtraInput = Literal["stop_gradient", "backprop", "none"]
Optimizer = Literal["adam", "adamw", "adagrad", "sgd"]


def extra_input(x: Tensor, mode: ExtraInput, name: str) -> list[Tensor]:
    """The general input of a gate, per Fig. 5(d): ``[⊘(x)]``, ``[x]`` or ``[]``."""
    if mode == "none":
        return []
    return [stop_gradient(x, name) if mode == "stop_gradient" else x]


class PEPNetConfig(CompositionConfig):
    """Config of ``pepnet``: the fields of :class:`~mdmt.models.compose.CompositionConfig`
    (backbone, head, tower widths, dropout, act, norm) with PEPNet's defaults, plus:

    Attributes:
        head: ``ppnet`` (default); ``plain`` is the "w/o PPNet" ablation (plain towers of the same widths).
        block, block_params: the multi-task block between the backbone and the towers (``shared``).
        epnet: use EPNet (False: ``O_ep = E``, the "w/o EPNet" ablation).
        epnet_gating: ``element`` (one gate value per embedding unit, Eq. 6) or ``field`` (one
            per feature field, broadcast over its units; the paper's vector-wise option).
        extra_input: the gates' general input ``⊘(E)`` / ``⊘(O_ep)``: ``stop_gradient``,
            ``backprop`` or ``none`` (Fig. 5(d)).
        gamma: ``γ`` of every Gate NU (gate values in ``(0, γ)``); ``head_params`` may set the
            PPNet gates' own.
        gate_hidden: width of a Gate NU's first layer (default: its input width).
        domain_dim: width of PEPNet's own domain id embedding, used only when the domain is not an
            input of the embedding collection (default: the schema's ``default_dim``).
        embedding_optimizer, embedding_lr: the embeddings' optimizer (§2.3: Adagrad, 0.05).
        dense_optimizer, dense_lr: the other weights' optimizer (Adam, the trainer's lr).
            Any of the four set to ``None`` inherits ``train.optimizer`` / ``train.lr`` (e.g. one
            Adam for everything, as the paper's offline comparison in §3.1.3 has it).
    """

    head: str = "ppnet"
    tower_hidden: list[PositiveInt] = Field(default_factory=lambda: [100, 64])
    backbone: BackboneKind = "none"
    block: BlockKind = "shared"
    block_params: BlockConfig = BlockConfig()
    epnet: bool = True
    epnet_gating: Literal["element", "field"] = "element"
    extra_input: ExtraInput = "stop_gradient"
    gamma: PositiveFloat = 2.0
    gate_hidden: PositiveInt | None = None
    domain_dim: PositiveInt | None = None
    embedding_optimizer: Optimizer | None = "adagrad"
    embedding_lr: PositiveFloat | None = 0.05
    dense_optimizer: Optimizer | None = "adam"
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
        delta = self.gate(torch.cat([domain_side, *extra_input(E, self.extra, "E")], dim=-1))  # Eq. 5: δ_domain
        if self.gating == "field":
            delta = delta.index_select(1, self.field_of_unit)  # one value per field, over its units
        return delta * E  # Eq. 6: O_ep = δ_domain ⊗ E


@register("pepnet", paper="Chang et al., KDD 2023")
class PEPNet(MDMTModel):
    """EPNet on the shared embedding, a backbone and block, PPNet-gated task towers.

    Shapes: ``E`` ``[B, e]`` -> ``O_ep`` ``[B, e]`` -> ``h = H(O_ep)`` ``[B, H]`` -> block
    ``[B, T, d]`` -> towers (every layer gated by ``δ_task^(l)``) -> logits ``{t: [B]}``.
    """

    config_class = PEPNetConfig
    domain_aware: ClassVar[bool] = True

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: PEPNetConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        e = embeddings.input_dim
        if cfg.epnet:
            self.domain_key = embeddings.domain_key  # the domain id, an input of the collection
            if self.domain_key is None:  # or PEPNet's own domain id embedding
                self.domain_embedding = nn.Embedding(self.num_domains, cfg.domain_dim or spec.default_dim)
                nn.init.normal_(self.domain_embedding.weight, std=0.01)
                domain_dim = self.domain_embedding.embedding_dim
            else:
                domain_dim = embeddings.dims[self.domain_key]
            self.domain_features = list(spec.domain_features)  # E(F_d) besides the domain id
            k = domain_dim + (embeddings.use(self.domain_features) if self.domain_features else 0)
            widths = [embeddings.dims[key] for key in embeddings.keys] + [1] * embeddings.num_dense  # fields of E
            self.epnet = EPNet(k, widths, cfg.epnet_gating, cfg.extra_input, cfg.gamma, cfg.gate_hidden)
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        self.block = build_block(cfg.block, self.backbone.out_dim, self.num_tasks, cfg.block_params,
                                 cfg.dropout, cfg.act, cfg.norm, expand=not reads_shared_input(cfg.head))
        self.own_gate = cfg.head == "ppnet"  # PPNet reads O_prior ⊕ ⊘(O_ep), not only the priors
        if self.own_gate:
            params = PPNetParams(**{"gamma": cfg.gamma, "gate_hidden": cfg.gate_hidden, **cfg.head_params})
            gate_dim = prior_width(embeddings) + (e if cfg.extra_input != "none" else 0)
            self.head = PPNetHead(self.block.out_dim, self.num_tasks, cfg.towers(), params, gate_dim)
        else:
            self.head = build_head(cfg.head, self.block.out_dim, self.num_tasks, cfg.towers(), cfg.head_params,
                                   embeddings)

    def forward(self, batch: Batch) -> ModelOutput:
        cfg = self.cfg
        pooled = self.embeddings.pooled(batch)  # one lookup for every view
        E = tap(self.embeddings.flat_input(batch, pooled=pooled), "E")  # Eq. 4: E = E(F_S) ⊕ E(F_D): [B, e]
        if cfg.epnet:
            domain_id = pooled[self.domain_key] if self.domain_key is not None else self.domain_embedding(batch.domain)
            side = [domain_id]
            if self.domain_features:
                side.append(self.embeddings.features(batch, self.domain_features, pooled))
            o_ep = self.epnet(torch.cat(side, dim=-1), E)  # Eq. 5–6: O_ep = 𝒰_ep(E(F_d) ⊕ ⊘(E)) ⊗ E
        else:
            o_ep = E  # w/o EPNet
        o_ep = tap(o_ep, "O_ep")
        fields = None
        if self.backbone.needs_fields:  # the gated field embeddings, [B, F, d]
            n = E.shape[1] - self.embeddings.num_dense
            fields = o_ep[:, :n].reshape(E.shape[0], len(self.embeddings.keys), -1)
        h = self.backbone(o_ep, fields)  # H (identity by default): [B, H]
        z = self.block(h, batch.domain)  # one representation per task: [B, T, d] (or [B, d], shared)
        if self.own_gate:  # Eq. 7: δ_task = 𝒰_pp(O_prior ⊕ ⊘(O_ep))
            g = torch.cat([prior_input(self.embeddings, batch, pooled), *extra_input(o_ep, cfg.extra_input, "O_ep")],
                          dim=-1)
        else:
            g = self.head.gate_input(self.embeddings, batch, pooled)
        return self.output(self.head(z, g))  # Eq. 8–9: every tower layer gated by δ_task^(l): [B, T]

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
