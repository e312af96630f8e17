"""Ranking metrics per (domain, task) cell, their aggregates, and statistics over seeds (DESIGN §4).

Definitions (the full text with formulas is ``docs/metrics.md``):

- **AUC** of a cell: the Mann-Whitney statistic over the rows of that domain where the task's
  label is observed, ties counted as half (average ranks). It equals the area under the ROC curve.
  A cell with no rows or a single class is NaN, with a reason.
- **GAUC** of a cell: the AUC of every group (usually the user) inside the cell, averaged with
  weights equal to the group's row count (impression-weighted) or with equal weights
  (unweighted). Groups with a single class are skipped; the *coverage* is the share of the cell's
  rows that lie in groups with both classes.
- **LogLoss**: mean binary cross-entropy of the clipped probabilities.
- **Aggregates**: the mean of the cell AUCs ("avg AUC", NaN cells ignored) and the per-task AUC
  pooled over all domains, averaged over tasks ("macro task AUC", the overall figure reported by
  the official M3oE code).
- **RelaImpr** ``((AUC_model - 0.5) / (AUC_base - 0.5) - 1) * 100``.
- **Over seeds**: mean ± sample std, and a two-sided paired t-test against a baseline
  (``*`` marks p < 0.05).

Everything is vectorised numpy. Grouped AUCs sort the rows by (group, score) with a stable radix
sort (the score order is shared by the cell, pooled and group AUCs of a task) and read the average
rank of each tie run off the run boundaries: no Python loop over groups or rows. ``evaluate`` on 1M rows × 6 tasks × 3 domains takes a few seconds on one
core; ``benchmarks/metrics_speed.py`` measures it.

Example::

    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1, 0, 1]); s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    >>> round(auc(y, s), 4)
    0.8889
    >>> value, coverage = gauc(y, s, group=np.array([0, 0, 0, 1, 1, 1]))
    >>> round(value, 4), coverage
    (0.75, 1.0)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

__all__ = [
    "auc",
    "auc_reason",
    "gauc",
    "gauc_details",
    "GAUCResult",
    "logloss",
    "relaimpr",
    "mean_std",
    "paired_ttest",
    "significance_marker",
    "CellMetrics",
    "EvalResult",
    "evaluate",
    "SeedRow",
    "SeedTable",
    "seed_table",
]

#: Default probability clipping of :func:`logloss`.
LOGLOSS_EPS = 1e-7
#: Significance level of the ``*`` marker.
ALPHA = 0.05


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _labels(y: Any, name: str = "y") -> np.ndarray:
    """``y`` as a bool vector ``[n]``; raises ``ValueError`` naming the first row that is not 0/1."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"{name}[{row}] = {arr[row]!r}; labels must be 0 or 1")
    return arr == 1


def _scores(s: Any, n: int, name: str = "s") -> np.ndarray:
    """``s`` as a numeric vector ``[n]`` (dtype kept, so exact ties stay ties)."""
    arr = np.asarray(s)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) like the labels, got {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int8)
    if not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _groups(g: Any, n: int, name: str = "group") -> np.ndarray:
    arr = np.asarray(g)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) like the labels, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer ids (-1 = no group), got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _nonfinite(s: np.ndarray) -> np.ndarray:
    """Bool mask of non-finite scores (always False for integer scores)."""
    if np.issubdtype(s.dtype, np.floating):
        return ~np.isfinite(s)
    return np.zeros(s.shape, dtype=bool)


def _nanmean(values: Sequence[float] | np.ndarray) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


# --------------------------------------------------------------------------------------------
# The vectorised core: Mann-Whitney U per segment
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segments:
    """Per-segment statistics. ``S`` segments (distinct keys present), in increasing key order.

    ``u2`` is twice the Mann-Whitney U of positives over negatives, so it is an exact integer:
    ``AUC = u2 / (2 * pos * (n - pos))`` where both classes are present.
    """

    key: np.ndarray  # [S] the key of each segment
    n: np.ndarray  # [S] int64 rows
    pos: np.ndarray  # [S] int64 positives
    u2: np.ndarray  # [S] int64 2·U

    def auc(self) -> np.ndarray:
        """``[S]`` float64 AUC per segment, NaN where a class is missing."""
        neg = self.n - self.pos
        ok = (self.pos > 0) & (neg > 0)
        out = np.full(self.n.shape, np.nan)
        out[ok] = self.u2[ok] / (2.0 * self.pos[ok] * neg[ok])
        return out


