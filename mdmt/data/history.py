"""Leak-free history features: per-task user/item statistics and behaviour sequences.

Every feature of a row is computed from events with a timestamp **strictly smaller** than the
row's own timestamp. Events that share the row's timestamp (the row itself included) are never
seen, so no label of the row, and no label of a simultaneous event, can leak into its features.

For every label ``l`` and each row at time ``t`` of user ``u`` and item ``v``:

* ``user_{l}_count``: number of past events of ``u`` (time < t) with ``l = 1``;
* ``user_{l}_rate``: the smoothed past rate ``(pos + k * p) / (n + k)``, where ``n`` counts the
  past events of ``u`` whose ``l`` is observed (not null), ``k = prior_strength`` and
  ``p = (P + 1) / (N + 2)`` is the global rate of ``l`` over all past events (time < t), itself
  Laplace-smoothed so that it is defined before the first event;
* ``item_{l}_count`` / ``item_{l}_rate``: the same for item ``v``;
* ``hist_{l}``: the ids of the items of the last ``seq_len`` past events of ``u`` with ``l = 1``,
  most recent first.

And, independent of labels: ``user_events`` / ``item_events`` (past events of ``u`` / ``v``) and
``hist_all`` (the items of the last ``seq_len`` past events of ``u``, most recent first).

Keyword options of :func:`add_history_features` adapt these to other conventions without a second
implementation:

* ``prior_rates={l: p}`` replaces the global past rate by a constant prior ``p`` per label (e.g. a
  published rate known in advance);
* ``rate_denominator="events"`` divides by all past events (a null label then counts as an event
  without a positive) instead of the past events with an observed label;
* ``domain=<column>`` adds ``user_domain_events`` / ``item_domain_events``: past events of ``u`` /
  ``v`` in the row's domain;
* ``label_counts=False`` drops the ``*_{l}_count`` columns, ``sequence_labels`` picks the labels
  with a ``hist_{l}`` sequence, and ``rename={default name: name}`` renames the added columns.

Events with equal timestamps are ordered by their row position in the input frame; this only
decides their order inside a sequence of a later row (never whether they are visible).

The computation is vectorised with NumPy (sorts, cumulative sums, gathers); it handles a million
rows in a few seconds.

Example::

    >>> import polars as pl
    >>> f = pl.DataFrame({"u": [1, 1, 1], "i": [7, 8, 9], "t": [10, 10, 20], "click": [1, 0, 1]})
    >>> out = add_history_features(f, user="u", item="i", timestamp="t", labels=["click"], seq_len=5)
    >>> out["user_click_count"].to_list(), out["hist_click"].to_list()
    ([0, 0, 1], [[], [], [7]])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from ..schema import FeatureSpec
from .base import DataError

__all__ = ["add_history_features", "history_feature_specs", "history_columns", "past_sums"]


def history_columns(
    labels: list[str],
    *,
    include_all: bool = True,
    label_counts: bool = True,
    sequence_labels: Sequence[str] | None = None,
    domain: bool = False,
    rename: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Names of the columns :func:`add_history_features` adds, under the same options.

    ``domain`` says whether a domain column is given (it adds the per-domain event counts).

    Returns ``{"counts": [...], "rates": [...], "sequences": [...]}``, each in output order.

    Raises:
        DataError: ``rename`` names a column that the options do not produce.
    """
    counts = ["user_events", "item_events"]
    if domain:
        counts += ["user_domain_events", "item_domain_events"]
    rates: list[str] = []
    seq_labels = list(labels) if sequence_labels is None else list(sequence_labels)
    seqs = [f"hist_{label}" for label in seq_labels]
    for label in labels:
        if label_counts:
            counts += [f"user_{label}_count", f"item_{label}_count"]
        rates += [f"user_{label}_rate", f"item_{label}_rate"]
    if include_all:
        seqs.append("hist_all")
    names = {"counts": counts, "rates": rates, "sequences": seqs}
    if rename:
        unknown = sorted(set(rename) - set(counts + rates + seqs))
        if unknown:
            raise DataError(f"history features: rename names columns {unknown} that are not produced")
        names = {group: [rename.get(c, c) for c in cols] for group, cols in names.items()}
        flat = sum(names.values(), [])
        if len(set(flat)) < len(flat):
            raise DataError(f"history features: rename gives several columns one name: {flat}")
    return names


