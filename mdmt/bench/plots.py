"""Heatmaps for benchmark reports and single runs (matplotlib, Agg; no global pyplot state).

* :func:`plot_seesaw`: models × (domain, task) cells, the relative AUC change of each model
  against a per-cell reference (M3oE Figure 1); diverging colormap centred at 0, values annotated.
* :func:`plot_cell_heatmap`: one run's per-cell AUC as a domains × tasks grid.

Example::

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> p = plot_seesaw([[0.5, -0.2]], ["MMoE"], ["d1/click", "d1/like"], os.path.join(d, "s.png"))
    >>> p.exists()
    True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

__all__ = ["plot_seesaw", "plot_cell_heatmap", "cell_grid"]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, bbox_inches="tight")
    tmp.replace(path)
    return path


def _annotate(ax: Any, mat: np.ndarray, fmt: str, norm: Any, cmap: Any) -> None:
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            v = mat[i, j]
            if not math.isfinite(v):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="0.3")
                continue
            r, g, b, _ = cmap(norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8, color="white" if dark else "black")


def plot_seesaw(
    matrix: Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | Path,
    title: str = "AUC change vs per-cell reference (%)",
    fmt: str = "{:+.2f}",
) -> Path:
    """Save the seesaw heatmap: rows = models, columns = (domain, task) cells.

    Args:
        matrix: ``[models][cells]`` changes in percent (NaN = missing, drawn grey with "n/a").
        row_labels, col_labels: model labels and cell names.
        path: PNG path (written atomically).
        title: figure title.
        fmt: annotation format.

    The colormap is diverging (red = below the reference, blue = above), centred at 0 with a
    symmetric range, so the colour of a cell shows its sign and size at a glance.
    """
    mat = np.asarray(matrix, dtype=float).reshape(len(row_labels), len(col_labels))
    finite = mat[np.isfinite(mat)]
    lim = float(np.abs(finite).max()) if finite.size else 1.0
    lim = lim if lim > 0 else 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim)
    fig = _new_figure(1.1 + 0.95 * max(len(col_labels), 2), 1.2 + 0.45 * max(len(row_labels), 1))
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels), rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels), fontsize=8)
    _annotate(ax, mat, fmt, norm, cmap)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).ax.tick_params(labelsize=7)
    return _save(fig, path)


def cell_grid(result: Any) -> tuple[list[str], list[str], np.ndarray]:
    """``(domains, tasks, auc[domains, tasks])`` from an :class:`~mdmt.metrics.EvalResult`
    (orders of first appearance; NaN where a cell is missing or undefined)."""
    domains: list[str] = []
    tasks: list[str] = []
    for c in result.cells:
        if c.domain not in domains:
            domains.append(c.domain)
        if c.task not in tasks:
            tasks.append(c.task)
    mat = np.full((len(domains), len(tasks)), np.nan)
    for c in result.cells:
        v = float("nan") if c.auc is None else float(c.auc)
        mat[domains.index(c.domain), tasks.index(c.task)] = v
    return [str(d) for d in domains], [str(t) for t in tasks], mat


def plot_cell_heatmap(result: Any, path: str | Path, title: str = "AUC per (domain, task)") -> Path:
    """Save one run's per-cell AUC as a domains × tasks heatmap with annotated values.

    Args:
        result: an :class:`~mdmt.metrics.EvalResult` (uses ``result.cells``).
        path: PNG path (written atomically).
        title: figure title.
    """
    domains, tasks, mat = cell_grid(result)
    finite = mat[np.isfinite(mat)]
    lo = float(finite.min()) if finite.size else 0.5
    hi = float(finite.max()) if finite.size else 1.0
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    norm = Normalize(vmin=lo, vmax=hi)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    fig = _new_figure(1.6 + 0.9 * max(len(tasks), 2), 1.2 + 0.45 * max(len(domains), 1))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(tasks)), labels=tasks, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(domains)), labels=domains, fontsize=8)
    ax.set_xlabel("task", fontsize=8)
    ax.set_ylabel("domain", fontsize=8)
    _annotate(ax, mat, "{:.4f}", norm, cmap)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).ax.tick_params(labelsize=7)
    return _save(fig, path)


def plot_training_curves(history: list[dict], path: str | Path, title: str = "training") -> Path:
    """Training loss and validation score per epoch, one line per trained model (unit).

    ``history`` is the trainer's list of epoch records (``tag``, ``epoch``, ``train_loss``,
    ``valid_score``, ``best_epoch``); the best epoch of each unit is marked.
    """
    fig = _new_figure(9.0, 3.4)
    ax_loss, ax_score = fig.subplots(1, 2)
    tags = list(dict.fromkeys(h["tag"] for h in history))
    for tag in tags:
        rows = [h for h in history if h["tag"] == tag]
        epochs = [h["epoch"] for h in rows]  # 1-based
        ax_loss.plot(epochs, [h["train_loss"] for h in rows], marker="o", ms=3, label=tag)
        line = ax_score.plot(epochs, [h["valid_score"] for h in rows], marker="o", ms=3, label=tag)[0]
        best = rows[-1]["best_epoch"]
        hit = [h for h in rows if h["epoch"] == best]
        if hit:
            ax_score.plot([best], [hit[0]["valid_score"]], marker="*", ms=12, color=line.get_color())
    ax_loss.set_title("training loss (mean over the epoch)")
    ax_score.set_title("validation score (★ = restored epoch)")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_score):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if len(tags) <= 8:
        ax_score.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
