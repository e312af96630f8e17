"""Rendering of :class:`~mdmt.analyze.pmta.PMTAAnalysis` (matplotlib, Agg; no global pyplot state).

* :func:`plot_attention`: one ``T × T`` heatmap per (domain, layer), values annotated.
* :func:`plot_dar_scales`: per layer, the distribution of DAR scales of each domain, and each
  scale unit's mean per domain.
* :func:`plot_prompt_norms`: ``‖p^t‖₂`` per task, beside the mean norms of the two halves of ``m^t``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import Normalize

from ..bench.plots import _annotate, _new_figure, _save
from .pmta import DAR_BINS, PMTAAnalysis

__all__ = ["plot_attention", "plot_dar_scales", "plot_prompt_norms"]


def plot_attention(res: PMTAAnalysis, path: str | Path, title: str = "") -> Path | None:
    """Task × task attention (heads averaged) for every domain (rows) and layer (columns).
    Returns None when the model has no attention (the fusion-MLP ablation)."""
    if not res.attention:
        return None
    domains = [d for d, a in zip(res.domains, res.attention) if a is not None]
    maps = [a for a in res.attention if a is not None]
    L, T = len(maps[0]), len(res.tasks)
    size = 0.55 * T + 1.2
    fig = _new_figure(size * L + 1.0, size * len(domains) + 1.2)
    fig.set_layout_engine("constrained")
    axes = np.atleast_2d(fig.subplots(len(domains), L, squeeze=False))
    norm = Normalize(0.0, 1.0)
    cmap = matplotlib.colormaps["viridis"]
    for r, (d, per_layer) in enumerate(zip(domains, maps)):
        for c, mat in enumerate(per_layer):
            ax = axes[r, c]
            m = np.asarray(mat)
            ax.imshow(m, cmap=cmap, norm=norm)
            _annotate(ax, m, "{:.2f}", norm, cmap)
            ax.set_xticks(range(T), res.tasks if r == len(domains) - 1 else [""] * T, rotation=45, ha="right",
                          fontsize=8)
            ax.set_yticks(range(T), res.tasks, fontsize=8)
            ax.set_title(f"{d} · layer {c + 1}", fontsize=9)
            if c == 0:
                ax.set_ylabel("query task", fontsize=8)
            if r == len(domains) - 1:
                ax.set_xlabel("key task", fontsize=8)
    fig.suptitle(title or "PMTA task × task attention (mean over rows and heads)", fontsize=10)
    return _save(fig, path)


def plot_dar_scales(res: PMTAAnalysis, path: str | Path, title: str = "") -> Path | None:
    """Per layer (columns): the histogram of DAR scales of each domain (top) and each scale unit's
    mean per domain, units ordered by their mean over domains (bottom), which shows where the
    domains are rescaled differently. None without DAR."""
    per_domain = [(d, s) for d, s in zip(res.domains, res.dar) if s]
    if not per_domain:
        return None
    L = len(per_domain[0][1])
    fig = _new_figure(3.6 * L + 0.5, 5.6)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(2, L, squeeze=False)
    edges = np.linspace(0.0, 2.0, DAR_BINS + 1)
    for i in range(L):
        ax = axes[0, i]
        for d, stats in per_domain:
            counts = np.asarray(stats[i].histogram, dtype=float)
            share = counts / max(counts.sum(), 1.0)
            ax.stairs(share, edges, label=f"{d} (mean {stats[i].mean:.3f})")
        ax.axvline(1.0, color="0.5", lw=0.8, ls="--")
        lo = min(st[i].quantiles[0] for _, st in per_domain)  # zoom on the 1%-99% range of every domain
        hi = max(st[i].quantiles[-1] for _, st in per_domain)
        pad = max(0.05, 0.1 * (hi - lo))
        ax.set_xlim(max(0.0, lo - pad), min(2.0, hi + pad))
        ax.set_xlabel("DAR scale", fontsize=8)
        ax.set_ylabel("share of entries", fontsize=8)
        ax.set_title(f"layer {i + 1}", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[1, i]
        units = np.asarray([st[i].per_unit_mean for _, st in per_domain])  # [D, w]
        order = np.argsort(units.mean(0))
        for (d, _), row in zip(per_domain, units):
            ax.plot(row[order], lw=0.8, label=d)
        ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
        ax.set_xlabel("scale unit (ordered by its mean over domains)", fontsize=8)
        ax.set_ylabel("mean scale", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(title or "PMTA: distribution of DAR scales per domain", fontsize=10)
    return _save(fig, path)


def plot_prompt_norms(res: PMTAAnalysis, path: str | Path, title: str = "") -> Path:
    """Bars per task: ``‖p^t‖₂`` and the mean norms of ``TPE^t`` and ``C_1^t`` in ``m^t``."""
    T = len(res.tasks)
    fig = _new_figure(max(4.0, 0.9 * T + 2.0), 3.0)
    ax = fig.subplots()
    x = np.arange(T)
    series = [("prompt ‖p^t‖", [res.prompt_norms.get(t, 0.0) for t in res.tasks]),
              ("mean ‖TPE^t‖", [res.token_norms[t]["tpe"] for t in res.tasks]),
              ("mean ‖C_1^t‖", [res.token_norms[t]["c1"] for t in res.tasks])]
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series):
        ax.bar(x + (k - 1) * width, values, width, label=label)
    ax.set_xticks(x, res.tasks, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("L2 norm", fontsize=8)
    top = max([v for _, values in series for v in values] + [1e-6])
    ax.set_ylim(0, 1.4 * top)  # room for the legend above the bars
    ax.legend(fontsize=7, ncols=3, loc="upper center")
    ax.set_title(title or "PMTA: prompt and token norms per task", fontsize=10)
    return _save(fig, path)
