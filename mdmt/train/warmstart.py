"""Warm start: begin training from the matching parameters of a finished run (PMTA §2.4's parameter warm-up).

``mdmt train exp.yaml --warm-start RUN_DIR`` (or ``train.warm_start.run_dir``) loads, for every
model of the new run, the tensors of the finished run's best weights that have the same name and
the same shape. The two runs must have identical feature maps (same features, vocabularies and
statistics), because an embedding row means an id only through its feature map.

* Tensors of the new model that the source does not have are left freshly initialised (e.g. the
  new modules of a model that extends the source's architecture); a summary names them.
* A tensor present in both with different shapes is an error listing every such tensor, and so is
  a warm start that would load nothing.
* ``freeze: true`` keeps the loaded parameters fixed (they get no optimizer and no gradient);
  ``lr: X`` puts them in optimizer groups of their own with learning rate X (same optimizer and
  weight decay as the group they come from). Buffers (e.g. BatchNorm running statistics) are
  loaded but not frozen.

Which source model feeds which new model: the one with the same unit tag (``all``,
``domain-<name>``, ``task-<name>``, ``cell-<d>-<t>``) or, when the source run has a single model,
that one for every new model (e.g. per-domain models started from one joint model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ..config import WarmStartConfig
from ..featuremap import FeatureMap
from ..models.base import MDMTModel, OptimGroup
from ..schema import ConfigError
from .checkpoint import load_checkpoint

__all__ = ["WarmSource", "WarmSummary", "check_source", "load_source", "apply_warm_start", "feature_map_differences"]


@dataclass
class WarmSource:
    """The best weights of every trained model of a finished run, by unit tag."""

    run_dir: Path
    states: dict[str, dict[str, Tensor]]


@dataclass
class WarmSummary:
    """What a warm start loaded into one model and what it left fresh (tensor names)."""

    unit: str
    source_unit: str
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    frozen: bool = False
    lr: float | None = None


def check_source(run_dir: Path) -> None:
    """``run_dir`` is a finished run (checked before any data is read)."""
    if not run_dir.is_dir():
        raise ConfigError(f"--warm-start {run_dir}: no such run directory")
    for name in ("config.yaml", "feature_map.json", "units.json"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"--warm-start {run_dir}: not a finished run ({name} is missing)")
    if not list((run_dir / "checkpoints").glob("*-best.pt")):
        raise ConfigError(f"--warm-start {run_dir}: the run has no trained weights (checkpoints/*-best.pt)")


def feature_map_differences(a: FeatureMap, b: FeatureMap) -> list[str]:
    """What differs between two feature maps (``num_rows`` is informational and not compared)."""
    out = []
    if a.spec != b.spec:
        da, db = a.spec.model_dump(), b.spec.model_dump()
        keys = [k for k in da if da[k] != db.get(k)]
        out.append(f"the schemas differ in {keys}")
    for name in sorted(set(a.vocabs) | set(b.vocabs)):
        va, vb = a.vocabs.get(name), b.vocabs.get(name)
        if va != vb:
            na, nb = len(va or []), len(vb or [])
            size = f"{na} vs {nb} ids" if na != nb else f"{na} ids each, not the same ones in the same order"
            out.append(f"vocabulary {name!r} differs ({size})")
    for name in sorted(set(a.dense_stats) | set(b.dense_stats)):
        if a.dense_stats.get(name) != b.dense_stats.get(name):
            out.append(f"the statistics of dense feature {name!r} differ")
    for what in ("sparse", "dense", "sequences"):
        if getattr(a, what) != getattr(b, what):
            out.append(f"the {what} feature order differs")
    return out


def load_source(run_dir: Path, feature_map: FeatureMap) -> WarmSource:
    """Load the source run's best weights; its feature map must equal ``feature_map``."""
    check_source(run_dir)
    try:
        src_fm = FeatureMap.load(run_dir / "feature_map.json")
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"--warm-start {run_dir}: feature_map.json is not valid: {str(err).splitlines()[0]}") from None
    diff = feature_map_differences(src_fm, feature_map)
    if diff:
        raise ConfigError(f"--warm-start {run_dir}: the feature maps must be identical, but " + "; ".join(diff))
    try:
        units = json.loads((run_dir / "units.json").read_text())
        tags = [u["tag"] for u in units if not u.get("skipped")]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"--warm-start {run_dir}: units.json is not valid: {err}") from None
    states = {}
    for tag in tags:
        path = run_dir / "checkpoints" / f"{tag}-best.pt"
        state = load_checkpoint(path)
        if not isinstance(state, dict):
            raise ConfigError(f"--warm-start {path}: does not hold model weights")
        states[tag] = state
    if not states:
        raise ConfigError(f"--warm-start {run_dir}: the run has no trained model")
    return WarmSource(run_dir, states)


