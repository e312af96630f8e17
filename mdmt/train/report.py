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


def _epoch_text(best: int | None | dict[str, int | None]) -> str:
    """Epochs are counted from 1 everywhere (logs, ``metrics.json``, reports)."""
    if isinstance(best, dict):
        return ", ".join(f"{k} {_epoch_text(v)}" for k, v in best.items())
    return "none (the validation score was undefined at every epoch)" if best is None else str(best)


def selection_notes(result: "RunResult") -> list[str]:
    """Warnings about model selection: a unit that could not be selected (its validation score was
    NaN at every epoch: its last epoch is used), and a unit whose best epoch is its last one
    (training stopped by the epoch budget while still improving)."""
    notes = []
    for tag, fit in result.fits.items():
        name = "" if tag == "all" else f"{tag}: "
        if fit.selection == "last":
            notes.append(f"{name}no epoch could be selected: the validation score ({result.config.train.monitor}) "
                         "was NaN at every epoch (e.g. no validation cell holds both classes); "
                         "the last epoch's weights are used")
        elif fit.best_is_last and fit.epochs_run > 1:
            notes.append(f"{name}the best epoch is the last one ({fit.best_epoch} of {fit.epochs_run}): "
                         "the score was still improving, the training budget may be too small "
                         "(raise train.epochs)")
    return notes


def _predictions_frame(result: "RunResult", spec: DatasetSpec, feature_map) -> pl.DataFrame:
    """Test predictions with a row key (position in the test split, the order of its cached shards),
    the domain, the group id (raw, e.g. the user id; null when out of vocabulary), the labels (null
    where unobserved) and one ``p_<task>`` column per task."""
    probs = result.predictions["test"]
    data = result.test_data
    cols: dict[str, object] = {"row": np.arange(len(probs), dtype=np.int64)}
    if data is not None:
        names = np.array(spec.domain_names, dtype=object)
        cols["domain"] = names[data.domain.numpy()]
        if spec.group is not None and feature_map is not None and spec.group in feature_map.sparse:
            ids = data.sparse[:, feature_map.sparse_index(spec.group)].numpy()
            vocab = feature_map.vocabs.get(spec.feature(spec.group).vocab_name)
            if vocab is not None:
                from ..featuremap import FIRST_ID

                raw = [vocab[i - FIRST_ID] if i >= FIRST_ID else None for i in ids.tolist()]
                cols[spec.group] = pl.Series(spec.group, raw, dtype=pl.String)
        labels, mask = data.labels.numpy(), data.label_mask.numpy()
        for i, t in enumerate(spec.task_names):
            cols[f"label_{t}"] = pl.Series(f"label_{t}", [int(v) if m else None for v, m in
                                                         zip(labels[:, i].tolist(), mask[:, i].tolist())],
                                           dtype=pl.Int8)
    for i, t in enumerate(spec.task_names):
        cols[f"p_{t}"] = probs[:, i]
    return pl.DataFrame(cols)


def write_run_report(result: "RunResult", spec: DatasetSpec, quiet: bool = False, feature_map=None) -> None:
    """Write ``metrics.json``, ``report.md``, ``heatmap_test_auc.png`` and ``predictions_test.parquet``
    into ``result.run_dir`` and print the per-domain × per-task test table."""
    run_dir = Path(result.run_dir)
    cfg = result.config
    notes = selection_notes(result)
    metrics = {
        "model": cfg.model.name,
        "regime": cfg.train.regime,
        "seed": cfg.train.seed,
        "best_epoch": result.best_epoch,  # 1-based, as in report.md and the logs; null: nothing could be selected
        "epochs_run": {tag: f.epochs_run for tag, f in result.fits.items()},
        "selection_notes": notes,
        "train_seconds": result.train_seconds,
        "train_samples_per_sec": result.samples_per_sec,
        "model_notes": result.notes,
        "valid": result.valid.to_dict(),
        "test": result.test.to_dict(),
    }
    if result.model_values:  # the model's own named values (MDMTModel.report_values), per unit
        metrics["model_values"] = result.model_values
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(_clean(metrics), indent=1))
    tmp.replace(run_dir / "metrics.json")

    if result.predictions.get("test") is not None:
        _predictions_frame(result, spec, feature_map).write_parquet(run_dir / "predictions_test.parquet")

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
        f"- best epoch: {_epoch_text(result.best_epoch)}; training time {result.train_seconds:.1f} s; "
        f"{result.samples_per_sec:,.0f} training samples/s",
        *[f"- **warning**: {n}" for n in notes],
        *[f"- note: {n}" for n in result.notes],
        "",
        "## Test (best validation epoch's weights)",
        "",
        "Each cell: AUC, GAUC, GAUC coverage, LogLoss, positives and rows of that (domain, task).",
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
    if result.model_values:
        lines += ["", "## Model values (best epoch)", "", "| unit | name | value |", "|---|---|---|"]
        for unit, values in result.model_values.items():
            lines += [f"| {unit} | {k} | {v:.4f} |" for k, v in values.items()]
    lines += ["", "## Validation", "", result.valid.markdown(), ""]
    lines += ["## Per-cell test AUC", "", f"![per-cell AUC]({heatmap.name})", ""]
    if result.history:
        lines += ["## Training curves", "", f"![training curves]({curves.name})", ""]
    lines += ["## Training history", "", "| unit | epoch | train loss | valid score | samples/s |", "|---|---|---|---|---|"]
    for h in result.history:
        sps = h.get("samples_per_sec") or 0.0
        lines.append(f"| {h['tag']} | {h['epoch']} | {h['train_loss']:.4f} | {h['valid_score']:.4f} | {sps:,.0f} |")
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")

    if not quiet:
        console = Console()
        console.print(result.test.rich_table(title=f"Test: {cfg.model.name} ({cfg.train.regime})"))
        console.print(
            f"avg AUC {result.test.avg_auc:.4f}  avg GAUC {result.test.avg_gauc:.4f}  "
            f"avg LogLoss {result.test.avg_logloss:.4f}"
            + ("" if np.isnan(result.test.avg_oracle_auc) else f"  oracle AUC {result.test.avg_oracle_auc:.4f}")
        )
        for n in notes:
            console.print(f"[bold yellow]warning:[/] {n}")
        for n in result.notes:
            console.print(f"note: {n}")
        console.print(f"run directory: {run_dir}")
