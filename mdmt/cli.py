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


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["train.lr=0.01", "model.name=mmoe"]`` -> nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"mdmt: --set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _packaged_config(name: str) -> Path:
    return Path(str(resources.files("mdmt") / "configs" / name))


def _load_experiment(path: str, sets: list[str] | None, extra: dict[str, Any] | None = None):
    from .config import deep_merge, load_experiment

    over = _overrides(sets)
    if extra:
        over = deep_merge(over, extra)
    return load_experiment(path, over)


# ---- verbs -------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> None:
    from .train.run import run_experiment

    extra: dict[str, Any] = {"output_dir": args.output_dir}
    if args.rows:
        extra["data"] = {"params": {"rows": args.rows}}
    cfg = _load_experiment(str(_packaged_config("demo.yaml")), args.set, extra)
    run_experiment(cfg, data_dir=args.data_dir)


def cmd_train(args: argparse.Namespace) -> None:
    from .train.run import run_experiment

    extra: dict[str, Any] = {}
    if args.seed is not None:
        extra["train"] = {"seed": args.seed}
    if args.output_dir:
        extra["output_dir"] = args.output_dir
    cfg = _load_experiment(args.config, args.set, extra)
    if args.resume and not args.run_dir:
        raise SystemExit("mdmt: --resume needs --run-dir (the run directory to continue)")
    run_experiment(cfg, data_dir=args.data_dir, run_dir=args.run_dir, resume=args.resume)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from rich.console import Console

    from .data import load_prepared
    from .train.run import evaluate_split, load_run

    run = load_run(args.run_dir)
    prepared = load_prepared(run.config.data, data_dir=args.data_dir)
    if prepared.feature_map.model_dump() != run.feature_map.model_dump():
        raise SystemExit(f"mdmt: the data no longer matches {args.run_dir}/feature_map.json; evaluate on the data it was trained on")
    data = prepared.splits[args.split]
    probs = run.predict(data)
    res = evaluate_split(probs, data, run.feature_map.spec, oracle=(prepared.oracle or {}).get(args.split))
    Console().print(res.rich_table(title=f"{args.split}: {run.config.model.name} ({run.config.train.regime})"))
    print(f"avg AUC {res.avg_auc:.4f}  avg GAUC {res.avg_gauc:.4f}  avg LogLoss {res.avg_logloss:.4f}")


def cmd_predict(args: argparse.Namespace) -> None:
    import polars as pl

    from .data.preprocess import encode_for_scoring
    from .train.run import load_run

    run = load_run(args.run_dir)
    src = Path(args.input)
    if not src.exists():
        raise SystemExit(f"mdmt: input file {src} not found")
    if src.suffix in (".parquet", ".pq"):
        frame = pl.read_parquet(src)
    else:
        from .data.table import parse_sequences

        frame = parse_sequences(pl.read_csv(src, separator=args.separator), run.feature_map.spec)
    batch = encode_for_scoring(frame, run.feature_map, source=str(src))
    probs = run.predict(batch)
    cols = {}
    for c in args.keep or []:
        if c not in frame.columns:
            raise SystemExit(f"mdmt: --keep column {c!r} is not in {src}")
        cols[c] = frame[c]
    for i, t in enumerate(run.feature_map.spec.task_names):
        cols[t] = probs[:, i]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(cols).write_parquet(out)
    print(f"wrote {len(frame):,} rows x {len(run.feature_map.spec.task_names)} task scores to {out}")


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
              mdmt models
            """),
    )
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("demo", help="train and evaluate on the built-in synthetic douyin data (1M rows; under a minute on 2 cores)",
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
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoints")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="re-evaluate a finished run on a split", formatter_class=fmt,
                       epilog="example:\n  mdmt evaluate runs/demo-mmoe-mdmt-s0-20260101-120000 --split test")
    p.add_argument("run_dir", help="a run directory written by mdmt train")
    p.add_argument("--split", choices=["train", "valid", "test"], default="test")
    _add_common(p, config=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="score a CSV/Parquet file; writes Parquet with one column per task",
                       formatter_class=fmt,
                       epilog="example:\n  mdmt predict runs/my-run new_rows.parquet --out scores.parquet --keep user_id")
    p.add_argument("run_dir", help="a run directory written by mdmt train")
    p.add_argument("input", help="raw rows (CSV or Parquet) with the schema's raw columns; labels optional")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--keep", nargs="*", help="input columns copied to the output (e.g. ids)")
    p.add_argument("--separator", default=",", help="CSV separator")
    p.set_defaults(func=cmd_predict)

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


def main(argv: list[str] | None = None) -> int:
    from .data.base import DataError
    from .schema import ConfigError

    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, DataError) as err:
        print(f"mdmt: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FloatingPointError) as err:
        print(f"mdmt: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mdmt: interrupted; checkpoints written so far are kept (use --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
