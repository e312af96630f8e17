"""The benchmark grid: datasets × entries (model, regime, params) × seeds.

:func:`run_bench` trains every (dataset, label, seed) run of a :class:`BenchConfig` and writes
each finished run as its own JSON file under ``<output_dir>/cells/`` (a temporary file renamed into
place, so a file is either complete or absent). Re-running the same config skips every run whose
file exists, whose configuration fingerprint still matches and which the same code made (the
package version plus a hash of its source, :mod:`mdmt.provenance`), so an interrupted grid resumes
where it stopped and a result of older code is recomputed, never silently reused. After the grid, :func:`mdmt.bench.report.write_report` turns the run files into
``results.json``, ``results.parquet``, ``results.md`` and the seesaw heatmap.

Example::

    >>> cfg = BenchConfig(
    ...     name="demo",
    ...     datasets={"toy": DataConfig(source="synthetic", params={"preset": "douyin", "rows": 5000})},
    ...     entries=[BenchEntry(label="MLP", model="mlp", regime="cell"),
    ...              BenchEntry(label="MMoE", model="mmoe")],
    ...     seeds=[0, 1], train=TrainConfig(epochs=1), baseline="MLP", output_dir="bench_out/demo",
    ... )
    >>> [k.name for k in grid_keys(cfg)]
    ['toy__mlp__seed0', 'toy__mlp__seed1', 'toy__mmoe__seed0', 'toy__mmoe__seed1']
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig, deep_merge, read_yaml_with_base
from ..embeddings import EmbeddingConfig
from ..provenance import ALL_CODE, code_version
from ..schema import ConfigError, StrictModel, parse_config

__all__ = [
    "BenchEntry",
    "BenchWarmStart",
    "BenchReference",
    "BenchConfig",
    "CellKey",
    "BenchResults",
    "load_bench_config",
    "grid_keys",
    "cell_experiment",
    "cell_run_dir",
    "cell_fingerprint",
    "warm_source",
    "entry_params",
    "entry_embedding",
    "fingerprint",
    "same_configuration",
    "cell_path",
    "read_cell",
    "write_json_atomic",
    "completed_cells",
    "cell_states",
    "bench_summary",
    "grid_status",
    "ceiling_cells",
    "run_bench",
    "train_cell",
    "machine_description",
    "slugify",
    "add_arguments",
    "run_cli",
    "main",
]

CELL_FORMAT = 1  #: version of the per-run JSON layout written under ``cells/``

#: Training settings that do not change a run's results; they are left out of the fingerprint.
_NON_RESULT_TRAIN_KEYS = ("progress", "device", "num_threads", "eval_batch_size", "keep_host_memory")


def slugify(text: str) -> str:
    """File-name-safe, lower-case form of a label: ``"MLP (per cell)" -> "mlp-per-cell"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "x"


class BenchWarmStart(StrictModel):
    """Parameter warm-up inside a bench (PMTA §2.4): each seed of an entry starts from the best weights of
    another entry's run on the same data set and seed (``mdmt train --warm-start``, per seed).

    Attributes:
        entry: label of the source entry; it must come earlier in ``entries`` (so its run of every seed
            is trained first) and use the same regime.
        freeze: keep the loaded parameters fixed (``--freeze-loaded``).
        lr: learning rate of the loaded parameters in a group of their own (default: ``train.lr``);
            ignored with ``freeze``.
    """

    entry: str
    freeze: bool = False
    lr: float | None = Field(default=None, gt=0)


class BenchEntry(StrictModel):
    """One row of the benchmark table: a registered model trained under one regime.

    Attributes:
        label: display name in the tables, e.g. ``"MMoE-MTL"``; unique within a bench.
        model: registered model name (``mdmt.models.REGISTRY``).
        params: the model's params (validated by the model's own config); they win over the
            bench's ``model_defaults``.
        regime: ``mdmt`` (one joint model), ``mtl`` (one multi-task model per domain),
            ``mdl`` (one multi-domain model per task), ``cell`` (one model per domain-task cell).
        train: overrides of :class:`~mdmt.config.TrainConfig` fields for this entry only.
        embedding: overrides of the bench's ``embedding`` settings for this entry only (e.g.
            ``{id_dropout: 0.0}`` to measure id dropout off).
        warm_start: start every seed from another entry's run of that seed (:class:`BenchWarmStart`),
            e.g. PMTA warm-started from the SharedBottom row whose backbone and towers it shares.
    """

    label: str
    model: str
    params: dict[str, Any] = Field(default_factory=dict)
    regime: Literal["mdmt", "mtl", "mdl", "cell"] = "mdmt"
    train: dict[str, Any] = Field(default_factory=dict)
    embedding: dict[str, Any] = Field(default_factory=dict)
    warm_start: BenchWarmStart | None = None


