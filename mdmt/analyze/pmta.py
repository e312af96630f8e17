"""What a trained PMTA learned, as numbers: task × task attention per domain and layer, the
distribution of DAR scales per domain, and the per-task prompt norms (``mdmt analyze``).

Computing only; :mod:`mdmt.analyze.plots` renders the result (DESIGN §5.9).

Example::

    >>> import torch
    >>> from mdmt.batch import Batch
    >>> from mdmt.featuremap import FeatureMap
    >>> from mdmt.models import build_model
    >>> from mdmt.schema import DatasetSpec, DomainSpec, FeatureSpec, TaskSpec
    >>> spec = DatasetSpec(name="t", features=[FeatureSpec(name="u", source="user")], default_dim=4,
    ...     domain=DomainSpec(column="d", names=["a", "b"]), tasks=[TaskSpec(name="x", label="x"), TaskSpec(name="y", label="y")])
    >>> model = build_model("pmta", spec, FeatureMap.layout_of(spec, vocabs={"u": ["1"]}), {"width": 48})
    >>> b = Batch.empty(num_sparse=1, num_dense=0, num_tasks=2, size=6)
    >>> b.domain = torch.tensor([0, 0, 0, 1, 1, 1])
    >>> res = analyze_model(model, b, ["a", "b"])
    >>> len(res.attention), len(res.attention[0]), res.rows        # domains x layers
    (2, 2, {'a': 3, 'b': 3})
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..batch import Batch
from ..models.pmta import PMTA

__all__ = ["DARStats", "PMTAAnalysis", "analyze_model", "DAR_BINS", "QUANTILES"]

DAR_BINS = 200  #: histogram bins of the DAR scales over their range (0, 2), 0.01 wide
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass
class DARStats:
    """The scales one DAR layer gives the rows of one domain (every entry of every ``[w]`` vector).

    Attributes:
        rows: rows of the domain.
        mean, std: over rows and entries.
        quantiles: at :data:`QUANTILES`.
        histogram: counts in :data:`DAR_BINS` equal bins over ``[0, 2]``.
        per_unit_mean: the mean scale of each of the ``w`` entries over the rows ``[w]``.
    """

    rows: int
    mean: float
    std: float
    quantiles: list[float]
    histogram: list[int]
    per_unit_mean: list[float]


@dataclass
class PMTAAnalysis:
    """Everything ``mdmt analyze`` reports for one PMTA model.

    Attributes:
        tasks, domains: labels, in model order.
        rows: rows analysed per domain.
        attention: ``[domain][layer]`` -> ``T × T`` mean attention weights (query task = row, key
            task = column; heads averaged), None for a domain without rows; empty with ``fusion: mlp``.
        attention_per_head: the same before averaging over heads, ``[domain][layer][head]``.
        dar: ``[domain][layer]`` -> :class:`DARStats` (None for a domain without rows); empty without DAR.
        prompt_norms: ``‖p^t‖₂`` per task (empty without TPE).
        token_norms: per task, the mean norms of the two halves of ``m^t``: ``tpe`` and ``c1``.
        config: the model's config (for the record).
    """

    tasks: list[str]
    domains: list[str]
    rows: dict[str, int]
    attention: list[list[list[list[float]] | None]] = field(default_factory=list)
    attention_per_head: list[list[list[list[list[float]]] | None]] = field(default_factory=list)
    dar: list[list[DARStats | None]] = field(default_factory=list)
    prompt_norms: dict[str, float] = field(default_factory=dict)
    token_norms: dict[str, dict[str, float]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _dar_stats(values: np.ndarray) -> DARStats:
    """``values`` ``[N, w]`` of one domain and layer."""
    flat = values.reshape(-1).astype(np.float64)
    hist, _ = np.histogram(flat, bins=DAR_BINS, range=(0.0, 2.0))
    return DARStats(
        rows=int(values.shape[0]),
        mean=float(flat.mean()),
        std=float(flat.std()),
        quantiles=[float(q) for q in np.quantile(flat, QUANTILES)],
        histogram=[int(c) for c in hist],
        per_unit_mean=[float(v) for v in values.mean(axis=0)],
    )


@torch.no_grad()
def analyze_model(model: PMTA, data: Batch, domains: list[str], batch_size: int = 4096) -> PMTAAnalysis:
    """Run ``model`` over ``data`` (eval mode) and collect its attention, DAR scales and prompt norms.

    Args:
        model: a PMTA model.
        data: the rows to analyse (e.g. the test split).
        domains: domain names in index order.
        batch_size: rows per forward pass.
    """
    model.eval()
    D, T = len(domains), model.num_tasks
    L = len(model.layers) if model.cfg.fusion == "transformer" else 0
    H = model.cfg.num_heads
    att_sum = torch.zeros(D, L, H, T, T, dtype=torch.float64)
    counts = torch.zeros(D, dtype=torch.float64)
    dar_vals: list[list[list[np.ndarray]]] = [[[] for _ in range(len(model.dar) if model.cfg.dar else 0)] for _ in range(D)]
    tpe_norm = torch.zeros(T, dtype=torch.float64)
    c1_norm = torch.zeros(T, dtype=torch.float64)
    for start in range(0, len(data), batch_size):
        b = data.slice(start, min(start + batch_size, len(data)))
        tr = model.trace(b)
        onehot = torch.nn.functional.one_hot(b.domain, D).to(torch.float64)  # [B, D]
        counts += onehot.sum(0)
        for i, a in enumerate(tr.attention):  # [B, h, T, T] -> per-domain sums
            att_sum[:, i] += torch.einsum("bd,bhqk->dhqk", onehot, a.to(torch.float64))
        for i, s in enumerate(tr.dar):
            for d in range(D):
                rows = b.domain == d
                if bool(rows.any()):
                    dar_vals[d][i].append(s[rows].numpy())
        c1_norm += tr.c1.norm(dim=-1).sum(0).to(torch.float64)
        if tr.tpe is not None:
            tpe_norm += tr.tpe.norm(dim=-1).sum(0).to(torch.float64)
    n = max(len(data), 1)
    res = PMTAAnalysis(
        tasks=list(model.task_names),
        domains=list(domains),
        rows={d: int(counts[k]) for k, d in enumerate(domains)},
        prompt_norms=model.prompt_norms(),
        token_norms={
            t: {"tpe": float(tpe_norm[k] / n) if model.cfg.tpe else 0.0, "c1": float(c1_norm[k] / n)}
            for k, t in enumerate(model.task_names)
        },
        config=model.cfg.model_dump(mode="json"),
    )
    for d in range(D):
        if counts[d] == 0:
            res.attention.append(None)
            res.attention_per_head.append(None)
            res.dar.append(None)  # type: ignore[arg-type]
            continue
        mean = att_sum[d] / counts[d]  # [L, h, T, T]
        res.attention.append(mean.mean(1).tolist())
        res.attention_per_head.append(mean.tolist())
        res.dar.append([_dar_stats(np.concatenate(v)) for v in dar_vals[d]])
    if L == 0:  # the fusion-MLP ablation has no attention
        res.attention, res.attention_per_head = [], []
    return res
