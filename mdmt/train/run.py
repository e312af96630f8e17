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
import math
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..batch import Batch
from ..config import ExperimentConfig
from ..data.base import DataError
from ..featuremap import FeatureMap
from ..metrics import EvalResult, evaluate
from ..models import build_model
from ..models.base import MDMTModel
from ..schema import ConfigError, DatasetSpec
from .checkpoint import CheckpointError, load_checkpoint, load_weights
from .trainer import FitResult, Trainer, predict, resolve_device, seed_everything

__all__ = ["Unit", "RunResult", "regime_units", "run_experiment", "check_experiment", "evaluate_split",
           "LoadedRun", "load_run", "available_cpus"]


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
    best_epoch: int | None | dict[str, int | None] = None  # 1-based; None: no epoch had a defined score
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    fits: dict[str, FitResult] = field(default_factory=dict)  # per unit tag
    test_data: Batch | None = None
    notes: list[str] = field(default_factory=list)  # the models' report_notes(), once each
    model_values: dict[str, dict[str, float]] = field(default_factory=dict)  # unit tag -> report_values()


def _score_fn(monitor: str, valid: Batch, spec: DatasetSpec, task_names: list[str]):
    def score(probs: np.ndarray) -> float:
        res = evaluate_split(probs, valid, spec, task_names=task_names)
        if monitor == "avg_auc":
            return res.avg_auc
        if monitor == "avg_gauc":
            return res.avg_gauc
        return -res.avg_logloss

    return score


def _check_arch_settings(cfg: ExperimentConfig) -> None:
    """Check the model settings before any work: an unknown model or bad params, and a model with
    architecture weights, which needs held-out training rows in memory."""
    from ..models import REGISTRY, model_config

    params = model_config(cfg.model.name, cfg.model.params)  # ConfigError: unknown model, bad params
    if not REGISTRY[cfg.model.name].cls.has_arch_weights(params):
        return
    if cfg.train.arch_holdout <= 0:
        raise ConfigError(f"train.arch_holdout must be > 0 for model {cfg.model.name!r}: its architecture weights are "
                          "stepped on held-out training rows, e.g. arch_holdout: 0.1")
    if cfg.train.streaming:
        raise ConfigError(f"train.streaming: model {cfg.model.name!r} steps its architecture weights on held-out "
                          "training rows, which needs the training split in memory; set train.streaming: false")


def _default_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output_dir) / f"{cfg.name}-{cfg.model.name}-{cfg.train.regime}-s{cfg.train.seed}-{stamp}"
    path, k = base, 1
    while path.exists():
        path, k = Path(f"{base}-{k}"), k + 1
    return path


