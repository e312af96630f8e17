"""Typed, strict dataset schema (DESIGN §2).

A :class:`DatasetSpec` says which raw columns are features, how they are embedded (tables are
declared apart from features), which column holds the domain, which columns are task labels, how
rows are split and which column groups rows for GAUC. Specs are plain frozen data: they never own
modules or tensors, so two models built from one schema never share trained weights.

Example::

    >>> spec = DatasetSpec(
    ...     name="toy",
    ...     features=[FeatureSpec(name="user_id", source="user"), FeatureSpec(name="item_id", source="item")],
    ...     domain=DomainSpec(column="tab", names=["a", "b"]),
    ...     tasks=[TaskSpec(name="click", label="click")],
    ...     group="user_id",
    ... )
    >>> [t.name for t in spec.effective_tables()]
    ['user_id', 'item_id']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "ConfigError",
    "StrictModel",
    "FeatureSpec",
    "TableSpec",
    "DomainSpec",
    "TaskSpec",
    "SplitSpec",
    "DatasetSpec",
    "load_yaml",
    "parse_config",
]


class ConfigError(ValueError):
    """A configuration or schema file is invalid. The message names the file and the key."""


class StrictModel(BaseModel):
    """Base of every spec and config: unknown keys raise, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(StrictModel):
    """One input feature.

    ``kind``:
      * ``sparse``: a categorical id, encoded to an index (0 = padding, 1 = OOV, known ids from 2).
      * ``dense``: a number, normalised (``transform``) or bucketised into a sparse id.
      * ``sequence``: a list of ids (a behaviour sequence, most recent first), cut to its first ``max_len``.
    ``vocab`` names the vocabulary the ids live in; features that share a vocabulary (an item id
    and the sequence of past item ids) share an id space. By default a feature has its own.
    """

    name: str
    kind: Literal["sparse", "dense", "sequence"] = "sparse"
    source: Literal["user", "item", "context"] = "context"
    column: str | None = None
    vocab: str | None = None
    min_count: int = Field(default=1, ge=1)
    transform: Literal["standard", "minmax", "log_standard", "bucketize", "none"] = "standard"
    buckets: int = Field(default=16, ge=2)
    max_len: int = Field(default=0, ge=0)
    behaviour: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "FeatureSpec":
        if self.kind == "sequence" and self.max_len <= 0:
            raise ValueError(f"sequence feature {self.name!r} needs max_len > 0")
        return self

    @property
    def raw_column(self) -> str:
        return self.column or self.name

    @property
    def vocab_name(self) -> str:
        return self.vocab or self.name

    @property
    def is_categorical(self) -> bool:
        """True when the encoded feature is an id (sparse, bucketised dense or sequence)."""
        return self.kind in ("sparse", "sequence") or self.transform == "bucketize"


class TableSpec(StrictModel):
    """An embedding table, declared apart from the features that look it up.

    With ``per_domain=True`` the table holds one block of rows per domain and a lookup is routed
    by ``batch.domain`` (PMTA's domain-specific embeddings e^d); otherwise it is shared (e^g).
    The embedding of feature ``f`` from table ``t`` is keyed ``"f@t"``.
    """

    name: str
    dim: int = Field(ge=1)
    features: list[str] = Field(min_length=1)
    per_domain: bool = False


class DomainSpec(StrictModel):
    """The domain (scenario) column. ``names`` are the domains in index order.

    ``mapping`` optionally groups raw values into domains, e.g. ``{"young": [1, 18]}``; without it
    the raw column must hold the names themselves.
    """

    column: str
    names: list[str] = Field(min_length=1)
    mapping: dict[str, list[Any]] | None = None

    @model_validator(mode="after")
    def _check(self) -> "DomainSpec":
        if len(set(self.names)) != len(self.names):
            raise ValueError("domain names must be unique")
        if self.mapping is not None:
            unknown = set(self.mapping) - set(self.names)
            if unknown:
                raise ValueError(f"domain mapping names {sorted(unknown)} are not in names")
        return self


class TaskSpec(StrictModel):
    """One binary task. ``label`` is the raw column holding 0/1 (null = unobserved in that row).

    ``domains`` restricts where the task is observed (default: everywhere). ``related_features``
    are the task's prompt inputs in PMTA (e_u^t, e_v^t).
    """

    name: str
    label: str
    weight: float = Field(default=1.0, ge=0.0)
    domains: list[str] | None = None
    related_features: list[str] = Field(default_factory=list)


class SplitSpec(StrictModel):
    """How rows are split into train / valid / test.

    * ``sequential``: rows ordered by ``order_by`` (e.g. user, as in the M3oE protocol), cut by position.
    * ``temporal``: rows ordered by the timestamp, cut by position (ties stay in the earlier split).
    * ``random``: a seeded shuffle, cut by position.
    * ``column``: a raw column already holds ``train`` / ``valid`` / ``test``.
    """

    method: Literal["sequential", "temporal", "random", "column"] = "temporal"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    order_by: list[str] = Field(default_factory=list)
    column: str | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "SplitSpec":
        if abs(sum(self.ratios) - 1.0) > 1e-6 or min(self.ratios) < 0:
            raise ValueError(f"split ratios must be non-negative and sum to 1, got {self.ratios}")
        if self.method == "column" and not self.column:
            raise ValueError("split method 'column' needs 'column'")
        return self