def history_feature_specs(
    labels: list[str], *, seq_len: int, item_vocab: str, include_all: bool = True
) -> tuple[list[FeatureSpec], dict[str, list[str]]]:
    """Feature specs for the columns of :func:`add_history_features`, and each label's related features.

    Counts are dense with ``transform="log_standard"``, rates dense with ``"standard"``, sequences
    share the item vocabulary ``item_vocab`` and carry ``behaviour=label`` (``"all"`` for
    ``hist_all``).

    Returns:
        ``(features, related)`` where ``related[label]`` lists the label's four statistics
        (user count, user rate, item count, item rate), for :attr:`TaskSpec.related_features`.
    """
    feats = [
        FeatureSpec(name="user_events", kind="dense", source="user", transform="log_standard"),
        FeatureSpec(name="item_events", kind="dense", source="item", transform="log_standard"),
    ]
    related: dict[str, list[str]] = {}
    for label in labels:
        uc, ur, ic, ir = (f"user_{label}_count", f"user_{label}_rate", f"item_{label}_count", f"item_{label}_rate")
        feats += [
            FeatureSpec(name=uc, kind="dense", source="user", transform="log_standard"),
            FeatureSpec(name=ur, kind="dense", source="user", transform="standard"),
            FeatureSpec(name=ic, kind="dense", source="item", transform="log_standard"),
            FeatureSpec(name=ir, kind="dense", source="item", transform="standard"),
        ]
        related[label] = [uc, ur, ic, ir]
    for label in labels:
        feats.append(
            FeatureSpec(name=f"hist_{label}", kind="sequence", source="user", vocab=item_vocab, max_len=seq_len, behaviour=label)
        )
    if include_all:
        feats.append(
            FeatureSpec(name="hist_all", kind="sequence", source="user", vocab=item_vocab, max_len=seq_len, behaviour="all")
        )
    return feats, related


class _Order:
    """Rows sorted by (key, timestamp, row) with the start of each key block and each tie block.

    Attributes (all of length ``n``, indexed by sorted position):
        order: the permutation (sorted position -> original row).
        key_start: sorted position of the first row of the row's key block.
        tie_start: sorted position of the first row with the same key and timestamp.
    """

    def __init__(self, key: np.ndarray, ts: np.ndarray) -> None:
        n = len(ts)
        self.order = np.lexsort((ts, key))  # lexsort is stable: ties keep their row order
        k, t = key[self.order], ts[self.order]
        pos = np.arange(n)
        new_key = np.ones(n, dtype=bool)
        new_key[1:] = k[1:] != k[:-1]
        new_tie = new_key.copy()
        new_tie[1:] |= t[1:] != t[:-1]
        self.key_start = np.maximum.accumulate(np.where(new_key, pos, 0))
        self.tie_start = np.maximum.accumulate(np.where(new_tie, pos, 0))

    def exclusive_cumsum(self, values: np.ndarray) -> np.ndarray:
        """Exclusive cumulative sum over the sorted rows: ``[n + 1, ...]`` (last entry = total)."""
        v = values[self.order]
        out = np.zeros((len(v) + 1,) + v.shape[1:], dtype=np.int64)
        np.cumsum(v, axis=0, out=out[1:])
        return out

    def past_count(self) -> np.ndarray:
        """Per original row: number of rows of the same key with a smaller timestamp."""
        res = np.empty(len(self.order), dtype=np.int64)
        res[self.order] = self.tie_start - self.key_start
        return res

    def past(self, values: np.ndarray) -> np.ndarray:
        """Per original row: sum of ``values`` over rows of the same key with a smaller timestamp."""
        ex = self.exclusive_cumsum(values)
        res = np.empty_like(ex[:-1])
        res[self.order] = ex[self.tie_start] - ex[self.key_start]
        return res


