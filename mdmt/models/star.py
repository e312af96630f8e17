"""STAR: Star Topology Adaptive Recommender (Sheng et al., CIKM 2021, "One Model to Serve All").

One network serves every domain; each part is split into shared and domain-specific parameters.
For a row of domain ``p`` with flat input ``z``:

1. **Partitioned Normalization** (PN) of the input::

       z' = (γ · γ_p) ⊙ (z − μ_p) / sqrt(σ²_p + ε) + (β + β_p)

   ``μ_p, σ²_p``: statistics of domain ``p``'s rows in the batch when training, the per-domain
   running statistics in eval mode.
2. **Star-topology FCN**: every layer of domain ``p`` uses ``W*_p = W ⊙ W_p`` and
   ``b*_p = b + b_p``::

       out_p = φ((W*_p)ᵀ in_p + b*_p)

   The hidden star layers are shared by all tasks; each task ``t`` has its own star output
   layer (one column of a star linear with ``T`` outputs) giving the main logit ``s_m^t``.
3. **Auxiliary network**: a small MLP over the domain-indicator embedding ⊕ the input gives
   ``s_a^t``; the final logit is ``s_m^t + s_a^t`` (the paper's ``sigmoid(s_m + s_a)``).

All per-domain routing goes through :func:`mdmt.layers.domain_select`.

Example::

    model = build_model("star", spec, feature_map, {"hidden": [64, 32], "aux_hidden": [32]})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import MLP, Activation, Norm, PartitionedNorm, StarLinear, activation, norm_layer
from ..schema import DatasetSpec, StrictModel
from .base import MDMTModel, ModelOutput, register

__all__ = ["STARConfig", "STAR"]


class STARConfig(StrictModel):
    """Config of ``star``.

    Attributes:
        hidden: widths of the shared-by-tasks star FCN layers.
        aux_hidden: hidden widths of the auxiliary network (a final Linear -> T follows).
        domain_dim: width of the domain-indicator embedding of the auxiliary network.
        pn_eps, pn_momentum: ε and the running-statistics momentum of Partitioned Normalization.
        dropout, act: of the hidden layers.
        norm: normalisation of every hidden layer, star FCN and auxiliary network (``none``,
            ``layernorm``, ``batchnorm``).
    """

    hidden: list[PositiveInt] = Field(default_factory=lambda: [64, 32])
    aux_hidden: list[PositiveInt] = Field(default_factory=lambda: [32])
    domain_dim: PositiveInt = 8
    pn_eps: PositiveFloat = 1e-5
    pn_momentum: float = Field(default=0.1, gt=0.0, le=1.0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"
    norm: Norm = "none"


@register("star", paper="Sheng et al., CIKM 2021")
class STAR(MDMTModel):
    """Partitioned Normalization, star-topology FCN with per-task star outputs, auxiliary network.

    Shapes: ``z`` ``[B, input_dim]`` -> PN ``[B, input_dim]`` -> star layers ``[B, hidden[-1]]``
    -> star output ``[B, T]``; auxiliary ``[B, domain_dim + input_dim]`` -> ``[B, T]``.
    """

    config_class = STARConfig
    domain_aware: ClassVar[bool] = True

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: STARConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        D, d = self.num_domains, embeddings.input_dim
        self.pn = PartitionedNorm(d, D, eps=cfg.pn_eps, momentum=cfg.pn_momentum)
        layers = []
        for h in cfg.hidden:
            layers.append(StarLinear(d, h, D))
            d = h
        self.star_layers = nn.ModuleList(layers)
        self.norms = nn.ModuleList([norm_layer(cfg.norm, h) for h in cfg.hidden])
        self.acts = nn.ModuleList([activation(cfg.act) for _ in cfg.hidden])
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.star_out = StarLinear(d, self.num_tasks, D)  # column t = task t's star output layer
        self.domain_embedding = nn.Embedding(D, cfg.domain_dim)
        nn.init.normal_(self.domain_embedding.weight, std=0.01)
        self.aux = MLP(cfg.domain_dim + embeddings.input_dim, cfg.aux_hidden, out_dim=self.num_tasks,
                       dropout=cfg.dropout, act=cfg.act, norm=cfg.norm)

    def forward(self, batch: Batch) -> ModelOutput:
        domain = batch.domain
        z = self.embeddings.flat_input(batch)  # [B, input_dim]
        # (1) Partitioned Normalization: (γ·γ_p)(z − μ_p)/sqrt(σ²_p + ε) + (β + β_p)
        x = self.pn(z, domain)
        # (2) star-topology FCN: out_p = φ((W ⊙ W_p)ᵀ in_p + b + b_p), shared by the tasks
        #     (with the models' common hidden-layer norm before φ; none by default)
        for layer, norm, act in zip(self.star_layers, self.norms, self.acts):
            x = self.dropout(act(norm(layer(x, domain))))
        s_main = self.star_out(x, domain)  # per-task star output layer: [B, T]
        # (3) auxiliary network over the domain indicator ⊕ the input
        s_aux = self.aux(torch.cat([self.domain_embedding(domain), z], dim=-1))  # [B, T]
        logits = s_main + s_aux  # sigmoid(s_m + s_a) is applied outside the model
        return ModelOutput({name: logits[:, t] for t, name in enumerate(self.task_names)})
