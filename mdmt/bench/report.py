"""Bench report: results file, papers' layout markdown table, seesaw heatmap, BENCHMARKS.md.

Inputs are the per-run records written by :func:`mdmt.bench.harness.run_bench` under
``<output_dir>/cells/`` (each holds ``test`` and ``valid`` as :meth:`EvalResult.to_dict` output).

Numbers in the tables:

* AUC and LogLoss are shown in units of 10⁻² (``75.02`` means 0.7502), as in the papers, and are
  the mean over seeds of the per-seed value. ``Avg AUC`` is the per-seed mean over the
  (domain, task) cells, then averaged over seeds. ``Task-pooled AUC`` is the per-task AUC pooled
  over domains, averaged over tasks (the official M3oE code's overall figure).
* ``RelaImpr`` = ((AUC_model − 0.5) / (AUC_base − 0.5) − 1) × 100 % on the mean Avg AUC.
* ``*`` marks a value significantly better than the baseline's (two-sided paired t-test over
  the seeds both ran, p < 0.05); ``†`` marks one significantly worse.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .harness import BEST_BASELINE, BenchConfig, BenchReference, CellKey, ceiling_cells, machine_line, read_cell, write_json_atomic

__all__ = [
    "Stat",
    "ModelSummary",
    "DatasetSummary",
    "load_records",
    "result_rows",
    "summarize",
    "seesaw_matrix",
    "cell_comparison",
    "markdown_dataset",
    "markdown_report",
    "model_settings_text",
    "write_report",
    "grid_records",
    "write_benchmarks_md",
    "throughput_markdown",
    "console_tables",
    "SIG_LEVEL",
]

SIG_LEVEL = 0.05  #: significance level of the paired t-test marks
#: z_0.975 + z_0.8: a 5 % two-sided test at 80 % power (the minimal detectable difference)
MDD_Z = 1.959964 + 0.841621
BETTER, WORSE = "\\*", "†"  #: markdown marks (the star is escaped so it never starts emphasis)


# --------------------------------------------------------------------------------------------
# loading


def load_records(output_dir: str | Path) -> list[dict[str, Any]]:
    """Every readable run record under ``<output_dir>/cells/``, sorted by file name."""
    cells = Path(output_dir) / "cells"
    out = []
    for p in sorted(cells.glob("*.json")):
        rec = read_cell(p)
        if rec is not None:
            out.append(rec)
    return out


def _eval(d: dict[str, Any]):
    from ..metrics import EvalResult

    return EvalResult.from_dict(d)


def _cell_name(domain: str, task: str) -> str:
    return f"{domain}/{task}"


def _f(x: Any) -> float:
    """float, with None -> NaN."""
    return float("nan") if x is None else float(x)


def result_rows(records: Iterable[dict[str, Any]], splits: Sequence[str] = ("test", "valid")) -> list[dict[str, Any]]:
    """One row per (dataset, label, seed, split, domain, task): the long results table.

    Columns: bench, dataset, label, model, regime, seed, split, domain, task, n, positives, auc,
    gauc, gauc_coverage, logloss, oracle_auc, reason, plus the run's avg_auc, macro_task_auc,
    avg_logloss, train_samples_per_sec, train_seconds and best_epoch.
    """
    rows = []
    for rec in records:
        for split in splits:
            if split not in rec:
                continue
            ev = _eval(rec[split])
            for c in ev.cells:
                rows.append(
                    {
                        "bench": rec.get("bench"),
                        "dataset": rec["dataset"],
                        "label": rec["label"],
                        "model": rec.get("model"),
                        "regime": rec.get("regime"),
                        "seed": int(rec["seed"]),
                        "split": split,
                        "domain": str(c.domain),
                        "task": str(c.task),
                        "n": int(c.n),
                        "positives": int(c.positives),
                        "auc": _f(c.auc),
                        "gauc": _f(c.gauc),
                        "gauc_coverage": _f(c.gauc_coverage),
                        "logloss": _f(c.logloss),
                        "oracle_auc": _f(c.oracle_auc),
                        "reason": c.reason or "",
                        "avg_auc": _f(ev.avg_auc),
                        "macro_task_auc": _f(ev.macro_task_auc),
                        "avg_logloss": _f(ev.avg_logloss),
                        "train_samples_per_sec": _f(rec.get("samples_per_sec")),
                        "train_seconds": _f(rec.get("train_seconds")),
                        "best_epoch": _best_epoch(rec.get("best_epoch")),
                    }
                )
    return rows


def _fmt_epochs(epochs: list[int | None]) -> str:
    """Selected epochs over seeds as ``"lo–hi"`` (``"2"`` when all agree; ``"—"`` when none was selected)."""
    known = [e for e in epochs if e is not None]
    if not known:
        return "—"
    lo, hi = min(known), max(known)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _best_epoch(v: Any) -> int | None:
    """A run's best epoch; for a regime with several models (``{unit: epoch}``), the latest one."""
    if isinstance(v, dict):
        return max((int(x) for x in v.values() if x is not None), default=None)
    return None if v is None else int(v)


# --------------------------------------------------------------------------------------------
# aggregation


@dataclass
class Stat:
    """A metric over seeds: mean, std (as :func:`mdmt.metrics.mean_std`), number of finite values,
    the paired t-test p-value against the baseline (None for the baseline itself or < 2 pairs)
    and ``sign`` = +1 / −1 when significantly better / worse, else 0."""

    mean: float
    std: float
    n: int
    values: dict[int, float] = field(default_factory=dict)
    p: float | None = None
    sign: int = 0


@dataclass
class ModelSummary:
    """One table row: a label's metrics aggregated over its seeds (throughput: median over seeds)."""

    label: str
    model: str
    regime: str
    seeds: list[int]
    cell_auc: dict[str, Stat]
    cell_logloss: dict[str, Stat]
    avg_auc: Stat
    macro_task_auc: Stat
    avg_logloss: Stat
    relaimpr: float | None
    samples_per_sec: float
    train_seconds: float
    cell_gauc: dict[str, Stat] = field(default_factory=dict)
    avg_gauc: Stat = field(default_factory=lambda: Stat(float("nan"), float("nan"), 0))
    best_epochs: list[int | None] = field(default_factory=list)  # selected epoch (1-based) per seed


@dataclass
class DatasetSummary:
    """All rows of one data set's table."""

    dataset: str
    split: str
    cells: list[str]
    models: list[ModelSummary]
    baseline: str
    #: the baseline was chosen as the best entry not under study (``baseline: best``)
    best_baseline: bool = False
    #: the entries under study (never the best baseline)
    proposed: list[str] = field(default_factory=list)
    oracle: dict[str, float] = field(default_factory=dict)
    oracle_avg: float | None = None
    #: the learnable ceiling's AUC per cell (:mod:`mdmt.data.ceiling`); empty when not computed
    ceiling: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    positives: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)

    def indicative(self) -> list[str]:
        """Cells with a group key but fewer than :data:`FEW_USERS` distinct users: their figures are indicative."""
        return [c for c in self.cells if 0 < self.groups.get(c, 0) < FEW_USERS]

    def model(self, label: str) -> ModelSummary:
        for m in self.models:
            if m.label == label:
                return m
        raise KeyError(label)


