"""Calibration of the synthetic presets against the papers' tables: target vs realised.

For each preset (``douyin``: PMTA; ``kuaishou``: PEPNet) at ``--rows`` rows this prints:

1. the generation time (the goal: 1M rows in under 20 s on an idle machine);
2. the positive rate per (domain, task): target (PMTA Table 3 / PEPNet Table 1) vs realised;
3. the user and item overlaps per domain pair: target vs realised;
4. the test AUC per (domain, task): the paper's strong baseline (PLE in PMTA Table 1 / PEPNet
   Table 2), the learnable ceiling (:mod:`mdmt.data.ceiling`: the generator's form fitted on the
   pre-history window and the train split) and the oracle (the true probabilities), with the
   number of cells whose ceiling lies within +-0.03 of the paper's figure.

A model cannot exceed the learnable ceiling by more than noise, so a cell whose ceiling lies
below the paper's figure cannot be matched by any baseline at this size and setting.

Run::

    python benchmarks/calibrate_synthetic.py                         # both presets, 300k rows
    python benchmarks/calibrate_synthetic.py --preset douyin --rows 1000000 --epochs 4
    python benchmarks/calibrate_synthetic.py --out benchmarks/results/calibration.md

The Markdown is printed (and written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mdmt.data.ceiling import learnable_ceiling  # noqa: E402
from mdmt.data.stats import data_stats  # noqa: E402
from mdmt.data.synthetic import PRESETS, SyntheticConfig, generate  # noqa: E402

TOLERANCE = 0.03


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _auc(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def calibrate(preset: str, rows: int, seed: int, epochs: int) -> str:
    p = PRESETS[preset]
    cfg = SyntheticConfig(preset=preset, rows=rows, seed=seed)
    t0 = time.perf_counter()
    raw = generate(cfg)
    gen_s = time.perf_counter() - t0
    stats = data_stats(raw)
    lines = [f"## `{preset}` ({rows:,} rows, seed {seed})", "",
             f"Generation: {gen_s:.1f} s ({rows / gen_s / 1e6:.2f}M rows/s); pre-history window "
             f"{raw.meta['prehistory']['days']} days ({raw.meta['prehistory']['rows']:,} impressions).", ""]

    lines += [f"**Positive rate (%)**, target: {p.paper}", "",
              "| task | " + " | ".join(f"{d} target | {d} realised" for d in p.domains) + " |",
              "|---|" + "---:|" * (2 * len(p.domains))]
    for t in p.tasks:
        cells = [f"{_pct(p.rates[d][t])} | {_pct(stats['positive_rate'][d][t])}" for d in p.domains]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "**Overlap (%)**: share of x's users (items) also in y", "",
              "| x→y | users target | users realised | items target | items realised |", "|---|---:|---:|---:|---:|"]
    for x in p.domains:
        for y in p.domains:
            if x != y:
                lines.append(
                    f"| {x}→{y} | {_pct(p.user_overlap[x][y], 1)} | {_pct(stats['user_overlap'][x][y], 1)} | "
                    f"{_pct(p.item_overlap[x][y], 1)} | {_pct(stats['item_overlap'][x][y], 1)} |"
                )

    t0 = time.perf_counter()
    ceil = learnable_ceiling(cfg, epochs=epochs)
    fit_s = time.perf_counter() - t0
    target = p.baseline_auc or {}
    lines += ["", f"**Test AUC** per cell: the paper's baseline ({p.baseline_source}) vs what this data allows. "
              f"Learnable ceiling fitted on {ceil.train_rows:,} rows × {ceil.epochs} epochs in {fit_s:.0f} s.", "",
              "| domain | task | test positives | paper | learnable ceiling | oracle | ceiling − paper |",
              "|---|---|---:|---:|---:|---:|---:|"]
    from mdmt.data.preprocess import split_frame

    test = split_frame(raw)["test"]
    near = total = 0
    for d in p.domains:
        part = test.filter(test["domain"] == d)
        for t in p.tasks:
            paper = target.get(d, {}).get(t)
            c, o = ceil.auc[(d, t)], ceil.oracle[(d, t)]
            diff = None if paper is None or math.isnan(c) else c - paper
            if diff is not None:
                total += 1
                near += abs(diff) <= TOLERANCE
            lines.append(f"| {d} | {t} | {int(part[t].sum()):,} | {_auc(paper)} | {_auc(c)} | {_auc(o)} | "
                         f"{'-' if diff is None else f'{diff:+.4f}'} |")
    lines += ["", f"Cells whose learnable ceiling is within ±{TOLERANCE} of the paper's baseline: {near} of {total}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), action="append", help="default: every preset")
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6, help="passes of the learnable-ceiling fit")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the ceiling fit")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = ["# Calibration of the synthetic presets", ""]
    for preset in args.preset or sorted(PRESETS):
        parts.append(calibrate(preset, args.rows, args.seed, args.epochs))
        print(parts[-1], flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
