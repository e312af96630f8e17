"""Rows as JSON objects: the request models generated from a feature map.

:func:`row_model` builds a pydantic model from ``feature_map.json``: one field per raw column the
schema reads (sparse ids: integer or string; dense: a number; sequences: a list of ids, most
recent first; the domain column: one of the schema's domain values). ``null`` is accepted where a
file may hold null (it encodes as in a file: OOV, the train mean). Other keys of a row (labels,
ids to echo) are ignored. A malformed row fails validation with its index and the field.

Validated rows are encoded by the data layer: :class:`~mdmt.data.records.RecordEncoder` for small
requests, :func:`~mdmt.data.preprocess.encode_for_scoring` for large ones (the same formulas).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from typing_extensions import Annotated

from ..data.preprocess import domain_lookup
from ..data.records import raw_key
from ..schema import DatasetSpec

__all__ = ["row_model", "request_model"]


def _id(v: Any) -> int | str | None:
    if v is None or (isinstance(v, (int, str)) and not isinstance(v, bool)):
        return v
    raise ValueError(f"expected an id (an integer or a string) or null, got {type(v).__name__} {v!r}")


def _number(v: Any) -> float | None:
    if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return v
    raise ValueError(f"expected a number or null, got {type(v).__name__} {v!r}")


def _ids(v: Any) -> list | None:
    if v is None:
        return v
    if not isinstance(v, list):
        raise ValueError(f"expected a list of ids (most recent first) or null, got {type(v).__name__} {v!r}")
    for k, x in enumerate(v):
        if x is not None and not (isinstance(x, (int, str)) and not isinstance(x, bool)):
            raise ValueError(f"entry {k} of the list is {type(x).__name__} {x!r}; expected an id (integer or string)")
    return v


Id = Annotated[Any, BeforeValidator(_id)]
Number = Annotated[Any, BeforeValidator(_number)]
Ids = Annotated[Any, BeforeValidator(_ids)]


def _columns(spec: DatasetSpec) -> dict[str, Any]:
    """``{raw column: annotation}`` of the fields a row must carry."""
    cols: dict[str, Any] = {}
    for f in spec.features:
        if f.raw_column in cols:
            continue
        if f.kind == "dense":
            cols[f.raw_column] = Number
        elif f.kind == "sequence":
            cols[f.raw_column] = Ids
        else:
            cols[f.raw_column] = Id
    keys = domain_lookup(spec)

    def known_domain(v: Any) -> int | str:
        if isinstance(v, bool) or not isinstance(v, (int, str)) or raw_key(v) not in keys:
            raise ValueError(f"{v!r} is not a domain of the schema; accepted values: {sorted(keys)}")
        return v

    cols[spec.domain.column] = Annotated[Any, BeforeValidator(known_domain)]
    return cols


def row_model(spec: DatasetSpec) -> type[BaseModel]:
    """The pydantic model of one raw row (fields named by their raw columns)."""
    fields = {f"c{i}": (ann, Field(alias=col)) for i, (col, ann) in enumerate(_columns(spec).items())}
    return create_model("Row", __config__=ConfigDict(extra="ignore", populate_by_name=False), **fields)


def request_model(spec: DatasetSpec) -> type[BaseModel]:
    """``{"rows": [Row, ...]}`` with at least one row."""
    row = row_model(spec)
    return create_model("ScoreRequest", __config__=ConfigDict(extra="forbid"),
                        rows=(list[row], Field(min_length=1)))  # type: ignore[valid-type]