def _few(names: list[str], n: int = 6) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def apply_warm_start(
    model: MDMTModel, source: WarmSource, unit: str, cfg: WarmStartConfig, quiet: bool = False
) -> tuple[list[OptimGroup], WarmSummary]:
    """Load the matching tensors of ``source`` into ``model`` and return its optimizer groups.

    Returns ``(groups, summary)``: ``model.optim_groups()`` with the loaded parameters removed
    (``freeze``) or moved to groups of their own (``lr``), and what was loaded / left fresh.
    """
    if unit in source.states:
        src_unit = unit
    elif len(source.states) == 1:
        src_unit = next(iter(source.states))
    else:
        raise ConfigError(f"--warm-start {source.run_dir}: it has models {sorted(source.states)} and none is "
                          f"{unit!r}; warm-start a run of the same regime, or from a run with one model")
    state = source.states[src_unit]
    own = model.state_dict()
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if shapes:
        raise ConfigError(f"--warm-start {source.run_dir}: tensors with the same name but another shape "
                          f"(source vs new): {_few(shapes)}; the models must agree on these sizes")
    loaded = [k for k in own if k in state]
    if not loaded:
        raise ConfigError(f"--warm-start {source.run_dir}: no tensor of the new model {unit!r} is in the source "
                          f"(source has {_few(sorted(state))}; new model has {_few(sorted(own))})")
    summary = WarmSummary(unit=unit, source_unit=src_unit, loaded=loaded,
                          fresh=[k for k in own if k not in state],
                          unused=[k for k in state if k not in own], frozen=cfg.freeze, lr=cfg.lr)
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)

    names = {id(p): n for n, p in model.named_parameters()}
    loaded_set = set(loaded)
    groups: list[OptimGroup] = []
    for g in model.optim_groups():
        warm = [p for p in g.params if names.get(id(p)) in loaded_set]
        fresh = [p for p in g.params if names.get(id(p)) not in loaded_set]
        if cfg.freeze:
            for p in warm:
                p.requires_grad_(False)
            if fresh:
                groups.append(OptimGroup(g.name, fresh, g.optimizer, g.lr, g.weight_decay, g.step_on))
        elif cfg.lr is not None:
            if fresh:
                groups.append(OptimGroup(g.name, fresh, g.optimizer, g.lr, g.weight_decay, g.step_on))
            if warm:
                groups.append(OptimGroup(f"{g.name}/loaded", warm, g.optimizer, cfg.lr, g.weight_decay, g.step_on))
        else:
            groups.append(g)
    if not groups:
        raise ConfigError(f"--warm-start {source.run_dir} with --freeze-loaded: every parameter of {unit!r} is "
                          "loaded and frozen, nothing is left to train")
    if not quiet:
        import sys

        how = "frozen" if cfg.freeze else (f"learning rate {cfg.lr:g}" if cfg.lr is not None else "trained")
        print(f"warm start {unit} <- {source.run_dir} ({src_unit}): loaded {len(loaded)} tensors ({how}), "
              f"left fresh {len(summary.fresh)}" + (f": {_few(summary.fresh)}" if summary.fresh else ""),
              file=sys.stderr)
    return groups, summary