def _stat(values: dict[int, float]) -> Stat:
    from ..metrics import mean_std

    finite = {s: v for s, v in values.items() if v is not None and math.isfinite(v)}
    if not finite:
        return Stat(float("nan"), float("nan"), 0, dict(values))
    mean, std = mean_std([finite[s] for s in sorted(finite)])
    return Stat(float(mean), float(std), len(finite), dict(values))


def _compare(stat: Stat, base: Stat, higher_is_better: bool = True) -> None:
    """Fill ``stat.p`` and ``stat.sign`` from a paired t-test over the seeds both have."""
    from ..metrics import paired_ttest

    seeds = sorted(
        s for s in stat.values
        if s in base.values and math.isfinite(_f(stat.values[s])) and math.isfinite(_f(base.values[s]))
    )
    if len(seeds) < 2:
        return
    a = [stat.values[s] for s in seeds]
    b = [base.values[s] for s in seeds]
    p = float(paired_ttest(a, b))
    stat.p = p if math.isfinite(p) else None
    if stat.p is not None and stat.p < SIG_LEVEL:
        diff = sum(x - y for x, y in zip(a, b))
        better = diff > 0 if higher_is_better else diff < 0
        stat.sign = 1 if better else -1


def _best_note(s: "DatasetSummary") -> str:
    """How a ``baseline: best`` was chosen, for the table's legend."""
    if not s.best_baseline:
        return ""
    under = f", excluding the entries under study ({', '.join(s.proposed)})" if s.proposed else ""
    return f" (the best baseline: the highest mean {s.split} Avg AUC{under})"


def summarize(
    records: Iterable[dict[str, Any]],
    baseline: str,
    split: str = "test",
    label_order: Sequence[str] | None = None,
    proposed: Sequence[str] = (),
) -> dict[str, DatasetSummary]:
    """Aggregate run records into one :class:`DatasetSummary` per data set.

    Args:
        records: run records (see :func:`load_records`).
        baseline: label the RelaImpr and the t-test compare against, or ``"best"``: per data set,
            the label with the highest mean Avg AUC on ``split`` among those not in ``proposed``
            (``DatasetSummary.baseline`` then names it and ``best_baseline`` is True).
        split: ``"test"`` (default) or ``"valid"``.
        label_order: row order (default: order of first appearance).
        proposed: the labels under study, never chosen as the ``"best"`` baseline.

    Returns:
        ``{dataset: DatasetSummary}`` in order of first appearance.
    """
    from ..metrics import relaimpr

    by_ds: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rec in records:
        by_ds.setdefault(rec["dataset"], {}).setdefault(rec["label"], []).append(rec)
    out: dict[str, DatasetSummary] = {}
    for ds, by_label in by_ds.items():
        labels = [x for x in (label_order or []) if x in by_label] + [x for x in by_label if x not in (label_order or [])]
        cells: list[str] = []
        oracle_vals: dict[str, list[float]] = {}
        oracle_avg_vals: list[float] = []
        counts: dict[str, tuple[int, int, int]] = {}
        models: list[ModelSummary] = []
        for label in labels:
            recs = sorted(by_label[label], key=lambda r: int(r["seed"]))
            per_cell_auc: dict[str, dict[int, float]] = {}
            per_cell_ll: dict[str, dict[int, float]] = {}
            per_cell_gauc: dict[str, dict[int, float]] = {}
            avg_auc, macro, avg_ll, avg_gauc = {}, {}, {}, {}
            for rec in recs:
                seed = int(rec["seed"])
                ev = _eval(rec[split])
                for c in ev.cells:
                    name = _cell_name(c.domain, c.task)
                    if name not in cells:
                        cells.append(name)
                    counts.setdefault(name, (int(c.n), int(c.positives), int(c.groups)))
                    per_cell_auc.setdefault(name, {})[seed] = _f(c.auc)
                    per_cell_gauc.setdefault(name, {})[seed] = _f(c.gauc)
                    per_cell_ll.setdefault(name, {})[seed] = _f(c.logloss)
                    if c.oracle_auc is not None and math.isfinite(_f(c.oracle_auc)):
                        oracle_vals.setdefault(name, []).append(_f(c.oracle_auc))
                avg_auc[seed] = _f(ev.avg_auc)
                macro[seed] = _f(ev.macro_task_auc)
                avg_ll[seed] = _f(ev.avg_logloss)
                avg_gauc[seed] = _f(ev.avg_gauc)
                if ev.avg_oracle_auc is not None and math.isfinite(_f(ev.avg_oracle_auc)):
                    oracle_avg_vals.append(_f(ev.avg_oracle_auc))
            sps = [_f(r.get("samples_per_sec")) for r in recs]
            secs = [_f(r.get("train_seconds")) for r in recs]
            models.append(
                ModelSummary(
                    label=label,
                    model=str(recs[0].get("model", "")),
                    regime=str(recs[0].get("regime", "")),
                    seeds=[int(r["seed"]) for r in recs],
                    cell_auc={k: _stat(v) for k, v in per_cell_auc.items()},
                    cell_logloss={k: _stat(v) for k, v in per_cell_ll.items()},
                    avg_auc=_stat(avg_auc),
                    macro_task_auc=_stat(macro),
                    avg_logloss=_stat(avg_ll),
                    relaimpr=None,
                    samples_per_sec=_nanmedian(sps),
                    train_seconds=_nanmedian(secs),
                    best_epochs=[_best_epoch(r.get("best_epoch")) for r in recs],
                    cell_gauc={k: _stat(v) for k, v in per_cell_gauc.items()},
                    avg_gauc=_stat(avg_gauc),
                )
            )
        chosen = baseline
        if baseline == BEST_BASELINE:
            pool = [m for m in models if m.label not in proposed and math.isfinite(m.avg_auc.mean)]
            chosen = max(pool, key=lambda m: m.avg_auc.mean).label if pool else baseline
        summary = DatasetSummary(
            dataset=ds,
            split=split,
            cells=cells,
            models=models,
            baseline=chosen,
            best_baseline=baseline == BEST_BASELINE,
            proposed=[x for x in proposed if x in by_label],
            oracle={k: _nanmean(v) for k, v in oracle_vals.items()},
            oracle_avg=_nanmean(oracle_avg_vals) if oracle_avg_vals else None,
            rows={k: v[0] for k, v in counts.items()},
            positives={k: v[1] for k, v in counts.items()},
            groups={k: v[2] for k, v in counts.items()},
        )
        if chosen in by_label:
            base = summary.model(chosen)
            for m in models:
                if m.label == chosen:
                    continue
                for name, st in m.cell_auc.items():
                    if name in base.cell_auc:
                        _compare(st, base.cell_auc[name])
                for name, st in m.cell_gauc.items():
                    if name in base.cell_gauc:
                        _compare(st, base.cell_gauc[name])
                _compare(m.avg_auc, base.avg_auc)
                _compare(m.avg_gauc, base.avg_gauc)
                _compare(m.macro_task_auc, base.macro_task_auc)
                _compare(m.avg_logloss, base.avg_logloss, higher_is_better=False)
                if math.isfinite(m.avg_auc.mean) and math.isfinite(base.avg_auc.mean) and base.avg_auc.mean != 0.5:
                    r = float(relaimpr(m.avg_auc.mean, base.avg_auc.mean))
                    m.relaimpr = r if math.isfinite(r) else None
        out[ds] = summary
    return out