def _sortable_uint(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Map numbers to unsigned ints with the same order (equal numbers -> equal ints).

    Returns ``(u, bits)``: ``u`` ``[n]`` unsigned ints of the input's width, shifted so that the
    minimum is 0, and the bit width of the maximum. Floats use the IEEE trick (flip every bit of negatives, set the sign bit of
    positives), after ``+ 0`` so that ``-0.0`` and ``0.0`` stay one tie. NaN is not allowed.
    """
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        utype = np.uint32 if x.dtype == np.float32 else np.uint64
        width = np.iinfo(utype).bits
        b = (x + x.dtype.type(0)).view(utype)
        sign = utype(1 << (width - 1))
        u = np.where(b & sign, ~b, b | sign)
    elif np.issubdtype(x.dtype, np.signedinteger):
        utype = np.dtype(f"uint{x.dtype.itemsize * 8}").type
        u = x.view(utype) ^ utype(1 << (x.dtype.itemsize * 8 - 1))
    else:
        u = x
    if u.size == 0:
        return u, 0
    u = u - u.min()
    return u, int(u.max()).bit_length()


def _radix_order(x: np.ndarray, perm: np.ndarray | None = None) -> np.ndarray:
    """Permutation sorting ``x`` ascending; with ``perm``, a stable re-sort of ``perm`` by ``x``.

    LSD radix sort over 16-bit digits: each pass is numpy's stable argsort of a ``uint16`` array,
    which numpy runs as a radix sort, so a float32 score needs two linear passes instead of a
    comparison sort. ``_radix_order(key, _radix_order(score))`` orders rows by (key, score).
    """
    u, bits = _sortable_uint(x)
    if perm is None:
        perm = np.arange(u.shape[0])
        if bits == 0:
            return perm
        u_perm = u
    elif bits == 0:
        return perm
    else:
        u_perm = u[perm]
    if bits <= 32 and u_perm.dtype.itemsize > 4:
        u_perm = u_perm.astype(np.uint32)
    for shift in range(0, bits, 16):
        digit = (u_perm >> shift).astype(np.uint16)  # the cast keeps the low 16 bits
        step = np.argsort(digit, kind="stable")
        perm = perm[step]
        if shift + 16 < bits:
            u_perm = u_perm[step]
    return perm


def _segment_u(
    y: np.ndarray, s: np.ndarray, key: np.ndarray | None = None, score_order: np.ndarray | None = None
) -> _Segments:
    """Mann-Whitney U of every segment of rows sharing ``key`` (one segment when ``key`` is None).

    Args:
        y: ``[n]`` bool labels.
        s: ``[n]`` finite scores.
        key: ``[n]`` integer segment key, or None for one segment.
        score_order: ``_radix_order(s)`` when the caller already has it (shared by several keys).

    Rows are ordered by (key, score) with a stable LSD radix sort. A tie run is a maximal block of
    equal (key, score); its rows share the average 1-based rank of the block within its segment,
    ``start + (len + 1) / 2``, kept doubled so that everything stays an exact int64.
    """
    n = int(y.shape[0])
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Segments(empty, empty, empty, empty)
    order = _radix_order(s) if score_order is None else score_order
    if key is not None:
        order = _radix_order(key, order)
        ks = key[order]
    ss = s[order]
    ys = y[order]

    new_seg = np.zeros(n, dtype=bool)
    new_seg[0] = True
    if key is not None:
        np.not_equal(ks[1:], ks[:-1], out=new_seg[1:])
    new_run = new_seg.copy()
    new_run[1:] |= ss[1:] != ss[:-1]

    seg_start = np.flatnonzero(new_seg)  # [S] first sorted row of each segment
    run_start = np.flatnonzero(new_run)  # [R] first sorted row of each tie run
    run_len = np.diff(run_start, append=n)  # [R]
    run_opens_seg = new_seg[run_start]  # [R] this run is the first of its segment
    seg_of_run = np.cumsum(run_opens_seg) - 1  # [R]
    # doubled average rank of the run inside its segment: 2·(offset) + len + 1
    rank2 = 2 * (run_start - seg_start[seg_of_run]) + run_len + 1  # [R] int64
    pos_run = np.add.reduceat(ys, run_start, dtype=np.int64)  # [R]
    first_run_of_seg = np.flatnonzero(run_opens_seg)  # [S]
    pos = np.add.reduceat(pos_run, first_run_of_seg)  # [S]
    rank_sum2 = np.add.reduceat(pos_run * rank2, first_run_of_seg)  # [S] 2·(sum of positive ranks)
    seg_n = np.diff(seg_start, append=n)
    u2 = rank_sum2 - pos * (pos + 1)
    seg_key = ks[seg_start] if key is not None else np.zeros(1, dtype=np.int64)
    return _Segments(seg_key, seg_n.astype(np.int64), pos.astype(np.int64), u2.astype(np.int64))


def _per_category_auc(seg: _Segments, K: int) -> np.ndarray:
    """``[K]`` AUC per key ``0..K-1`` (NaN for keys without rows or with one class)."""
    out = np.full(K, math.nan)
    out[seg.key.astype(np.int64)] = seg.auc()
    return out


def _reason(n: int, pos: int, nonfinite: int) -> str | None:
    """Why a cell's AUC is NaN, or None when it is defined."""
    if n == 0:
        return "no rows"
    if nonfinite:
        return f"non-finite scores in {nonfinite} of {n} rows"
    if pos == 0:
        return f"single class (all 0) in {n} rows"
    if pos == n:
        return f"single class (all 1) in {n} rows"
    return None


# --------------------------------------------------------------------------------------------
# AUC, GAUC, LogLoss
# --------------------------------------------------------------------------------------------


def auc_reason(y: Any, s: Any) -> tuple[float, str | None]:
    """AUC with the reason it is undefined.

    Args:
        y: ``[n]`` labels in {0, 1} (bool, int or float).
        s: ``[n]`` scores; higher means more likely positive. Equal scores are ties (half credit).

    Returns:
        ``(auc, None)``, or ``(nan, reason)`` with reason ``"no rows"``,
        ``"single class (all 0) in 37 rows"``, ``"single class (all 1) in 5 rows"`` or
        ``"non-finite scores in 2 of 100 rows"``.

    Example::

        >>> auc_reason([0, 0, 0], [0.1, 0.2, 0.3])
        (nan, 'single class (all 0) in 3 rows')
    """
    yb = _labels(y)
    ss = _scores(s, yb.shape[0])
    n, pos, bad = int(yb.shape[0]), int(yb.sum()), int(_nonfinite(ss).sum())
    why = _reason(n, pos, bad)
    if why is not None:
        return math.nan, why
    return float(_segment_u(yb, ss).auc()[0]), None


def auc(y: Any, s: Any) -> float:
    """Area under the ROC curve = Mann-Whitney U / (n_pos · n_neg), ties get the average rank.

    ``y``, ``s``: ``[n]``. NaN for no rows, a single class or non-finite scores (see
    :func:`auc_reason` for the reason).

    Example::

        >>> auc([0, 1, 0, 1], [0.2, 0.2, 0.1, 0.9])
        0.875
    """
    return auc_reason(y, s)[0]


@dataclass(frozen=True)
class GAUCResult:
    """Group AUC with everything needed to judge it.

    Attributes:
        weighted: AUC per group averaged with weights = group row count (impression-weighted).
        unweighted: plain mean of the group AUCs.
        coverage: share of all rows lying in groups with both classes (rows with group -1 count
            in the denominator, never in the numerator).
        groups: number of distinct groups (group >= 0).
        groups_used: number of groups with both classes.
        reason: why the value is NaN, else None.
    """

    weighted: float
    unweighted: float
    coverage: float
    groups: int
    groups_used: int
    reason: str | None


def _gauc_from_segments(
    seg: _Segments, cell_of_seg: np.ndarray, num_cells: int, rows_per_cell: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Aggregate per-group segments into per-cell GAUC.

    Args:
        seg: group segments (already restricted to real groups).
        cell_of_seg: ``[S]`` cell index of each segment.
        num_cells: ``C``.
        rows_per_cell: ``[C]`` all rows of each cell (coverage denominator).

    Returns:
        ``[C]`` arrays: weighted GAUC, unweighted GAUC, coverage, groups, groups used.
    """
    a = seg.auc()
    ok = ~np.isnan(a)
    c_ok = cell_of_seg[ok]
    w = seg.n[ok].astype(np.float64)
    wsum = np.bincount(c_ok, weights=w, minlength=num_cells)
    used = np.bincount(c_ok, minlength=num_cells)
    groups = np.bincount(cell_of_seg, minlength=num_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        weighted = np.bincount(c_ok, weights=w * a[ok], minlength=num_cells) / wsum
        unweighted = np.bincount(c_ok, weights=a[ok], minlength=num_cells) / used
        coverage = np.where(rows_per_cell > 0, wsum / np.maximum(rows_per_cell, 1), math.nan)
    weighted[used == 0] = math.nan
    unweighted[used == 0] = math.nan
    return weighted, unweighted, coverage, groups, used


def _gauc_reason(n: int, auc_why: str | None, groups: int, used: int) -> str | None:
    if auc_why is not None:
        return auc_why
    if groups == 0:
        return f"no group key (group == -1 for all {n} rows)"
    if used == 0:
        return f"no group with both classes ({groups} groups, all single class)"
    return None


def gauc_details(y: Any, s: Any, group: Any) -> GAUCResult:
    """Weighted and unweighted group AUC, coverage and group counts in one pass.

    Args:
        y: ``[n]`` labels in {0, 1}.
        s: ``[n]`` scores.
        group: ``[n]`` integer group ids; rows with a negative id belong to no group.

    Example::

        >>> r = gauc_details([0, 1, 0, 1, 1], [0.1, 0.9, 0.8, 0.3, 0.5], [7, 7, 8, 8, 9])
        >>> r.weighted, r.unweighted, r.coverage, r.groups_used
        (0.5, 0.5, 0.8, 2)
    """
    yb = _labels(y)
    n = int(yb.shape[0])
    ss = _scores(s, n)
    g = _groups(group, n)
    bad = int(_nonfinite(ss).sum())
    why = _reason(n, int(yb.sum()), bad) if (n == 0 or bad) else None
    if why is not None:
        return GAUCResult(math.nan, math.nan, 0.0 if n == 0 else math.nan, 0, 0, why)
    real = g >= 0
    if not real.all():
        yb, ss, g = yb[real], ss[real], g[real]
    seg = _segment_u(yb, ss, g)
    w, uw, cov, groups, used = _gauc_from_segments(
        seg, np.zeros(seg.n.shape[0], dtype=np.int64), 1, np.array([n])
    )
    return GAUCResult(
        float(w[0]),
        float(uw[0]),
        float(cov[0]),
        int(groups[0]),
        int(used[0]),
        _gauc_reason(n, None, int(groups[0]), int(used[0])),
    )


def gauc(y: Any, s: Any, group: Any, weighted: bool = True) -> tuple[float, float]:
    """Group AUC and its coverage.

    ``GAUC = Σ_g w_g · AUC_g / Σ_g w_g`` over groups ``g`` holding both classes, with
    ``w_g`` = the group's row count (``weighted=True``, impression-weighted) or 1.

    Args:
        y: ``[n]`` labels in {0, 1}.
        s: ``[n]`` scores.
        group: ``[n]`` integer group ids (usually the user); negative = no group.
        weighted: row-count weights (True) or equal weights (False).

    Returns:
        ``(value, coverage)``: value is NaN when no group has both classes; coverage is the share
        of the ``n`` rows that lie in groups with both classes (0.0 for no rows).

    Example::

        >>> gauc([0, 1, 0, 1, 1], [0.1, 0.9, 0.8, 0.3, 0.5], [7, 7, 8, 8, 9])
        (0.5, 0.8)
    """
    r = gauc_details(y, s, group)
    return (r.weighted if weighted else r.unweighted), r.coverage


def logloss(y: Any, p: Any, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy, probabilities clipped to ``[eps, 1 - eps]``.

    ``LogLoss = -(1/n) Σ_i [y_i log p_i + (1 - y_i) log(1 - p_i)]``. ``y``, ``p``: ``[n]``.
    NaN for no rows.

    Example::

        >>> round(logloss([1, 0], [0.8, 0.4]), 6)
        0.366985
    """
    yb = _labels(y)
    pp = np.asarray(_scores(p, yb.shape[0], "p"), dtype=np.float64)
    if yb.shape[0] == 0:
        return math.nan
    pp = np.clip(pp, eps, 1.0 - eps)
    return float(-np.mean(np.where(yb, np.log(pp), np.log1p(-pp))))


def _row_logloss(y: np.ndarray, p: np.ndarray, eps: float) -> np.ndarray:
    pp = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return -np.where(y, np.log(pp), np.log1p(-pp))


# --------------------------------------------------------------------------------------------
# Relative improvement and statistics over seeds
# --------------------------------------------------------------------------------------------


def relaimpr(auc_model: float, auc_base: float) -> float:
    """RelaImpr in percent: ``((AUC_model - 0.5) / (AUC_base - 0.5) - 1) · 100``.

    NaN when either AUC is NaN or the base AUC is exactly 0.5 (no lift to compare against).

    Example::

        >>> round(relaimpr(0.76, 0.75), 6)
        4.0
    """
    if math.isnan(auc_model) or math.isnan(auc_base) or auc_base == 0.5:
        return math.nan
    return ((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) ignoring NaNs.

    Returns ``(nan, nan)`` for no values and ``(v, nan)`` for one value.

    Example::

        >>> mean_std([1.0, 2.0, 3.0, float("nan")])
        (2.0, 1.0)
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return mean, std


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of ``a`` against ``b`` (pairs = same seed).

    Same value as ``scipy.stats.ttest_rel(a, b).pvalue``, with the degenerate cases made explicit:

    - pairs with a NaN on either side are dropped; fewer than 2 pairs left -> NaN;
    - every difference exactly 0 -> 1.0 (no evidence of any difference);
    - every difference equal and non-zero (zero variance) -> 0.0 (a perfectly consistent gap).

    Raises ``ValueError`` when the sequences differ in length.

    Example::

        >>> round(paired_ttest([0.71, 0.72, 0.73], [0.70, 0.705, 0.72]), 4)
        0.0198
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    z = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != z.shape:
        raise ValueError(f"paired_ttest needs sequences of equal length, got {x.size} and {z.size}")
    keep = ~(np.isnan(x) | np.isnan(z))
    x, z = x[keep], z[keep]
    if x.size < 2:
        return math.nan
    d = x - z
    if np.all(d == 0):
        return 1.0
    if np.all(d == d[0]):
        return 0.0
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant differences
        return float(stats.ttest_rel(x, z).pvalue)


def significance_marker(p: float, alpha: float = ALPHA) -> str:
    """``"*"`` when ``p < alpha`` (default 0.05), else ``""`` (also for NaN)."""
    return "*" if (not math.isnan(p) and p < alpha) else ""


# --------------------------------------------------------------------------------------------
# Per-cell results
# --------------------------------------------------------------------------------------------


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _none_to_nan(v: Any) -> float:
    return math.nan if v is None else float(v)


def _fmt(v: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


@dataclass
class CellMetrics:
    """Metrics of one (domain, task) cell: the rows of that domain where the task is observed.

    Attributes:
        domain, task: names.
        n: observed rows; positives: rows with label 1.
        groups: distinct groups (usually users) among the observed rows; 0 without a group key.
        auc: cell AUC (NaN when undefined, see ``reason``).
        gauc: impression-weighted group AUC; gauc_unweighted: equal group weights.
        gauc_coverage: share of the cell's rows in groups with both classes.
        logloss: mean clipped binary cross-entropy.
        oracle_auc: AUC of the true probabilities (synthetic data), NaN when there is no oracle.
        reason: why ``auc`` is NaN, else None.
        gauc_reason: why ``gauc`` is NaN (no group key, no mixed group, or ``reason``), else None.
    """

    domain: str
    task: str
    n: int
    positives: int
    auc: float
    gauc: float
    gauc_unweighted: float
    gauc_coverage: float
    logloss: float
    oracle_auc: float
    reason: str | None
    gauc_reason: str | None = None
    groups: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _nan_to_none(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CellMetrics":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CellMetrics keys {unknown}")
        floats = ("auc", "gauc", "gauc_unweighted", "gauc_coverage", "logloss", "oracle_auc")
        kw = dict(d)
        for k in floats:
            kw[k] = _none_to_nan(kw.get(k))
        kw["n"], kw["positives"] = int(kw["n"]), int(kw["positives"])
        kw["groups"] = int(kw.get("groups") or 0)
        return cls(**kw)


_CELL_FIELDS = {
    "auc": "AUC",
    "gauc": "GAUC",
    "gauc_unweighted": "GAUC (unweighted)",
    "gauc_coverage": "GAUC coverage",
    "logloss": "LogLoss",
    "oracle_auc": "Oracle AUC",
    "n": "rows",
    "positives": "positives",
    "groups": "groups (users)",
}


@dataclass
class EvalResult:
    """All cells plus the aggregates.

    Attributes:
        cells: one :class:`CellMetrics` per (domain, task), domain-major.
        avg_auc: mean of the cell AUCs (NaN cells ignored).
        avg_gauc: mean of the cell GAUCs (NaN cells ignored).
        avg_logloss: mean of the cell LogLosses (NaN cells ignored).
        task_auc: ``{task: AUC}`` pooled over every domain's observed rows.
        macro_task_auc: mean of ``task_auc`` (NaN ignored), the official M3oE overall figure.
        avg_oracle_auc: mean of the cell oracle AUCs, NaN without an oracle.
    """

    cells: list[CellMetrics]
    avg_auc: float
    avg_gauc: float
    avg_logloss: float
    task_auc: dict[str, float]
    macro_task_auc: float
    avg_oracle_auc: float
    _index: dict[tuple[str, str], int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {(c.domain, c.task): i for i, c in enumerate(self.cells)}

    @property
    def domains(self) -> list[str]:
        """Domain names in cell order."""
        return list(dict.fromkeys(c.domain for c in self.cells))

    @property
    def tasks(self) -> list[str]:
        """Task names in cell order (tasks of ``task_auc`` first)."""
        return list(dict.fromkeys([*self.task_auc, *(c.task for c in self.cells)]))

    @property
    def has_oracle(self) -> bool:
        return any(not math.isnan(c.oracle_auc) for c in self.cells)

    def cell(self, domain: str, task: str) -> CellMetrics:
        """The cell of ``domain`` × ``task``; ``KeyError`` naming the known ones otherwise."""
        if len(self._index) != len(self.cells):
            self.__post_init__()
        try:
            return self.cells[self._index[(domain, task)]]
        except KeyError:
            raise KeyError(
                f"no cell ({domain!r}, {task!r}); domains {self.domains}, tasks {self.tasks}"
            ) from None

    # ---- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (NaN -> None)."""
        return {
            "cells": [c.to_dict() for c in self.cells],
            "avg_auc": _nan_to_none(self.avg_auc),
            "avg_gauc": _nan_to_none(self.avg_gauc),
            "avg_logloss": _nan_to_none(self.avg_logloss),
            "task_auc": {k: _nan_to_none(v) for k, v in self.task_auc.items()},
            "macro_task_auc": _nan_to_none(self.macro_task_auc),
            "avg_oracle_auc": _nan_to_none(self.avg_oracle_auc),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalResult":
        """Inverse of :meth:`to_dict` (None -> NaN)."""
        return cls(
            cells=[CellMetrics.from_dict(c) for c in d["cells"]],
            avg_auc=_none_to_nan(d.get("avg_auc")),
            avg_gauc=_none_to_nan(d.get("avg_gauc")),
            avg_logloss=_none_to_nan(d.get("avg_logloss")),
            task_auc={k: _none_to_nan(v) for k, v in d.get("task_auc", {}).items()},
            macro_task_auc=_none_to_nan(d.get("macro_task_auc")),
            avg_oracle_auc=_none_to_nan(d.get("avg_oracle_auc")),
        )

    # ---- reports -----------------------------------------------------------------------------

    def _notes(self) -> list[str]:
        out = []
        for c in self.cells:
            if c.reason is not None:
                out.append(f"{c.domain} × {c.task}: AUC n/a, {c.reason}")
            elif c.gauc_reason is not None:
                out.append(f"{c.domain} × {c.task}: GAUC n/a, {c.gauc_reason}")
        return out

    def markdown(self, metrics: Sequence[str] = ("auc", "gauc", "logloss"), oracle: bool | None = None) -> str:
        """Markdown report: one domain × task table per metric, with a mean column.

        Args:
            metrics: any of ``auc, gauc, gauc_unweighted, gauc_coverage, logloss, oracle_auc, n,
                positives``. The AUC table gains a ``pooled`` row (``task_auc``).
            oracle: add the oracle AUC table; None = when any cell has one.

        NaN cells read ``n/a`` and their reasons are listed under the tables.
        """
        unknown = [m for m in metrics if m not in _CELL_FIELDS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {list(_CELL_FIELDS)}")
        show = list(metrics)
        if oracle is None:
            oracle = self.has_oracle
        if oracle and "oracle_auc" not in show:
            show.append("oracle_auc")
        if not oracle and "oracle_auc" in show:
            show.remove("oracle_auc")
        tasks, domains = self.tasks, self.domains
        lines: list[str] = []
        for m in show:
            is_count = m in ("n", "positives", "groups")
            lines += [f"**{_CELL_FIELDS[m]}**", ""]
            lines.append("| domain | " + " | ".join(tasks) + (" |" if is_count else " | mean |"))
            lines.append("|---" * (len(tasks) + 1 + (0 if is_count else 1)) + "|")
            for dom in domains:
                vals = [getattr(self.cell(dom, t), m) if (dom, t) in self._index else math.nan for t in tasks]
                if is_count:
                    row = [str(int(v)) if not math.isnan(v) else "0" for v in vals]
                else:
                    row = [_fmt(v) for v in vals] + [_fmt(_nanmean(vals))]
                lines.append(f"| {dom} | " + " | ".join(row) + " |")
            if m == "auc":
                pooled = [self.task_auc.get(t, math.nan) for t in tasks]
                lines.append(
                    "| pooled | " + " | ".join(_fmt(v) for v in pooled) + f" | {_fmt(self.macro_task_auc)} |"
                )
            lines.append("")
        summary = [
            f"avg AUC (mean over cells) = {_fmt(self.avg_auc)}",
            f"macro task AUC (pooled over domains) = {_fmt(self.macro_task_auc)}",
            f"avg GAUC = {_fmt(self.avg_gauc)}",
            f"avg LogLoss = {_fmt(self.avg_logloss)}",
        ]
        if oracle:
            summary.append(f"avg oracle AUC = {_fmt(self.avg_oracle_auc)}")
        lines.append("; ".join(summary) + ".")
        notes = self._notes()
        if notes:
            lines += ["", "Notes:"] + [f"- {x}" for x in notes]
        return "\n".join(lines) + "\n"

    def rich_table(self, title: str = "") -> "Table":
        """A ``rich`` table: domain rows × task columns, cells ``AUC / GAUC / LogLoss``.

        The oracle AUC is a second line in each cell when present; a ``pooled`` row gives the
        per-task pooled AUC. NaN cells carry a footnote number; the caption lists the reasons.
        """
        from rich.table import Table

        tasks, domains = self.tasks, self.domains
        oracle = self.has_oracle
        notes: list[str] = []
        table = Table(title=title or "AUC / GAUC / LogLoss per domain × task", show_lines=oracle)
        table.add_column("domain", style="bold")
        for t in tasks:
            table.add_column(t, justify="right")
        for dom in domains:
            row = [dom]
            for t in tasks:
                if (dom, t) not in self._index:
                    row.append("")
                    continue
                c = self.cell(dom, t)
                text = f"{_fmt(c.auc)} / {_fmt(c.gauc)} / {_fmt(c.logloss)}"
                why = c.reason or c.gauc_reason
                if why is not None:
                    notes.append(f"[{len(notes) + 1}] {dom} × {t}: {why}")
                    text += f" [{len(notes)}]"
                if oracle:
                    text += f"\noracle {_fmt(c.oracle_auc)}"
                row.append(text)
            table.add_row(*row)
        table.add_row("pooled AUC", *[_fmt(self.task_auc.get(t, math.nan)) for t in tasks], style="italic")
        caption = f"avg AUC {_fmt(self.avg_auc)} · macro task AUC {_fmt(self.macro_task_auc)}"
        if oracle:
            caption += f" · avg oracle AUC {_fmt(self.avg_oracle_auc)}"
        legend = ("each cell: AUC / GAUC / LogLoss (GAUC = per-user AUC weighted by the user's rows; "
                  "higher AUC and GAUC, lower LogLoss are better)")
        table.caption = "\n".join([legend, caption, *notes])
        return table


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def _as_2d(name: str, x: Any, shape: tuple[int, int] | None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or (shape is not None and arr.shape != shape):
        want = f"{shape}" if shape is not None else "[N, T]"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    return arr


def evaluate(
    probs: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    domain: np.ndarray,
    group: np.ndarray,
    task_names: list[str],
    domain_names: list[str],
    oracle: np.ndarray | None = None,
) -> EvalResult:
    """Every (domain, task) cell and the aggregates, from gathered predictions.

    Args:
        probs: ``[N, T]`` predicted probabilities (after the sigmoid).
        labels: ``[N, T]`` labels; only rows with ``mask`` True are read and must be 0 or 1.
        mask: ``[N, T]`` bool, True where the task's label is observed.
        domain: ``[N]`` int domain index in ``[0, len(domain_names))``.
        group: ``[N]`` int GAUC key (usually the user); ``-1`` = no group (all -1: GAUC is NaN
            with a reason).
        task_names: ``T`` names; domain_names: ``D`` names.
        oracle: ``[N, T]`` true probabilities (synthetic data), or None.

    Returns:
        :class:`EvalResult` with ``D × T`` cells, domain-major. Cells with no rows, one class or
        non-finite predictions are NaN with a reason; nothing raises for them.

    Raises:
        ValueError: shapes disagree, a domain index is out of range, or an observed label is not
            0/1 (the message names the row and the task).

    Example::

        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, (100, 2)); p = rng.random((100, 2))
        >>> r = evaluate(p, y, np.ones_like(y, bool), rng.integers(0, 2, 100), rng.integers(0, 10, 100),
        ...              ["click", "like"], ["a", "b"])
        >>> len(r.cells), r.cell("b", "like").n + r.cell("a", "like").n
        (4, 100)
    """
    P = _as_2d("probs", probs, None)
    N, T = P.shape
    L = _as_2d("labels", labels, (N, T))
    M = _as_2d("mask", mask, (N, T)).astype(bool, copy=False)
    O = _as_2d("oracle", oracle, (N, T)) if oracle is not None else None
    if len(task_names) != T:
        raise ValueError(f"{len(task_names)} task names for {T} prediction columns")
    D = len(domain_names)
    dom = np.asarray(domain)
    if dom.shape != (N,) or not np.issubdtype(dom.dtype, np.integer):
        raise ValueError(f"domain must be an integer array of shape ({N},), got {dom.dtype} {dom.shape}")
    out_of_range = (dom < 0) | (dom >= D)
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range)[0])
        raise ValueError(f"domain[{row}] = {int(dom[row])} is outside [0, {D}) for domains {domain_names}")
    grp = _groups(group, N)
    if (grp < 0).any():
        grp = np.where(grp < 0, -1, grp)
    # compact group ids if (domain, group) would overflow a combined int64 key
    gmax = int(grp.max()) if N else 0
    if gmax >= (2**62) // max(D, 1):
        uniq, inv = np.unique(grp, return_inverse=True)
        grp = np.where(grp < 0, -1, inv - int((uniq < 0).any()))
        gmax = int(grp.max())
    gstride = gmax + 2  # slot 0 of each domain = "no group"

    cells_by_task: list[list[CellMetrics]] = []
    task_auc: dict[str, float] = {}
    for t, tname in enumerate(task_names):
        rows = np.flatnonzero(M[:, t])
        y_raw = L[rows, t]
        bad_label = ~((y_raw == 0) | (y_raw == 1))
        if bad_label.any():
            r = int(rows[np.flatnonzero(bad_label)[0]])
            raise ValueError(f"labels[{r}, {t}] (task {tname!r}) = {L[r, t]!r}; observed labels must be 0 or 1")
        y = y_raw == 1
        s = P[rows, t]
        d = dom[rows].astype(np.int64)
        g = grp[rows]
        n_d = np.bincount(d, minlength=D)
        pos_d = np.bincount(d, weights=y, minlength=D).astype(np.int64)
        nonfin = _nonfinite(s)
        bad_d = np.bincount(d, weights=nonfin, minlength=D).astype(np.int64)
        s_ok = np.where(nonfin, 0, s) if nonfin.any() else s
        reasons = [_reason(int(n_d[i]), int(pos_d[i]), int(bad_d[i])) for i in range(D)]

        order = _radix_order(s_ok)
        # AUC per domain
        auc_d = _per_category_auc(_segment_u(y, s_ok, d, order), D)
        # pooled AUC over all domains
        pooled_why = _reason(int(y.size), int(y.sum()), int(nonfin.sum()))
        task_auc[tname] = math.nan if pooled_why else float(_segment_u(y, s_ok, None, order).auc()[0])
        # GAUC: segments keyed by (domain, group); slot 0 (= no group) is dropped
        gseg = _segment_u(y, s_ok, d * gstride + (g + 1), order)
        real = (gseg.key % gstride) != 0
        gseg = _Segments(gseg.key[real], gseg.n[real], gseg.pos[real], gseg.u2[real])
        gw, guw, gcov, groups, used = _gauc_from_segments(gseg, gseg.key // gstride, D, n_d)
        # LogLoss
        ll_sum = np.bincount(d, weights=_row_logloss(y, s, LOGLOSS_EPS), minlength=D)
        with np.errstate(invalid="ignore", divide="ignore"):
            ll_d = np.where(n_d > 0, ll_sum / np.maximum(n_d, 1), math.nan)
        # oracle AUC
        oracle_d = np.full(D, math.nan)
        if O is not None:
            o = O[rows, t]
            o_bad = _nonfinite(o)
            o_ok = np.where(o_bad, 0, o) if o_bad.any() else o
            oracle_d = _per_category_auc(_segment_u(y, o_ok, d), D)
            o_bad_d = np.bincount(d, weights=o_bad, minlength=D)
            oracle_d[o_bad_d > 0] = math.nan

        row_cells = []
        for i, dname in enumerate(domain_names):
            why = reasons[i]
            gwhy = _gauc_reason(int(n_d[i]), why, int(groups[i]), int(used[i]))
            row_cells.append(
                CellMetrics(
                    domain=dname,
                    task=tname,
                    n=int(n_d[i]),
                    positives=int(pos_d[i]),
                    auc=math.nan if why else float(auc_d[i]),
                    gauc=math.nan if gwhy else float(gw[i]),
                    gauc_unweighted=math.nan if gwhy else float(guw[i]),
                    gauc_coverage=math.nan if bad_d[i] else (float(gcov[i]) if n_d[i] else 0.0),
                    logloss=math.nan if (n_d[i] == 0 or bad_d[i]) else float(ll_d[i]),
                    oracle_auc=float(oracle_d[i]),
                    reason=why,
                    gauc_reason=gwhy,
                    groups=int(groups[i]),
                )
            )
        cells_by_task.append(row_cells)

    cells = [cells_by_task[t][i] for i in range(D) for t in range(T)]
    return EvalResult(
        cells=cells,
        avg_auc=_nanmean([c.auc for c in cells]),
        avg_gauc=_nanmean([c.gauc for c in cells]),
        avg_logloss=_nanmean([c.logloss for c in cells]),
        task_auc=task_auc,
        macro_task_auc=_nanmean(list(task_auc.values())),
        avg_oracle_auc=_nanmean([c.oracle_auc for c in cells]) if O is not None else math.nan,
    )


# --------------------------------------------------------------------------------------------
# Over seeds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedRow:
    """One model's metric over seeds, compared with the baseline.

    Attributes:
        model: name; values: the metric per seed; mean, std: :func:`mean_std` of ``values``.
        relaimpr: :func:`relaimpr` of the means against the baseline (AUC metrics only, else NaN).
        p_value: :func:`paired_ttest` against the baseline (NaN for the baseline itself).
    """

    model: str
    values: tuple[float, ...]
    mean: float
    std: float
    relaimpr: float
    p_value: float

    @property
    def significant(self) -> bool:
        return significance_marker(self.p_value) == "*"


@dataclass(frozen=True)
class SeedTable:
    """Rows of :func:`seed_table`, baseline first."""

    metric: str
    baseline: str
    rows: list[SeedRow]

    def markdown(self, digits: int = 4) -> str:
        """``| model | metric (mean ± std) | RelaImpr | p |`` with ``*`` for p < 0.05."""
        lines = [
            f"| model | {self.metric} (mean ± std) | RelaImpr vs {self.baseline} | p (paired t-test) |",
            "|---|---|---|---|",
        ]
        for r in self.rows:
            ms = f"{_fmt(r.mean, digits)} ± {_fmt(r.std, digits)}{significance_marker(r.p_value)}"
            ri = "n/a" if math.isnan(r.relaimpr) else f"{r.relaimpr:+.2f}%"
            p = "—" if r.model == self.baseline else ("n/a" if math.isnan(r.p_value) else f"{r.p_value:.3g}")
            lines.append(f"| {r.model} | {ms} | {ri} | {p} |")
        lines.append("")
        lines.append(f"`*`: p < {ALPHA} in a two-sided paired t-test against {self.baseline} over seeds.")
        return "\n".join(lines) + "\n"


def seed_table(
    results: dict[str, list[EvalResult]],
    baseline: str,
    metric: str | Callable[[EvalResult], float] = "avg_auc",
) -> SeedTable:
    """Mean ± std over seeds, RelaImpr and the paired t-test of every model against ``baseline``.

    Args:
        results: ``{model: [EvalResult per seed]}``; seed lists are paired by position and must
            have the baseline's length.
        baseline: key of ``results``.
        metric: an :class:`EvalResult` attribute (``avg_auc``, ``macro_task_auc``, ``avg_gauc``,
            ``avg_logloss``, ``avg_oracle_auc``), ``"auc:<domain>/<task>"`` for one cell's AUC,
            or a function of an ``EvalResult``. RelaImpr is computed when the metric's name holds
            ``auc``.
    """
    if baseline not in results:
        raise KeyError(f"baseline {baseline!r} is not among the models {list(results)}")
    if callable(metric):
        get, name = metric, getattr(metric, "__name__", "metric")
    elif metric.startswith("auc:"):
        dom, _, task = metric[4:].partition("/")
        get, name = (lambda r: r.cell(dom, task).auc), metric
    else:
        if metric not in {f.name for f in fields(EvalResult)} or metric in ("cells", "task_auc", "_index"):
            raise ValueError(f"unknown metric {metric!r}")
        get, name = (lambda r: getattr(r, metric)), metric
    auc_like = "auc" in name.lower()
    base_vals = [float(get(r)) for r in results[baseline]]
    base_mean = mean_std(base_vals)[0]
    rows = []
    for model in [baseline, *[m for m in results if m != baseline]]:
        vals = [float(get(r)) for r in results[model]]
        if len(vals) != len(base_vals):
            raise ValueError(
                f"model {model!r} has {len(vals)} seeds but baseline {baseline!r} has {len(base_vals)}"
            )
        mean, std = mean_std(vals)
        rows.append(
            SeedRow(
                model=model,
                values=tuple(vals),
                mean=mean,
                std=std,
                relaimpr=relaimpr(mean, base_mean) if auc_like else math.nan,
                p_value=math.nan if model == baseline else paired_ttest(vals, base_vals),
            )
        )
    return SeedTable(metric=name, baseline=baseline, rows=rows)