class BenchReference(StrictModel):
    """Published or reference figures shown beside (never mixed with) the measured rows.

    Attributes:
        label: where the figures come from, e.g. ``"official M3oE code (ML-100K, seed 2022)"``.
        dataset: the bench dataset key it refers to (None: the first dataset).
        avg_auc, avg_logloss: average test AUC / LogLoss over cells (fractions, not ×10⁻²).
        macro_task_auc: per-task AUC pooled over domains, averaged over tasks (the overall figure
            the official M3oE code prints).
        cells: optional per-cell AUC, keyed ``"domain/task"``.
        train_samples_per_sec: training throughput, when known.
        note: free text (protocol, seeds, hyper-parameters, how the figure was obtained).
    """

    label: str
    dataset: str | None = None
    avg_auc: float | None = None
    avg_logloss: float | None = None
    macro_task_auc: float | None = None
    cells: dict[str, float] = Field(default_factory=dict)
    train_samples_per_sec: float | None = None
    note: str = ""


#: ``baseline: best``: the strongest entry not under study, per data set (see :class:`BenchConfig`)
BEST_BASELINE = "best"


class BenchConfig(StrictModel):
    """A benchmark grid. Loaded from YAML with :func:`load_bench_config` (unknown keys raise).

    Attributes:
        name: bench name (titles, file names).
        datasets: ``{key: DataConfig}``; each data set is prepared once and shared by all runs.
        entries: the models (rows of the table).
        seeds: model seeds; every entry runs once per seed (the data does not depend on them).
        train: training settings shared by all entries (``regime`` and ``seed`` are set per run).
        model_defaults: model params given to every entry unless the entry's ``params`` set them,
            so that one table uses one setting for all its rows (e.g. ``{norm: layernorm}``).
        embedding: the embedding settings of every entry (``model.embedding``: dim, domain
            input, id dropout); an entry's ``embedding`` overrides single fields.
        baseline: label the RelaImpr column and the paired t-test compare against, or ``"best"``:
            per data set, the entry with the highest mean test Avg AUC among those not listed in
            ``proposed`` (the "best baseline" of the papers' tables).
        proposed: the entries under study (e.g. ``[PEPNet]``): with ``baseline: best`` they are
            compared against the strongest of the other rows and are never chosen as the baseline.
        seesaw_reference: label of the per-cell reference (e.g. the per-cell MLP) for the seesaw
            heatmap; None draws no heatmap.
        output_dir: where ``cells/``, ``runs/`` and the report go (relative to the working directory).
        reference: optional published/reference figures, rendered in a separate section.
        learnable_ceiling: for each synthetic data set, fit the generator's functional form on
            the pre-history window and the train split (:mod:`mdmt.data.ceiling`) and show its test
            AUC per cell beside the oracle, with each model's gap to it. Costs one fit per data
            set (cached under ``<output_dir>/ceiling/``, keyed on the data config and the code).
        ceiling_epochs: passes of that fit.
        valid_table: also show each data set's table on the validation split, so that a choice among
            variants (an investigation, a sweep) can be made without looking at the test split.
        reuse: before training a run, look for a finished run with the same fingerprint (configuration,
            seed and, for a warm start, its source's) made by the same code in the other benches under
            the same results folder (``output_dir``'s parent); copy its record instead of training it
            again (its ``copied_from`` names the source, relative to that folder). Training is deterministic given those, so
            the figures are the ones a new run would give.
    """

    name: str
    datasets: dict[str, DataConfig]
    entries: list[BenchEntry]
    seeds: list[int]
    train: TrainConfig = Field(default_factory=TrainConfig)
    model_defaults: dict[str, Any] = Field(default_factory=dict)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    baseline: str
    proposed: list[str] = Field(default_factory=list)
    seesaw_reference: str | None = None
    output_dir: str
    reference: BenchReference | None = None
    learnable_ceiling: bool = False
    ceiling_epochs: int = Field(default=6, ge=1)
    valid_table: bool = False
    reuse: bool = True

    @model_validator(mode="after")
    def _check(self) -> "BenchConfig":
        if not self.datasets:
            raise ValueError("datasets must name at least one data set")
        if not self.entries:
            raise ValueError("entries must list at least one model")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be unique, got {self.seeds}")
        labels = [e.label for e in self.entries]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"entry labels must be unique; repeated: {dup}")
        slugs = [slugify(x) for x in labels]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"entry labels must differ in more than punctuation/case: {labels}")
        for key in self.datasets:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", key) or "__" in key:
                raise ValueError(f"dataset key {key!r}: use letters, digits, '.', '-' or single '_'")
        if self.baseline != BEST_BASELINE and self.baseline not in labels:
            raise ValueError(f"baseline {self.baseline!r} is not an entry label nor {BEST_BASELINE!r}; labels: {labels}")
        unknown = [x for x in self.proposed if x not in labels]
        if unknown:
            raise ValueError(f"proposed {unknown} are not entry labels; labels: {labels}")
        if self.baseline == BEST_BASELINE and not [x for x in labels if x not in self.proposed]:
            raise ValueError("baseline 'best' needs at least one entry that is not in proposed")
        if self.seesaw_reference is not None and self.seesaw_reference not in labels:
            raise ValueError(f"seesaw_reference {self.seesaw_reference!r} is not an entry label; labels: {labels}")
        if self.reference is not None and self.reference.dataset is not None:
            if self.reference.dataset not in self.datasets:
                raise ValueError(f"reference.dataset {self.reference.dataset!r} is not a dataset key")
        for e in self.entries:
            if "seed" in e.train:
                raise ValueError(f"entry {e.label!r}: set seeds in 'seeds', not in train overrides")
            if "regime" in e.train and e.train["regime"] != e.regime:
                raise ValueError(f"entry {e.label!r}: give the regime as entry.regime, not train.regime")
            bad = sorted(set(e.train) - set(TrainConfig.model_fields))
            if bad:
                raise ValueError(f"entry {e.label!r}: unknown train override(s) {bad}")
            bad = sorted(set(e.embedding) - set(EmbeddingConfig.model_fields))
            if bad:
                raise ValueError(f"entry {e.label!r}: unknown embedding override(s) {bad}")
            if e.warm_start is not None:
                if "warm_start" in e.train:
                    raise ValueError(f"entry {e.label!r}: give the warm start as entry.warm_start, not train.warm_start")
                src = e.warm_start.entry
                if src not in labels:
                    raise ValueError(f"entry {e.label!r}: warm_start.entry {src!r} is not an entry label; labels: {labels}")
                if labels.index(src) >= labels.index(e.label):
                    raise ValueError(f"entry {e.label!r}: warm_start.entry {src!r} must come before it in entries "
                                     "(its runs are trained first)")
                if self.entry(src).regime != e.regime:
                    raise ValueError(f"entry {e.label!r}: warm_start.entry {src!r} has regime "
                                     f"{self.entry(src).regime!r}, this entry {e.regime!r}; they must match")
        return self

    def entry(self, label: str) -> BenchEntry:
        for e in self.entries:
            if e.label == label:
                return e
        raise KeyError(label)


