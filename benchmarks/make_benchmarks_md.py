"""Regenerate ``BENCHMARKS.md`` from the finished benchmark results in ``benchmarks/results/``.

Inputs (each produced by a command in this repository):

* every bench output directory holding ``meta.json`` and ``cells/`` — written by
  ``mdmt bench configs/bench/<name>.yaml`` (``output_dir`` in the config);
* ``benchmarks/results/train_throughput.json`` — written by ``python benchmarks/train_throughput.py``;
* ``benchmarks/results/loader_speed.json`` and ``metrics_speed.json`` — written by
  ``python benchmarks/loader_speed.py`` and ``python benchmarks/metrics_speed.py``;
* ``benchmarks/results/calibration_synthetic.md`` — written by
  ``python benchmarks/calibrate_synthetic.py --out benchmarks/results/calibration_synthetic.md``.

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
FIRST = ["ml100k_m3oe", "ml100k_temporal", "douyin"]  #: section order of the shipped benches


def _speed_sections(loader_json: Path, metrics_json: Path) -> str:
    """Markdown for the data-path and metric speed benchmarks (empty when they were not run)."""
    import json

    parts = []
    if loader_json.exists():
        d = json.loads(loader_json.read_text())
        m = d["machine"]
        parts += [
            "## Data path speed",
            "",
            "Regenerate: `python benchmarks/loader_speed.py`",
            "",
            f"Machine: {m.get('platform')}, {m.get('cpu_count')} logical cores, torch {m.get('torch')}. "
            f"{d['rows']:,} rows, {d['sparse_features']} sparse and {d['dense_features']} dense features, "
            f"batch {d['batch_size']:,}.",
            "",
            "| Path | Rows/s | vs per-row DataLoader (same run) |",
            "| :--- | ---: | ---: |",
            f"| BatchIterator, shuffled (the training fast path) | {d['batch_iterator']['rows_per_sec']:,.0f} | "
            f"{d['speedup_vs_reference']:.0f}× |",
            f"| ParquetStream, shuffled (the streaming path) | {d['parquet_stream']['rows_per_sec']:,.0f} | "
            f"{d['parquet_stream']['rows_per_sec'] / d['reference_dataloader']['rows_per_sec']:.0f}× |",
            f"| per-row `Dataset.__getitem__` + default collation (reference) | "
            f"{d['reference_dataloader']['rows_per_sec']:,.0f} | 1× |",
            "",
        ]
    if metrics_json.exists():
        d = json.loads(metrics_json.read_text())
        m = d["machine"]
        parts += [
            "## Metric speed",
            "",
            "Regenerate: `python benchmarks/metrics_speed.py`",
            "",
            f"Machine: {m.get('platform')}, {m.get('cpu_count')} logical cores "
            f"(load average {m.get('load_average_1min')} during the run).",
            "",
            "| What | Seconds |",
            "| :--- | ---: |",
            f"| GAUC, {d['rows']:,} rows, {d['groups']:,} groups (vectorised) | {d['gauc_seconds']:.2f} |",
            f"| the same with a per-group scikit-learn loop (timed on {d['reference_groups']:,} groups, "
            f"extrapolated) | {d['reference_seconds_extrapolated']:.0f} |",
            f"| `evaluate`: {d['evaluate_shape']['rows']:,} rows × {d['evaluate_shape']['tasks']} tasks × "
            f"{d['evaluate_shape']['domains']} domains, AUC + GAUC + LogLoss + oracle | {d['evaluate_seconds']:.1f} |",
            "",
            f"Largest difference from scikit-learn on the timed subset: {d['max_abs_difference_subset']:.1e}.",
            "",
        ]
    return "\n".join(parts)


def _calibration_section(path: Path) -> str:
    """The synthetic presets' calibration tables (``calibrate_synthetic.py --out``), under one heading."""
    if not path.exists():
        return ""
    body = path.read_text().splitlines()
    body = [line for line in body if not line.startswith("# ")]  # its own title
    body = [("#" + line) if line.startswith("## ") else line for line in body]
    return "\n".join(
        ["## Synthetic presets: calibration", "",
         f"Regenerate: `python benchmarks/calibrate_synthetic.py --out {path.as_posix()}`", "", *body]
    ).rstrip() + "\n"


