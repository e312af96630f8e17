"""Generate the option reference of ``docs/training.md`` from the config classes.

``python -m mdmt.docgen`` rewrites the part of ``docs/training.md`` between the two markers below
from :class:`mdmt.config.TrainConfig` and :class:`mdmt.config.WarmStartConfig` (name, type,
default, allowed values and description of every field); the prose around the markers is kept.
``tests/test_docs.py`` fails when the file is not current.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

__all__ = ["BEGIN", "END", "options_table", "render_training_doc", "main"]

BEGIN = "<!-- BEGIN GENERATED OPTIONS (python -m mdmt.docgen) -->"
END = "<!-- END GENERATED OPTIONS -->"
DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join("null" if a is type(None) else _type_name(a) for a in args)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _constraints(field: Any) -> str:
    out = []
    for m in field.metadata:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sym} {v}")
    return ", ".join(out)


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else f"`{field.default_factory()}`"
    v = field.default
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"`{v:_}`"
    return f"`{v}`"


def options_table(cls: type[BaseModel], prefix: str) -> str:
    """A Markdown table of every field of ``cls``: option, type, default, constraint, meaning."""
    lines = ["| option | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{prefix}{name}` | {_type_name(field.annotation)} | {_default(field)} | "
                     f"{_constraints(field)} | {meaning} |")
    return "\n".join(lines)


def render_options() -> str:
    from .config import TrainConfig, WarmStartConfig

    return "\n".join([
        BEGIN,
        "",
        "### `train:`",
        "",
        options_table(TrainConfig, "train."),
        "",
        "### `train.warm_start:`",
        "",
        options_table(WarmStartConfig, "train.warm_start."),
        "",
        END,
    ])


def render_training_doc(current: str) -> str:
    """``current`` with the text between the markers replaced by the generated reference."""
    if BEGIN not in current or END not in current:
        raise ValueError(f"{DOC} lacks the markers {BEGIN!r} and {END!r}")
    head, rest = current.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + render_options() + tail


def main() -> int:
    DOC.write_text(render_training_doc(DOC.read_text()))
    print(f"wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