def load_bench_config(path: str | Path, overrides: dict[str, Any] | None = None) -> BenchConfig:
    """Load a bench YAML (a top-level ``base:`` file is merged under it), validate strictly.

    Raises:
        ConfigError: naming the file and the bad key.
    """
    data = read_yaml_with_base(path)
    if overrides:
        data = deep_merge(data, overrides)
    cfg = parse_config(data, BenchConfig, str(path))
    for e in cfg.entries:  # entry train and embedding overrides must form valid configs
        parse_config(deep_merge(cfg.train.model_dump(), e.train), TrainConfig, f"{path}: entry {e.label!r} train")
        entry_embedding(cfg, e, f"{path}: ")
    return cfg


def entry_params(cfg: BenchConfig, entry: BenchEntry) -> dict[str, Any]:
    """The entry's model params: the bench's ``model_defaults`` with the entry's ``params`` over them."""
    return deep_merge(cfg.model_defaults, entry.params)


def entry_embedding(cfg: BenchConfig, entry: BenchEntry, where: str = "") -> EmbeddingConfig:
    """The entry's embedding settings: the bench's ``embedding`` with the entry's overrides."""
    merged = deep_merge(cfg.embedding.model_dump(), entry.embedding)
    return parse_config(merged, EmbeddingConfig, f"{where}bench {cfg.name!r}: entry {entry.label!r} embedding")


@dataclass(frozen=True)
class CellKey:
    """One run of the grid: (dataset key, entry label, seed)."""

    dataset: str
    label: str
    seed: int

    @property
    def name(self) -> str:
        """File stem: ``<dataset>__<label slug>__seed<seed>``."""
        return f"{self.dataset}__{slugify(self.label)}__seed{self.seed}"


def grid_keys(cfg: BenchConfig) -> list[CellKey]:
    """Every run of the grid, in execution order: datasets, then entries, then seeds."""
    return [CellKey(ds, e.label, s) for ds in cfg.datasets for e in cfg.entries for s in cfg.seeds]


def cell_run_dir(cfg: BenchConfig, key: CellKey) -> Path:
    """The run directory of one run: ``<output_dir>/runs/<dataset>/<label slug>/seed<seed>``."""
    return Path(cfg.output_dir) / "runs" / key.dataset / slugify(key.label) / f"seed{key.seed}"


def warm_source(cfg: BenchConfig, key: CellKey) -> CellKey | None:
    """The run ``key`` is warm-started from (same data set and seed), or None."""
    ws = cfg.entry(key.label).warm_start
    return None if ws is None else CellKey(key.dataset, ws.entry, key.seed)


