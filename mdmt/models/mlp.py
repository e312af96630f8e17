"""MLP: the single-domain single-task baseline "(a)" of M3oE (Zhang et al., SIGIR'24).

``flat_input -> MLP -> one logit per task`` (one linear head with ``T`` outputs). In M3oE's
"(a)" setting one such model is trained per (domain, task) cell; the trainer's ``cell`` regime
does that. Each hidden layer is Linear -> norm -> ReLU. M3oE describes its MLP baseline as "a
linear operation with a ReLU activation function and layer normalization" (``norm: layernorm``);
the default is ``none``, the one default of every model, so that a bench compares like with like
(set ``model_defaults: {norm: layernorm}`` in a bench to give every row LayerNorm).

Example::

    model = build_model("mlp", spec, feature_map, {"hidden": [64, 32]})
    logits = model(batch).logits          # {task: [B]}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, PositiveInt

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import MLP, Activation, Norm
from ..schema import DatasetSpec, StrictModel
from .base import MDMTModel, ModelOutput, register

__all__ = ["MLPConfig", "MLPModel"]


class MLPConfig(StrictModel):
    """Config of ``mlp``.

    Attributes:
        hidden: hidden widths.
        norm: normalisation after each hidden Linear (``none``, ``layernorm`` as in M3oE's MLP
            baseline, ``batchnorm``).
        dropout, act: per hidden layer.
    """

    hidden: list[PositiveInt] = Field(default_factory=lambda: [64, 32])
    norm: Norm = "none"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"


@register("mlp", paper="M3oE's single-domain single-task baseline (Zhang et al., SIGIR 2024)")
class MLPModel(MDMTModel):
    """Plain MLP over the flat input with one logit per task.

    Shapes: ``flat_input`` ``[B, input_dim]`` -> hidden ``[B, hidden[-1]]`` -> logits ``[B, T]``.
    """

    config_class = MLPConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: MLPConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.mlp = MLP(
            embeddings.input_dim, cfg.hidden, out_dim=self.num_tasks, dropout=cfg.dropout, act=cfg.act,
            norm=cfg.norm,
        )

    def forward(self, batch: Batch) -> ModelOutput:
        z = self.mlp(self.embeddings.flat_input(batch))  # [B, T]
        return ModelOutput({name: z[:, t] for t, name in enumerate(self.task_names)})