def available_cpus() -> int:
    """CPUs this process may run on: its CPU affinity, capped by a cgroup CPU quota when one is set.

    torch's own default is the host's core count, which oversubscribes a container or a shared
    machine; this is the default of ``train.num_threads``.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(float(quota) / float(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _check_writable(path: Path, what: str) -> None:
    """``path`` can be created as a directory: no part of it is a file and its nearest existing
    ancestor is a writable directory."""
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {path}: {p} is a file, not a directory")
    if p.exists() and not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {p} is not writable")


def _same_section(stored: dict, cfg: ExperimentConfig, key: str) -> bool:
    return stored.get(key) == cfg.model_dump(mode="json")[key]


def check_experiment(cfg: ExperimentConfig, run_dir: Path | None, resume: bool = False,
                     overwrite: bool = False) -> None:
    """Everything that can be checked before reading data or writing a file.

    The model name and params, the device, streaming needs, the warm-start run and the run
    directory: a new run needs a free (or ``overwrite``) directory, ``resume`` needs a run with a
    checkpoint and the same model and data. Raises :class:`~mdmt.schema.ConfigError`.
    """
    from ..models import model_config

    model_config(cfg.model.name, cfg.model.params)
    resolve_device(cfg.train.device)
    t = cfg.train
    if t.streaming and cfg.data.cache_dir is None:
        raise ConfigError("train.streaming reads the cached Parquet shards: set data.cache_dir")
    if t.streaming and t.regime != "mdmt":
        raise ConfigError(f"train.streaming supports regime 'mdmt' only (got regime {t.regime!r})")
    if t.warm_start is not None:
        from .warmstart import check_source

        check_source(Path(t.warm_start.run_dir))
    if cfg.data.cache_dir is not None:
        _check_writable(Path(cfg.data.cache_dir), "data.cache_dir")
    if run_dir is None:
        if resume:
            raise ConfigError("--resume needs the run directory to continue (--run-dir)")
        _check_writable(Path(cfg.output_dir), "output_dir")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} is a file, not a directory")
    _check_writable(run_dir, "run directory")
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume: {run_dir} is not a run directory (no config.yaml)")
        if not list((run_dir / "checkpoints").glob("*-last.pt")):
            raise ConfigError(f"--resume: {run_dir} has no checkpoint to resume from (checkpoints/*-last.pt); "
                              "train it anew with --overwrite")
        try:
            stored = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"--resume: {run_dir / 'config.yaml'} is not valid YAML: {err}") from None
        for key in ("model", "data"):
            if not isinstance(stored, dict) or not _same_section(stored, cfg, key):
                raise ConfigError(f"--resume: the config's {key!r} section differs from the one {run_dir} was "
                                  f"trained with; a resumed run continues the same model on the same data")
        if (stored.get("train") or {}).get("regime") != t.regime:
            raise ConfigError(f"--resume: {run_dir} was trained with regime {stored.get('train', {}).get('regime')!r}, "
                              f"not {t.regime!r}")
        return
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise ConfigError(f"run directory {run_dir} already holds a run; use --resume to continue it "
                          "or --overwrite to replace it")


def _check_units(units: list[Unit], train: Batch, valid: Batch, spec: DatasetSpec, regime: str) -> None:
    """Every model of the regime has training rows and validation labels to be selected on."""
    for unit in units:
        doms = ", ".join(spec.domain_names[d] for d in unit.domains) if unit.domains is not None else "all domains"
        tasks = [spec.task_names[t] for t in unit.tasks] if unit.tasks is not None else spec.task_names
        tr = _subset(train, _rows(train, unit.domains), unit.tasks)
        va = _subset(valid, _rows(valid, unit.domains), unit.tasks)
        for split, b in (("training", tr), ("validation", va)):
            if len(b) == 0:
                raise DataError(f"regime {regime!r}: model {unit.tag} ({doms}) has no rows in the {split} split; "
                                "every domain it trains on needs rows in train and valid (use regime 'mdmt' "
                                "or another split)")
        if bool(tr.label_mask.any()) and not bool(va.label_mask.any()):
            raise DataError(f"regime {regime!r}: model {unit.tag} ({doms}) has no observed label of {tasks} in the "
                            "validation split, so no epoch can be selected (use regime 'mdmt' or another split)")


def _check_model_builds(cfg: ExperimentConfig, spec: DatasetSpec, fm: FeatureMap, units: list[Unit]) -> None:
    """Build the first model of the regime once: params that do not fit this data set fail here,
    before anything is written."""
    unit = units[0]
    unit_spec = spec.restrict(tasks=[spec.task_names[t] for t in unit.tasks]) if unit.tasks is not None else spec
    try:
        build_model(cfg.model.name, unit_spec, fm, cfg.model.params, embedding_init_std=cfg.train.embedding_init_std,
                    embedding=cfg.model.embedding)
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        raise ConfigError(f"model {cfg.model.name!r} with params {cfg.model.params} cannot be built for data set "
                          f"{spec.name!r}: {err}") from None


_EXTREME = 1e4  # an encoded (standardised) dense value this far out is almost surely a data error


def _diagnose_dense(data: Batch, fm: FeatureMap, extreme: float = _EXTREME) -> str:
    """Name the dense columns holding non-finite or extreme (beyond ``extreme``) encoded values:
    why a loss can blow up."""
    if data.dense.numel() == 0:
        return ""
    bad = []
    x = data.dense
    for j, name in enumerate(fm.dense):
        col = x[:, j]
        nonfinite = int((~torch.isfinite(col)).sum())
        big = float(col[torch.isfinite(col)].abs().max()) if nonfinite < len(col) else float("nan")
        st = fm.dense_stats.get(name)
        raw = f" (train mean {st.mean:.4g}, std {st.std:.4g}, max {st.max:.4g})" if st is not None else ""
        if nonfinite:
            bad.append(f"dense column {name!r} has {nonfinite} non-finite encoded value(s){raw}")
        elif big > extreme:
            bad.append(f"dense column {name!r} reaches {big:.3g} after encoding{raw}: an extreme raw value; "
                       "clip it, or use transform: log_standard or bucketize for this feature")
    return "; ".join(bad)


def run_experiment(
    cfg: ExperimentConfig,
    *,
    data_dir: str | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    prepared: Any | None = None,
    quiet: bool = False,
) -> RunResult:
    """Train and evaluate ``cfg`` end to end and write the run directory.

    Everything is checked before anything is written (:func:`check_experiment`, then the data and
    the regime's units); a failure leaves no run directory behind, and never touches an existing
    run unless the run itself is resumed.

    Args:
        cfg: the experiment.
        data_dir: root of local data sets (default: ``MDMT_DATA_DIR``).
        run_dir: output directory (default: a new one under ``cfg.output_dir``). It must not hold a
            run already, unless ``resume`` (continue from its last checkpoints; same model and data)
            or ``overwrite`` (replace it; the old run is kept until the new one has finished).
        prepared: an already prepared data set (reused across models and seeds by the bench).
        quiet: no console output.
    Returns:
        the :class:`RunResult`, with validation and test metrics of the best epoch's weights.
    """
    from ..data import load_prepared

    run_dir = Path(run_dir) if run_dir is not None else None
    check_experiment(cfg, run_dir, resume=resume, overwrite=overwrite)
    torch.set_num_threads(cfg.train.num_threads or available_cpus())
    _check_arch_settings(cfg)
    if prepared is None:
        prepared = load_prepared(cfg.data, data_dir=data_dir, progress=not quiet)
    fm: FeatureMap = prepared.feature_map
    spec = fm.spec
    train, valid, test = prepared.splits["train"], prepared.splits["valid"], prepared.splits["test"]
    units = regime_units(cfg.train.regime, spec)
    _check_units(units, train, valid, spec, cfg.train.regime)
    _check_model_builds(cfg, spec, fm, units)
    for split, b in prepared.splits.items():  # a non-finite encoded value would poison training or scoring
        why = _diagnose_dense(b, fm, extreme=math.inf)
        if why:
            raise DataError(f"{prepared.source}: {split} split: {why}")
    why = _diagnose_dense(train, fm)
    if why:  # finite but extreme: training may still work, but the feature is probably broken
        import warnings

        warnings.warn(f"{prepared.source}: train split: {why}", stacklevel=2)
    if cfg.train.streaming and prepared.cache_path is None:
        raise ConfigError("train.streaming reads the cached Parquet shards, but this data set has no cache")
    warm = None
    if cfg.train.warm_start is not None:
        from .warmstart import load_source

        warm = load_source(Path(cfg.train.warm_start.run_dir), fm)
    if run_dir is None:
        run_dir = _default_run_dir(cfg)
    if resume:
        stored = FeatureMap.load(run_dir / "feature_map.json") if (run_dir / "feature_map.json").exists() else None
        if stored is None or stored.model_dump() != fm.model_dump():
            raise ConfigError(f"--resume: the data no longer gives the feature map {run_dir} was trained with "
                              "(feature_map.json differs)")
        for path in sorted((run_dir / "checkpoints").glob("*-last.pt")):
            load_checkpoint(path)  # an unreadable checkpoint fails here, before anything is written

    # ---- from here on files are written --------------------------------------------------------
    old_config = (run_dir / "config.yaml").read_bytes() if resume else None
    created = not run_dir.exists()
    aside = None
    if not resume and run_dir.exists():  # --overwrite (or an empty directory): keep the old run until done
        if any(run_dir.iterdir()):
            aside = run_dir.with_name(run_dir.name + ".replaced")
            if aside.exists():
                shutil.rmtree(aside)
            run_dir.rename(aside)
        created = True
    try:
        result = _train_units(cfg, prepared, units, run_dir, resume, quiet, warm)
    except KeyboardInterrupt:
        if aside is not None:  # an interrupted replacement: the new run stays resumable, drop the old one
            shutil.rmtree(aside, ignore_errors=True)
        raise
    except BaseException:
        if created and run_dir.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        if old_config is not None:  # a failed resume leaves the run's config as it was
            (run_dir / "config.yaml").write_bytes(old_config)
        if aside is not None:
            aside.rename(run_dir)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return result


def _train_units(cfg: ExperimentConfig, prepared: Any, units: list[Unit], run_dir: Path, resume: bool,
                 quiet: bool, warm: Any) -> RunResult:
    from .progress import RunProgress

    fm: FeatureMap = prepared.feature_map
    spec = fm.spec
    train, valid, test = prepared.splits["train"], prepared.splits["valid"], prepared.splits["test"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    fm.save(run_dir / "feature_map.json")
    stream = None
    if cfg.train.streaming:
        from ..data.loader import ParquetStream

        stream = ParquetStream.from_cache(prepared.cache_path, "train", cfg.train.batch_size, shuffle=True,
                                          seed=cfg.train.seed, buffer_rows=cfg.train.shuffle_buffer)
    valid_probs = np.full((len(valid), spec.num_tasks), np.nan)
    test_probs = np.full((len(test), spec.num_tasks), np.nan)
    history: list[dict] = []
    seconds, samples = 0.0, 0
    fits: dict[str, FitResult] = {}
    warm_summaries: list[dict] = []
    notes: list[str] = []
    model_values: dict[str, dict[str, float]] = {}
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
            if not bool(tr.label_mask.any()):  # e.g. a (domain, task) cell where the task is never observed
                unit.skipped = True
                continue
            model = build_model(cfg.model.name, unit_spec, fm, cfg.model.params,
                                embedding_init_std=cfg.train.embedding_init_std, embedding=cfg.model.embedding)
            groups = None
            if warm is not None:
                from .warmstart import apply_warm_start

                groups, summary = apply_warm_start(model, warm, unit.tag, cfg.train.warm_start, quiet=quiet)
                warm_summaries.append(summary.__dict__)
                (run_dir / "warm_start.json").write_text(json.dumps(
                    {"source": str(warm.run_dir), "models": warm_summaries}, indent=1))
            notes += [n for n in model.report_notes() if n not in notes]
            trainer = Trainer(model, cfg.train, _score_fn(cfg.train.monitor, va, spec, task_names),
                              run_dir=run_dir, tag=unit.tag, task_weights=[t.weight for t in unit_spec.tasks],
                              groups=groups)
            progress.start_unit(unit.tag, steps=None)
            try:
                fit: FitResult = trainer.fit(stream if stream is not None else tr, va, resume=resume,
                                             progress=progress.update)
            except FloatingPointError as err:
                why = _diagnose_dense(tr, fm)
                if why:
                    raise DataError(f"{prepared.source}: {why} (the training loss became non-finite)") from None
                raise err
            history.extend(fit.history)
            seconds += fit.train_seconds
            samples += fit.samples_seen
            fits[unit.tag] = fit
            values = model.report_values()  # the restored best epoch's values (e.g. M3oE's α, β)
            if values:
                model_values[unit.tag] = values
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
    best_epochs = {tag: f.best_epoch for tag, f in fits.items()}
    result = RunResult(
        run_dir=run_dir, config=cfg, valid=valid_res, test=test_res, history=history,
        train_seconds=seconds, samples_per_sec=samples / seconds if seconds > 0 else float("nan"),
        best_epoch=best_epochs["all"] if len(best_epochs) == 1 and "all" in best_epochs else best_epochs,
        predictions={"valid": valid_probs, "test": test_probs},
        fits=fits, test_data=test, notes=notes,
        model_values=model_values,
    )
    from .report import write_run_report

    write_run_report(result, spec, quiet=quiet, feature_map=fm)
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

    from ..schema import read_yaml_mapping

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    for name in ("config.yaml", "feature_map.json", "units.json"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir} is not a finished run directory: {name} is missing")
    cfg = parse_config(read_yaml_mapping(run_dir / "config.yaml"), ExperimentConfig, str(run_dir / "config.yaml"))
    try:
        fm = FeatureMap.load(run_dir / "feature_map.json")
    except (ValueError, UnicodeDecodeError) as err:  # JSON or validation error
        raise ConfigError(f"{run_dir / 'feature_map.json'} is not a valid feature map: "
                          f"{str(err).splitlines()[0][:200]}") from None
    try:
        units = [Unit(**u) for u in json.loads((run_dir / "units.json").read_text())]
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{run_dir / 'units.json'} is not a valid list of units: {err}") from None
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
            raise CheckpointError(f"{path} is missing: the run did not finish training unit {unit.tag}")
        load_weights(model, load_checkpoint(path), path, f"model {cfg.model.name!r} (unit {unit.tag}) of this run")
        model.eval()
        models.append(model)
    return LoadedRun(run_dir, cfg, fm, units, models)
