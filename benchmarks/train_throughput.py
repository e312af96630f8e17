"""Training throughput of every registered model, and how close it runs to the machine's limit.

For each model (default: all of ``mdmt.models.REGISTRY``), on ``--rows`` synthetic rows of the
``douyin`` preset (1,000,000 by default; generated and prepared once), batch ``--batch-size``:

1. **End to end**: the real training path — :class:`mdmt.data.loader.BatchIterator` over the
   prepared train split (shuffled), ``Batch.to(device)``, then :meth:`mdmt.train.trainer.Trainer.train_step`
   (model → masked multi-task BCE → backward → optimizer step; plus, for models with
   ``step_on="valid"`` groups such as M3oE's α and β, the architecture step on a batch of the
   held-out training rows after every main step, as in ``Trainer.fit`` with ``train.arch_every: 1``;
   its share of the step time is reported). The epoch's shuffle (one
   ``randperm`` and one gather of the split) is timed once and amortised over the epoch's steps.
2. **Model only**: the same ``train_step`` on one batch already in memory, reused.
3. **FLOPs per step**: forward + backward of one batch, counted with
   ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and similar; element-wise ops are
   not counted, so utilisation is a lower bound in that respect).
4. **Peak**: ``torch.mm`` on 2048×2048 float32, best of ``--mm-repeats``, in the same run
   (before and after the models; the higher is used).

Reported per model: samples/s end to end and model only, the ratio of end-to-end to model-only
step time (target ≤ 1.15), FLOPs per step, achieved FLOP/s and utilisation = achieved / peak, end
to end and model only. The two paths are timed step by step, interleaved (``--steps`` each, after
``--warmup``), so both see the same machine load; step times are the medians.
The machine is printed and saved with the results in ``benchmarks/results/train_throughput.json``.

Run (from the repository root)::

    python benchmarks/train_throughput.py                      # all models, 1M rows
    python benchmarks/train_throughput.py --rows 100000 --models mlp,mmoe --steps 10
    MDMT_DATA_DIR=... python benchmarks/train_throughput.py --dataset ml100k --batch-size 40960 --models m3oe
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
try:
    import mdmt  # noqa: F401
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(ROOT))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, describe_line, mm_peak, synchronize  # noqa: E402

TARGET_RATIO = 1.15  #: end-to-end step time ÷ model-only step time should not exceed this
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "train_throughput.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows generated (train split ≈ 71%%)")
    p.add_argument("--preset", default="douyin", choices=["douyin", "kuaishou"])
    p.add_argument("--dataset", default="synthetic", choices=["synthetic", "ml100k"],
                   help="ml100k: MovieLens-100K, M3oE protocol (embedding 16), from MDMT_DATA_DIR")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=50, help="timed steps per path (interleaved; medians kept)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of each path before timing")
    p.add_argument("--models", default=None, help="comma-separated registered names (default: all)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: os.cpu_count())")
    p.add_argument("--mm-repeats", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def _cycle(it: Any):
    """Endless batches from a BatchIterator; each new epoch reshuffles. Yields (batch, epoch_start_seconds)."""
    while True:
        gen = iter(it)
        t0 = time.perf_counter()
        first = next(gen, None)
        if first is None:
            return
        yield first, time.perf_counter() - t0
        for b in gen:
            yield b, 0.0


def _flops_per_step(model: Any, batch: Any, task_names: list[str]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from mdmt.train.loss import multitask_loss

    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        loss, _ = multitask_loss(model(batch), batch, task_names)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def measure_model(name: str, prepared: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Throughput, step-time ratio and FLOPs of one registered model (see the module docstring)."""
    from mdmt.config import TrainConfig
    from mdmt.data.loader import BatchIterator
    from mdmt.models import build_model
    from mdmt.train.arch import holdout_rows
    from mdmt.train.trainer import Trainer, seed_everything

    seed_everything(args.seed)
    spec, fm = prepared.feature_map.spec, prepared.feature_map
    train, valid = prepared.splits["train"], prepared.splits["valid"]
    model = build_model(name, spec, fm, {})
    cfg = TrainConfig(batch_size=args.batch_size, lr=args.lr, device=str(device), progress=False, seed=args.seed)
    trainer = Trainer(model, cfg, score_fn=lambda p: 0.0, run_dir=None, tag=name)
    has_valid_step = bool(trainer.valid_groups)
    if has_valid_step:  # architecture steps on held-out training rows, never on the main rows
        main_rows, arch_rows = holdout_rows(len(train), cfg.arch_holdout, args.seed)
        train, valid = train.index(main_rows), train.index(arch_rows)
    it = BatchIterator(train, args.batch_size, shuffle=True, seed=args.seed, drop_last=True)
    if len(it) == 0:
        raise ValueError(f"--rows too small: the train split has {len(train)} rows < batch size {args.batch_size}")
    valid_it = BatchIterator(valid, args.batch_size, shuffle=True, seed=args.seed + 1, drop_last=False)
    stream = _cycle(it)
    valid_stream = (b for b, _ in _cycle(valid_it))
    fixed_valid = next(iter(valid_it)).to(device) if has_valid_step else None
    arch_times: list[float] = []

    def e2e_step() -> float:
        batch, epoch_start = next(stream)
        batch = batch.to(device, non_blocking=True)
        trainer.train_step(batch)
        if has_valid_step:
            synchronize(device)
            t = time.perf_counter()
            trainer.arch_step(next(valid_stream).to(device))
            synchronize(device)
            arch_times.append(time.perf_counter() - t)
        return epoch_start

    # one epoch start: the shuffle gather, amortised over the epoch's steps
    gather_seconds = e2e_step()
    g = torch.Generator().manual_seed(args.seed + 99)
    fixed = _contiguous(train.index(torch.randperm(len(train), generator=g)[: args.batch_size])).to(device)

    def model_step() -> None:
        trainer.train_step(fixed)
        if has_valid_step:
            trainer.arch_step(fixed_valid)

    for _ in range(args.warmup):
        e2e_step()
        model_step()
    synchronize(device)

    # interleave the two paths step by step, so both see the same machine load; keep medians
    e2e_times, model_times = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        epoch_start = e2e_step()  # an epoch boundary's shuffle is subtracted here, amortised below
        synchronize(device)
        e2e_times.append(time.perf_counter() - t0 - epoch_start)
        t0 = time.perf_counter()
        model_step()
        synchronize(device)
        model_times.append(time.perf_counter() - t0)

    e2e_step_s = statistics.median(e2e_times) + gather_seconds / len(it)
    arch_step_s = statistics.median(arch_times[-args.steps:]) if arch_times else 0.0
    model_step_s = statistics.median(model_times)
    flops = _flops_per_step(model, fixed, model.task_names)
    if has_valid_step:
        flops += _flops_per_step(model, fixed_valid, model.task_names)
    bs = args.batch_size
    return {
        "model": name,
        "batch_size": bs,
        "params": int(sum(p.numel() for p in model.parameters())),
        "has_valid_step": has_valid_step,
        "arch_step_seconds": arch_step_s,
        "arch_share_of_e2e": arch_step_s / e2e_step_s,
        "e2e_step_seconds": e2e_step_s,
        "e2e_step_seconds_quartiles": _quartiles(e2e_times),
        "model_step_seconds_quartiles": _quartiles(model_times),
        "model_step_seconds": model_step_s,
        "epoch_shuffle_seconds": gather_seconds,
        "steps_per_epoch": len(it),
        "e2e_samples_per_sec": bs / e2e_step_s,
        "model_samples_per_sec": bs / model_step_s,
        "ratio": e2e_step_s / model_step_s,
        "flops_per_step": flops,
        "e2e_flops_per_sec": flops / e2e_step_s,
        "model_flops_per_sec": flops / model_step_s,
    }


