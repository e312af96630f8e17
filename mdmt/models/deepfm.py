"""DeepFM (Guo et al., IJCAI 2017), multi-task.

An FM component and a deep component share the embeddings ``v_i`` of the ``F`` fields::

    y_FM   = <w, x> + Σ_{i<j} <v_i, v_j>                      # first order + pairwise
           = <w, x> + Σ_k ½((Σ_i v_ik)² − Σ_i v_ik²)           # O(F·d) form
    a^(0)  = x = [e_1, ..., e_m, dense]                       # flat input
    a^(l+1)= σ(W^(l) a^(l) + b^(l))                           # deep component
    ŷ      = sigmoid(y_FM + y_DNN)

Multi-task: the first-order, FM and DNN bottom are shared; each task ``t`` has its own DNN
head, so ``logit_t = <w, x> + w_0 + y_pairwise + DNN_t(a^(L))``.

First-order terms: a Linear over the flat input (the embeddings and the dense features) instead
of an extra 1-dim embedding table. Per field ``f`` this is ``<w_f, e_f>``; since every id's
embedding ``e_f`` is free, it can express any per-id scalar weight (it ties it to the embedding),
and the dense features get their first-order weights in the same layer.

The FM part reads :meth:`EmbeddingCollection.stacked`, so every table must share one dim
(sequences enter as their mean-pooled embedding, dense features only the linear and deep parts).

Example::

    model = build_model("deepfm", spec, feature_map, {"dnn_hidden": [64], "tower_hidden": [32]})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, PositiveInt
from torch import nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import MLP, Activation, Norm, ParallelMLP, fm_bi_interaction
from ..schema import DatasetSpec, StrictModel
from .backbones import field_dim
from .base import MDMTModel, ModelOutput, register

__all__ = ["DeepFMConfig", "DeepFM"]


class DeepFMConfig(StrictModel):
    """Config of ``deepfm``.

    Attributes:
        dnn_hidden: widths of the shared DNN bottom.
        tower_hidden: hidden widths of each task's DNN head (a final Linear -> 1 follows).
        dropout, act: of the hidden layers.
        norm: normalisation of every hidden layer (``none``, ``layernorm``, ``batchnorm``).
    """

    dnn_hidden: list[PositiveInt] = Field(default_factory=lambda: [64])
    tower_hidden: list[PositiveInt] = Field(default_factory=lambda: [32])
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"
    norm: Norm = "none"


@register("deepfm", paper="Guo et al., IJCAI 2017")
class DeepFM(MDMTModel):
    """First-order + FM pairwise + per-task DNN heads over a shared DNN bottom.

    Shapes: ``x`` ``[B, input_dim]``, ``v`` ``[B, F, d]`` -> linear ``[B, 1]``, FM ``[B, 1]``,
    DNN ``[B, T]`` -> logits ``{t: [B]}``.
    """

    config_class = DeepFMConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: DeepFMConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        field_dim(embeddings, "deepfm")  # FM needs one embedding dim: fail at build time, clearly
        self.linear = nn.Linear(embeddings.input_dim, 1)  # <w, x> + w_0
        self.dnn = MLP(embeddings.input_dim, cfg.dnn_hidden, dropout=cfg.dropout, act=cfg.act, norm=cfg.norm)
        self.towers = ParallelMLP(self.dnn.out_dim, cfg.tower_hidden, self.num_tasks, 1, cfg.dropout, cfg.act, cfg.norm)

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.embeddings.pooled(batch)  # one lookup for both views
        x = self.embeddings.flat_input(batch, pooled=e)  # [B, input_dim]
        v = self.embeddings.stacked(batch, pooled=e)  # [B, F, d]
        y_first = self.linear(x)  # first order <w, x> + w_0: [B, 1]
        y_pair = fm_bi_interaction(v).sum(-1, keepdim=True)  # Σ_{i<j} <v_i, v_j>: [B, 1]
        y_dnn = self.towers(self.dnn(x))[..., 0]  # shared DNN bottom, per-task heads: [B, T]
        z = y_first + y_pair + y_dnn  # logit_t = y_FM + y_DNN_t
        return ModelOutput({name: z[:, t] for t, name in enumerate(self.task_names)})
