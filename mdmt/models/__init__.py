"""Models: the registry and every registered model (DESIGN §2).

Importing this package fills :data:`REGISTRY`; build a model by name with :func:`build_model`.

Example::

    >>> from mdmt.models import REGISTRY
    >>> sorted(REGISTRY)[:3]
    ['compose', 'dcnv2', 'dcnv2-mt']
"""

from __future__ import annotations

# every model module registers itself on import
from . import (  # noqa: F401
    adatt,
    aitm,
    compose,
    dcn,
    dcnv2,
    dcnv2_mt,
    deepfm,
    dtrn,
    m2m,
    m3oe,
    mlp,
    mmoe,
    pepnet,
    ple,
    ple_md,
    pmta,
    sharedbottom,
    sharedtop,
    specificall,
    specifictop,
    star,
    xdeepfm,
)
from .backbones import BackboneConfig, BackboneKind, build_backbone
from .base import REGISTRY, MDMTModel, ModelInfo, ModelOutput, OptimGroup, build_model, model_config, register

__all__ = [
    "REGISTRY",
    "register",
    "build_model",
    "model_config",
    "ModelOutput",
    "ModelInfo",
    "OptimGroup",
    "MDMTModel",
    "BackboneConfig",
    "BackboneKind",
    "build_backbone",
]
