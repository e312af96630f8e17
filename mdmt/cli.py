"""The ``mdmt`` command line.

Every verb has ``--help`` with an example. Bad input ends with one clear message (file, key or
column named) and exit status 2, never a bare trace from inside torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["main"]


class UsageError(ValueError):
    """A command-line argument is wrong; the message names it."""


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["train.lr=0.01", "model.name=mmoe"]`` -> nested dict (values parsed as YAML scalars).

    ``KEY=null`` resets a key to its default (``--set model.params=null`` drops every model param).
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        parts = key.split(".")
        if not all(parts):
            raise UsageError(f"--set {pair!r}: empty part in the key {key!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise UsageError(f"--set {pair!r}: the value is not valid YAML: {err}") from None
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise UsageError(f"--set {pair!r} conflicts with an earlier --set of {p!r}")
            node = nxt
        node[parts[-1]] = parsed
    return out


def _packaged_config(name: str) -> Path:
    return Path(str(resources.files("mdmt") / "configs" / name))


def _load_experiment(path: str, sets: list[str] | None, extra: dict[str, Any] | None = None):
    from .config import deep_merge, load_experiment

    over = _overrides(sets)
    if extra:
        over = deep_merge(over, extra)
    return load_experiment(path, over)


def _check_writable_parent(path: Path, what: str) -> None:
    p = path.parent
    while not p.exists() and p.parent != p:
        p = p.parent
    if not p.is_dir():
        raise UsageError(f"{what} {path}: {p} is a file, not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: {p} is not writable")


DEMO_MIN_ROWS = 1000


# ---- verbs -------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> None:
    from .train.run import run_experiment

    extra: dict[str, Any] = {"output_dir": args.output_dir}
    if args.rows is not None:
        if args.rows < DEMO_MIN_ROWS:
            raise UsageError(f"--rows {args.rows}: the demo needs at least {DEMO_MIN_ROWS:,} rows "
                             "(fewer leave validation and test cells without both classes)")
        extra["data"] = {"params": {"rows": args.rows}}
    cfg = _load_experiment(str(_packaged_config("demo.yaml")), args.set, extra)
    run_experiment(cfg, data_dir=args.data_dir)


def cmd_train(args: argparse.Namespace) -> None:
    from .train.run import run_experiment

    extra: dict[str, Any] = {}
    if args.seed is not None:
        extra.setdefault("train", {})["seed"] = args.seed
    if args.output_dir:
        extra["output_dir"] = args.output_dir
    if args.warm_start is not None:
        extra.setdefault("train", {})["warm_start"] = {"run_dir": args.warm_start, "freeze": args.freeze_loaded,
                                                       "lr": args.loaded_lr}
    elif args.freeze_loaded or args.loaded_lr is not None:
        raise UsageError("--freeze-loaded and --loaded-lr apply to the parameters loaded by --warm-start RUN_DIR")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it: give one of them")
    if args.resume and not args.run_dir:
        raise UsageError("--resume needs --run-dir (the run directory to continue)")
    cfg = _load_experiment(args.config, args.set, extra)
    run_experiment(cfg, data_dir=args.data_dir, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from rich.console import Console

    from .data import load_prepared
    from .train.run import evaluate_split, load_run

    run = load_run(args.run_dir)
    prepared = load_prepared(run.config.data, data_dir=args.data_dir)
    if prepared.feature_map.model_dump() != run.feature_map.model_dump():
        from .data.base import DataError

        raise DataError(f"the data no longer matches {args.run_dir}/feature_map.json; evaluate on the data it was trained on")
    data = prepared.splits[args.split]
    probs = run.predict(data)
    res = evaluate_split(probs, data, run.feature_map.spec, oracle=(prepared.oracle or {}).get(args.split))
    Console().print(res.rich_table(title=f"{args.split}: {run.config.model.name} ({run.config.train.regime})"))
    print(f"avg AUC {res.avg_auc:.4f}  avg GAUC {res.avg_gauc:.4f}  avg LogLoss {res.avg_logloss:.4f}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .serve.engine import open_scorer
    from .serve.score import default_threads, score_file

    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give the path of the Parquet file to write")
    _check_writable_parent(out, "--out")
    src = Path(args.input)
    if not src.exists():
        raise UsageError(f"input file {src} not found")
    scorer = open_scorer(args.run_dir, engine=args.engine, threads=args.threads or default_threads())
    task_cols = [f"{args.score_prefix}{t}" for t in scorer.tasks]
    clash = [c for c in args.keep or [] if c in task_cols]
    if clash:
        raise UsageError(f"--keep {', '.join(clash)}: the output already has a score column of that name; "
                         "name the score columns apart with --score-prefix (e.g. --score-prefix p_)")
    # read like training reads: the run's CSV sequence separator, sequence columns typed by the schema
    n = score_file(scorer, src, out, keep=args.keep, chunk_rows=args.chunk_rows, separator=args.separator,
                   score_prefix=args.score_prefix, sequence_separator=scorer.sequence_separator,
                   model_workers=args.model_workers)
    print(f"wrote {n:,} rows x {len(scorer.tasks)} task scores to {out} ({scorer.engine})")


def cmd_export(args: argparse.Namespace) -> None:
    from .serve.export import export_run

    out = export_run(args.run_dir, args.out, fmt=args.format)
    print(f"exported {args.run_dir} to {out} (model.onnx, feature_map.json, manifest.json)")


def cmd_serve(args: argparse.Namespace) -> None:
    from .serve.app import serve

    serve(args.run_dir, host=args.host, port=args.port, engine=args.engine, max_rows=args.max_rows,
          max_bytes=args.max_bytes, threads=args.threads)


def cmd_analyze(args: argparse.Namespace) -> None:
    from .analyze import analyze_run

    res = analyze_run(args.run_dir, out=args.out, split=args.split, data_dir=args.data_dir,
                      max_rows=args.max_rows or None)
    for tag, a in res.analyses.items():
        print(f"{tag}: {sum(a.rows.values()):,} {args.split} rows; prompt norms "
              + ", ".join(f"{t} {n:.3f}" for t, n in a.prompt_norms.items()))
    print(f"wrote {res.json} and {len(res.pngs)} plots: " + ", ".join(p.name for p in res.pngs))


def cmd_data_prepare(args: argparse.Namespace) -> None:
    from .data import load_prepared

    cfg = _load_experiment(args.config, args.set)
    p = load_prepared(cfg.data, data_dir=args.data_dir)
    fm = p.feature_map
    print(f"data set {fm.spec.name}: " + ", ".join(f"{k} {len(v):,} rows" for k, v in p.splits.items()))
    print(f"sparse features {fm.sparse}\ndense features {fm.dense}\nsequences {fm.sequences}")
    print("vocabulary sizes: " + ", ".join(f"{f}={fm.vocab_size(f):,}" for f in fm.sparse))
    if p.cache_path:
        print(f"encoded Parquet shards and feature_map.json in {p.cache_path}")


def cmd_data_stats(args: argparse.Namespace) -> None:
    from .data import load_raw
    from .data.stats import data_stats, render_stats

    cfg = _load_experiment(args.config, args.set)
    raw = load_raw(cfg.data, data_dir=args.data_dir)
    render_stats(data_stats(raw))


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench.harness import main as bench_main

    status = bench_main(args)
    if status:
        raise SystemExit(status)


def cmd_models(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from .models import REGISTRY

    table = Table(title="registered models")
    table.add_column("name", style="bold")
    table.add_column("paper")
    table.add_column("description")
    for name in sorted(REGISTRY):
        info = REGISTRY[name]
        table.add_row(name, info.paper, info.description)
    Console().print(table)


# ---- parser ------------------------------------------------------------------------------------


def _add_common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("config", help="experiment YAML file")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.lr=0.01 (repeatable)")
    p.add_argument("--data-dir", default=os.environ.get("MDMT_DATA_DIR"),
                   help="root of local data sets (default: $MDMT_DATA_DIR)")


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(
        prog="mdmt",
        description="Multi-domain multi-task recommendation: data, training, evaluation, benchmarks.",
        formatter_class=fmt,
        epilog=textwrap.dedent("""\
            examples:
              mdmt demo
              mdmt train configs/ml100k_mmoe.yaml --set train.seed=1
              mdmt bench configs/bench/ml100k_m3oe.yaml
              mdmt analyze runs/my-pmta-run
              mdmt models
              mdmt export runs/my-run --out exports/my-run
              mdmt serve exports/my-run --port 8000
            """),
    )
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("demo", help="train and evaluate on the built-in synthetic douyin data (1M rows; a few minutes on 2 cores)",
                       formatter_class=fmt, epilog="example:\n  mdmt demo --rows 100000")
    p.add_argument("--rows", type=int, default=None, help="override the number of synthetic rows")
    p.add_argument("--output-dir", default="runs", help="where the run directory is created (default: runs)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    _add_common(p, config=False)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train and evaluate one experiment config", formatter_class=fmt,
                       epilog="example:\n  mdmt train configs/ml100k_mmoe.yaml --set model.name=ple --seed 3")
    _add_common(p)
    p.add_argument("--seed", type=int, default=None, help="training seed (overrides train.seed)")
    p.add_argument("--run-dir", default=None, help="run directory (default: a new one under output_dir)")
    p.add_argument("--output-dir", default=None, help="parent of new run directories")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last checkpoints (same model and data)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --run-dir (it is kept until the new run has finished)")
    p.add_argument("--warm-start", metavar="RUN_DIR", default=None,
                   help="start from the matching parameters (by name and shape) of a finished run with the same "
                        "feature map")
    p.add_argument("--freeze-loaded", action="store_true", help="with --warm-start: keep the loaded parameters fixed")
    p.add_argument("--loaded-lr", type=float, default=None, metavar="LR",
                   help="with --warm-start: learning rate of the loaded parameters (their own optimizer group)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="re-evaluate a finished run on a split", formatter_class=fmt,
                       epilog="example:\n  mdmt evaluate runs/demo-mmoe-mdmt-s0-20260101-120000 --split test")
    p.add_argument("run_dir", help="a run directory written by mdmt train")
    p.add_argument("--split", choices=["train", "valid", "test"], default="test")
    _add_common(p, config=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="score a CSV/Parquet file in chunks; writes Parquet with one column per task",
                       formatter_class=fmt,
                       epilog="example:\n  mdmt predict runs/my-run new_rows.parquet --out scores.parquet --keep user_id\n"
                              "  mdmt predict exports/my-run new_rows.csv --out scores.parquet --engine onnx")
    p.add_argument("run_dir", help="a run directory written by mdmt train, or an export folder written by mdmt export")
    p.add_argument("input", help="raw rows (CSV or Parquet) with the schema's raw columns; labels optional")
    p.add_argument("--out", required=True, help="output Parquet file: row (input row number), --keep columns, one column per task")
    p.add_argument("--keep", nargs="*", help="input columns copied to the output (e.g. ids)")
    p.add_argument("--score-prefix", default="", metavar="PREFIX",
                   help="prefix of the score columns (default: none, the columns are the task names)")
    p.add_argument("--separator", default=",", help="CSV separator")
    p.add_argument("--engine", choices=["torch", "onnx"], default=None,
                   help="scoring engine (default: torch for a run directory, onnx for an export folder)")
    p.add_argument("--chunk-rows", type=int, default=65536, help="rows read, encoded and scored at a time (default 65536)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of the engine (default: the cores but one, which reads and encodes)")
    p.add_argument("--model-workers", type=int, default=1,
                   help="threads running model calls of a chunk side by side, each with --threads (default 1)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a trained run to a self-contained ONNX folder", formatter_class=fmt,
                       epilog="example:\n  mdmt export runs/my-run --format onnx --out exports/my-run")
    p.add_argument("run_dir", help="a run directory written by mdmt train")
    p.add_argument("--format", default="onnx", help="export format (onnx)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/export-onnx)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="serve a run or an export over HTTP (POST /score, GET /healthz, GET /metadata)",
                       formatter_class=fmt,
                       epilog="example:\n  mdmt serve exports/my-run --port 8000\n"
                              "  curl -s localhost:8000/score -H 'content-type: application/json' -d '{\"rows\": [...]}'")
    p.add_argument("run_dir", help="a run directory written by mdmt train, or an export folder written by mdmt export")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--engine", choices=["torch", "onnx"], default=None,
                   help="scoring engine (default: torch for a run directory, onnx for an export folder)")
    p.add_argument("--max-rows", type=int, default=10_000, help="most rows in one request (more: 413)")
    p.add_argument("--max-bytes", type=int, default=8 * 2**20, help="largest request body in bytes (more: 413)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the engine")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("analyze", help="what a trained PMTA run learned: attention maps, DAR scales, prompt norms",
                       formatter_class=fmt,
                       epilog="example:\n  mdmt analyze runs/my-pmta-run --split test --out analysis/")
    p.add_argument("run_dir", help="a run directory written by mdmt train with model pmta")
    p.add_argument("--out", default=None, help="output directory (default: the run directory)")
    p.add_argument("--split", choices=["train", "valid", "test"], default="test")
    p.add_argument("--max-rows", type=int, default=50_000, help="rows analysed at most, a seeded random subset (0 = all)")
    _add_common(p, config=False)
    p.set_defaults(func=cmd_analyze)


    pd = sub.add_parser("data", help="prepare data or print its statistics")
    dsub = pd.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    p = dsub.add_parser("prepare", help="split, fit the feature map on train, encode and cache as Parquet",
                        formatter_class=fmt, epilog="example:\n  mdmt data prepare configs/ml100k_mmoe.yaml")
    _add_common(p)
    p.set_defaults(func=cmd_data_prepare)
    p = dsub.add_parser("stats", help="per-domain sizes, per-cell positive rates, user/item overlap",
                        formatter_class=fmt, epilog="example:\n  mdmt data stats configs/demo_douyin.yaml")
    _add_common(p)
    p.set_defaults(func=cmd_data_stats)

    p = sub.add_parser("bench", help="run a models x seeds (x data sets) grid and write tables and plots",
                       formatter_class=fmt,
                       epilog="example:\n  mdmt bench configs/bench/ml100k_m3oe.yaml\n  mdmt bench configs/bench/ml100k_m3oe.yaml --report-only")
    from .bench.harness import add_arguments as bench_arguments

    bench_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("models", help="list every registered model with its paper", formatter_class=fmt,
                       epilog="example:\n  mdmt models")
    p.set_defaults(func=cmd_models)
    return ap


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"mdmt: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    from .data.base import DataError
    from .schema import ConfigError
    from .serve import ServeError
    from .train.checkpoint import CheckpointError

    args = _parser().parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        args.func(args)
    except (ConfigError, DataError, CheckpointError, UsageError, ServeError) as err:
        print(f"mdmt: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FloatingPointError) as err:
        print(f"mdmt: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mdmt: interrupted; checkpoints written so far are kept (use --resume)", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
    return 0


if __name__ == "__main__":
    sys.exit(main())