def cell_experiment(cfg: BenchConfig, key: CellKey) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of one run (bench train settings + entry overrides + seed;
    bench model defaults + entry params; bench embedding settings + entry overrides; for a
    warm-started entry, ``train.warm_start`` naming the source entry's run of the same seed).

    Per-epoch progress bars are switched off (the bench shows one bar over the grid).
    """
    entry = cfg.entry(key.label)
    train = deep_merge(cfg.train.model_dump(), entry.train)
    train.update(regime=entry.regime, seed=key.seed, progress=False)
    src = warm_source(cfg, key)
    if src is not None:
        ws = entry.warm_start
        train["warm_start"] = {"run_dir": str(cell_run_dir(cfg, src)), "freeze": ws.freeze, "lr": ws.lr}
    return ExperimentConfig(
        name=f"{cfg.name}/{key.name}",
        data=cfg.datasets[key.dataset],
        model=ModelConfig(name=entry.model, params=entry_params(cfg, entry), embedding=entry_embedding(cfg, entry)),
        train=parse_config(train, TrainConfig, f"bench {cfg.name!r}: entry {entry.label!r} train"),
        output_dir=str(Path(cfg.output_dir) / "runs"),
    )


def fingerprint(exp: ExperimentConfig) -> str:
    """SHA-256 of everything in ``exp`` that changes a run's results (:func:`_result_settings`)."""
    blob = json.dumps(_result_settings(exp.model_dump(mode="json")), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cell_fingerprint(cfg: BenchConfig, key: CellKey) -> str:
    """:func:`fingerprint` of the run's experiment; for a warm-started run, combined with the
    fingerprint of its source run, so that changing the source's configuration re-runs both."""
    fp = fingerprint(cell_experiment(cfg, key))
    src = warm_source(cfg, key)
    if src is None:
        return fp
    return hashlib.sha256(f"{fp}+warm:{cell_fingerprint(cfg, src)}".encode()).hexdigest()


def _result_settings(exp: dict[str, Any]) -> dict[str, Any]:
    """An experiment dump without what does not change a run's results.

    Left out: the run name, output directory, data cache directory, purely operational training
    settings (progress bars, device, thread count, evaluation batch size) and, for a warm-started run,
    the path of the source run: where a bench writes is not a setting (:func:`cell_fingerprint` folds
    in the source run's own fingerprint instead), so the same warm start in two benches, or in a bench
    whose ``output_dir`` moved, is the same run.
    """
    d = json.loads(json.dumps(exp, default=str))
    d.pop("name", None)
    d.pop("output_dir", None)
    d.get("data", {}).pop("cache_dir", None)
    train = d.get("train", {})
    for k in _NON_RESULT_TRAIN_KEYS:
        train.pop(k, None)
    if isinstance(train.get("warm_start"), dict):
        train["warm_start"].pop("run_dir", None)
    return d


def _agrees(recorded: Any, current: Any) -> bool:
    """``recorded`` equals ``current`` on every key ``recorded`` has (a key added to the configuration
    after the run was made is not held against it)."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return all(k in current and _agrees(v, current[k]) for k, v in recorded.items())
    return recorded == current


def same_configuration(cfg: BenchConfig, key: CellKey, rec: dict[str, Any]) -> bool:
    """Whether ``rec`` is a run of ``key``'s current configuration in ``cfg``.

    True when the fingerprints match. A record made by older code may carry another fingerprint
    only because settings were added to the configuration since (with defaults that older code
    did not have); so, failing the fingerprint, the settings the record states are compared with
    the current ones, key by key, ignoring keys the record does not have. A warm-started run also
    needs its source run to be of the current configuration (the source record is not checked
    here: its fingerprint is part of this one's, so the fallback is only as good as the record).
    """
    if rec.get("fingerprint") == cell_fingerprint(cfg, key):
        return True
    exp = rec.get("experiment")
    if not isinstance(exp, dict):
        return False
    return _agrees(_result_settings(exp), _result_settings(cell_experiment(cfg, key).model_dump(mode="json")))


def cell_path(output_dir: str | Path, key: CellKey) -> Path:
    """``<output_dir>/cells/<key.name>.json``."""
    return Path(output_dir) / "cells" / f"{key.name}.json"


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON to a temporary file in the same directory, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=True, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_cell(path: str | Path) -> dict[str, Any] | None:
    """A finished run's record, or None when the file is absent or unreadable (then it is re-run)."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("format") != CELL_FORMAT or "test" not in rec:
        return None
    return rec


def cell_states(cfg: BenchConfig) -> dict[CellKey, tuple[str, dict[str, Any] | None]]:
    """The state of every run of the grid, with its record when there is one.

    ``"done"``: a record with the current config's fingerprint, made by the current code;
    ``"stale"``: the same config, but made by other code (another package version or source);
    ``"changed"``: a record of another configuration; ``"new"``: no (readable) record.
    """
    code = code_version(ALL_CODE)
    out: dict[CellKey, tuple[str, dict[str, Any] | None]] = {}
    for key in grid_keys(cfg):
        rec = read_cell(cell_path(cfg.output_dir, key))
        if rec is None:
            out[key] = ("new", None)
        elif rec.get("fingerprint") == cell_fingerprint(cfg, key):
            out[key] = ("done", rec) if rec.get("code") == code else ("stale", rec)
        elif rec.get("code") != code and same_configuration(cfg, key, rec):
            out[key] = ("stale", rec)  # older code, whose configuration lacked settings added since
        else:
            out[key] = ("changed", rec)
    return out


def completed_cells(cfg: BenchConfig) -> dict[CellKey, dict[str, Any]]:
    """Runs of the grid whose record exists, whose fingerprint matches the current config and
    which the current code made (:func:`mdmt.provenance.code_version` of the whole package)."""
    return {k: rec for k, (state, rec) in cell_states(cfg).items() if state == "done" and rec is not None}


def machine_description() -> dict[str, Any]:
    """The machine a figure was measured on: CPU model, cores, threads, memory, GPU, versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
                break
    except (OSError, ValueError, IndexError):
        pass
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": mem_gb,
        "gpu": gpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def machine_line(m: dict[str, Any]) -> str:
    """One-line summary of :func:`machine_description`."""
    parts = [f"{m.get('cpu')}", f"{m.get('logical_cores')} logical cores", f"torch threads {m.get('torch_threads')}"]
    if m.get("memory_gb"):
        parts.append(f"{m['memory_gb']} GB RAM")
    parts.append(f"GPU: {m.get('gpu') or 'none'}")
    parts.append(f"torch {m.get('torch')}, Python {m.get('python')}, {m.get('os')}")
    return "; ".join(parts)


def _display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it (no machine paths in reports)."""
    p = Path(path)
    if p.is_absolute():
        try:
            return p.relative_to(Path.cwd()).as_posix()
        except ValueError:
            return p.name
    return p.as_posix()


@dataclass
class BenchResults:
    """What :func:`run_bench` did.

    Attributes:
        config: the bench config.
        output_dir: where everything was written.
        records: ``{CellKey: run record}`` for every finished run of the grid.
        ran: runs trained in this call; copied: runs not trained but copied from another bench's
            identical run (``BenchConfig.reuse``); skipped: runs found finished and reused (same
            configuration, same code); stale: runs whose record was made by other code and that
            were therefore trained again (a subset of ``ran`` once the call finishes).
        report: ``{artifact: path}`` written by the report (empty when ``report=False``).
    """

    config: BenchConfig
    output_dir: Path
    records: dict[CellKey, dict[str, Any]]
    ran: list[CellKey] = field(default_factory=list)
    copied: list[CellKey] = field(default_factory=list)
    skipped: list[CellKey] = field(default_factory=list)
    stale: list[CellKey] = field(default_factory=list)
    report: dict[str, Path] = field(default_factory=dict)


def _validate_models(cfg: BenchConfig) -> None:
    """Check every entry's model name and params before the first run starts."""
    from .. import models  # noqa: F401  (importing registers the models)
    from ..models.base import model_config

    for e in cfg.entries:
        try:
            model_config(e.model, entry_params(cfg, e))
            entry_embedding(cfg, e)
        except ConfigError as err:
            raise ConfigError(f"bench {cfg.name!r}, entry {e.label!r}: {err}") from None


def _code_text(code: dict[str, str] | None) -> str:
    if not code:
        return "unrecorded code"
    return f"mdmt {code.get('mdmt', '?')}, code {code.get('code', '?')}"


def _record(
    cfg: BenchConfig, key: CellKey, exp: ExperimentConfig, result: Any, seconds: float, machine: dict[str, Any]
) -> dict[str, Any]:
    entry = cfg.entry(key.label)
    return {
        "format": CELL_FORMAT,
        "bench": cfg.name,
        "dataset": key.dataset,
        "label": key.label,
        "model": entry.model,
        "regime": entry.regime,
        "seed": key.seed,
        "fingerprint": cell_fingerprint(cfg, key),
        "code": code_version(ALL_CODE),
        "experiment": exp.model_dump(mode="json"),
        "valid": result.valid.to_dict(),
        "test": result.test.to_dict(),
        "history": list(result.history),
        "best_epoch": result.best_epoch,  # 1-based; None when no epoch had a defined validation score
        "train_seconds": float(result.train_seconds),
        "samples_per_sec": float(result.samples_per_sec),
        "wall_seconds": seconds,
        "machine": machine,
        "run_dir": str(result.run_dir),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def reusable_runs(cfg: BenchConfig) -> dict[str, Path]:
    """``{fingerprint: cell file}`` of the finished runs made by the current code in the other benches
    under ``cfg.output_dir``'s parent (see ``BenchConfig.reuse``)."""
    out_dir = Path(cfg.output_dir).resolve()
    code = code_version(ALL_CODE)
    found: dict[str, Path] = {}
    for path in sorted(out_dir.parent.glob("*/cells/*.json")):
        if path.parent.parent.resolve() == out_dir:
            continue
        rec = read_cell(path)
        if rec is not None and rec.get("code") == code and isinstance(rec.get("fingerprint"), str):
            found.setdefault(rec["fingerprint"], path)
    return found


def _has_weights(run_dir: Path) -> bool:
    """``run_dir`` holds a finished run's best weights (what a warm start loads)."""
    return (run_dir / "units.json").is_file() and any((run_dir / "checkpoints").glob("*-best.pt"))


def train_cell(
    cfg: BenchConfig,
    key: CellKey,
    data_dir: str | None,
    prepared: dict[str, Any],
    machine: dict[str, Any],
    *,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Train one run of the grid and write its record to ``<output_dir>/cells/<key>.json``.

    Args:
        cfg: the grid.
        key: the run.
        data_dir: root of the real data sets (else ``MDMT_DATA_DIR``).
        prepared: ``{dataset key: PreparedData}``, a cache the caller keeps between runs; it holds
            one data set at a time.
        machine: :func:`machine_description` of the process training the run (stored in the record).
        num_threads: torch threads for a run whose config leaves ``train.num_threads`` unset (a
            worker passes its share of the CPUs); not part of the fingerprint.

    Returns:
        The record written.
    """
    import torch

    from ..data import load_prepared
    from ..train.run import run_experiment

    if key.dataset not in prepared:
        prepared.clear()  # keep one data set in memory at a time
        prepared[key.dataset] = load_prepared(cfg.datasets[key.dataset], data_dir=data_dir, progress=False)
    exp = cell_experiment(cfg, key)
    if num_threads is not None and exp.train.num_threads is None:
        exp = exp.model_copy(update={"train": exp.train.model_copy(update={"num_threads": num_threads})})
    t0 = time.perf_counter()
    result = run_experiment(
        exp, data_dir=data_dir, run_dir=cell_run_dir(cfg, key), overwrite=True, prepared=prepared[key.dataset],
        quiet=True,
    )
    # the threads the run trained with (run_experiment sets them), not the caller's at start
    rec = _record(cfg, key, exp, result, time.perf_counter() - t0, {**machine, "torch_threads": torch.get_num_threads()})
    write_json_atomic(cell_path(cfg.output_dir, key), rec)
    return rec


def run_bench(
    cfg: BenchConfig,
    data_dir: str | None = None,
    resume: bool = True,
    *,
    report: bool = True,
    config_path: str | None = None,
    progress: bool = True,
    jobs: int = 1,
) -> BenchResults:
    """Run (or resume) the grid and write the report.

    Each data set is prepared once (only when one of its runs is still to do) and shared by all
    entries and seeds. Every finished run is written at once to ``<output_dir>/cells/<key>.json``.
    With ``resume=True`` runs whose file exists with the same configuration fingerprint are
    skipped; a run whose configuration changed is trained again. ``resume=False`` re-runs all.

    Args:
        cfg: the grid.
        data_dir: root of the real data sets (else ``MDMT_DATA_DIR``), passed to the loaders.
        resume: skip finished runs.
        report: write the report (:func:`mdmt.bench.report.write_report`) at the end.
        config_path: the YAML the config came from, recorded so the report can state the command.
        progress: show a progress bar over the grid.
        jobs: worker processes, each pinned to its own share of the CPUs and running one run at a
            time (:mod:`mdmt.bench.parallel`); 1 trains the runs one after another in this process.

    Returns:
        :class:`BenchResults`. An exception in a run propagates after the runs finished before it
        were saved; calling again resumes.
    """
    from .parallel import cpu_groups

    out = Path(cfg.output_dir)
    _validate_models(cfg)
    cpu_groups(jobs)  # a wrong --jobs fails before anything is written
    if jobs > 1:
        from .parallel import model_modules

        model_modules(cfg)  # and so does a model the worker processes could not import
    out.mkdir(parents=True, exist_ok=True)
    keys = grid_keys(cfg)
    states = cell_states(cfg)
    done = {k: rec for k, (st, rec) in states.items() if st == "done" and rec is not None} if resume else {}
    stale = [k for k, (st, _) in states.items() if st == "stale"] if resume else []
    todo = [k for k in keys if k not in done]
    if config_path is not None:
        config_path = _display_path(config_path)
    meta_path = out / "meta.json"
    old_meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    write_json_atomic(
        meta_path,
        {
            "bench": cfg.name,
            "config_path": config_path or old_meta.get("config_path"),
            "config": cfg.model_dump(mode="json"),
            "machine": machine_description() if todo or "machine" not in old_meta else old_meta["machine"],
            "started_at": old_meta.get("started_at") if done else datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    results = BenchResults(
        config=cfg, output_dir=out, records=dict(done), skipped=[k for k in keys if k in done], stale=stale
    )
    if stale and progress:
        old = states[stale[0]][1] or {}
        print(
            f"bench {cfg.name}: {len(stale)} finished run(s) were made by other code "
            f"({_code_text(old.get('code'))}; now {_code_text(code_version(ALL_CODE))}): training them again",
            file=sys.stderr,
        )

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[current]}"),
        disable=not progress,
        transient=False,
    )
    prepared: dict[str, Any] = {}
    machine = machine_description()
    with bar:
        task = bar.add_task(f"bench {cfg.name}", total=len(keys), completed=len(done), current="")
        reusable = reusable_runs(cfg) if cfg.reuse and todo else {}
        sources = {e.warm_start.entry for e in cfg.entries if e.warm_start is not None}

        def copy_cell(key: CellKey) -> bool:
            """Copy an identical finished run of another bench (same fingerprint and code), if any; never
            for a warm-start source, whose weights this bench's own run directory must hold."""
            if key.label in sources:
                return False
            path = reusable.get(cell_fingerprint(cfg, key))
            rec = read_cell(path) if path is not None else None
            if rec is None:
                return False
            rec = {**rec, "bench": cfg.name, "dataset": key.dataset, "label": key.label,
                   "copied_from": path.relative_to(Path(cfg.output_dir).resolve().parent).as_posix()}
            write_json_atomic(cell_path(out, key), rec)
            results.records[key] = rec
            results.copied.append(key)
            return True

        def needs_source(key: CellKey, queued: set[CellKey]) -> CellKey | None:
            """The warm-start source of ``key`` if it must be trained (again) first: it is not
            queued in this call and its run directory holds no weights (e.g. a fresh clone, where
            the source's record is kept but not its weights)."""
            src = warm_source(cfg, key)
            if src is None or src in queued or src in results.ran or _has_weights(cell_run_dir(cfg, src)):
                return None
            return src

        def finish(key: CellKey, rec: dict[str, Any]) -> None:
            results.records[key] = rec
            results.ran.append(key)

        to_train = [k for k in todo if not copy_cell(k)]
        bar.update(task, advance=len(todo) - len(to_train))
        if jobs == 1:
            for key in to_train:
                src = needs_source(key, set())
                if src is not None:
                    bar.update(task, current=f"{src.dataset} · {src.label} · seed {src.seed} (warm-start source)")
                    finish(src, train_cell(cfg, src, data_dir, prepared, machine))
                bar.update(task, current=f"{key.dataset} · {key.label} · seed {key.seed}")
                finish(key, train_cell(cfg, key, data_dir, prepared, machine))
                bar.advance(task)
        else:
            from .parallel import run_parallel

            order: list[CellKey] = []
            for key in to_train:
                src = needs_source(key, set(to_train) | set(order))
                if src is not None:
                    order.append(src)
                order.append(key)
            sources_rerun = set(order) - set(to_train)
            running: list[CellKey] = []

            def ready(key: CellKey, finished: set[CellKey]) -> bool:
                src = warm_source(cfg, key)
                return src is None or src in finished or (src not in order and _has_weights(cell_run_dir(cfg, src)))

            def started(key: CellKey) -> None:
                running.append(key)
                bar.update(task, current=" | ".join(f"{k.label} · seed {k.seed}" for k in running))

            def done(key: CellKey, rec: dict[str, Any]) -> None:
                running.remove(key)
                finish(key, rec)
                bar.update(task, advance=0 if key in sources_rerun else 1,
                           current=" | ".join(f"{k.label} · seed {k.seed}" for k in running))

            run_parallel(cfg, order, jobs, data_dir, ready=ready, on_start=started, on_done=done)
        bar.update(task, current="done")
    if cfg.learnable_ceiling:
        for ds in cfg.datasets:
            ceiling_cells(cfg, ds, compute=True)
    if report:
        from .report import write_report

        results.report = write_report(cfg, results.records)
    return results


def ceiling_path(output_dir: str | Path, dataset: str) -> Path:
    """``<output_dir>/ceiling/<dataset>.json``."""
    return Path(output_dir) / "ceiling" / f"{dataset}.json"


def ceiling_cells(cfg: BenchConfig, dataset: str, *, compute: bool = False) -> dict[str, float]:
    """The learnable ceiling's test AUC per ``"domain/task"`` cell of a synthetic data set.

    Read from ``<output_dir>/ceiling/<dataset>.json`` when it was made from the same data params,
    epochs and code; otherwise computed (``compute=True``) and written. Without ``compute`` (a
    report), a record of the same data params and epochs made by other code is returned, as the
    report shows the cells those runs made; no record gives ``{}``. Non-synthetic
    data sets and benches without ``learnable_ceiling`` give ``{}``.
    """
    data = cfg.datasets[dataset]
    if not cfg.learnable_ceiling or data.source != "synthetic":
        return {}
    key = {"params": dict(data.params), "epochs": cfg.ceiling_epochs, "code": code_version(ALL_CODE)}
    path = ceiling_path(cfg.output_dir, dataset)
    rec = read_json(path)
    want = json.loads(json.dumps(key, default=str))
    if rec is not None and rec.get("key") == want:
        return dict(rec["auc"])
    if not compute:
        # a report shows the figures the bench's own runs were made with, as it does for the cells
        same_data = rec is not None and all(rec.get("key", {}).get(k) == want[k] for k in ("params", "epochs"))
        return dict(rec["auc"]) if same_data else {}
    from ..data.ceiling import learnable_ceiling
    from ..data.synthetic import SyntheticConfig

    res = learnable_ceiling(parse_config(dict(data.params), SyntheticConfig, f"bench dataset {dataset!r}"),
                            epochs=cfg.ceiling_epochs)
    cells = {f"{d}/{t}": float(v) for (d, t), v in res.auc.items()}
    write_json_atomic(path, {"key": key, "auc": cells, "train_rows": res.train_rows})
    return cells


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``, or None when absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ---- command line -------------------------------------------------------------------------------


def bench_summary(res: BenchResults) -> str:
    """One line: how many runs were trained, reused (same config and code) and recomputed (other code)."""
    line = f"bench {res.config.name}: {len(res.ran)} run(s) trained, {len(res.skipped)} reused"
    if res.copied:
        line += f", {len(res.copied)} copied from identical runs of other benches"
    if res.skipped:
        line += f" (same config and code: {_code_text(code_version(ALL_CODE))}) from {Path(res.config.output_dir) / 'cells'}"
    if res.stale:
        line += f"; {len(res.stale)} of the trained were stale results made by other code, recomputed"
    return line


def _duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"3 h 05 min"``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def grid_status(cfg: BenchConfig) -> str:
    """What a run of ``cfg`` would do, per entry: runs finished by the current code, runs made by other
    code (trained again), runs of a changed configuration and runs never made; nothing is trained.

    Example line: ``MMoE: 3 of 5 finished; 2 to train (1 made by other code, 1 new), about 4 min``.

    The time left is estimated per entry from the median wall time of its runs on record that are
    of the current configuration (finished or made by other code), one run at a time; an entry with
    no such run is not estimated.
    """
    import statistics

    states = cell_states(cfg)
    lines = [f"bench {cfg.name}: {cfg.output_dir}/cells, current code {_code_text(code_version(ALL_CODE))}"]
    left, unestimated = 0.0, 0
    for ds in cfg.datasets:
        for e in cfg.entries:
            keys = [CellKey(ds, e.label, s) for s in cfg.seeds]
            counts = {st: sum(states[k][0] == st for k in keys) for st in ("done", "stale", "changed", "new")}
            line = f"  {ds} · {e.label}: {counts['done']} of {len(keys)} finished"
            todo = len(keys) - counts["done"]
            if todo:
                parts = [f"{counts[st]} {what}" for st, what in (("stale", "made by other code"),
                                                                 ("changed", "of another configuration"),
                                                                 ("new", "new")) if counts[st]]
                line += f"; {todo} to train ({', '.join(parts)})"
                walls = [float(rec["wall_seconds"]) for k in keys for st, rec in [states[k]]
                         if st in ("done", "stale") and rec is not None and rec.get("wall_seconds") is not None]
                if walls:
                    est = todo * statistics.median(walls)
                    left += est
                    line += f", about {_duration(est)}"
                else:
                    unestimated += todo
            lines.append(line)
    total = len(states)
    done = sum(st == "done" for st, _ in states.values())
    line = f"  {done} of {total} runs finished, {total - done} to train"
    if total > done:
        line += f": about {_duration(left)} one run at a time"
        if unestimated:
            line += f", plus {unestimated} run(s) of entries with no run on record to estimate from"
    lines.append(line)
    other: dict[str, int] = {}
    for st, rec in states.values():
        if st == "stale" and rec is not None:
            other[_code_text(rec.get("code"))] = other.get(_code_text(rec.get("code")), 0) + 1
    if other:
        made = ", ".join(f"{code} ({n})" for code, n in sorted(other.items()))
        lines.append(f"  made by other code: {made}; its results stay in the report until trained again")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``mdmt bench`` arguments to ``parser`` (used by the ``mdmt`` CLI)."""
    parser.add_argument("config", help="bench YAML (configs/bench/*.yaml)")
    parser.add_argument("--data-dir", default=None, help="root of the real data sets (default: $MDMT_DATA_DIR)")
    parser.add_argument("--output-dir", default=None, help="override the config's output_dir")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds overriding the config's, e.g. 0,1")
    parser.add_argument("--no-resume", action="store_true", help="re-run every cell, even finished ones")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from finished cells")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--status", action="store_true",
        help="print, per entry, how many runs are finished and how many a run would train; train nothing",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="train N runs at a time, each in a worker process pinned to its own share of the CPUs (default 1)",
    )
    return parser


def _refresh_meta(cfg: BenchConfig, config_path: str | Path) -> None:
    """Write ``meta.json`` for a report made without training (``--report-only``).

    The report and ``BENCHMARKS.md`` state the config the report was made from, so an existing
    ``meta.json`` gets the current config and its path. A folder with run records but no
    ``meta.json`` (records copied in from another checkout) gets a new one: the machine is the one
    the newest record states (the runs' machine, not this process's), else this process's, and
    ``started_at`` is unknown (``None``). A folder with no record is left alone.
    """
    from .report import load_records

    out = Path(cfg.output_dir)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
    else:
        records = load_records(out)
        if not records:
            return
        newest = max(records, key=lambda r: str(r.get("finished_at") or ""))
        machine = newest.get("machine") if isinstance(newest.get("machine"), dict) else machine_description()
        meta = {"bench": cfg.name, "machine": machine, "started_at": None}
    meta.update(config=cfg.model_dump(mode="json"), config_path=_display_path(config_path))
    write_json_atomic(meta_path, meta)


def run_cli(args: argparse.Namespace) -> int:
    """Execute parsed ``mdmt bench`` arguments. Returns the exit status."""
    from .report import write_report

    overrides: dict[str, Any] = {}
    quiet = bool(getattr(args, "quiet", False))
    if getattr(args, "output_dir", None):
        overrides["output_dir"] = args.output_dir
    if getattr(args, "seeds", None):
        overrides["seeds"] = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    cfg = load_bench_config(args.config, overrides or None)
    if getattr(args, "status", False):
        print(grid_status(cfg))
        return 0
    if getattr(args, "report_only", False):
        _refresh_meta(cfg, args.config)
        paths = write_report(cfg, command=f"mdmt bench {_display_path(args.config)}")
    else:
        res = run_bench(
            cfg,
            data_dir=getattr(args, "data_dir", None),
            resume=not getattr(args, "no_resume", False),
            config_path=args.config,
            progress=not quiet,
            jobs=getattr(args, "jobs", 1),
        )
        print(bench_summary(res))
        paths = res.report
    for p in paths.values():
        print(f"wrote {p}")
    if not quiet:
        from rich.console import Console

        from .report import console_tables, grid_records, summarize

        summaries = summarize(grid_records(cfg), cfg.baseline, "test", [e.label for e in cfg.entries], proposed=cfg.proposed)
        con = Console()
        for table in console_tables(summaries):
            con.print(table)
    return 0


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """The ``mdmt bench`` command: takes parsed arguments (from the ``mdmt`` CLI) or an argv list."""
    if not isinstance(args, argparse.Namespace):
        parser = add_arguments(argparse.ArgumentParser(prog="mdmt bench", description="Run a benchmark grid."))
        args = parser.parse_args(args if args is not None else sys.argv[1:])
    return run_cli(args)