class DatasetSpec(StrictModel):
    """The whole schema of one MDMT data set."""

    name: str
    features: list[FeatureSpec] = Field(min_length=1)
    tables: list[TableSpec] = Field(default_factory=list)
    domain: DomainSpec
    tasks: list[TaskSpec] = Field(min_length=1)
    group: str | None = None
    timestamp: str | None = None
    split: SplitSpec = SplitSpec()
    default_dim: int = Field(default=16, ge=1)
    priors: list[str] = Field(default_factory=list)
    domain_features: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> "DatasetSpec":
        names = [f.name for f in self.features]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate feature names: {sorted(dup)}")
        known = set(names)
        for t in self.tables:
            for f in t.features:
                if f not in known:
                    raise ValueError(f"table {t.name!r} names unknown feature {f!r}")
                if self.feature(f).kind == "dense" and self.feature(f).transform != "bucketize":
                    raise ValueError(f"table {t.name!r}: dense feature {f!r} is not bucketised and has no ids")
            vocabs = {self.feature(f).vocab_name for f in t.features}
            if len(vocabs) > 1:
                raise ValueError(
                    f"table {t.name!r} mixes features of different vocabularies {sorted(vocabs)}: their ids "
                    "would share rows; give them one vocab (FeatureSpec.vocab) or separate tables"
                )
        tnames = [t.name for t in self.tasks]
        if len(set(tnames)) != len(tnames):
            raise ValueError("task names must be unique")
        for t in self.tasks:
            for f in t.related_features:
                if f not in known:
                    raise ValueError(f"task {t.name!r} names unknown related feature {f!r}")
            for d in t.domains or []:
                if d not in self.domain.names:
                    raise ValueError(f"task {t.name!r} names unknown domain {d!r}")
        for group_name in ("priors", "domain_features"):
            for f in getattr(self, group_name):
                if f not in known:
                    raise ValueError(f"{group_name} names unknown feature {f!r}")
        if self.group is not None and self.group not in known:
            raise ValueError(f"group {self.group!r} is not a feature")
        return self

    # ---- helpers -------------------------------------------------------------------------
    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature named {name!r} in schema {self.name!r}")

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def domain_names(self) -> list[str]:
        return list(self.domain.names)

    @property
    def num_domains(self) -> int:
        return len(self.domain.names)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def sparse_features(self) -> list[FeatureSpec]:
        """Features encoded as one id per row, in schema order (bucketised dense included)."""
        return [f for f in self.features if f.kind != "sequence" and f.is_categorical]

    def dense_features(self) -> list[FeatureSpec]:
        """Features encoded as one float per row, in schema order."""
        return [f for f in self.features if f.kind == "dense" and f.transform != "bucketize"]

    def sequence_features(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.kind == "sequence"]

    def effective_tables(self) -> list[TableSpec]:
        """Declared tables, plus one shared table of ``default_dim`` for every id feature no
        declared table covers. A sequence whose vocabulary is another feature's goes into that
        feature's default table, so item ids and past item ids share rows."""
        tables = list(self.tables)
        covered = {f for t in tables for f in t.features}
        by_vocab: dict[str, list[str]] = {}
        for f in self.features:
            if f.is_categorical and f.name not in covered:
                by_vocab.setdefault(f.vocab_name, []).append(f.name)
        for vocab, feats in by_vocab.items():
            tables.append(TableSpec(name=vocab, dim=self.default_dim, features=feats))
        return tables

    def with_domain_tables(self, features: list[str]) -> "DatasetSpec":
        """A copy where each named id feature also has a ``per_domain`` table ``<feature>_domain``
        (the domain-specific embedding e^d of PMTA §2.1) beside its shared table (e^g), of the
        shared table's dim. Default tables become declared ones, so the shared rows stay as they are.

        Raises:
            ValueError: an unknown or non-id feature, or a table name already taken.
        """
        tables = self.effective_tables()
        names = {t.name for t in tables}
        for f in features:
            if f not in {x.name for x in self.features}:
                raise ValueError(f"unknown feature {f!r}")
            if not self.feature(f).is_categorical:
                raise ValueError(f"feature {f!r} is dense and has no ids to embed per domain")
            if any(t.per_domain and f in t.features for t in tables):
                continue
            name = f"{f}_domain"
            if name in names:
                raise ValueError(f"table name {name!r} (the per-domain table of {f!r}) is already taken")
            dim = next(t.dim for t in tables if f in t.features)
            tables.append(TableSpec(name=name, dim=dim, features=[f], per_domain=True))
            names.add(name)
        return DatasetSpec.model_validate({**self.model_dump(), "tables": [t.model_dump() for t in tables]})

    def restrict(self, *, tasks: list[str] | None = None) -> "DatasetSpec":
        """A copy keeping only the named tasks (used by the one-model-per-task regimes)."""
        if tasks is None:
            return self
        keep = [t for t in self.tasks if t.name in tasks]
        if len(keep) != len(tasks):
            raise ValueError(f"unknown tasks in {tasks}; schema has {self.task_names}")
        return self.model_copy(update={"tasks": keep})


M = TypeVar("M", bound=BaseModel)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {loc!r}")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key {loc!r}")
        else:
            lines.append(f"{source}: invalid value at {loc!r}: {e['msg']}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], model: type[M], source: str = "<config>") -> M:
    """Validate ``data`` against ``model``; errors name the source and every bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(err, "problem", None) or getattr(err, "context", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_yaml(path: str | Path, model: type[M]) -> M:
    """Load a YAML file strictly into ``model`` (unknown keys raise, naming key and file)."""
    return parse_config(read_yaml_mapping(path), model, str(path))