def past_sums(key: np.ndarray, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each row ``r``: ``sum(values[j] for j with key[j] == key[r] and ts[j] < ts[r])``.

    Args:
        key: ``[N]`` integer group codes.
        ts: ``[N]`` timestamps (any orderable numeric dtype).
        values: ``[N]`` or ``[N, M]`` integer values.

    Returns:
        ``[N]`` or ``[N, M]`` int64.
    """
    return _Order(np.asarray(key), np.asarray(ts)).past(np.asarray(values, dtype=np.int64))


def _codes(series: pl.Series, what: str) -> np.ndarray:
    if series.null_count():
        row = int(series.is_null().arg_max())
        raise DataError(f"column {series.name!r} ({what}) has a null value at row {row}")
    return series.rank("dense").to_numpy().astype(np.int64)


def _sequence(
    name: str, order: _Order, mask: np.ndarray, items: pl.Series, seq_len: int
) -> pl.Series:
    """List column: items of the last ``seq_len`` past masked events of the row's key, most recent first."""
    n = len(mask)
    m_sorted = mask[order.order]
    ex = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(m_sorted, out=ex[1:])
    end_sorted = ex[order.tie_start]  # masked events strictly before the tie block (global index)
    count_sorted = end_sorted - ex[order.key_start]
    end = np.empty(n, dtype=np.int64)
    count = np.empty(n, dtype=np.int64)
    end[order.order] = end_sorted
    count[order.order] = count_sorted
    lengths = np.minimum(count, seq_len)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    within = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    flat = np.repeat(end, lengths) - 1 - within  # index into the masked events, sorted order
    masked_rows = order.order[np.flatnonzero(m_sorted)]  # original row of each masked event
    values = items.gather(masked_rows[flat]).rechunk().to_arrow()
    return pl.Series(name, pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values))


