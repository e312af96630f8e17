"""Experiment configuration: strict, typed, YAML-backed (DESIGN §5.8).

A YAML experiment file may name a ``base`` file; the two are deep-merged (the experiment wins)
and then validated strictly, so an unknown key anywhere raises an error naming the key and the
file. Nothing is ``eval``-ed and no data path is hard-coded: data locations come from the config,
the ``--data-dir`` CLI option or the ``MDMT_DATA_DIR`` environment variable.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from .embeddings import EmbeddingConfig
from .schema import StrictModel, parse_config, read_yaml_mapping

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "WarmStartConfig",
    "ExperimentConfig",
    "load_experiment",
    "deep_merge",
]


class DataConfig(StrictModel):
    """Which data set to load. ``params`` are checked by the source's own config.

    Sources: ``synthetic`` (params: preset, rows, seed...), ``movielens`` (variant, protocol, path),
    ``kuairand`` (path), ``table`` (path of a CSV/Parquet file and ``schema`` YAML).
    ``domain_specific`` names id features that get a ``per_domain`` embedding table beside their
    shared one (:meth:`~mdmt.schema.DatasetSpec.with_domain_tables`): PMTA's e^d as configuration.
    """

    source: Literal["synthetic", "movielens", "kuairand", "table"] = "synthetic"
    params: dict[str, Any] = Field(default_factory=dict)
    cache_dir: str | None = None
    domain_specific: list[str] = Field(default_factory=list)  # id features that also get a per-domain table (e^d)


class ModelConfig(StrictModel):
    """A registered model, its params (validated by the model's own config class) and the
    embedding settings every model shares (``embedding``: dim, domain input, id dropout; e.g.
    ``--set model.embedding.dim=32``)."""

    name: str = "mlp"
    params: dict[str, Any] = Field(default_factory=dict)
    embedding: EmbeddingConfig = EmbeddingConfig()

    @field_validator("params", mode="before")
    @classmethod
    def _null_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v


class WarmStartConfig(StrictModel):
    """Start from the matching parameters of a finished run (``mdmt train --warm-start RUN_DIR``).

    Parameters are matched by name and shape; the two runs' feature maps must be identical.
    """

    run_dir: str = Field(description="the finished run whose best weights are loaded")
    freeze: bool = Field(default=False, description="keep the loaded parameters fixed (they get no optimizer)")
    lr: float | None = Field(default=None, gt=0, description=(
        "learning rate of the loaded parameters, in an optimizer group of their own (default: train.lr); "
        "ignored with freeze"))


class TrainConfig(StrictModel):
    """Training loop settings (the ``train:`` section of an experiment).

    ``docs/training.md`` lists every option; it is generated from this class by
    ``python -m mdmt.docgen``.
    """

    epochs: int = Field(default=10, ge=1, description="maximum number of epochs (the budget)")
    batch_size: int = Field(default=2048, ge=1, description="training rows per step")
    eval_batch_size: int = Field(default=65536, ge=1, description="rows per forward pass when scoring")
    lr: float = Field(default=1e-3, gt=0, description=(
        "learning rate of every optimizer group that does not set its own"))
    weight_decay: float = Field(default=0.0, ge=0, description=(
        "weight decay of every optimizer group that does not set its own"))
    optimizer: Literal["adam", "adamw", "adagrad", "sgd"] = Field(default="adam", description=(
        "optimizer of every group that does not name its own (a model may ask for several groups)"))
    scheduler: Literal["none", "cosine", "step", "warmup_cosine"] = Field(default="none", description=(
        "learning-rate schedule over all steps: cosine decay, step (x step_gamma every epoch), "
        "or linear warm-up then cosine"))
    warmup_steps: int = Field(default=0, ge=0, description="steps of linear warm-up (warmup_cosine, or any schedule)")
    step_gamma: float = Field(default=0.5, gt=0, description="decay factor per epoch of the step schedule")
    grad_clip: float | None = Field(default=None, gt=0, description=(
        "clip the global gradient norm to this value; null = no clipping"))
    patience: int = Field(default=2, ge=0, description=(
        "epochs in a row without improvement before stopping; 0 = never stop early"))
    min_delta: float = Field(default=0.0, ge=0, description="smallest score gain that counts as an improvement")
    monitor: Literal["avg_auc", "avg_gauc", "neg_logloss"] = Field(default="avg_auc", description=(
        "validation score used for early stopping and model selection (mean over all (domain, task) cells)"))
    regime: Literal["mdmt", "mtl", "mdl", "cell"] = Field(default="mdmt", description=(
        "one model for everything (mdmt), one per domain (mtl), one per task (mdl) or one per cell"))
    seed: int = Field(default=0, description="seed of initialisation, shuffling and dropout")
    deterministic: bool = Field(default=False, description=(
        "torch deterministic algorithms: identical runs give identical results (slower on GPU)"))
    device: str = Field(default="auto", description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    num_threads: int | None = Field(default=None, ge=1, description=(
        "CPU threads torch uses; null = the CPUs this process may run on (its affinity and cgroup "
        "quota, not the host's core count). On a shared machine set it to the cores you can have"))
    keep_host_memory: bool = Field(default=True, description=(
        "CPU training: the C library keeps freed memory for reuse (glibc mallopt: no mmap per large "
        "block, no trimming), so the step's large tensors are not page-faulted afresh every step; the "
        "process then keeps its peak memory until it exits. false = the C library's defaults"))
    max_steps_per_epoch: int | None = Field(default=None, ge=1, description=(
        "cut every epoch after this many steps (quick trials); null = whole epochs"))
    embedding_init_std: float = Field(default=0.01, gt=0, description="standard deviation of embedding initialisation")
    progress: bool = Field(default=True, description="live progress bar and one line per epoch on stderr")
    streaming: bool = Field(default=False, description=(
        "read training batches from the cached Parquet shards instead of memory (needs data.cache_dir; regime mdmt)"))
    shuffle_buffer: int = Field(default=200_000, ge=1, description="rows shuffled together when streaming")
    warm_start: WarmStartConfig | None = Field(default=None, description=(
        "start from the matching parameters of a finished run (see docs/training.md, warm start)"))
    arch_holdout: float = Field(default=0.1, ge=0.0, lt=1.0, description=(
        "share of the training rows held out for the architecture steps of a model with architecture "
        "weights (e.g. M3oE's fusion weights): those rows are never trained on by the main step, and the "
        "architecture optimizer only ever sees them; ignored by other models"))
    arch_every: int | Literal["epoch"] = Field(default=1, description=(
        "cadence of the architecture steps: after every k main steps (a number), or once after each "
        "epoch (epoch, as M3oE section 2.6.1 describes)"))

    @field_validator("arch_every")
    @classmethod
    def _positive_every(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("arch_every must be a positive number of steps or 'epoch'")
        return v


class ExperimentConfig(StrictModel):
    """One training run: data + model + training."""

    name: str = "experiment"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    output_dir: str = "runs"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into ``base`` (mappings merge, everything else is replaced)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


#: keys of a config file holding paths read from (resolved against the file when the file exists there)
_INPUT_PATHS = (("data", "params", "path"), ("data", "params", "schema"), ("data", "params", "features_path"))
#: keys holding other paths (always resolved against the file). ``output_dir`` is not among them: like
#: the ``output_dir`` of a bench config, it names where results go, relative to the working directory.
_OUTPUT_PATHS = (("data", "cache_dir"), ("train", "warm_start", "run_dir"))


def _resolve_paths(data: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Make the relative paths written in a config file relative to that file's directory.

    Input files (``data.params.path``, ``schema``, ``features_path``) are resolved against the
    file's directory when they exist there; otherwise they are left as written, so that a data
    source can still look them up under ``--data-dir``. ``data.cache_dir`` and
    ``train.warm_start.run_dir`` are always resolved against it. ``output_dir`` (where runs are
    written) stays relative to the working directory.
    """

    def resolve(keys: tuple[str, ...], must_exist: bool) -> None:
        node: Any = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(keys[-1]), str):
            return
        p = Path(node[keys[-1]]).expanduser()
        if p.is_absolute():
            return
        q = directory / p
        if not must_exist or q.exists():
            node[keys[-1]] = str(q)

    for keys in _INPUT_PATHS:
        resolve(keys, must_exist=True)
    for keys in _OUTPUT_PATHS:
        resolve(keys, must_exist=False)
    return data


