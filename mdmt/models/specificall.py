"""SpecificAll: domain-specific embeddings and one task tower per (domain, task), a multi-domain
multi-task baseline of PEPNet (Chang et al., KDD'23, §3.1.2) and PMTA (CIKM'25, §3.1.2).

PEPNet: "Different from SpecificTOP, this model not only distinguishes different top DNN task
towers on different domains, but also adopts specific bottom Embedding layers"; PMTA: it "fully
specializes both embeddings and task layers for each domain". For a row of domain ``p``::

    x    = E_p(batch)                  # every embedding table has one block of rows per domain
    h    = H(x)                        # shared bottom (an MLP by default)       [B, H]
    y_t  = tower_{p,t}(h)              # the tower of task t in the row's domain p

It is :class:`~mdmt.models.specifictop.SpecificTop` with every embedding table per-domain:
the model sets ``per_domain: true`` of its embedding settings (``embedding_overrides``), so the
:class:`~mdmt.embeddings.EmbeddingCollection` routes every lookup by ``batch.domain``.

Example::

    model = build_model("specificall", spec, feature_map)
    model.embeddings.cfg.per_domain       # True
"""

from __future__ import annotations

from typing import Any, ClassVar

from .base import register
from .specifictop import SpecificTop, SpecificTopConfig

__all__ = ["SpecificAll"]


@register("specificall", paper="PEPNet (Chang et al., KDD 2023) and PMTA (CIKM 2025) §3.1.2")
class SpecificAll(SpecificTop):
    """Per-domain embeddings, a shared bottom, one tower per (domain, task).

    Config: :class:`~mdmt.models.specifictop.SpecificTopConfig`. Forward: as ``specifictop``; the
    embeddings it reads are the row's domain's.
    """

    config_class = SpecificTopConfig
    embedding_overrides: ClassVar[dict[str, Any]] = {"per_domain": True}  # E_p: specific embedding layers