def _nanmedian(values: Iterable[float]) -> float:
    """Median of the finite values (throughput over seeds: robust to a run slowed by other work)."""
    import statistics

    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(statistics.median(vals)) if vals else float("nan")


def _nanmean(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def seesaw_matrix(
    summary: DatasetSummary, reference: str, metric: str = "relative"
) -> tuple[list[str], list[str], list[list[float]]]:
    """Per-cell AUC change of every model against ``reference`` (M3oE Figure 1).

    ``metric="relative"``: (AUC_model / AUC_ref − 1) × 100 (percent);
    ``metric="relaimpr"``: ((AUC_model − 0.5) / (AUC_ref − 0.5) − 1) × 100.
    Values use the mean AUC over seeds. The reference row itself is left out.

    Returns:
        ``(row labels, cell names, matrix[rows][cells])``; NaN where a value is missing.
    """
    ref = summary.model(reference)
    rows, mat = [], []
    for m in summary.models:
        if m.label == reference:
            continue
        vals = []
        for name in summary.cells:
            a = m.cell_auc.get(name)
            b = ref.cell_auc.get(name)
            if a is None or b is None or not (math.isfinite(a.mean) and math.isfinite(b.mean)):
                vals.append(float("nan"))
            elif metric == "relative":
                vals.append((a.mean / b.mean - 1.0) * 100.0)
            elif metric == "relaimpr":
                vals.append(((a.mean - 0.5) / (b.mean - 0.5) - 1.0) * 100.0 if b.mean != 0.5 else float("nan"))
            else:
                raise ValueError(f"metric must be 'relative' or 'relaimpr', got {metric!r}")
        rows.append(m.label)
        mat.append(vals)
    return rows, list(summary.cells), mat


# --------------------------------------------------------------------------------------------
# markdown


def _pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100.0 * x:.{digits}f}"


def _mark(st: Stat) -> str:
    return BETTER if st.sign > 0 else WORSE if st.sign < 0 else ""


def _best(values: dict[str, float], higher: bool) -> set[str]:
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    if not finite:
        return set()
    best = max(finite.values()) if higher else min(finite.values())
    return {k for k, v in finite.items() if round(100 * v, 2) == round(100 * best, 2)}


def _table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt_rate(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x:,.0f}"


def _fmt_secs(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x:.1f}"


#: a cell with fewer positives than this is flagged as noisy under the table
FEW_POSITIVES = 30
#: a cell with fewer distinct users (groups) than this is marked indicative (its AUC rests on few users)
FEW_USERS = 50
#: the mark on an indicative cell's column header
INDICATIVE = "ⁱ"
#: above this many (domain, task) cells, per-cell LogLoss moves to its own table (same rows)
WIDE_CELLS = 6


def headline(s: DatasetSummary) -> list[str]:
    """Markdown lines saying plainly, for each entry under study (``proposed``), where it wins,
    ties or loses on Avg AUC: against every other entry (the other entries under study included),
    with the difference of the means, the paired t-test p-value over seeds and both seed standard
    deviations. Empty without ``proposed``."""
    if not s.proposed:
        return []
    out = ["**Headline** (Avg AUC, units of 10⁻², mean ± seed std; two-sided paired t-test over seeds, "
           f"p < {SIG_LEVEL} counts as a difference):", ""]
    for label in s.proposed:
        m = s.model(label)
        others = [o for o in s.models if o.label != label]  # every other row, the other entries under study too
        wins, ties, losses = [], [], []
        for o in sorted(others, key=lambda x: -x.avg_auc.mean if math.isfinite(x.avg_auc.mean) else math.inf):
            st = Stat(m.avg_auc.mean, m.avg_auc.std, m.avg_auc.n, dict(m.avg_auc.values))
            _compare(st, o.avg_auc)
            diff = 100 * (m.avg_auc.mean - o.avg_auc.mean)
            p = "p n/a" if st.p is None else f"p={st.p:.3g}"
            txt = f"{o.label} ({100 * o.avg_auc.mean:.2f} ± {100 * o.avg_auc.std:.2f}; {diff:+.2f}, {p})"
            (wins if st.sign > 0 else losses if st.sign < 0 else ties).append(txt)
        head = f"- **{label}** ({100 * m.avg_auc.mean:.2f} ± {100 * m.avg_auc.std:.2f})"
        if s.baseline != label and s.baseline in [o.label for o in others]:
            head += f"; the baseline of the stars is {s.baseline}"
        out.append(head + ":")
        out.append(f"  - significantly better than: {'; '.join(wins) if wins else 'none'}")
        out.append(f"  - no significant difference from: {'; '.join(ties) if ties else 'none'}")
        out.append(f"  - significantly worse than: {'; '.join(losses) if losses else 'none'}")
    return out + [""]


def minimal_detectable_difference(std: float, n: int) -> float:
    """The smallest difference of two means over ``n`` seeds each, with seed standard deviation ``std``,
    that a 5 % two-sided test detects with 80 % power: ``MDD_Z · std · √(2/n)`` (normal approximation;
    a paired test over shared seeds detects less when the rows' seed effects are correlated)."""
    return MDD_Z * std * math.sqrt(2.0 / n) if n > 0 and math.isfinite(std) else math.nan