def _ship_sections(predict_json: Path, serve_json: Path) -> str:
    """Markdown for the scoring benchmarks of a shipped model (empty when they were not run)."""
    import json

    parts = []
    if predict_json.exists():
        d = json.loads(predict_json.read_text())
        load = d.get("load_average_1min", {})
        parts += [
            "## Batch scoring speed (`mdmt predict`)",
            "",
            "Regenerate: `python benchmarks/predict_speed.py`",
            "",
            f"Machine: {d['machine_line']} (1-minute load average {load.get('before', float('nan')):.1f} before, "
            f"{load.get('after', float('nan')):.1f} after: other processes shared the cores). "
            f"{d['model']} on the {d['schema']}, {d['rows']:,} rows, {d['threads']} threads, chunks of {d['chunk_rows']:,} rows. "
            f"Target: {d['target_rows_per_s']:,} rows/s.",
            "",
            "| Engine | Input | Rows/s | Read s | Encode s | Model s | Write s |",
            "| :--- | :--- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in d["results"]:
            parts.append(f"| {r['engine']} | {r['input']} | {r['rows_per_s']:,.0f} | {r['read_s']:.2f} | {r['encode_s']:.2f} | "
                         f"{r['model_s']:.2f} | {r['write_s']:.2f} |")
        parts.append("")
    if serve_json.exists():
        d = json.loads(serve_json.read_text())
        load = d.get("load_average_1min", {})
        bar = d.get("bar", {})
        parts += [
            "## HTTP service load test (`mdmt serve`)",
            "",
            "Regenerate: `python benchmarks/serve_load.py`",
            "",
            f"Machine: {d['machine_line']} (1-minute load average {load.get('before', float('nan')):.1f} before, "
            f"{load.get('after', float('nan')):.1f} after; the load client runs on the same cores). "
            f"{d['model']} on the {d['schema']}; service with {d['service_threads']} intra-op thread(s).",
            "",
            f"Throughput: concurrency {d['concurrency']}, {d['malformed_share']:.0%} of the requests malformed.",
            "",
            "| Engine | Batch | Requests | Requests/s | Rows/s | 5xx | Malformed not 422 |",
            "| :--- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in d["throughput"]:
            parts.append(f"| {r['engine']} | {r['batch']} | {r['requests']:,} | {r['requests_per_s']:,.0f} | "
                         f"{r['rows_per_s']:,.0f} | {r['responses_5xx']} | {r['malformed_not_422']} |")
        parts += [
            "",
            "Latency, one request at a time (client side), and the mean share of validation, encoding, the model and "
            "the rest (HTTP, JSON, the client):",
            "",
            "| Engine | Batch | p50 ms | p99 ms | Validate | Encode | Model | HTTP |",
            "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in d["latency"]:
            parts.append(f"| {r['engine']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['validate_share']:.0%} | "
                         f"{r['encode_share']:.0%} | {r['model_share']:.0%} | {r['http_share']:.0%} |")
        if bar:
            parts += ["", f"Bar: p99 under {bar['target_ms']:.0f} ms at batch 1 with onnxruntime: "
                          f"{'met' if bar['met'] else 'not met'} ({bar['p99_ms_batch1_onnx']:.2f} ms)."]
        parts.append("")
    return "\n".join(parts)


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
    extra = _speed_sections(RESULTS / "loader_speed.json", RESULTS / "metrics_speed.json")
    ship = _ship_sections(RESULTS / "predict_speed.json", RESULTS / "serve_load.json")
    extra = "\n".join(x for x in (extra, _calibration_section(RESULTS / "calibration_synthetic.md"), ship) if x)
    if extra:
        text = Path(out).read_text()
        cmds = [c for c, f in (("python benchmarks/loader_speed.py", "loader_speed.json"),
                               ("python benchmarks/metrics_speed.py", "metrics_speed.json"),
                               ("python benchmarks/predict_speed.py", "predict_speed.json"),
                               ("python benchmarks/serve_load.py", "serve_load.json")) if (RESULTS / f).exists()]
        last = "python benchmarks/make_benchmarks_md.py\n```"
        text = text.replace(last, "".join(c + "\n" for c in cmds) + last, 1)
        Path(out).write_text(text.rstrip("\n") + "\n\n" + extra)
    print(f"wrote {out} from {len(benches)} bench result(s)"
          + (f" and {args.throughput}" if Path(args.throughput).exists() else ""))
    return out


if __name__ == "__main__":
    main()
