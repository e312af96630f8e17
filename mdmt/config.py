"""Experiment configuration: strict, typed, YAML-backed (DESIGN §5.8).

A YAML experiment file may name a ``base`` file; the two are deep-merged (the experiment wins)
and then validated strictly, so an unknown key anywhere raises an error naming the key and the
file. Nothing is ``eval``-ed and no data path is hard-coded: data locations come from the config,
the ``--data-dir`` CLI option or the ``MDMT_DATA_DIR`` environment variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from .embeddings import EmbeddingConfig
from .schema import StrictModel, parse_config, read_yaml_mapping

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "ExperimentConfig",
    "load_experiment",
    "deep_merge",
]


class DataConfig(StrictModel):
    """Which data set to load. ``params`` are checked by the source's own config.

    Sources: ``synthetic`` (params: preset, rows, seed...), ``movielens`` (variant, protocol, path),
    ``kuairand`` (path), ``table`` (path of a CSV/Parquet file and ``schema`` YAML).
    """

    source: Literal["synthetic", "movielens", "kuairand", "table"] = "synthetic"
    params: dict[str, Any] = Field(default_factory=dict)
    cache_dir: str | None = None


class ModelConfig(StrictModel):
    """A registered model, its params (validated by the model's own config class) and the
    embedding settings every model shares (``embedding``: dim, domain input, id dropout; e.g.
    ``--set model.embedding.dim=32``)."""

    name: str = "mlp"
    params: dict[str, Any] = Field(default_factory=dict)
    embedding: EmbeddingConfig = EmbeddingConfig()


class TrainConfig(StrictModel):
    """Training loop settings."""

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=2048, ge=1)
    eval_batch_size: int = Field(default=65536, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    optimizer: Literal["adam", "adamw", "adagrad", "sgd"] = "adam"
    scheduler: Literal["none", "cosine", "step", "warmup_cosine"] = "none"
    warmup_steps: int = Field(default=0, ge=0)
    step_gamma: float = Field(default=0.5, gt=0)
    grad_clip: float | None = None
    patience: int = Field(default=2, ge=0)  # epochs without improvement before stopping; 0 = never stop early
    min_delta: float = 0.0
    monitor: Literal["avg_auc", "avg_gauc", "neg_logloss"] = "avg_auc"
    regime: Literal["mdmt", "mtl", "mdl", "cell"] = "mdmt"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    num_threads: int | None = None
    max_steps_per_epoch: int | None = None
    embedding_init_std: float = Field(default=0.01, gt=0)
    progress: bool = True
    streaming: bool = False  # read training batches from the cached Parquet shards (needs data.cache_dir; regime mdmt)
    shuffle_buffer: int = Field(default=200_000, ge=1)  # rows shuffled together when streaming


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


def read_yaml_with_base(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a top-level ``base: other.yaml`` (relative to the file) is merged under it."""
    path = Path(path)
    data = read_yaml_mapping(path)
    base = data.pop("base", None)
    if base is not None:
        data = deep_merge(read_yaml_with_base(path.parent / base), data)
    return data


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load an experiment YAML (with its ``base``), apply ``overrides``, validate strictly."""
    data = read_yaml_with_base(path)
    if overrides:
        data = deep_merge(data, overrides)
    return parse_config(data, ExperimentConfig, str(path))
