"""Speed of the vectorised metrics (``mdmt.metrics``) against a per-group scikit-learn loop.

Measures, in one run on one machine:

1. ``gauc`` over ``--rows`` rows in ``--groups`` groups (default 1,000,000 rows, 100,000 groups),
   best of ``--repeats``;
2. the reference: scikit-learn's ``roc_auc_score`` called once per group (the usual GAUC loop),
   timed on the first ``--ref-groups`` groups and extrapolated linearly to all groups; the ratio
   reference / vectorised is therefore measured under the same conditions;
3. ``evaluate`` on ``--rows`` rows × 6 tasks × 3 domains with label masks and an oracle.

It also checks that both GAUC implementations agree on the reference subset. Results are printed
and written to ``results/metrics_speed.json`` beside this file.

Run::

    python benchmarks/metrics_speed.py            # full size
    python benchmarks/metrics_speed.py --rows 100000 --groups 10000 --ref-groups 200   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

try:
    from mdmt.metrics import evaluate, gauc
except ImportError:  # run from a source checkout without installing the package
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mdmt.metrics import evaluate, gauc


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, object]:
    """Facts about the machine and library versions the timings come from.

    Uses the project's shared description (CPU model, memory, GPU...) when available, plus the
    load average: on a busy machine the wall clock also counts waiting for a core.
    """
    info: dict[str, object] = {}
    try:
        from mdmt.bench.harness import machine_description

        info.update(machine_description())
    except ImportError:
        pass
    info.update(
        {
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": _version("torch"),
            "scikit-learn": _version("scikit-learn"),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        }
    )
    return info


def make_data(rows: int, groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels ``[rows]`` (per-group rate), float32 scores rounded to 3 decimals (ties), groups."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, rows)
    rate = rng.beta(1.0, 3.0, groups)[g]
    y = (rng.random(rows) < rate).astype(np.int8)
    s = np.round(np.clip(rate + rng.normal(0, 0.2, rows) + 0.1 * y, 0, 1), 3).astype(np.float32)
    return y, s, g


def best_of(fn, repeats: int) -> tuple[float, float, object]:
    """Best wall-clock and best process CPU seconds over ``repeats`` calls, and the last result.

    CPU time is reported too because on a shared machine the wall clock also counts waiting for
    a core; both timed codes are single-threaded numpy / Python.
    """
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu, out


def reference_gauc(y: np.ndarray, s: np.ndarray, g: np.ndarray) -> float:
    """The common per-group loop: split rows by group, ``roc_auc_score`` on each mixed group."""
    order = np.argsort(g, kind="stable")
    bounds = np.flatnonzero(np.diff(g[order])) + 1
    num = den = 0.0
    for idx in np.split(order, bounds):
        yy = y[idx]
        if yy.min() == yy.max():
            continue
        num += len(idx) * roc_auc_score(yy, s[idx])
        den += len(idx)
    return num / den if den else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--groups", type=int, default=100_000)
    ap.add_argument("--ref-groups", type=int, default=1_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "metrics_speed.json")
    args = ap.parse_args()

    roc_auc_score([0, 1], [0.2, 0.7])  # import and warm up outside the timed region
    gauc(np.array([0, 1]), np.array([0.2, 0.7]), np.array([0, 0]))
    info = machine()
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))

    y, s, g = make_data(args.rows, args.groups)
    t_gauc, c_gauc, (value, coverage) = best_of(lambda: gauc(y, s, g), args.repeats)
    print(
        f"gauc: {args.rows:,} rows, {args.groups:,} groups: {t_gauc:.3f} s wall, {c_gauc:.3f} s CPU "
        f"(GAUC {value:.4f}, coverage {coverage:.3f})"
    )

    sub = g < args.ref_groups
    ys, ss, gs = y[sub], s[sub], g[sub]
    t_ref_sub, c_ref_sub, ref_value = best_of(lambda: reference_gauc(ys, ss, gs), 1)
    t_vec_sub, _, (vec_value, _) = best_of(lambda: gauc(ys, ss, gs), args.repeats)
    agree = abs(ref_value - vec_value)
    t_ref_full = t_ref_sub * args.groups / args.ref_groups
    c_ref_full = c_ref_sub * args.groups / args.ref_groups
    ratio = t_ref_full / t_gauc
    ratio_cpu = c_ref_full / c_gauc
    print(
        f"reference (sklearn roc_auc_score per group): {args.ref_groups:,} groups, {int(sub.sum()):,} rows: "
        f"{t_ref_sub:.3f} s -> extrapolated to {args.groups:,} groups: {t_ref_full:.1f} s; "
        f"vectorised is {ratio:.0f}x faster (CPU time: {ratio_cpu:.0f}x); |difference| on the subset = {agree:.2e}"
    )

    rng = np.random.default_rng(1)
    T, D = 6, 3
    oracle = rng.uniform(0.001, 0.5, (args.rows, T)).astype(np.float32)
    labels = (rng.random((args.rows, T)) < oracle).astype(np.float32)
    probs = np.clip(oracle + rng.normal(0, 0.1, (args.rows, T)), 0, 1).astype(np.float32)
    mask = rng.random((args.rows, T)) < 0.9
    domain = rng.integers(0, D, args.rows)
    tasks, domains = [f"task{i}" for i in range(T)], [f"domain{i}" for i in range(D)]
    t_eval, c_eval, res = best_of(lambda: evaluate(probs, labels, mask, domain, g, tasks, domains, oracle=oracle), 2)
    print(
        f"evaluate: {args.rows:,} rows x {T} tasks x {D} domains (+ oracle): {t_eval:.2f} s wall, "
        f"{c_eval:.2f} s CPU (avg AUC {res.avg_auc:.4f})"
    )

    out = {
        "machine": info,
        "rows": args.rows,
        "groups": args.groups,
        "gauc_seconds": t_gauc,
        "gauc_cpu_seconds": c_gauc,
        "gauc_under_1s": t_gauc < 1.0,
        "reference_groups": args.ref_groups,
        "reference_rows": int(sub.sum()),
        "reference_seconds_subset": t_ref_sub,
        "reference_seconds_extrapolated": t_ref_full,
        "reference_cpu_seconds_extrapolated": c_ref_full,
        "vectorised_seconds_subset": t_vec_sub,
        "speedup_vs_reference": ratio,
        "speedup_vs_reference_cpu": ratio_cpu,
        "max_abs_difference_subset": agree,
        "evaluate_seconds": t_eval,
        "evaluate_cpu_seconds": c_eval,
        "evaluate_shape": {"rows": args.rows, "tasks": T, "domains": D, "oracle": True},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
