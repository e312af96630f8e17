"""The one typed Batch every model consumes (DESIGN §2, §5.3)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

__all__ = ["Batch"]


@dataclass
class Batch:
    """A batch of encoded rows. ``B`` rows, ``F`` sparse features, ``Dn`` dense features, ``T`` tasks.

    Attributes:
        sparse: ``[B, F]`` int64 ids (0 = padding, 1 = OOV, known ids from 2), order = ``FeatureMap.sparse``.
        dense: ``[B, Dn]`` float32, order = ``FeatureMap.dense`` (``Dn`` may be 0).
        domain: ``[B]`` int64 domain index.
        labels: ``[B, T]`` float32 in {0, 1} (0 where unobserved).
        label_mask: ``[B, T]`` bool, True where the task's label is observed.
        group: ``[B]`` int64 GAUC key (usually the user), -1 when the data has none.
        sequences: ``{name: [B, L]}`` int64 ids, left-aligned, 0-padded, most recent first.
        seq_lengths: ``{name: [B]}`` int64 true lengths.

    Example::

        >>> b = Batch.empty(num_sparse=2, num_dense=1, num_tasks=3, size=4)
        >>> b.sparse.shape, len(b)
        (torch.Size([4, 2]), 4)
    """

    sparse: Tensor
    dense: Tensor
    domain: Tensor
    labels: Tensor
    label_mask: Tensor
    group: Tensor
    sequences: dict[str, Tensor] = field(default_factory=dict)
    seq_lengths: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.domain.shape[0])

    def _map(self, fn) -> "Batch":
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = {k: fn(t) for k, t in v.items()} if isinstance(v, dict) else fn(v)
        return Batch(**out)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """Move every tensor to ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self._map(lambda t: t.pin_memory())

    def slice(self, start: int, stop: int) -> "Batch":
        """Rows ``start:stop`` as views (no copy)."""
        return self._map(lambda t: t[start:stop])

    def index(self, idx: Tensor) -> "Batch":
        """Rows picked by an index tensor ``[b]`` (a copy)."""
        return self._map(lambda t: t.index_select(0, idx))

    @staticmethod
    def concat(batches: list["Batch"]) -> "Batch":
        first = batches[0]
        out = {}
        for f in fields(first):
            v = getattr(first, f.name)
            if isinstance(v, dict):
                out[f.name] = {k: torch.cat([getattr(b, f.name)[k] for b in batches]) for k in v}
            else:
                out[f.name] = torch.cat([getattr(b, f.name) for b in batches])
        return Batch(**out)

    @staticmethod
    def empty(num_sparse: int, num_dense: int, num_tasks: int, size: int = 0) -> "Batch":
        return Batch(
            sparse=torch.full((size, num_sparse), 1, dtype=torch.long),
            dense=torch.zeros(size, num_dense),
            domain=torch.zeros(size, dtype=torch.long),
            labels=torch.zeros(size, num_tasks),
            label_mask=torch.ones(size, num_tasks, dtype=torch.bool),
            group=torch.full((size,), -1, dtype=torch.long),
        )