def seed_noise(s: DatasetSummary) -> list[str]:
    """Markdown lines: the seed standard deviation of Avg AUC over the rows and the difference it lets
    the table detect, so that a reader sees which differences are within the noise. Empty with fewer
    than 2 seeds."""
    stds = sorted(m.avg_auc.std for m in s.models if m.avg_auc.n >= 2 and math.isfinite(m.avg_auc.std))
    if not stds:
        return []
    n = min(m.avg_auc.n for m in s.models if m.avg_auc.n >= 2)
    med = stds[len(stds) // 2] if len(stds) % 2 else 0.5 * (stds[len(stds) // 2 - 1] + stds[len(stds) // 2])
    return [f"**Seed noise** (Avg AUC, units of 10⁻²): seed std {100 * med:.2f} (median over rows; "
            f"{100 * stds[0]:.2f}–{100 * stds[-1]:.2f}); two rows {n} seeds each differ detectably "
            f"(5 % two-sided, 80 % power: {MDD_Z:.2f} · std · √(2/{n})) from about "
            f"**{100 * minimal_detectable_difference(med, n):.2f}**.", ""]


def cell_comparison(s: DatasetSummary) -> list[str]:
    """Markdown lines: for every row but the baseline, the cells where it is significantly better or
    worse than the baseline (the table's stars and daggers, gathered), each with the difference of
    the mean AUC and, when the split's sizes are known, the cell's test positives, sparsest first.

    This is where a bench answers "which cells gain from sharing, and where does sharing hurt"
    when its baseline is the row that shares least. Empty without a baseline row, with one
    cell, or with fewer than 2 seeds.
    """
    if len(s.cells) < 2 or s.baseline not in [m.label for m in s.models]:
        return []
    others = [m for m in s.models if m.label != s.baseline]
    if not any(st.p is not None for m in others for st in m.cell_auc.values()):
        return []
    base = s.model(s.baseline)
    known = bool(s.positives)
    order = sorted(s.cells, key=lambda c: (s.positives.get(c, 0), s.cells.index(c))) if known else list(s.cells)

    def item(m: ModelSummary, c: str) -> str:
        diff = 100 * (m.cell_auc[c].mean - base.cell_auc[c].mean)
        pos = f", {s.positives.get(c, 0):,} pos." if known else ""
        return f"{c} ({diff:+.2f}{pos})"

    rows = []
    for m in others:
        better = [item(m, c) for c in order if c in m.cell_auc and m.cell_auc[c].sign > 0]
        worse = [item(m, c) for c in order if c in m.cell_auc and m.cell_auc[c].sign < 0]
        tested = sum(1 for c in s.cells if c in m.cell_auc and m.cell_auc[c].p is not None)
        rows.append([m.label, m.regime, f"{len(better)} of {tested}: " + ("; ".join(better) if better else "none"),
                     f"{len(worse)} of {tested}: " + ("; ".join(worse) if worse else "none")])
    what = "cells ordered from the fewest test positives; " if known else ""
    return [f"**Per cell against {s.baseline}** ({what}in brackets the difference of the mean test AUC, "
            f"units of 10⁻²{', and the test positives' if known else ''}; two-sided paired t-test over seeds, "
            f"p < {SIG_LEVEL}):", "",
            _table(["Model", "Regime", f"Significantly better than {s.baseline} in",
                    f"Significantly worse than {s.baseline} in"], rows, ["l", "l", "l", "l"]), ""]


def markdown_dataset(s: DatasetSummary, *, with_std: bool = True, data_desc: str | None = None) -> str:
    """The papers' layout for one data set.

    Columns: model, regime, per-cell AUC, Avg AUC, task-pooled AUC, RelaImpr, per-cell LogLoss,
    Avg LogLoss, (oracle gap when the data has an oracle), training samples/s and seconds. With
    more than :data:`WIDE_CELLS` cells the per-cell LogLoss columns form a second table with the
    same rows. An oracle row closes the AUC table when the data has one. ``with_std`` adds the
    mean ± std table with the t-test p-values.
    """
    seeds = sorted({x for m in s.models for x in m.seeds})
    has_oracle = bool(s.oracle)
    oracle_avg = (s.oracle_avg if s.oracle_avg is not None else _nanmean(s.oracle.values())) if has_oracle else None
    wide = len(s.cells) > WIDE_CELLS
    out = [f"### {s.dataset} ({s.split} split)", ""]
    if data_desc:
        out += [f"Data: {data_desc}.", ""]
    out += [
        f"Mean over seeds {', '.join(map(str, seeds))}. AUC and LogLoss in units of 10⁻² "
        f"(75.02 = 0.7502). Baseline for RelaImpr and the paired t-test: **{s.baseline}**{_best_note(s)}. "
        f"{BETTER} / {WORSE}: significantly better / worse than the baseline (two-sided paired t-test over "
        f"seeds, p < {SIG_LEVEL}). Bold: best measured value in the column. — : undefined (a single class "
        f"or no rows in that cell's test rows, or no baseline). Best epoch: the epoch selected on the validation split (1-based), "
        f"lowest–highest over seeds; for regimes with several models, each run's latest unit. "
        f"Train samples/s and Train s: median over seeds.",
        "",
    ]
    out += headline(s)
    out += seed_noise(s)
    few_users = set(s.indicative())

    def col(c: str, metric: str) -> str:
        return f"{c}{INDICATIVE if c in few_users else ''} {metric}"

    auc_cols = [col(c, "AUC") for c in s.cells]
    ll_cols = [col(c, "LogLoss") for c in s.cells]
    gauc_cols = [col(c, "GAUC") for c in s.cells]
    best_auc = {c: _best({m.label: m.cell_auc[c].mean for m in s.models if c in m.cell_auc}, True) for c in s.cells}
    best_ll = {c: _best({m.label: m.cell_logloss[c].mean for m in s.models if c in m.cell_logloss}, False) for c in s.cells}
    best_avg = _best({m.label: m.avg_auc.mean for m in s.models}, True)
    best_macro = _best({m.label: m.macro_task_auc.mean for m in s.models}, True)
    best_avg_ll = _best({m.label: m.avg_logloss.mean for m in s.models}, False)

    def val(st: Stat | None, bold: bool, mark: bool = True) -> str:
        if st is None:
            return "—"
        txt = _pct(st.mean)
        if bold and txt != "—":
            txt = f"**{txt}**"
        return txt + (_mark(st) if mark else "")

    def name(m: ModelSummary) -> str:
        return m.label + (" (baseline)" if m.label == s.baseline else "")

    header = ["Model", "Regime", *auc_cols, "Avg AUC ↑", "Task-pooled AUC ↑", "RelaImpr"]
    if not wide:
        header += ll_cols
    header += ["Avg LogLoss ↓"]
    ceiling_avg = _nanmean([s.ceiling[c] for c in s.cells if c in s.ceiling]) if s.ceiling else None
    if ceiling_avg is not None:
        header += ["Ceiling gap ↓"]
    if has_oracle:
        header += ["Oracle gap ↓"]
    header += ["Best epoch", "Train samples/s", "Train s"]
    rows = []
    for m in s.models:
        r = [name(m), m.regime]
        r += [val(m.cell_auc.get(c), m.label in best_auc[c]) for c in s.cells]
        r += [val(m.avg_auc, m.label in best_avg), val(m.macro_task_auc, m.label in best_macro)]
        r += ["—" if m.relaimpr is None else f"{m.relaimpr:+.2f}%"]
        if not wide:
            r += [val(m.cell_logloss.get(c), m.label in best_ll[c], mark=False) for c in s.cells]
        r += [val(m.avg_logloss, m.label in best_avg_ll)]
        if ceiling_avg is not None:
            r += [_pct(ceiling_avg - m.avg_auc.mean)]
        if has_oracle:
            gap = oracle_avg - m.avg_auc.mean if oracle_avg is not None else float("nan")
            r += [_pct(gap)]
        r += [_fmt_epochs(m.best_epochs), _fmt_rate(m.samples_per_sec), _fmt_secs(m.train_seconds)]
        rows.append(r)
    if ceiling_avg is not None:
        r = ["*Learnable ceiling (generator's form fitted)*", "—"]
        r += [_pct(s.ceiling.get(c)) for c in s.cells]
        r += [_pct(ceiling_avg), "—", "—"]
        r += ["—"] * (len(header) - len(r))
        rows.append(r)
    if has_oracle:
        r = ["*Oracle (true probabilities)*", "—"]
        r += [_pct(s.oracle.get(c)) for c in s.cells]
        r += [_pct(oracle_avg), "—", "—"]
        r += ["—"] * (len(header) - len(r))
        rows.append(r)
    out.append(_table(header, rows))
    if s.rows:
        has_users = any(s.groups.get(c, 0) for c in s.cells)
        if has_users:
            sizes = ", ".join(f"{c} {s.positives.get(c, 0):,} / {s.groups.get(c, 0):,} / {s.rows.get(c, 0):,}"
                              for c in s.cells)
            what = "Positives / users / rows"
        else:
            sizes = ", ".join(f"{c} {s.positives.get(c, 0):,} / {s.rows.get(c, 0):,}" for c in s.cells)
            what = "Positives / rows"
        few = [c for c in s.cells if s.positives.get(c, 0) < FEW_POSITIVES]
        out += ["", f"{what} per cell in the {s.split} split: {sizes}."
                + (f" Cells with fewer than {FEW_POSITIVES} positives ({', '.join(few)}) give noisy AUCs." if few else "")
                + (f" {INDICATIVE}: fewer than {FEW_USERS} users in the cell ({', '.join(sorted(few_users))}); its "
                   "figures are indicative only." if few_users else "")]
    comparison = cell_comparison(s)
    if comparison:
        out += ["", *comparison[:-1]]
    if any(m.cell_gauc for m in s.models):
        best_gauc = {c: _best({m.label: m.cell_gauc[c].mean for m in s.models if c in m.cell_gauc}, True)
                     for c in s.cells}
        best_avg_gauc = _best({m.label: m.avg_gauc.mean for m in s.models}, True)
        out += ["", "GAUC per cell (AUC per user, averaged with weights equal to the user's rows; units of 10⁻², "
                f"mean over seeds; {BETTER} / {WORSE} against {s.baseline} as above):", ""]
        rows_g = [[name(m), *[val(m.cell_gauc.get(c), m.label in best_gauc[c]) for c in s.cells],
                   val(m.avg_gauc, m.label in best_avg_gauc)] for m in s.models]
        out.append(_table(["Model", *gauc_cols, "Avg GAUC ↑"], rows_g))
    if ceiling_avg is not None:
        out += ["", "The learnable-ceiling row fits the generator's own functional form on the pre-history window "
                "and the train split (mdmt.data.ceiling): what is learnable from this data. Ceiling gap = its Avg "
                "AUC − the model's Avg AUC."]
    if has_oracle:
        out += ["", "The oracle row scores every row with the generator's true probability: the ceiling no model "
                "can beat. Oracle gap = oracle Avg AUC − the model's Avg AUC."]
    if wide:
        out += ["", "LogLoss per cell (units of 10⁻², mean over seeds):", ""]
        rows_ll = [[name(m), *[val(m.cell_logloss.get(c), m.label in best_ll[c], mark=False) for c in s.cells],
                    val(m.avg_logloss, m.label in best_avg_ll)] for m in s.models]
        out.append(_table(["Model", *ll_cols, "Avg LogLoss ↓"], rows_ll))
    if with_std:
        out += ["", f"Mean ± standard deviation over seeds (units of 10⁻²; p-value of the paired t-test against "
                f"{s.baseline} in brackets):", ""]

        def sd(st: Stat | None) -> str:
            if st is None or not math.isfinite(st.mean):
                return "—"
            txt = f"{100 * st.mean:.2f} ± {100 * st.std:.2f}" if math.isfinite(st.std) else f"{100 * st.mean:.2f}"
            return txt + (f" (p={st.p:.3g})" if st.p is not None else "")

        rows2 = [[m.label, *[sd(m.cell_auc.get(c)) for c in s.cells], sd(m.avg_auc), sd(m.macro_task_auc),
                  sd(m.avg_gauc), sd(m.avg_logloss)] for m in s.models]
        out.append(_table(["Model", *auc_cols, "Avg AUC", "Task-pooled AUC", "Avg GAUC", "Avg LogLoss"], rows2))
    return "\n".join(out)


def console_tables(summaries: dict[str, DatasetSummary]) -> list[Any]:
    """Compact ``rich`` tables (one per data set) of the headline figures, for the terminal."""
    from rich.table import Table

    tables = []
    for ds, s in summaries.items():
        oracle_avg = (s.oracle_avg if s.oracle_avg is not None else _nanmean(s.oracle.values())) if s.oracle else None
        t = Table(title=f"{ds} ({s.split}) · ×10⁻² · baseline {s.baseline} · * / † p < {SIG_LEVEL}")
        for col in ("Model", "Regime", "Avg AUC", "Task-pooled AUC", "RelaImpr", "Avg LogLoss", "Train samples/s"):
            t.add_column(col, justify="left" if col in ("Model", "Regime") else "right")
        if oracle_avg is not None:
            t.add_column("Oracle gap", justify="right")
        for m in s.models:
            mark = _mark(m.avg_auc).replace("\\", "")
            row = [m.label, m.regime, _pct(m.avg_auc.mean) + mark, _pct(m.macro_task_auc.mean),
                   "—" if m.relaimpr is None else f"{m.relaimpr:+.2f}%", _pct(m.avg_logloss.mean),
                   _fmt_rate(m.samples_per_sec)]
            if oracle_avg is not None:
                row.append(_pct(oracle_avg - m.avg_auc.mean))
            t.add_row(*row)
        if oracle_avg is not None:
            t.add_row("oracle", "—", _pct(oracle_avg), "—", "—", "—", "—", "0.00", style="italic")
        tables.append(t)
    return tables


def _reference_markdown(ref: BenchReference, s: DatasetSummary | None = None) -> str:
    """The reference figures, with the measured rows under study (``s.proposed``) beside them."""
    header = ["Source", "Avg AUC", "Task-pooled AUC", "Avg LogLoss", "Train samples/s", "Note"]
    row = [
        ref.label,
        _pct(ref.avg_auc),
        _pct(ref.macro_task_auc),
        _pct(ref.avg_logloss),
        "—" if ref.train_samples_per_sec is None else f"{ref.train_samples_per_sec:,.0f}",
        ref.note.replace("\n", " ").replace("|", "\\|") or "—",
    ]
    rows = [row]
    for label in (s.proposed if s is not None else []):
        m = s.model(label)

        def ms(st: Stat) -> str:
            return "—" if not math.isfinite(st.mean) else f"{100 * st.mean:.2f} ± {100 * st.std:.2f}"

        rows.append([f"measured here: {label}", ms(m.avg_auc), ms(m.macro_task_auc), ms(m.avg_logloss),
                     _fmt_rate(m.samples_per_sec), f"this bench's {label} row, mean ± seed std over {m.avg_auc.n} seeds"])
    out = [
        "#### Reference figures (not measured by this harness)",
        "",
        "Shown for orientation only: obtained outside this bench, with other code, settings or seeds; "
        "they are not part of the t-test or RelaImpr. Rows marked \"measured here\" are this bench's rows "
        "under study, for comparison. Same units (10⁻²).",
        "",
        _table(header, rows, ["l", "r", "r", "r", "r", "l"]),
    ]
    if ref.cells:
        out += ["", _table(["Cell", "AUC"], [[k, _pct(v)] for k, v in ref.cells.items()])]
    return "\n".join(out)


def _data_desc(cfg: BenchConfig, ds: str) -> str:
    d = cfg.datasets[ds]
    params = ", ".join(f"{k}={v}" for k, v in d.params.items())
    return f"source `{d.source}`" + (f" ({params})" if params else "")


def model_settings_text(cfg: BenchConfig) -> str:
    """The model settings every row shares, and the entries that differ: the bench's
    ``model_defaults`` and ``embedding`` (dim, domain input, id dropout)."""
    d = cfg.model_defaults
    defaults = ", ".join(f"{k}={v}" for k, v in d.items()) if d else "none"
    if "norm" not in d:
        defaults += " (MLP norm: none)"
    e = cfg.embedding
    who = (", ".join(e.id_dropout_features) if e.id_dropout_features is not None
           else f"sparse user/item features with ≥ {e.id_dropout_min_vocab} train ids")
    emb = [
        f"dim {e.dim}" if e.dim else "dims of the schema",
        "domain id as input" if e.domain_input else "no domain input",
        f"id dropout {e.id_dropout:g} on {who}" if e.id_dropout > 0 else "no id dropout",
    ]
    text = f"model defaults for every row: {defaults}; embeddings: {', '.join(emb)}"
    own = [f"{x.label}: {x.params}" for x in cfg.entries if any(k in d for k in x.params)]
    own += [f"{x.label}: embedding {x.embedding}" for x in cfg.entries if x.embedding]
    if own:
        text += "; entries that set their own: " + ", ".join(own)
    return text


def selected_values(rec: dict[str, Any]) -> dict[str, float]:
    """The values a model reports about itself (``MDMTModel.report_values``, e.g. M3oE's learned α, β)
    at the epoch whose weights were kept (the best epoch); empty when it reports none or the run has
    several models (regimes other than ``mdmt``)."""
    best, hist = rec.get("best_epoch"), rec.get("history") or []
    if not isinstance(best, int):
        return {}
    for h in hist:
        if h.get("epoch") == best and h.get("model_values"):
            return {k: float(v) for k, v in h["model_values"].items()}
    return {}


def learned_values_markdown(records: Sequence[dict[str, Any]], dataset: str, labels: Sequence[str]) -> list[str]:
    """Markdown lines: per entry of ``dataset`` whose runs report values (M3oE's α_d, α_t, β_d, β_t),
    their mean ± std over seeds at the selected epoch. Empty when no entry reports any."""
    import statistics

    rows = []
    for label in labels:
        per: dict[str, list[float]] = {}
        for r in records:
            if r["dataset"] == dataset and r["label"] == label:
                for k, v in selected_values(r).items():
                    per.setdefault(k, []).append(v)
        if per:
            cells = [f"{k} {statistics.fmean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}"
                     for k, v in per.items()]
            n = len(next(iter(per.values())))
            rows.append(f"- {label} ({n} seed{'s' if n != 1 else ''}): " + ", ".join(cells))
    if not rows:
        return []
    return ["Learned values at the selected epoch (mean ± std over seeds; e.g. M3oE's α of Eq. 7 and β of "
            "Eq. 5–6, each a sigmoid of a free parameter, Eq. 10):", "", *rows, ""]


def code_line(records: Sequence[dict[str, Any]]) -> str:
    """Which code made the runs: each package version and source hash (``mdmt.provenance``) with its
    number of runs, so that a table mixing runs of several versions says so."""
    counts: dict[str, int] = {}
    for r in records:
        c = r.get("code") or {}
        key = f"mdmt {c.get('mdmt', '?')}, code {c.get('code', '?')}" if c else "unrecorded code"
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return ""
    parts = [f"{k} ({n} run{'s' if n != 1 else ''})" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    line = "Runs made by: " + "; ".join(parts) + "."
    copied = [r["copied_from"] for r in records if r.get("copied_from")]
    if copied:
        benches = sorted({c.split("/")[0] for c in copied})
        line += (f" {len(copied)} of them are copies of identical runs (same configuration, seed and code) of "
                 f"{', '.join(f'`{b}`' for b in benches)}, not trained again.")
    return line


def runs_machine(machine: dict[str, Any], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``machine`` (the process that ran or reported the bench) with the CPU and the torch thread count
    the runs themselves state in their records, which can differ from it (a bench resumed on another
    machine, workers pinned to a share of the cores): one value, or every value with ``" / "``."""
    out = dict(machine)
    for key in ("cpu", "torch_threads"):
        vals = sorted({str(r["machine"][key]) for r in records
                       if isinstance(r.get("machine"), dict) and r["machine"].get(key) is not None})
        if vals:
            out[key] = " / ".join(vals) + (" (per run)" if len(vals) > 1 else "")
    return out


def markdown_report(
    cfg: BenchConfig,
    summaries: dict[str, DatasetSummary],
    *,
    images: dict[str, str] | None = None,
    command: str | None = None,
    machine: dict[str, Any] | None = None,
    heading_level: int = 2,
    records: Sequence[dict[str, Any]] | None = None,
) -> str:
    """Markdown for a whole bench: settings, command, machine, the code that made the runs (from
    ``records``), one table per data set, images."""
    h = "#" * heading_level
    entries = ", ".join(f"{e.label} (`{e.model}`, {e.regime})" for e in cfg.entries)
    t = cfg.train
    out = [f"{h} Bench `{cfg.name}`", ""]
    if command:
        out += [f"Regenerate: `{command}`", ""]
    if machine:
        out += [f"Machine: {machine_line(runs_machine(machine, records or []))}.", ""]
    if records:
        out += [code_line(records), ""]
    out += [
        f"Entries: {entries}. Seeds: {', '.join(map(str, cfg.seeds))}.",
        f"Training: epochs ≤ {t.epochs}, batch {t.batch_size}, lr {t.lr:g}, {t.optimizer}, weight decay {t.weight_decay:g}, "
        f"early stopping on validation {t.monitor} (patience {t.patience}), best epoch restored; per-entry overrides: "
        + (", ".join(f"{e.label}: {e.train}" for e in cfg.entries if e.train) or "none")
        + "; " + model_settings_text(cfg) + ".",
        "",
    ]
    for ds, s in summaries.items():
        out += [markdown_dataset(s, data_desc=_data_desc(cfg, ds) if ds in cfg.datasets else None), ""]
        if images and ds in images:
            ref = cfg.seesaw_reference
            out += [
                f"Seesaw: relative AUC change per cell, (AUC / AUC_{{{ref}}} − 1) × 100 %, mean over seeds "
                f"(as in M3oE Figure 1; red = worse than the per-cell reference, blue = better).",
                "",
                f"![seesaw {ds}]({images[ds]})",
                "",
            ]
        ref = cfg.reference
        if ref is not None and (ref.dataset or next(iter(cfg.datasets))) == ds:
            out += [_reference_markdown(ref, s), ""]
        if records:
            out += learned_values_markdown(records, ds, [e.label for e in cfg.entries])
        if cfg.valid_table and records:
            valid = summarize(records, cfg.baseline, "valid", [e.label for e in cfg.entries], proposed=cfg.proposed)
            if ds in valid:
                out += ["The same runs on the validation split (the split a choice among these rows may be made on; "
                        "the test table above is for reporting that choice):", "",
                        markdown_dataset(valid[ds], data_desc=None), ""]
    return "\n".join(out).rstrip() + "\n"


def grid_records(
    cfg: BenchConfig, records: dict[CellKey, dict[str, Any]] | list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The run records of ``cfg``'s grid (default: read from ``<output_dir>/cells/``), in grid order.

    Records of labels, data sets or seeds no longer in the config are left out; so are records read
    from ``cells/`` whose run had another configuration than the entry has now
    (:func:`~mdmt.bench.harness.same_configuration`): a ``--report-only`` after an entry changed
    never shows the old entry's results under its label. Records made by other code stay: the
    report names the code that made its runs.
    """
    if records is None:
        recs = [r for r in load_records(cfg.output_dir) if _of_current_config(cfg, r)]
    elif isinstance(records, dict):
        recs = list(records.values())
    else:
        recs = list(records)
    labels = [e.label for e in cfg.entries]
    ds = list(cfg.datasets)
    recs = [r for r in recs if r["label"] in labels and r["dataset"] in ds and int(r["seed"]) in cfg.seeds]
    recs.sort(key=lambda r: (ds.index(r["dataset"]), labels.index(r["label"]), int(r["seed"])))
    return recs


def _of_current_config(cfg: BenchConfig, rec: dict[str, Any]) -> bool:
    from .harness import same_configuration

    try:
        key = CellKey(rec["dataset"], rec["label"], int(rec["seed"]))
        if key.label not in {e.label for e in cfg.entries} or key.dataset not in cfg.datasets:
            return True  # left out later, as a label or data set no longer in the config
        if "fingerprint" not in rec and "experiment" not in rec:
            return True  # a record that states no configuration (made by hand): nothing to hold against it
        return same_configuration(cfg, key, rec)
    except (KeyError, TypeError, ValueError):
        return False


def write_report(
    cfg: BenchConfig,
    records: dict[CellKey, dict[str, Any]] | list[dict[str, Any]] | None = None,
    *,
    command: str | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.parquet``, ``results.md`` and ``seesaw_<dataset>.png``.

    Args:
        cfg: the bench config (its ``output_dir`` holds ``cells/``).
        records: run records (default: read from ``cells/``). Only records of the current grid's
            labels and data sets are reported.

    Returns:
        ``{artifact name: path}``.
    """
    import polars as pl

    from .plots import plot_seesaw

    out = Path(cfg.output_dir)
    recs = grid_records(cfg, records)
    labels = [e.label for e in cfg.entries]
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if command is None:
        cp = meta.get("config_path")
        command = f"mdmt bench {cp}" if cp else None

    paths: dict[str, Path] = {}
    rows = result_rows(recs)
    summaries = summarize(recs, cfg.baseline, "test", labels, proposed=cfg.proposed)
    for ds, s_ in summaries.items():
        if ds in cfg.datasets:
            s_.ceiling = ceiling_cells(cfg, ds)
    summary_json = {
        ds: {
            "cells": s.cells,
            "baseline": s.baseline,
            "oracle": s.oracle,
            "oracle_avg": s.oracle_avg,
            "learnable_ceiling": s.ceiling,
            "models": [
                {
                    "label": m.label,
                    "model": m.model,
                    "regime": m.regime,
                    "seeds": m.seeds,
                    "avg_auc": _stat_json(m.avg_auc),
                    "macro_task_auc": _stat_json(m.macro_task_auc),
                    "avg_logloss": _stat_json(m.avg_logloss),
                    "relaimpr": m.relaimpr,
                    "cell_auc": {k: _stat_json(v) for k, v in m.cell_auc.items()},
                    "cell_logloss": {k: _stat_json(v) for k, v in m.cell_logloss.items()},
                    "train_samples_per_sec": m.samples_per_sec,
                    "train_seconds": m.train_seconds,
                }
                for m in s.models
            ],
        }
        for ds, s in summaries.items()
    }
    paths["results.json"] = out / "results.json"
    write_json_atomic(
        paths["results.json"],
        {
            "bench": cfg.name,
            "units": "fractions (AUC 0.75 = 75.00 in the markdown tables)",
            "command": command,
            "machine": meta.get("machine"),
            "reference": cfg.reference.model_dump() if cfg.reference else None,
            "summary": summary_json,
            "rows": rows,
        },
    )
    if rows:
        paths["results.parquet"] = out / "results.parquet"
        pl.DataFrame(rows, infer_schema_length=None).write_parquet(paths["results.parquet"])

    images: dict[str, str] = {}
    if cfg.seesaw_reference is not None:
        for ds, s in summaries.items():
            if cfg.seesaw_reference not in [m.label for m in s.models] or len(s.models) < 2:
                continue
            rl, cols, mat = seesaw_matrix(s, cfg.seesaw_reference)
            p = out / f"seesaw_{ds}.png"
            plot_seesaw(mat, rl, cols, p, title=f"{cfg.name} · {ds}: AUC change vs {cfg.seesaw_reference} (%)")
            paths[f"seesaw_{ds}.png"] = p
            images[ds] = p.name
    md = markdown_report(cfg, summaries, images=images, command=command, machine=meta.get("machine"), heading_level=1,
                         records=recs)
    paths["results.md"] = out / "results.md"
    _write_text_atomic(paths["results.md"], md)
    return paths


def _stat_json(st: Stat) -> dict[str, Any]:
    return {"mean": st.mean, "std": st.std, "n": st.n, "p_vs_baseline": st.p, "sign": st.sign,
            "per_seed": {str(k): v for k, v in st.values.items()}}


def _write_text_atomic(path: Path, text: str) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# throughput + BENCHMARKS.md


def throughput_markdown(data: dict[str, Any]) -> str:
    """Tables of a ``benchmarks/train_throughput.py`` result (``benchmarks/results/train_throughput*.json``):
    one row per measured model, then the same-run comparisons (registered ÷ hand-written step time,
    PMTA's extra cost over its base model, the AutoML step's share) when the run has them."""
    peak = data.get("peak_flops")
    s = data.get("settings", {})
    target = data.get("target_ratio", 1.10)
    if s.get("dataset") == "ml100k":
        rows_desc = "MovieLens-100K, M3oE protocol" + (f", the `mdmt` rows' settings of `{s['bench_config']}`"
                                                        if s.get("bench_config") else "")
    else:
        rows_desc = f"{s.get('rows', '?'):,} synthetic `{s.get('preset', 'douyin')}` rows"
    out = [
        f"Peak: `torch.mm` on 2048×2048 float32, best of {s.get('mm_repeats', '?')}: "
        f"**{(peak or 0) / 1e9:,.1f} GFLOP/s**. Data: {rows_desc}; "
        f"batch {s.get('batch_size', '?')}; the rows of a comparison are timed together, round by round (one step "
        f"of every path per round, in rotated order; {s.get('steps', '?')} rounds after {s.get('warmup', '?')} "
        f"warm-up rounds): step times are medians over the rounds, and each ratio of two paths is the median of "
        f"their ratio within a round; "
        f"device {s.get('device', 'cpu')}, {s.get('threads', '?')} threads. Load average (1 min) before / after the run: "
        f"{s.get('load_average_1min_before', '?')} / {s.get('load_average_1min_after', '?')} "
        f"(other work on the machine lowers every figure).",
        "",
        "End to end = BatchIterator over the prepared train split → model → masked BCE → backward → "
        "optimizer step (and, for a model with architecture weights, their step on a held-out batch). "
        "Model only = the same step on one batch already in memory. FLOPs per step = "
        "forward + backward, counted with `torch.utils.flop_counter.FlopCounterMode`. Utilisation = "
        "FLOPs per step × steps per second / peak. AutoML share = the architecture step's share of the "
        "end-to-end step time.",
        "",
    ]
    header = ["Model", "Samples/s (end to end)", "Samples/s (model only)", "E2E / model step time",
              "MFLOP/sample", "GFLOP/s (e2e)", "Util. e2e", "Util. model only", "AutoML share"]
    rows = []
    for r in data.get("models", []):
        label = r.get("label", r["model"])
        if r.get("error"):
            rows.append([label, "error: " + str(r["error"]).replace("|", "/")[:80]] + ["—"] * 7)
            continue
        ratio = r["ratio"]
        flag = "" if ratio <= target else " ⚠"
        rows.append([
            label,
            f"{r['e2e_samples_per_sec']:,.0f}",
            f"{r['model_samples_per_sec']:,.0f}",
            f"{ratio:.3f}{flag}",
            f"{r['flops_per_step'] / r['batch_size'] / 1e6:.2f}",
            f"{r['e2e_flops_per_sec'] / 1e9:.2f}",
            f"{100 * r['e2e_utilisation']:.1f}%",
            f"{100 * r['model_utilisation']:.1f}%",
            f"{100 * r['arch_share_of_e2e']:.1f}%" if r.get("has_valid_step") else "—",
        ])
    out.append(_table(header, rows))
    out += ["", f"Target: end-to-end step time at most {target:.2f} × the model-only step time (⚠ marks a miss)."]
    cmp = data.get("comparisons") or {}
    hand = cmp.get("hand_written") or []
    if hand:
        target_hand = data.get("target_hand_ratio", 1.05)
        out += [
            "",
            "**Composition overhead.** Each registered model beside a hand-written reference in plain torch "
            "(`benchmarks/train_throughput.py`: the same parameter shapes, the same FLOPs, the same inputs), "
            "trained by the same `train_step`, timed together in this run:",
            "",
        ]
        hrows = []
        for h in hand:
            flag = "" if h["e2e_ratio"] <= target_hand else " ⚠"
            hrows.append([h["model"], f"{h['e2e_ratio']:.3f}{flag}", f"{h['model_ratio']:.3f}",
                          "yes" if h["same_params"] else "no", "yes" if h["same_flops"] else "no"])
        out.append(_table(["Model", "Registered / hand-written (end to end)", "(model only)", "Same parameters",
                           "Same FLOPs"], hrows))
        out += ["", f"Target: registered step time at most {target_hand:.2f} × the hand-written one (⚠ marks a miss)."]
    pm = cmp.get("pmta")
    if pm:
        line = (f"**PMTA's extra cost.** Over its base model alone (`{pm['base_model']}`: the same embeddings, H and "
                f"classifiers C^t without the PMTA head), PMTA adds **{pm['extra_flops_per_sample'] / 1e6:.2f} MFLOP "
                f"per sample** forward + backward ({pm['base_flops_per_sample'] / 1e6:.2f} → "
                f"{pm['flops_per_sample'] / 1e6:.2f}, {pm['flops_ratio']:.1f}×) and takes "
                f"**{pm['e2e_time_ratio']:.2f}× its step time** end to end ({pm['model_time_ratio']:.2f}× model only), "
                "in the same run.")
        if "warm_vs_cold_e2e_time_ratio" in pm:
            line += (f" Warm-started with the loaded parameters frozen (`--warm-start RUN --freeze-loaded`: "
                     f"{pm['warm_trainable_params']:,} parameters still train), a step takes "
                     f"{pm['warm_vs_cold_e2e_time_ratio']:.2f}× the cold-started PMTA's "
                     f"({pm['warm_e2e_time_ratio']:.2f}× the base model's).")
        out += ["", line]
    for a in cmp.get("automl") or []:
        out += ["", f"**AutoML step.** {a['label']}: the architecture step (α, β on a held-out batch, after every "
                    f"main step) takes **{100 * a['arch_share_of_e2e']:.1f}%** of the end-to-end step time "
                    f"({a['arch_step_seconds']:.3f} s)."]
    return "\n".join(out)


def write_benchmarks_md(
    bench_dirs: Sequence[str | Path],
    throughput_json: str | Path | Sequence[str | Path] | None = None,
    out: str | Path = "BENCHMARKS.md",
    *,
    regenerate_command: str = "python benchmarks/make_benchmarks_md.py",
) -> Path:
    """Generate ``BENCHMARKS.md`` from finished bench output directories and the throughput JSON.

    Every bench directory must hold ``meta.json`` (written by :func:`run_bench`) and ``cells/``;
    its tables are rebuilt from the run records, and its seesaw image is linked relative to
    ``out``. Sections: how to regenerate (exact commands), the machine, each bench's tables,
    the training-throughput tables (one per throughput JSON given that exists, e.g. the default
    run and M3oE's official configuration).
    """
    from .harness import BenchConfig as _BC
    from ..schema import parse_config

    out = Path(out)
    base = out.parent.resolve()
    parts = [
        "# Benchmarks",
        "",
        f"Generated by `{regenerate_command}` from the result files below; do not edit by hand. "
        "Every figure on this page comes from one of these commands, run from the repository root "
        "(real data sets are read from `$MDMT_DATA_DIR`):",
        "",
    ]
    cmds, sections, machines = [], [], []
    for d in bench_dirs:
        d = Path(d)
        meta = json.loads((d / "meta.json").read_text())
        cfg = parse_config(meta["config"], _BC, str(d / "meta.json"))
        cmd = f"mdmt bench {meta['config_path']}" if meta.get("config_path") else "mdmt bench <config>"
        cmds.append(cmd)
        cfg = cfg.model_copy(update={"output_dir": str(d)})
        recs = grid_records(cfg)
        if meta.get("machine"):
            machines.append(machine_line(runs_machine(meta["machine"], recs)))
        summaries = summarize(recs, cfg.baseline, "test", [e.label for e in cfg.entries], proposed=cfg.proposed)
        images = {}
        for ds in summaries:
            p = d / f"seesaw_{ds}.png"
            if p.exists():
                images[ds] = _relpath(p.resolve(), base)
        n_expected = len(cfg.datasets) * len(cfg.entries) * len(cfg.seeds)
        body = markdown_report(cfg, summaries, images=images, command=cmd, machine=meta.get("machine"), heading_level=2,
                               records=recs)
        if len(recs) < n_expected:
            body += f"\n**Incomplete grid: {len(recs)} of {n_expected} runs finished.**\n"
        sections.append(body)
    if throughput_json is None:
        tp_paths: list[Path] = []
    elif isinstance(throughput_json, (str, Path)):
        tp_paths = [Path(throughput_json)]
    else:
        tp_paths = [Path(p) for p in throughput_json]
    tps = [json.loads(p.read_text()) for p in tp_paths if p.exists()]
    for tp in tps:
        cmds.append(tp.get("command") or "python benchmarks/train_throughput.py")
        if tp.get("machine"):
            machines.append(machine_line(tp["machine"]))
    parts += ["```", *cmds, regenerate_command, "```", ""]
    parts += ["## Machine", ""]
    for m in dict.fromkeys(machines):
        parts.append(f"- {m}")
    parts += ["", "How to read the tables: see `docs/benchmarks.md`.", ""]
    parts += sections
    if tps:
        parts += ["## Training throughput", ""]
    for i, tp in enumerate(tps):
        if len(tps) > 1:
            s = tp.get("settings", {})
            what = ("MovieLens-100K" if s.get("dataset") == "ml100k" else "synthetic data") + f", batch {s.get('batch_size', '?')}"
            if s.get("threads") is not None:
                what += f", {s['threads']} thread{'s' if s['threads'] != 1 else ''}"
            parts += [f"### {what}", ""]
        parts += [f"Regenerate: `{tp.get('command') or 'python benchmarks/train_throughput.py'}`", ""]
        if tp.get("machine"):
            parts += [f"Machine: {machine_line(tp['machine'])}.", ""]
        parts += [throughput_markdown(tp), ""]
    _write_text_atomic(out, "\n".join(parts).rstrip() + "\n")
    return out


def _relpath(p: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(p, base)).as_posix()
