"""Property-based tests (Hypothesis): metric invariances, encode/decode round trips with OOV, and the
leak-free history builder. Kept small (``max_examples``) so the whole file runs in seconds."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdmt.data.history import add_history_features
from mdmt.data.preprocess import batch_from_arrow, batch_to_arrow, encode, fit_feature_map
from mdmt.featuremap import FIRST_ID, OOV
from mdmt.metrics import auc, gauc
from mdmt.schema import DatasetSpec, DomainSpec, FeatureSpec, TaskSpec

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# AUC / GAUC invariances
# ---------------------------------------------------------------------------------------------
@st.composite
def scored_rows(draw, min_size: int = 2, max_size: int = 60):
    n = draw(st.integers(min_size, max_size))
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    # few distinct values, so ties are common
    s = np.array(draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n)), dtype=np.float64) / 2.0
    g = np.array(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    perm = np.array(draw(st.permutations(range(n))))
    return y, s, g, perm


def _same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) < 1e-12


MONOTONE = [lambda s: 3.0 * s - 7.0, lambda s: np.exp(s), lambda s: 1.0 / (1.0 + np.exp(-s)), lambda s: s**3 + s]


@SETTINGS
@given(scored_rows(), st.sampled_from(range(len(MONOTONE))))
def test_auc_and_gauc_ignore_strictly_increasing_transforms(rows, k):
    y, s, g, _ = rows
    t = MONOTONE[k](s)
    assert _same(auc(y, s), auc(y, t))
    for w in (True, False):
        a, cov_a = gauc(y, s, g, weighted=w)
        b, cov_b = gauc(y, t, g, weighted=w)
        assert _same(a, b) and cov_a == cov_b


@SETTINGS
@given(scored_rows())
def test_auc_and_gauc_ignore_row_order(rows):
    y, s, g, perm = rows
    assert _same(auc(y, s), auc(y[perm], s[perm]))
    assert _same(gauc(y, s, g)[0], gauc(y[perm], s[perm], g[perm])[0])


@SETTINGS
@given(scored_rows(), st.permutations(range(5)), st.integers(0, 1000))
def test_gauc_ignores_group_relabelling(rows, relabel, shift):
    y, s, g, _ = rows
    new = np.array(relabel)[g] * 7 + shift  # a one-to-one map of the group ids
    for w in (True, False):
        assert _same(gauc(y, s, g, weighted=w)[0], gauc(y, s, new, weighted=w)[0])


@SETTINGS
@given(scored_rows())
def test_auc_is_the_share_of_correctly_ordered_pairs(rows):
    y, s, _, _ = rows
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        assert np.isnan(auc(y, s))
        return
    d = pos[:, None] - neg[None, :]
    assert auc(y, s) == pytest.approx(((d > 0) + 0.5 * (d == 0)).mean(), abs=1e-12)
    assert auc(y, -s) == pytest.approx(1.0 - auc(y, s), abs=1e-12)  # reversing the order mirrors it


# ---------------------------------------------------------------------------------------------
# encode / decode round trips with OOV
# ---------------------------------------------------------------------------------------------
SPEC = DatasetSpec(
    name="prop",
    features=[
        FeatureSpec(name="user_id", source="user"),
        FeatureSpec(name="item_id", source="item"),
        FeatureSpec(name="price", kind="dense"),
        FeatureSpec(name="hist", kind="sequence", vocab="item_id", max_len=3),
    ],
    domain=DomainSpec(column="dom", names=["a", "b"]),
    tasks=[TaskSpec(name="click", label="click"), TaskSpec(name="buy", label="buy", domains=["b"])],
    group="user_id",
)



@st.composite
def frames(draw, min_size: int = 1, max_size: int = 25):
    n = draw(st.integers(min_size, max_size))
    as_text = draw(st.booleans())
    col = st.lists(st.integers(0, 30), min_size=n, max_size=n)
    users = draw(col)
    items = draw(col)
    if draw(st.booleans()):  # a few huge ids: read as text, never truncated
        users = [u if u % 5 else u + 2**63 for u in users]
    hist = draw(st.lists(st.lists(st.integers(0, 30), max_size=5), min_size=n, max_size=n))
    frame = pl.DataFrame(
        {
            "user_id": [str(u) for u in users] if as_text else pl.Series(users, dtype=pl.UInt64),
            "item_id": items,
            "price": draw(st.lists(st.one_of(st.none(), st.floats(-1e3, 1e3)), min_size=n, max_size=n)),
            "hist": pl.Series(hist, dtype=pl.List(pl.Int64)),
            "dom": draw(st.lists(st.sampled_from(["a", "b"]), min_size=n, max_size=n)),
            "click": draw(st.lists(st.one_of(st.none(), st.integers(0, 1)), min_size=n, max_size=n)),
            "buy": draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)),
        },
        schema_overrides={"price": pl.Float64, "click": pl.Int64},
    )
    return frame


def _key(v) -> str:
    return str(v)


@SETTINGS
@given(frames(), frames())
def test_encode_maps_seen_ids_to_their_index_and_unseen_ids_to_oov(train, test):
    fm = fit_feature_map(train, SPEC)
    batch = encode(test, fm)
    item_seen = {_key(v) for v in train["item_id"].to_list()} | {
        _key(v) for h in train["hist"].to_list() for v in h
    }
    for j, name in enumerate(fm.sparse):
        vocab = fm.vocabs[SPEC.feature(name).vocab_name]
        seen = item_seen if name == "item_id" else {_key(v) for v in train[name].to_list()}
        for raw, idx in zip(test[name].to_list(), batch.sparse[:, j].tolist()):
            if _key(raw) in seen:
                assert idx >= FIRST_ID and vocab[idx - FIRST_ID] == _key(raw)
            else:
                assert idx == OOV
    vocab = fm.vocabs["item_id"]
    for raw, ids_row, n in zip(test["hist"].to_list(), batch.sequences["hist"].tolist(), batch.seq_lengths["hist"].tolist()):
        assert n == min(len(raw), 3) and all(i == 0 for i in ids_row[n:])  # first max_len, 0-padded
        for r, i in zip(raw[:n], ids_row[:n]):
            assert (vocab[i - FIRST_ID] == _key(r)) if _key(r) in item_seen else i == OOV
    # labels: null and unobserved (buy outside domain b) are masked
    dom_b = np.array(test["dom"].to_list()) == "b"
    assert batch.label_mask[:, 1].numpy().tolist() == dom_b.tolist()
    assert batch.label_mask[:, 0].numpy().tolist() == [v is not None for v in test["click"].to_list()]


@SETTINGS
@given(frames(), frames(min_size=0))
def test_arrow_round_trip_is_exact(train, test):
    fm = fit_feature_map(train, SPEC)
    batch = encode(test, fm)
    oracle = np.where(np.arange(len(test) * 2).reshape(-1, 2) % 3 == 0, np.nan, 0.25)
    back = batch_from_arrow(batch_to_arrow(batch, fm, oracle), fm)
    for f in ("sparse", "dense", "domain", "labels", "label_mask", "group"):
        assert torch.equal(getattr(batch, f), getattr(back, f)), f
    assert torch.equal(batch.sequences["hist"], back.sequences["hist"])
    assert torch.equal(batch.seq_lengths["hist"], back.seq_lengths["hist"])


# ---------------------------------------------------------------------------------------------
# the history builder never looks at the row's own time or later
# ---------------------------------------------------------------------------------------------
@st.composite
def event_logs(draw):
    n = draw(st.integers(1, 40))
    return pl.DataFrame(
        {
            "u": draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)),
            "i": draw(st.lists(st.integers(100, 110), min_size=n, max_size=n)),
            "t": draw(st.lists(st.integers(0, 8), min_size=n, max_size=n)),  # many equal timestamps
            "click": draw(st.lists(st.one_of(st.none(), st.integers(0, 1)), min_size=n, max_size=n)),
        },
        schema_overrides={"click": pl.Int64},
    )


@SETTINGS
@given(event_logs(), st.integers(1, 4))
def test_history_uses_only_events_strictly_before_the_row(log, seq_len):
    out = add_history_features(log, user="u", item="i", timestamp="t", labels=["click"], seq_len=seq_len)
    rows = log.rows(named=True)
    for r, row in enumerate(rows):
        past = [j for j, e in enumerate(rows) if e["u"] == row["u"] and e["t"] < row["t"]]
        past_item = [j for j, e in enumerate(rows) if e["i"] == row["i"] and e["t"] < row["t"]]
        assert out["user_events"][r] == len(past)
        assert out["item_events"][r] == len(past_item)
        assert out["user_click_count"][r] == sum(rows[j]["click"] == 1 for j in past)
        assert out["item_click_count"][r] == sum(rows[j]["click"] == 1 for j in past_item)
        # sequences: the last seq_len past events (by time, then row), most recent first
        ordered = sorted(past, key=lambda j: (rows[j]["t"], j))
        assert out["hist_all"][r].to_list() == [rows[j]["i"] for j in ordered[::-1][:seq_len]]
        clicked = [j for j in ordered if rows[j]["click"] == 1]
        assert out["hist_click"][r].to_list() == [rows[j]["i"] for j in clicked[::-1][:seq_len]]


@SETTINGS
@given(event_logs(), st.data())
def test_history_of_a_row_ignores_changes_at_or_after_its_time(log, data):
    out = add_history_features(log, user="u", item="i", timestamp="t", labels=["click"], seq_len=3)
    cut = data.draw(st.integers(0, 8))
    # rewrite every label at time >= cut (the rows at the cut included: their own labels) and every
    # item after it: the features of the rows up to the cut must not change
    changed = log.with_columns(
        click=pl.when(pl.col("t") >= cut).then(1 - pl.col("click").fill_null(0)).otherwise(pl.col("click")),
        i=pl.when(pl.col("t") > cut).then(pl.col("i") + 50).otherwise(pl.col("i")),
    )
    out2 = add_history_features(changed, user="u", item="i", timestamp="t", labels=["click"], seq_len=3)
    keep = (log["t"] <= cut).to_list()
    cols = [c for c in out.columns if c not in log.columns]
    assert out.filter(pl.Series(keep)).select(cols).equals(out2.filter(pl.Series(keep)).select(cols))