def add_history_features(
    frame: pl.DataFrame,
    *,
    user: str,
    item: str,
    timestamp: str,
    labels: list[str],
    seq_len: int,
    prior_strength: float = 10.0,
    sequences: bool = True,
    include_all: bool = True,
    prior_rates: Mapping[str, float] | None = None,
    rate_denominator: Literal["observed", "events"] = "observed",
    label_counts: bool = True,
    sequence_labels: Sequence[str] | None = None,
    domain: str | None = None,
    rename: Mapping[str, str] | None = None,
) -> pl.DataFrame:
    """Add leak-free per-label user/item statistics and behaviour sequences (module docstring).

    Args:
        frame: one row per event; ``user``, ``item``, ``timestamp`` (and ``domain``) must have no
            nulls. Labels hold 0/1 (null = unobserved: not counted in that label's rate
            denominator, unless ``rate_denominator="events"``).
        user / item / timestamp: column names. The timestamp must be numeric or temporal.
        labels: label columns; a value > 0.5 counts as positive.
        seq_len: maximum sequence length (``> 0``).
        prior_strength: ``k`` of the smoothed rates.
        sequences: also build the ``hist_*`` list columns.
        include_all: also build ``hist_all`` (all past events, whatever their labels).
        prior_rates: ``{label: p}``, a constant prior rate per label (every label needs one)
            instead of the Laplace-smoothed global past rate. Use a value known in advance, never
            a rate measured on evaluation rows.
        rate_denominator: ``"observed"``: past events whose label is not null; ``"events"``: all
            past events (a null label counts as an event without a positive).
        label_counts: also add the ``user_{l}_count`` / ``item_{l}_count`` columns.
        sequence_labels: labels (a subset of ``labels``) with a ``hist_{l}`` sequence; ``None``
            means all of them.
        domain: a column; adds ``user_domain_events`` / ``item_domain_events``, the past events
            of the row's user / item in the row's domain.
        rename: ``{default name: output name}`` for some of the added columns.

    Returns:
        ``frame`` (same rows, same order) plus the columns named by :func:`history_columns`
        (same options), in that order: counts as Int64, rates as Float64, sequences as lists of
        the item column's dtype.

    Raises:
        DataError: a missing column, a null key or timestamp, a non-numeric label or timestamp,
            an added column that already exists, or inconsistent options.
    """
    if seq_len <= 0:
        raise DataError(f"seq_len must be > 0, got {seq_len}")
    if rate_denominator not in ("observed", "events"):
        raise DataError(f"rate_denominator must be 'observed' or 'events', got {rate_denominator!r}")
    for col in [user, item, timestamp, *labels, *([domain] if domain is not None else [])]:
        if col not in frame.columns:
            raise DataError(f"history features: column {col!r} not in frame (columns: {frame.columns})")
    seq_labels = list(labels) if sequence_labels is None else list(sequence_labels)
    if not set(seq_labels) <= set(labels):
        raise DataError(f"history features: sequence_labels {sorted(set(seq_labels) - set(labels))} are not labels")
    if prior_rates is not None and not set(labels) <= set(prior_rates):
        raise DataError(f"history features: prior_rates has no rate for {sorted(set(labels) - set(prior_rates))}")
    names = history_columns(
        labels, include_all=include_all, label_counts=label_counts, sequence_labels=seq_labels,
        domain=domain is not None, rename=rename,
    )  # fmt: skip
    new_cols = names["counts"] + names["rates"] + (names["sequences"] if sequences else [])
    clash = [c for c in new_cols if c in frame.columns]
    if clash:
        raise DataError(f"history features: columns {clash} already exist in the frame")
    ts_s = frame[timestamp]
    if ts_s.dtype.is_temporal():
        ts_s = ts_s.to_physical()
    if not ts_s.dtype.is_numeric():
        raise DataError(f"timestamp column {timestamp!r} must be numeric or temporal, got {ts_s.dtype}")
    if ts_s.null_count():
        raise DataError(f"timestamp column {timestamp!r} has a null value at row {int(ts_s.is_null().arg_max())}")
    n = frame.height
    ts = ts_s.to_numpy()
    u_code, i_code = _codes(frame[user], "user"), _codes(frame[item], "item")
    u_order = _Order(u_code, ts)
    i_order = _Order(i_code, ts)

    # value matrix: [1 (event), obs_l, pos_l for each label]
    cols = [np.ones(n, dtype=np.int64)]
    for label in labels:
        s = frame[label]
        if not s.dtype.is_numeric() and s.dtype != pl.Boolean:
            raise DataError(f"label column {label!r} must be numeric 0/1, got {s.dtype}")
        s = s.cast(pl.Float64)
        cols.append(s.is_not_null().to_numpy().astype(np.int64))
        cols.append((s.fill_null(0.0) > 0.5).to_numpy().astype(np.int64))
    values = np.stack(cols, axis=1) if n else np.zeros((0, len(cols)), dtype=np.int64)
    u_past = u_order.past(values)
    i_past = i_order.past(values)

    k = float(prior_strength)
    out: dict[str, pl.Series] = {
        "user_events": pl.Series("user_events", u_past[:, 0], dtype=pl.Int64),
        "item_events": pl.Series("item_events", i_past[:, 0], dtype=pl.Int64),
    }
    if domain is not None:
        d_code = _codes(frame[domain], "domain")
        n_dom = int(d_code.max(initial=0)) + 1
        for side, code in (("user", u_code), ("item", i_code)):
            past = _Order(code * n_dom + d_code, ts).past_count()
            out[f"{side}_domain_events"] = pl.Series(f"{side}_domain_events", past, dtype=pl.Int64)
    g_past = _Order(np.zeros(n, dtype=np.int64), ts).past(values) if prior_rates is None else None
    for j, label in enumerate(labels):
        obs, pos = 1 + 2 * j, 2 + 2 * j
        den = 0 if rate_denominator == "events" else obs
        if g_past is None:
            prior: float | np.ndarray = float(prior_rates[label])  # type: ignore[index]
        else:
            prior = (g_past[:, pos] + 1.0) / (g_past[:, obs] + 2.0)
        for side, past in (("user", u_past), ("item", i_past)):
            if label_counts:
                out[f"{side}_{label}_count"] = pl.Series(f"{side}_{label}_count", past[:, pos], dtype=pl.Int64)
            rate = (past[:, pos] + k * prior) / (past[:, den] + k)
            out[f"{side}_{label}_rate"] = pl.Series(f"{side}_{label}_rate", rate, dtype=pl.Float64)
    if sequences:
        items = frame[item]
        for label in seq_labels:
            pos = 2 + 2 * labels.index(label)
            out[f"hist_{label}"] = _sequence(f"hist_{label}", u_order, values[:, pos].astype(bool), items, seq_len)
        if include_all:
            out["hist_all"] = _sequence("hist_all", u_order, np.ones(n, dtype=bool), items, seq_len)
    added = [s.alias((rename or {}).get(name, name)) for name, s in out.items()]
    return frame.with_columns(sorted(added, key=lambda s: new_cols.index(s.name)))
