"""xDeepFM (Lian et al., KDD 2018): a linear part, a plain DNN and a Compressed Interaction
Network (CIN), multi-task.

With ``a`` the raw input, ``X^0 ∈ R^{m×D}`` the ``m`` field embeddings and ``e`` their
concatenation::

    x^1_dnn   = σ(W^1 e + b^1),  x^k_dnn = σ(W^k x^{k-1}_dnn + b^k)                  # Eq. 2–3: DNN
    X^k_{h,*} = Σ_{i=1..H_{k-1}} Σ_{j=1..m} W^{k,h}_{ij} (X^{k-1}_{i,*} ∘ X^0_{j,*})  # Eq. 6: CIN layer k
    p^k_h     = Σ_j X^k_{h,j},   p^+ = [p^1, ..., p^K]                                # Eq. 7: sum pooling
    ŷ         = σ(w_linᵀ a + w_dnnᵀ x_dnn + w_cinᵀ p^+ + b)                            # Eq. 8: output unit

Multi-task: the DNN and the CIN are shared; each task has its own linear part ``w_lin,t`` and its
own tower over ``x_dnn ⊕ p^+`` (``tower_hidden: []`` is Eq. 8's linear output unit). The linear
part reads the flat input (embeddings and dense features), as in ``deepfm``: an id's first-order
weight is tied to its embedding. The sigmoid is applied outside. The DNN ⊕ CIN part is the
``xdeepfm`` backbone (:class:`~mdmt.models.backbones.XDeepFMBackbone`); the CIN needs one
embedding dim for every table.

Example::

    model = build_model("xdeepfm", spec, feature_map, {"cin_layers": [32, 32], "dnn_hidden": [64]})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, PositiveInt
from torch import nn

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import Activation, Norm, ParallelMLP
from ..schema import DatasetSpec, StrictModel
from .backbones import XDeepFMBackbone, field_dim
from .base import MDMTModel, ModelOutput, register

__all__ = ["XDeepFMConfig", "XDeepFM"]


class XDeepFMConfig(StrictModel):
    """Config of ``xdeepfm``.

    Attributes:
        cin_layers: feature maps ``H_k`` of each CIN layer (Eq. 6).
        dnn_hidden: widths of the plain DNN (Eq. 2–3).
        tower_hidden: hidden widths of each task's output tower (``[]`` = Eq. 8's linear unit).
        dropout, act: of the hidden layers.
        norm: normalisation of every hidden layer (``none``, ``layernorm``, ``batchnorm``).
    """

    cin_layers: list[PositiveInt] = Field(default_factory=lambda: [32, 32], min_length=1)
    dnn_hidden: list[PositiveInt] = Field(default_factory=lambda: [64])
    tower_hidden: list[PositiveInt] = Field(default_factory=lambda: [32])
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"
    norm: Norm = "none"


@register("xdeepfm", paper="Lian et al., KDD 2018")
class XDeepFM(MDMTModel):
    """Linear + DNN + CIN with per-task output towers.

    Shapes: ``a`` ``[B, input_dim]``, ``X^0`` ``[B, m, D]`` -> ``x_dnn ⊕ p^+``
    ``[B, dnn_hidden[-1] + Σ H_k]`` -> logits ``{t: [B]}``.
    """

    config_class = XDeepFMConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: XDeepFMConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        field_dim(embeddings, "xdeepfm")  # the CIN needs one embedding dim: fail at build time, clearly
        self.linear = nn.Linear(embeddings.input_dim, self.num_tasks)  # w_lin,t and b_t
        self.body = XDeepFMBackbone(embeddings.input_dim, len(embeddings.keys), cfg.dnn_hidden, cfg.cin_layers,
                                    cfg.dropout, cfg.act, cfg.norm)
        self.towers = ParallelMLP(self.body.out_dim, cfg.tower_hidden, self.num_tasks, 1, cfg.dropout, cfg.act, cfg.norm)

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.embeddings.pooled(batch)  # one lookup for both views
        a = self.embeddings.flat_input(batch, pooled=pooled)  # [B, input_dim]
        x0 = self.embeddings.stacked(batch, pooled=pooled)  # X^0: [B, m, D]
        h = self.body(a, x0)  # Eq. 2–3 and Eq. 6–7: x_dnn ⊕ p^+
        z = self.linear(a) + self.towers(h)[..., 0]  # Eq. 8 per task: w_linᵀa + b + tower_t(x_dnn ⊕ p^+)
        return ModelOutput({name: z[:, t] for t, name in enumerate(self.task_names)})