def _load_average() -> float | None:
    """1-minute load average (other work on the machine slows every figure), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _quartiles(x: list[float]) -> list[float]:
    q = statistics.quantiles(x, n=4) if len(x) > 1 else [x[0]] * 3
    return [float(v) for v in q]


def _contiguous(batch: Any) -> Any:
    return batch._map(lambda t: t.contiguous().clone())


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    peak = result["peak_flops"]
    st0 = result["settings"]
    data = "MovieLens-100K" if st0.get("dataset") == "ml100k" else f"{st0['rows']:,} {st0['preset']} rows"
    table = Table(title=f"Training throughput · batch {st0['batch_size']} · {data}")
    for col in ("model", "samples/s e2e", "samples/s model", "e2e/model", "MFLOP/sample", "GFLOP/s e2e",
                "util e2e", "util model", "arch share"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in result["models"]:
        if "error" in r:
            table.add_row(r["model"], f"[red]error: {r['error'][:60]}", *[""] * 7)
            continue
        ratio = f"{r['ratio']:.3f}"
        if r["ratio"] > TARGET_RATIO:
            ratio = f"[yellow]{ratio}"
        table.add_row(
            r["model"],
            f"{r['e2e_samples_per_sec']:,.0f}",
            f"{r['model_samples_per_sec']:,.0f}",
            ratio,
            f"{r['flops_per_step'] / r['batch_size'] / 1e6:.2f}",
            f"{r['e2e_flops_per_sec'] / 1e9:.2f}",
            f"{100 * r['e2e_utilisation']:.1f}%",
            f"{100 * r['model_utilisation']:.1f}%",
            f"{100 * r['arch_share_of_e2e']:.1f}%" if r["has_valid_step"] else "",
        )
    con = Console()
    con.print(f"Machine: {describe_line(result['machine'])}")
    st = result["settings"]
    con.print(f"Load average (1 min) before / after: {st['load_average_1min_before']} / {st['load_average_1min_after']} "
              f"on {result['machine']['logical_cores']} logical cores")
    con.print(f"Peak: torch.mm 2048×2048 float32 = {peak / 1e9:,.1f} GFLOP/s (best of {result['settings']['mm_repeats']}, measured in this run)")
    con.print(table)
    con.print(f"e2e/model = end-to-end step time ÷ model-only step time; target ≤ {TARGET_RATIO}.")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table; write and return the JSON result."""
    args = parse_args(argv)
    argv_used = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device(args.device)

    from mdmt.bench.harness import write_json_atomic
    from mdmt.data.preprocess import prepare
    from mdmt.data.synthetic import SyntheticConfig, generate
    from mdmt.models import REGISTRY

    names = sorted(REGISTRY)
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in REGISTRY]
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown}; registered: {', '.join(names)}")
        names = wanted

    machine = describe()
    load_before = _load_average()
    peak_before = mm_peak(repeats=args.mm_repeats, device=args.device)
    t0 = time.perf_counter()
    if args.dataset == "ml100k":
        from mdmt.config import DataConfig
        from mdmt.data import load_prepared

        prepared = load_prepared(DataConfig(source="movielens", params={"variant": "ml-100k", "protocol": "m3oe"}),
                                 progress=False)
        data_name = "MovieLens-100K (M3oE protocol)"
    else:
        raw = generate(SyntheticConfig(preset=args.preset, rows=args.rows, seed=args.seed))
        prepared = prepare(raw, cache_dir=None, progress=False)
        data_name = f"{args.rows:,} {args.preset} rows"
    data_seconds = time.perf_counter() - t0
    if not args.quiet:
        print(f"data: {data_name} prepared in {data_seconds:.1f} s; "
              f"train split {len(prepared.splits['train']):,} rows")

    rows = []
    for name in names:
        t1 = time.perf_counter()
        try:
            r = measure_model(name, prepared, args, device)
        except Exception as err:  # one broken model must not hide the others' figures
            r = {"model": name, "error": f"{type(err).__name__}: {err}"}
        r["wall_seconds"] = time.perf_counter() - t1
        rows.append(r)
        if not args.quiet:
            if "error" in r:
                print(f"  {name}: ERROR {r['error']}")
            else:
                print(f"  {name}: {r['e2e_samples_per_sec']:,.0f} samples/s end to end, ratio {r['ratio']:.3f} "
                      f"({r['wall_seconds']:.1f} s)")
    peak_after = mm_peak(repeats=args.mm_repeats, device=args.device)
    peak = max(peak_before["flops_per_sec"], peak_after["flops_per_sec"])
    load_after = _load_average()
    for r in rows:
        if "error" not in r:
            r["e2e_utilisation"] = r["e2e_flops_per_sec"] / peak
            r["model_utilisation"] = r["model_flops_per_sec"] / peak
    ok = [r for r in rows if "error" not in r]
    result = {
        "command": "python benchmarks/train_throughput.py" + ("".join(f" {a}" for a in argv_used)),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            "rows": args.rows,
            "preset": args.preset,
            "dataset": args.dataset,
            "train_rows": len(prepared.splits["train"]),
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "lr": args.lr,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "mm_repeats": args.mm_repeats,
            "data_seconds": data_seconds,
            "load_average_1min_before": load_before,
            "load_average_1min_after": load_after,
        },
        "peak_flops": peak,
        "peak": {"before": peak_before, "after": peak_after},
        "target_ratio": TARGET_RATIO,
        "all_within_target": bool(ok) and all(r["ratio"] <= TARGET_RATIO for r in ok),
        "models": rows,
    }
    out = Path(args.out)
    write_json_atomic(out, result)
    if not args.quiet:
        _print_table(result)
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    res = main()
    sys.exit(1 if any("error" in r for r in res["models"]) else 0)
