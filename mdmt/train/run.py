"""One experiment end to end: data -> model(s) -> training -> evaluation -> run directory.

Training regimes (M3oE Table 2), chosen by ``train.regime``:

* ``mdmt``: one model for all domains and tasks (the "-MDMT" rows);
* ``mtl``: one multi-task model per domain (the "-MTL" rows);
* ``mdl``: one multi-domain model per task (the "-MDL" rows);
* ``cell``: one model per (domain, task) cell (baseline "(a)").

Every model of a regime is selected on its own validation rows; the test predictions of all of
them are merged and evaluated together, so every regime is reported on the same cells.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..batch import Batch
from ..config import ExperimentConfig
from ..featuremap import FeatureMap
from ..metrics import EvalResult, evaluate
from ..models import build_model
from ..models.base import MDMTModel
from ..schema import ConfigError, DatasetSpec
from .trainer import FitResult, Trainer, atomic_save, predict, resolve_device, seed_everything

__all__ = ["Unit", "RunResult", "regime_units", "run_experiment", "evaluate_split", "LoadedRun", "load_run"]


@dataclass
class Unit:
    """One model of a regime: the domains and tasks it is trained and scored on (None = all)."""

    tag: str
    domains: list[int] | None = None
    tasks: list[int] | None = None
    skipped: bool = False  # no observed label in its training rows: nothing to learn, scores stay NaN


def regime_units(regime: str, spec: DatasetSpec) -> list[Unit]:
    """The models a regime trains, e.g. ``mtl`` -> one unit per domain."""
    D, T = range(spec.num_domains), range(spec.num_tasks)
    if regime == "mdmt":
        return [Unit("all")]
    if regime == "mtl":
        return [Unit(f"domain-{spec.domain_names[d]}", domains=[d]) for d in D]
    if regime == "mdl":
        return [Unit(f"task-{spec.task_names[t]}", tasks=[t]) for t in T]
    if regime == "cell":
        return [Unit(f"cell-{spec.domain_names[d]}-{spec.task_names[t]}", [d], [t]) for d in D for t in T]
    raise ValueError(f"unknown regime {regime!r}")


def _rows(batch: Batch, domains: list[int] | None) -> torch.Tensor | None:
    if domains is None:
        return None
    keep = torch.zeros(len(batch), dtype=torch.bool)
    for d in domains:
        keep |= batch.domain == d
    return keep.nonzero().squeeze(1)


def _subset(batch: Batch, rows: torch.Tensor | None, tasks: list[int] | None) -> Batch:
    b = batch if rows is None else batch.index(rows)
    if tasks is not None:
        idx = torch.tensor(tasks)
        b = Batch(b.sparse, b.dense, b.domain, b.labels[:, idx], b.label_mask[:, idx], b.group,
                  b.sequences, b.seq_lengths)
    return b


def evaluate_split(
    probs: np.ndarray, data: Batch, spec: DatasetSpec, oracle: np.ndarray | None = None,
    task_names: list[str] | None = None,
) -> EvalResult:
    """Per-(domain, task) metrics of ``probs [N, T]`` against the labels in ``data``."""
    return evaluate(
        probs,
        data.labels.numpy(),
        data.label_mask.numpy(),
        data.domain.numpy(),
        data.group.numpy(),
        task_names or spec.task_names,
        spec.domain_names,
        oracle=oracle,
    )


@dataclass
class RunResult:
    """What :func:`run_experiment` returns (also written to ``run_dir``)."""

    run_dir: Path
    config: ExperimentConfig
    valid: EvalResult
    test: EvalResult
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    samples_per_sec: float = float("nan")
    best_epoch: int | dict[str, int] = -1
    predictions: dict[str, np.ndarray] = field(default_factory=dict)


def _score_fn(monitor: str, valid: Batch, spec: DatasetSpec, task_names: list[str]):
    def score(probs: np.ndarray) -> float:
        res = evaluate_split(probs, valid, spec, task_names=task_names)
        if monitor == "avg_auc":
            return res.avg_auc
        if monitor == "avg_gauc":
            return res.avg_gauc
        return -res.avg_logloss

    return score


def _default_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output_dir) / f"{cfg.name}-{cfg.model.name}-{cfg.train.regime}-s{cfg.train.seed}-{stamp}"
    path, k = base, 1
    while path.exists():
        path, k = Path(f"{base}-{k}"), k + 1
    return path


def run_experiment(
    cfg: ExperimentConfig,
    *,
    data_dir: str | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    prepared: Any | None = None,
    quiet: bool = False,
) -> RunResult:
    """Train and evaluate ``cfg`` end to end and write the run directory.

    Args:
        cfg: the experiment.
        data_dir: root of local data sets (default: ``MDMT_DATA_DIR``).
        run_dir: output directory (default: a new one under ``cfg.output_dir``). With
            ``resume=True`` an existing run directory continues from its last checkpoints.
        prepared: an already prepared data set (reused across models and seeds by the bench).
        quiet: no console output.
    Returns:
        the :class:`RunResult`, with validation and test metrics of the best epoch's weights.
    """
    from ..data import load_prepared
    from .progress import RunProgress

    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if prepared is None:
        prepared = load_prepared(cfg.data, data_dir=data_dir, progress=not quiet)
    fm: FeatureMap = prepared.feature_map
    spec = fm.spec
    run_dir = Path(run_dir) if run_dir is not None else _default_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    fm.save(run_dir / "feature_map.json")

    train, valid, test = prepared.splits["train"], prepared.splits["valid"], prepared.splits["test"]
    units = regime_units(cfg.train.regime, spec)
    stream = None
    if cfg.train.streaming:
        if cfg.train.regime != "mdmt" or prepared.cache_path is None:
            raise ConfigError("train.streaming reads the cached Parquet shards: it needs data.cache_dir "
                              f"and regime 'mdmt' (got regime {cfg.train.regime!r}, cache {prepared.cache_path})")
        from ..data.loader import ParquetStream

        stream = ParquetStream.from_cache(prepared.cache_path, "train", cfg.train.batch_size, shuffle=True,
                                          seed=cfg.train.seed, buffer_rows=cfg.train.shuffle_buffer)
    valid_probs = np.full((len(valid), spec.num_tasks), np.nan)
    test_probs = np.full((len(test), spec.num_tasks), np.nan)
    history: list[dict] = []
    seconds, samples = 0.0, 0
    best_epochs: dict[str, int] = {}
    device = resolve_device(cfg.train.device)
    progress = RunProgress(enabled=not quiet and cfg.train.progress, units=len(units), epochs=cfg.train.epochs)
    with progress:
        for k, unit in enumerate(units):
            seed_everything(cfg.train.seed * 1000 + k, cfg.train.deterministic)
            task_names = spec.task_names if unit.tasks is None else [spec.task_names[t] for t in unit.tasks]
            unit_spec = spec.restrict(tasks=task_names) if unit.tasks is not None else spec
            tr = _subset(train, _rows(train, unit.domains), unit.tasks)
            va_rows = _rows(valid, unit.domains)
            va = _subset(valid, va_rows, unit.tasks)
            if len(tr) == 0 or len(va) == 0:
                raise ValueError(f"unit {unit.tag}: empty training or validation rows")
            if not bool(tr.label_mask.any()):  # e.g. a (domain, task) cell where the task is never observed
                unit.skipped = True
                continue
            model = build_model(cfg.model.name, unit_spec, fm, cfg.model.params,
                                embedding_init_std=cfg.train.embedding_init_std, embedding=cfg.model.embedding)
            trainer = Trainer(model, cfg.train, _score_fn(cfg.train.monitor, va, spec, task_names),
                              run_dir=run_dir, tag=unit.tag, task_weights=[t.weight for t in unit_spec.tasks])
            progress.start_unit(unit.tag, steps=None)
            fit: FitResult = trainer.fit(stream if stream is not None else tr, va, resume=resume,
                                         progress=progress.update)
            history.extend(fit.history)
            seconds += fit.train_seconds
            samples += fit.samples_seen
            best_epochs[unit.tag] = fit.best_epoch
            cols = list(range(spec.num_tasks)) if unit.tasks is None else unit.tasks
            te_rows = _rows(test, unit.domains)
            vp = predict(model, va, cfg.train.eval_batch_size, device)
            tp = predict(model, _subset(test, te_rows, unit.tasks), cfg.train.eval_batch_size, device)
            vr = slice(None) if va_rows is None else va_rows.numpy()
            tr_ = slice(None) if te_rows is None else te_rows.numpy()
            valid_probs[np.ix_(np.arange(len(valid))[vr], cols)] = vp
            test_probs[np.ix_(np.arange(len(test))[tr_], cols)] = tp

    (run_dir / "units.json").write_text(json.dumps([u.__dict__ for u in units], indent=1))
    oracle = prepared.oracle or {}
    valid_res = evaluate_split(valid_probs, valid, spec, oracle=oracle.get("valid"))
    test_res = evaluate_split(test_probs, test, spec, oracle=oracle.get("test"))
    result = RunResult(
        run_dir=run_dir, config=cfg, valid=valid_res, test=test_res, history=history,
        train_seconds=seconds, samples_per_sec=samples / seconds if seconds > 0 else float("nan"),
        best_epoch=best_epochs["all"] if len(best_epochs) == 1 and "all" in best_epochs else best_epochs,
        predictions={"valid": valid_probs, "test": test_probs},
    )
    from .report import write_run_report

    write_run_report(result, spec, quiet=quiet)
    return result


# ---- loading a finished run (evaluate / predict) -----------------------------------------------


@dataclass
class LoadedRun:
    """A trained run rebuilt from its directory: config, feature map and one model per unit."""

    run_dir: Path
    config: ExperimentConfig
    feature_map: FeatureMap
    units: list[Unit]
    models: list[MDMTModel | None]  # None for a skipped unit

    def predict(self, data: Batch, batch_size: int = 65536) -> np.ndarray:
        """Probabilities ``[N, T]`` in schema task order; each row scored by its unit's model."""
        spec = self.feature_map.spec
        out = np.full((len(data), spec.num_tasks), np.nan)
        for unit, model in zip(self.units, self.models):
            if model is None:  # a skipped unit: its cells have no label to learn from
                continue
            rows = _rows(data, unit.domains)
            cols = list(range(spec.num_tasks)) if unit.tasks is None else unit.tasks
            p = predict(model, _subset(data, rows, unit.tasks), batch_size, torch.device("cpu"))
            r = np.arange(len(data)) if rows is None else rows.numpy()
            out[np.ix_(r, cols)] = p
        return out


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild the models of a finished run from ``config.yaml``, ``feature_map.json``, ``units.json``
    and ``checkpoints/<unit>-best.pt``."""
    from ..schema import parse_config

    run_dir = Path(run_dir)
    for name in ("config.yaml", "feature_map.json", "units.json"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir} is not a finished run directory: {name} is missing")
    cfg = parse_config(yaml.safe_load((run_dir / "config.yaml").read_text()), ExperimentConfig,
                       str(run_dir / "config.yaml"))
    fm = FeatureMap.load(run_dir / "feature_map.json")
    units = [Unit(**u) for u in json.loads((run_dir / "units.json").read_text())]
    models: list[MDMTModel | None] = []
    for unit in units:
        if unit.skipped:
            models.append(None)
            continue
        spec = fm.spec
        if unit.tasks is not None:
            spec = spec.restrict(tasks=[spec.task_names[t] for t in unit.tasks])
        model = build_model(cfg.model.name, spec, fm, cfg.model.params, embedding=cfg.model.embedding)
        path = run_dir / "checkpoints" / f"{unit.tag}-best.pt"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the run did not finish training unit {unit.tag}")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
        models.append(model)
    return LoadedRun(run_dir, cfg, fm, units, models)
