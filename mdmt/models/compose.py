"""Composition: any backbone H × any multi-task block × any head (DESIGN §2 "Plug-ins").

:class:`HeadedConfig` holds the fields every model with task towers shares: its head, the towers'
widths and the one ``dropout`` / ``act`` / ``norm`` of all its MLP blocks; :class:`CompositionConfig`
adds the choice of backbone. The
registered models (``sharedbottom``, ``mmoe``, ``ple``, ``dcnv2-mt``, ...) extend it with their own
fields and defaults and read top to bottom in their own files; ``compose`` below is the generic
composition a config uses to combine parts no registered model fixes::

    x      = E(batch)                  # embeddings, flat input [B, input_dim]
    h      = H(x)                      # backbone: none | mlp | dcnv2 | deepfm      [B, H]
    z      = Block(h, domain)          # multi-task block: shared | mmoe | ple      [B, T, d]
    logits = Head(z, gate_input)       # head: plain | ... (registered heads)      [B, T]

Example (YAML)::

    model:
      name: compose
      params: {backbone: dcnv2, block: mmoe, block_params: {num_experts: 6}, head: plain}
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, PositiveInt, ValidationInfo, field_validator

from ..batch import Batch
from ..embeddings import EmbeddingCollection
from ..layers import Activation, Norm
from ..schema import DatasetSpec, StrictModel
from .backbones import BackboneConfig, BackboneKind, build_backbone
from .base import MDMTModel, ModelOutput, register
from .blocks import BlockConfig, BlockKind, build_block
from .heads import HEADS, TowerConfig, build_head, head_config, reads_shared_input

__all__ = ["HeadedConfig", "CompositionConfig", "ComposeConfig", "Composed"]


class HeadedConfig(StrictModel):
    """Fields shared by every model with a registered head on task towers.

    Attributes:
        head: a registered head (``plain``, ...).
        head_params: the head's own settings (checked by the head's config; unknown keys raise).
        tower_hidden: hidden widths of each task tower (a last affine layer to one logit follows).
        dropout, act, norm: of every hidden layer of the model (backbone MLP, experts, towers).
    """

    head: str = "plain"
    head_params: dict[str, Any] = Field(default_factory=dict)
    tower_hidden: list[PositiveInt] = Field(default_factory=lambda: [32])
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    act: Activation = "relu"
    norm: Norm = "none"

    @field_validator("head")
    @classmethod
    def _known_head(cls, kind: str) -> str:
        if kind not in HEADS:
            raise ValueError(f"unknown head {kind!r}; registered: {', '.join(sorted(HEADS))}")
        return kind

    @field_validator("head_params")
    @classmethod
    def _head_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "head" in info.data:  # else the head itself was rejected above
            head_config(info.data["head"], params)  # the head's own strict config
        return params

    def towers(self) -> TowerConfig:
        """The towers' settings for :func:`~mdmt.models.heads.build_head`."""
        return TowerConfig(hidden=self.tower_hidden, dropout=self.dropout, act=self.act, norm=self.norm)


class CompositionConfig(HeadedConfig):
    """:class:`HeadedConfig` plus a choice of backbone.

    Attributes:
        backbone: the backbone H (``none``, ``mlp``, ``dcnv2``, ``deepfm``).
        backbone_params: its settings.
    """

    backbone: BackboneKind = "none"
    backbone_params: BackboneConfig = BackboneConfig()


class ComposeConfig(CompositionConfig):
    """Config of ``compose``: a backbone, a multi-task block and a head, each by name.

    Attributes:
        block: the multi-task block (``shared``, ``mmoe``, ``ple``).
        block_params: its settings (experts, levels).
    """

    backbone: BackboneKind = "mlp"
    block: BlockKind = "shared"
    block_params: BlockConfig = BlockConfig()


@register("compose", paper="backbone × multi-task block × head (DESIGN §2); the parts cite their papers")
class Composed(MDMTModel):
    """Any backbone, multi-task block and head.

    Shapes: ``x`` ``[B, input_dim]`` -> ``h`` ``[B, H]`` -> block ``[B, T, d]`` -> logits ``{t: [B]}``.
    """

    config_class = ComposeConfig
    domain_aware: ClassVar[bool] = False

    def __init__(self, spec: DatasetSpec, embeddings: EmbeddingCollection, cfg: ComposeConfig) -> None:
        super().__init__(spec, embeddings)
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, embeddings, cfg.backbone_params, cfg.norm)
        self.block = build_block(cfg.block, self.backbone.out_dim, self.num_tasks, cfg.block_params,
                                 cfg.dropout, cfg.act, cfg.norm, expand=not reads_shared_input(cfg.head))
        self.head = build_head(cfg.head, self.block.out_dim, self.num_tasks, cfg.towers(), cfg.head_params, embeddings)

    def forward(self, batch: Batch) -> ModelOutput:
        pooled = self.embeddings.pooled(batch)  # one lookup for every view
        h = self.backbone.embed(batch, self.embeddings, pooled)  # H(x): [B, H]
        z = self.block(h, batch.domain)  # one representation per task: [B, T, d]
        return self.output(self.head(z, self.head.gate_input(self.embeddings, batch, pooled)))  # [B, T]
