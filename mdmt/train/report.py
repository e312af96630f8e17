"""The run directory's report: metrics.json, report.md, a per-cell AUC heatmap, printed tables."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from rich.console import Console

from ..schema import DatasetSpec

if TYPE_CHECKING:
    from .run import RunResult

__all__ = ["write_run_report"]


def _clean(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _one_based(best: int | dict[str, int]) -> str:
    """Epochs are counted from 1 in every human-facing text (they are 0-based in the JSON)."""
    if isinstance(best, dict):
        return ", ".join(f"{k} {v + 1}" for k, v in best.items())
    return str(best + 1)


def write_run_report(result: "RunResult", spec: DatasetSpec, quiet: bool = False) -> None:
    """Write ``metrics.json``, ``report.md``, ``heatmap_test_auc.png`` and ``predictions_test.parquet``
    into ``result.run_dir`` and print the per-domain × per-task test table."""
    run_dir = Path(result.run_dir)
    cfg = result.config
    metrics = {
        "model": cfg.model.name,
        "regime": cfg.train.regime,
        "seed": cfg.train.seed,
        "best_epoch": result.best_epoch,  # 0-based index into the history; -1 = no epoch improved
        "train_seconds": result.train_seconds,
        "train_samples_per_sec": result.samples_per_sec,
        "valid": result.valid.to_dict(),
        "test": result.test.to_dict(),
    }
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(_clean(metrics), indent=1))
    tmp.replace(run_dir / "metrics.json")

    probs = result.predictions.get("test")
    if probs is not None:
        pl.DataFrame({f"p_{t}": probs[:, i] for i, t in enumerate(spec.task_names)}).write_parquet(
            run_dir / "predictions_test.parquet"
        )

    from ..bench.plots import plot_cell_heatmap, plot_training_curves

    heatmap = run_dir / "heatmap_test_auc.png"
    plot_cell_heatmap(result.test, heatmap, title=f"{cfg.model.name} ({cfg.train.regime}) test AUC")
    curves = run_dir / "training_curves.png"
    if result.history:
        plot_training_curves(result.history, curves, title=f"{cfg.model.name} ({cfg.train.regime})")

    lines = [
        f"# Run report: {cfg.name}",
        "",
        f"- model: `{cfg.model.name}`  regime: `{cfg.train.regime}`  seed: {cfg.train.seed}",
        f"- data: `{cfg.data.source}` {json.dumps(cfg.data.params)}",
        f"- best epoch: {_one_based(result.best_epoch)}; training time {result.train_seconds:.1f} s; "
        f"{result.samples_per_sec:,.0f} training samples/s",
        "",
        "## Test (best validation epoch's weights)",
        "",
        result.test.markdown(metrics=("auc", "gauc", "gauc_coverage", "logloss", "positives", "n")),
        "",
        "GAUC is the impression-weighted mean of per-user AUCs over users with both classes; "
        "GAUC coverage is the share of the cell's rows in such users.",
        "",
        f"Average test AUC {result.test.avg_auc:.4f}, GAUC {result.test.avg_gauc:.4f}, "
        f"LogLoss {result.test.avg_logloss:.4f}; per-task pooled AUC (macro) {result.test.macro_task_auc:.4f}.",
    ]
    if not np.isnan(result.test.avg_oracle_auc):
        lines.append(f"Oracle AUC (the ceiling from the true probabilities): {result.test.avg_oracle_auc:.4f}.")
    lines += ["", "## Validation", "", result.valid.markdown(), ""]
    lines += ["## Per-cell test AUC", "", f"![per-cell AUC]({heatmap.name})", ""]
    if result.history:
        lines += ["## Training curves", "", f"![training curves]({curves.name})", ""]
    lines += ["## Training history", "", "| unit | epoch | train loss | valid score | samples/s |", "|---|---|---|---|---|"]
    for h in result.history:
        sps = h.get("samples_per_sec") or 0.0
        lines.append(f"| {h['tag']} | {h['epoch'] + 1} | {h['train_loss']:.4f} | {h['valid_score']:.4f} | {sps:,.0f} |")
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")

    if not quiet:
        console = Console()
        console.print(result.test.rich_table(title=f"Test: {cfg.model.name} ({cfg.train.regime})"))
        console.print(
            f"avg AUC {result.test.avg_auc:.4f}  avg GAUC {result.test.avg_gauc:.4f}  "
            f"avg LogLoss {result.test.avg_logloss:.4f}"
            + ("" if np.isnan(result.test.avg_oracle_auc) else f"  oracle AUC {result.test.avg_oracle_auc:.4f}")
        )
        console.print(f"run directory: {run_dir}")
