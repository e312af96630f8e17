"""Masked multi-task loss (DESIGN §2, §6: the reduction is the mean)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..batch import Batch
from ..models.base import ModelOutput

__all__ = ["masked_bce", "multitask_loss"]


def masked_bce(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Mean binary cross-entropy over the rows where ``mask`` is True.

    Args:
        logits, labels: ``[B]``; mask: ``[B]`` bool.
    Returns:
        a scalar; 0 (with a gradient path) when no row is observed.
    """
    m = mask.to(logits.dtype)
    per_row = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (per_row * m).sum() / m.sum().clamp(min=1.0)


def multitask_loss(
    out: ModelOutput, batch: Batch, task_names: list[str], weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``sum_t w_t * masked_bce_t (+ aux_loss)``.

    Args:
        out: the model's output; ``out.logits[t]`` is ``[B]``.
        batch: the batch; ``labels``/``label_mask`` are ``[B, T]`` in ``task_names`` order.
        weights: ``[T]`` task weights (default 1).
    Returns:
        ``(total, per_task)`` where ``per_task`` is ``[T]`` (detached).
    """
    logits = torch.stack([out.logits[t] for t in task_names], dim=1)  # [B, T]
    m = batch.label_mask.to(logits.dtype)
    per_row = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none")
    per_task = (per_row * m).sum(0) / m.sum(0).clamp(min=1.0)  # [T]
    w = weights if weights is not None else torch.ones_like(per_task)
    total = (per_task * w).sum()
    if out.aux_loss is not None:
        total = total + out.aux_loss
    return total, per_task.detach()
