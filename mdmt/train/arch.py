"""Bi-level architecture steps (M3oE Eq. 11): held-out training rows and the step cadence.

A model's ``step_on="valid"`` optimizer groups (e.g. M3oE's fusion weights α, β) are stepped on
mini-batches of a held-out share of the TRAINING rows (``train.arch_holdout``): never the
validation or test split, and never the rows the main optimizer trains on. The cadence
``train.arch_every`` is a number of main steps (1 = after every step) or ``"epoch"`` (one
architecture step after each epoch of main steps, as M3oE §2.6.1 describes).

Example::

    main_rows, arch_rows = holdout_rows(1000, share=0.1, seed=0)   # 900 and 100 disjoint indices
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

from ..batch import Batch
from ..data.loader import BatchIterator
from ..schema import ConfigError

__all__ = ["holdout_rows", "ArchSteps"]


def holdout_rows(n: int, share: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split ``range(n)`` into (main rows, held-out rows): a seeded random ``share`` set aside.

    Both are sorted int64 index tensors, disjoint, together covering every row; the held-out
    part has ``round(share·n)`` rows, at least one, and leaves at least one main row.
    """
    k = min(max(1, round(share * n)), n - 1)
    if n < 2 or k < 1:
        raise ConfigError(f"train.arch_holdout: {n} training row(s) cannot be split into main and held-out rows")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 104729))
    return perm[k:].sort().values, perm[:k].sort().values


class ArchSteps:
    """Calls ``step(batch)`` on held-out batches at the configured cadence.

    Args:
        held_out: the held-out training rows.
        batch_size: rows per architecture batch.
        every: a number of main steps between architecture steps, or ``"epoch"``.
        step: the architecture step (e.g. :meth:`Trainer.arch_step`).
        seed: shuffling seed of the held-out rows.
        device: where batches go.
    """

    def __init__(self, held_out: Batch, batch_size: int, every: int | str, step: Callable[[Batch], None],
                 seed: int, device: torch.device) -> None:
        self.batches = BatchIterator(held_out, batch_size, shuffle=True, seed=seed)
        self.every = every
        self.step = step
        self.device = device
        self.main_steps = 0
        self.arch_steps = 0
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        """Restart the cadence and the held-out order for ``epoch``: both depend on the epoch only,
        so a run resumed at an epoch boundary repeats an uninterrupted run's architecture steps."""
        self._epoch, self._cycle, self.main_steps = epoch, 0, 0
        self.batches.set_epoch(epoch * 1000)
        self._it: Iterator[Batch] = iter(self.batches)

    def _next(self) -> Batch:
        b = next(self._it, None)
        if b is None:  # the held-out rows are used up within the epoch: reshuffle
            self._cycle += 1
            self.batches.set_epoch(self._epoch * 1000 + self._cycle)
            self._it = iter(self.batches)
            b = next(self._it)
        return b

    def _run(self) -> None:
        self.step(self._next().to(self.device, non_blocking=True))
        self.arch_steps += 1

    def after_main_step(self) -> None:
        """Count one main step; step the architecture when ``every`` main steps have passed."""
        self.main_steps += 1
        if self.every != "epoch" and self.main_steps % int(self.every) == 0:
            self._run()

    def after_epoch(self) -> None:
        """With ``every="epoch"``: one architecture step after the epoch's main steps."""
        if self.every == "epoch":
            self._run()
