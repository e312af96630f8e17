"""Regenerate ``BENCHMARKS.md`` from the finished benchmark results in ``benchmarks/results/``.

Inputs (each produced by a command in this repository):

* every bench output directory holding ``meta.json`` and ``cells/`` — written by
  ``mdmt bench configs/bench/<name>.yaml`` (``output_dir`` in the config);
* ``benchmarks/results/train_throughput.json`` — written by ``python benchmarks/train_throughput.py``.

Nothing is re-trained: the tables are rebuilt from the per-run records, so the page always shows
what those commands measured. Run from the repository root::

    python benchmarks/make_benchmarks_md.py
    python benchmarks/make_benchmarks_md.py --benches benchmarks/results/ml100k_m3oe --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    from mdmt.bench.report import write_benchmarks_md
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(ROOT))
    from mdmt.bench.report import write_benchmarks_md

RESULTS = Path("benchmarks") / "results"
FIRST = ["ml100k_m3oe", "douyin"]  #: section order of the shipped benches


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benches", nargs="*", default=None,
                   help="bench output directories (default: every directory under benchmarks/results with a meta.json)")
    p.add_argument("--throughput", default=str(RESULTS / "train_throughput.json"))
    p.add_argument("--out", default="BENCHMARKS.md")
    args = p.parse_args(argv)
    benches = args.benches
    if benches is None:  # the papers' benchmark first, then the others by name
        found = sorted(d.parent for d in RESULTS.glob("*/meta.json"))
        benches = [str(d) for d in sorted(found, key=lambda d: (d.name not in FIRST, FIRST.index(d.name) if d.name in FIRST else 0, d.name))]
    out = write_benchmarks_md(benches, args.throughput, out=args.out,
                              regenerate_command="python benchmarks/make_benchmarks_md.py")
    print(f"wrote {out} from {len(benches)} bench result(s)"
          + (f" and {args.throughput}" if Path(args.throughput).exists() else ""))
    return out


if __name__ == "__main__":
    main()
