"""Data-set statistics in the layout of the papers' data tables (PMTA Table 3, PEPNet Table 1).

:func:`data_stats` measures, for any :class:`~mdmt.data.base.RawData`:

* per domain: rows (instances), distinct users and distinct items, and the domain's row share;
* per (domain, task): the positive rate over the rows where the label is observed ("task
  sparsity");
* for every ordered pair of domains (x, y): the **user overlap** ``|U_x ∩ U_y| / |U_x|``, the
  share of domain x's users also seen in domain y, and the item overlap alike.

When ``raw.meta`` carries a generator's targets (``meta["targets"]``, ``meta["user_overlap"]``,
``meta["item_overlap"]``), each realised value is reported next to its target.
:func:`render_stats` prints rich tables and :func:`stats_markdown` returns Markdown.

Example::

    >>> from mdmt.data.synthetic import SyntheticConfig, generate
    >>> stats = data_stats(generate(SyntheticConfig(rows=20_000)))
    >>> round(stats["user_overlap"]["A"]["B"], 2)   # target 0.678
    0.68
    >>> print(stats_markdown(stats))                 # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from ..schema import DatasetSpec
from .base import DataError, RawData

__all__ = ["data_stats", "render_stats", "stats_markdown"]


def _pick_column(spec: DatasetSpec, source: str, explicit: str | None, prefer: str | None) -> str | None:
    """The raw column holding the user (or item) id, or None when the schema has none."""
    if explicit is not None:
        return explicit
    if prefer is not None:
        return spec.feature(prefer).raw_column
    for f in spec.features:
        if f.kind == "sparse" and f.source == source:
            return f.raw_column
    return None


def _domain_expr(spec: DatasetSpec) -> pl.Expr:
    """The domain name of each row (applies ``DomainSpec.mapping`` when there is one)."""
    col = pl.col(spec.domain.column)
    if spec.domain.mapping is None:
        return col.cast(pl.String)
    old = [v for name in spec.domain.names for v in spec.domain.mapping.get(name, [])]
    new = [name for name in spec.domain.names for _ in spec.domain.mapping.get(name, [])]
    return col.replace_strict(old, new, default=None, return_dtype=pl.String)


def _overlap(pairs: pl.DataFrame, key: str, names: list[str]) -> dict[str, dict[str, float]]:
    """``{x: {y: |K_x ∩ K_y| / |K_x|}}`` from unique (``__domain``, key) pairs."""
    size = dict(pairs.group_by("__domain").len().iter_rows())
    both = (
        pairs.join(pairs.rename({"__domain": "__other"}), on=key)
        .filter(pl.col("__domain") != pl.col("__other"))
        .group_by("__domain", "__other")
        .len()
    )
    inter = {(x, y): n for x, y, n in both.iter_rows()}
    return {
        x: {y: (inter.get((x, y), 0) / size[x] if size.get(x) else math.nan) for y in names if y != x}
        for x in names
    }


def data_stats(raw: RawData, *, user_col: str | None = None, item_col: str | None = None) -> dict[str, Any]:
    """Statistics of a data set, realised values next to targets when ``raw.meta`` has them.

    Args:
        raw: the data.
        user_col / item_col: raw id columns; default the schema's ``group`` (else its first sparse
            user feature) and its first sparse item feature. Without one, user (item) counts and
            overlaps are ``None`` and a note says why.

    Returns:
        A JSON-serialisable dict (fractions, not percent)::

            {"name", "source", "rows",
             "domains": [name, ...],
             "per_domain": {d: {"rows", "share", "users", "items"}},
             "positive_rate": {d: {task: rate or NaN}},
             "observed": {d: {task: labelled rows}},
             "user_overlap": {x: {y: share of x's users also in y}},   # None without a user id
             "item_overlap": {x: {y: ...}},                             # None without an item id
             "notes": [why a section is skipped, ...],
             "targets": {"positive_rate": ..., "user_overlap": ..., "item_overlap": ...,
                         "title": ...}   # only when raw.meta has targets
            }

    Raises:
        DataError: a named column is missing, or rows carry a domain outside the schema.
    """
    spec, frame = raw.spec, raw.frame
    ucol = _pick_column(spec, "user", user_col, spec.group if user_col is None else None)
    icol = _pick_column(spec, "item", item_col, None)
    ids = [c for c in (ucol, icol) if c is not None]
    notes = [
        f"the schema has no {kind} id (a sparse feature with source: {kind}, or the group), so {kind} counts "
        f"and {kind} overlap are skipped"
        for kind, col in (("user", ucol), ("item", icol))
        if col is None
    ]
    labels = [t.label for t in spec.tasks]
    for c in [*ids, spec.domain.column, *labels]:
        if c not in frame.columns:
            raise DataError(f"{raw.source}: column {c!r} is missing")
    names = spec.domain_names
    f = frame.lazy().select(
        _domain_expr(spec).alias("__domain"), *[pl.col(c) for c in ids], *[pl.col(c) for c in labels]
    ).collect()
    bad = f.filter(pl.col("__domain").is_null() | ~pl.col("__domain").is_in(names))
    if bad.height:
        first = frame.with_row_index("__row").filter(
            _domain_expr(spec).is_null() | ~_domain_expr(spec).is_in(names)
        ).row(0, named=True)
        raise DataError(
            f"{raw.source}: column {spec.domain.column!r}, row {first['__row']}: value "
            f"{first[spec.domain.column]!r} is not one of the domains {names}"
        )

    per = f.group_by("__domain").agg(
        pl.len().alias("rows"),
        *([pl.col(ucol).n_unique().alias("users")] if ucol else []),
        *([pl.col(icol).n_unique().alias("items")] if icol else []),
        *[pl.col(c).cast(pl.Float64).mean().alias(f"rate::{c}") for c in labels],
        *[pl.col(c).is_not_null().sum().alias(f"obs::{c}") for c in labels],
    )
    per_rows = {r["__domain"]: r for r in per.iter_rows(named=True)}
    total = f.height
    per_domain, rates, observed = {}, {}, {}
    for d in names:
        r = per_rows.get(d)
        rows = int(r["rows"]) if r else 0
        per_domain[d] = {
            "rows": rows,
            "share": rows / total if total else math.nan,
            "users": (int(r["users"]) if r else 0) if ucol else None,
            "items": (int(r["items"]) if r else 0) if icol else None,
        }
        rates[d], observed[d] = {}, {}
        for t in spec.tasks:
            v = r[f"rate::{t.label}"] if r else None
            rates[d][t.name] = float(v) if v is not None else math.nan
            observed[d][t.name] = int(r[f"obs::{t.label}"]) if r else 0

    out: dict[str, Any] = {
        "name": spec.name,
        "source": raw.source,
        "rows": total,
        "domains": names,
        "tasks": spec.task_names,
        "per_domain": per_domain,
        "positive_rate": rates,
        "observed": observed,
        "user_overlap": _overlap(f.select("__domain", ucol).unique(), ucol, names) if ucol else None,
        "item_overlap": _overlap(f.select("__domain", icol).unique(), icol, names) if icol else None,
        "notes": notes,
    }
    meta = raw.meta or {}
    if "targets" in meta:
        out["targets"] = {
            "positive_rate": meta["targets"],
            "user_overlap": meta.get("user_overlap", {}),
            "item_overlap": meta.get("item_overlap", {}),
            "title": meta.get("paper", ""),
        }
    return out


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------
def _pct(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100.0 * v:.{digits}f}%"


def _target(targets: dict | None, kind: str, a: str, b: str) -> float | None:
    if not targets:
        return None
    return targets.get(kind, {}).get(a, {}).get(b)


def _tables(stats: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the basic, sparsity and overlap tables."""
    names, targets = stats["domains"], stats.get("targets")
    pd = stats["per_domain"]
    basic = (
        f"Basic statistics: {stats['name']} ({stats['rows']:,} rows)",
        ["", *names],
        [
            *([["Users", *[f"{pd[d]['users']:,}" for d in names]]] if stats.get("user_overlap") is not None else []),
            *([["Items", *[f"{pd[d]['items']:,}" for d in names]]] if stats.get("item_overlap") is not None else []),
            ["Instances", *[f"{pd[d]['rows']:,}" for d in names]],
            ["Instance share", *[_pct(pd[d]["share"], 1) for d in names]],
        ],
    )
    header = ["Task"]
    for d in names:
        header += [f"{d} realised", f"{d} target"] if targets else [d]
    sparsity_rows = []
    for t in stats["tasks"]:
        row = [t]
        for d in names:
            row.append(_pct(stats["positive_rate"][d][t]))
            if targets:
                row.append(_pct(_target(targets, "positive_rate", d, t)))
        sparsity_rows.append(row)
    title = "Task sparsity (positive rate)" + (f" vs {targets['title']}" if targets and targets.get("title") else "")
    sparsity = (title, header, sparsity_rows)
    kinds = [(k, label) for k, label in (("user", "Users"), ("item", "Items")) if stats.get(f"{k}_overlap") is not None]
    ov_header = ["Pair"]
    for _, label in kinds:
        ov_header += [f"{label} realised", *([f"{label} target"] if targets else [])]
    ov_rows = []
    for x in names:
        for y in names:
            if x == y:
                continue
            row = [f"{x}→{y}"]
            for k, _ in kinds:
                row.append(_pct(stats[f"{k}_overlap"][x][y], 1))
                if targets:
                    row.append(_pct(_target(targets, f"{k}_overlap", x, y), 1))
            ov_rows.append(row)
    overlap = ("Cross-domain overlap (x→y: share of x's users / items also in y)", ov_header, ov_rows)
    return [basic, sparsity, overlap] if len(names) > 1 and kinds else [basic, sparsity]


def render_stats(stats: dict[str, Any], console: Any = None) -> None:
    """Print :func:`data_stats` output as rich tables (basic, task sparsity, overlap).

    Args:
        stats: the dict returned by :func:`data_stats`.
        console: a ``rich.console.Console``; default a new one on standard output.
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for title, header, rows in _tables(stats):
        table = Table(title=title)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for note in stats.get("notes", []):
        console.print(f"Note: {note}.")


def stats_markdown(stats: dict[str, Any]) -> str:
    """The tables of :func:`render_stats` as Markdown (for ``report.md`` and docs)."""
    parts = []
    for title, header, rows in _tables(stats):
        lines = [f"**{title}**", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        parts.append("\n".join(lines))
    parts += [f"Note: {note}." for note in stats.get("notes", [])]
    return "\n\n".join(parts) + "\n"