def _drop_nulls(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge ``over`` into ``base``; a None in ``over`` removes the key, so its default applies."""
    out = dict(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _drop_nulls(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml_with_base(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a top-level ``base: other.yaml`` (relative to the file) is merged under it.

    Relative paths in each file are resolved against that file's directory (:func:`_resolve_paths`).
    """
    path = Path(path)
    data = _resolve_paths(read_yaml_mapping(path), path.resolve().parent)
    base = data.pop("base", None)
    if base is not None:
        data = deep_merge(read_yaml_with_base(path.parent / base), data)
    return data


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load an experiment YAML (with its ``base``), apply ``overrides``, validate strictly.

    ``overrides`` (e.g. from ``--set``) are merged over the file; their relative paths are taken
    from the current directory (and stored absolute, so a run's ``config.yaml`` works from anywhere). A None value resets the key to its default (``--set model.params=null``
    drops every model param). When an override changes ``model.name`` without giving
    ``model.params``, the file's params the new model does not accept are dropped with a warning
    naming them; the ones it accepts are kept.
    """
    data = read_yaml_with_base(path)
    if overrides:
        new_name = (overrides.get("model") or {}).get("name") if isinstance(overrides.get("model"), dict) else None
        old = data.get("model") if isinstance(data.get("model"), dict) else {}
        if new_name is not None and new_name != old.get("name") and "params" not in overrides["model"]:
            _drop_foreign_params(data, old.get("name"), new_name)
        data = _drop_nulls(data, _resolve_paths(copy.deepcopy(overrides), Path.cwd()))
    return parse_config(data, ExperimentConfig, str(path))


def _drop_foreign_params(data: dict[str, Any], old_name: str | None, new_name: str) -> None:
    import warnings

    from .models import REGISTRY

    params = data.get("model", {}).get("params")
    if not isinstance(params, dict) or not params or new_name not in REGISTRY:
        return
    fields = REGISTRY[new_name].cls.config_class.model_fields
    dropped = sorted(k for k in params if k not in fields)
    if dropped:
        data["model"]["params"] = {k: v for k, v in params.items() if k in fields}
        warnings.warn(f"model.params {dropped} of model {old_name!r} do not apply to {new_name!r} and were dropped "
                      "(set the new model's params with --set model.params.KEY=VALUE)", stacklevel=2)
