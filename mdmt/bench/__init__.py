"""Benchmark harness: models × seeds × data sets, the papers' tables, the seesaw heatmap.

Command line (wired as ``mdmt bench``; the same parser is :func:`main`)::

    mdmt bench configs/bench/ml100k_m3oe.yaml              # run or resume the grid, then report
    mdmt bench configs/bench/ml100k_m3oe.yaml --report-only  # rebuild the report from cells/
    mdmt bench configs/bench/smoke.yaml --no-resume          # re-run every cell

From Python::

    >>> from mdmt.bench import load_bench_config, run_bench   # doctest: +SKIP
    >>> res = run_bench(load_bench_config("configs/bench/smoke.yaml"))  # doctest: +SKIP
    >>> res.report["results.md"]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from .harness import (
    BenchConfig,
    BenchEntry,
    BenchReference,
    BenchResults,
    BenchWarmStart,
    CellKey,
    add_arguments,
    cell_experiment,
    cell_path,
    completed_cells,
    fingerprint,
    grid_keys,
    load_bench_config,
    machine_description,
    main,
    run_bench,
    run_cli,
)

__all__ = [
    "BenchConfig",
    "BenchEntry",
    "BenchReference",
    "BenchResults",
    "BenchWarmStart",
    "CellKey",
    "cell_experiment",
    "cell_path",
    "completed_cells",
    "fingerprint",
    "grid_keys",
    "load_bench_config",
    "machine_description",
    "run_bench",
    "write_report",
    "write_benchmarks_md",
    "summarize",
    "seesaw_matrix",
    "plot_seesaw",
    "plot_cell_heatmap",
    "add_arguments",
    "run_cli",
    "main",
]

_LAZY = {
    "write_report": "report",
    "write_benchmarks_md": "report",
    "summarize": "report",
    "seesaw_matrix": "report",
    "plot_seesaw": "plots",
    "plot_cell_heatmap": "plots",
}


def __getattr__(name: str) -> Any:  # lazy: keep `import mdmt.bench` free of matplotlib/polars
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
