"""Leak-free history features: hand-computed values with ties, a brute-force oracle, errors, speed."""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest

from mdmt.data.base import DataError
from mdmt.data.history import add_history_features, history_columns, history_feature_specs, past_sums

K = 10.0


def _hand_frame() -> pl.DataFrame:
    # rows deliberately not in time order; ties at t=10 and t=20 for user 1
    return pl.DataFrame(
        {
            "u": [1, 1, 1, 2, 1, 1, 2],
            "i": ["a", "b", "c", "a", "d", "e", "b"],
            "t": [20, 10, 10, 10, 30, 20, 30],
            "click": [1, 1, 0, 1, 0, 1, 1],
            "like": [None, 1, 0, 0, 1, None, 0],
        },
        schema_overrides={"like": pl.Int64},
    )


def test_hand_built_frame_with_ties() -> None:
    f = _hand_frame()
    out = add_history_features(f, user="u", item="i", timestamp="t", labels=["click", "like"], seq_len=3)
    assert out.height == f.height
    assert out.select(f.columns).equals(f)  # same rows, same order
    # user 1: rows 1, 2 at t=10 see nothing; rows 0, 5 at t=20 see rows 1, 2 only (not each other)
    assert out["user_events"].to_list() == [2, 0, 0, 0, 4, 2, 1]
    assert out["user_click_count"].to_list() == [1, 0, 0, 0, 3, 1, 1]
    assert out["user_like_count"].to_list() == [1, 0, 0, 0, 1, 1, 0]
    # items: a (row 3 t=10 -> row 0 t=20), b (row 1 t=10 -> row 6 t=30)
    assert out["item_events"].to_list() == [1, 0, 0, 0, 0, 0, 1]
    assert out["item_click_count"].to_list() == [1, 0, 0, 0, 0, 0, 1]
    # sequences: most recent first; a tie is ordered by row position (later row = more recent)
    assert out["hist_click"].to_list() == [["b"], [], [], [], ["e", "a", "b"], ["b"], ["a"]]
    assert out["hist_all"].to_list() == [["c", "b"], [], [], [], ["e", "a", "c"], ["c", "b"], ["a"]]
    assert out["hist_like"].to_list() == [["b"], [], [], [], ["b"], ["b"], []]
    # rates, row 4 (user 1, t=30): global past = rows 0,1,2,3,5 (t<30)
    g_click_prior = (4 + 1) / (5 + 2)
    assert out["user_click_rate"][4] == pytest.approx((3 + K * g_click_prior) / (4 + K))
    # like: null labels (rows 0 and 5) are unobserved: user 1 observed like on rows 1, 2 only
    g_like_prior = (1 + 1) / (3 + 2)  # observed likes before t=30: rows 1, 2, 3 -> one positive
    assert out["user_like_rate"][4] == pytest.approx((1 + K * g_like_prior) / (2 + K))
    # first events: no global past -> prior 1/2
    assert out["user_click_rate"][1] == pytest.approx(0.5)
    assert out["item_click_rate"][3] == pytest.approx(0.5)
    # row 0 (item a at t=20): global past rows 1,2,3 -> click prior (2+1)/(3+2); item a past: row 3 (click 1)
    assert out["item_click_rate"][0] == pytest.approx((1 + K * 3 / 5) / (1 + K))


def test_seq_len_truncates_most_recent_first() -> None:
    f = _hand_frame()
    out = add_history_features(f, user="u", item="i", timestamp="t", labels=["click"], seq_len=2)
    assert out["hist_click"][4].to_list() == ["e", "a"]
    assert out["hist_all"][4].to_list() == ["e", "a"]


def _brute_force(f: pl.DataFrame, labels: list[str], seq_len: int, k: float) -> dict[str, list]:
    rows = f.with_row_index("row").to_dicts()
    res: dict[str, list] = {c: [] for c in sum(history_columns(labels).values(), [])}
    for r in rows:
        past = [e for e in rows if e["t"] < r["t"]]
        up = [e for e in past if e["u"] == r["u"]]
        ip = [e for e in past if e["i"] == r["i"]]
        res["user_events"].append(len(up))
        res["item_events"].append(len(ip))
        recent = sorted(up, key=lambda e: (e["t"], e["row"]), reverse=True)
        for lab in labels:
            g_obs = [e for e in past if e[lab] is not None]
            prior = (sum(e[lab] for e in g_obs) + 1) / (len(g_obs) + 2)
            for side, evs in (("user", up), ("item", ip)):
                obs = [e for e in evs if e[lab] is not None]
                pos = sum(e[lab] for e in obs)
                res[f"{side}_{lab}_count"].append(pos)
                res[f"{side}_{lab}_rate"].append((pos + k * prior) / (len(obs) + k))
            res[f"hist_{lab}"].append([e["i"] for e in recent if e[lab] == 1][:seq_len])
        res["hist_all"].append([e["i"] for e in recent][:seq_len])
    return res


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_random_frame_with_many_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 250
    like = rng.integers(0, 2, n).astype(float)
    like[rng.random(n) < 0.1] = np.nan
    f = pl.DataFrame(
        {
            "u": rng.integers(0, 8, n),
            "i": rng.integers(0, 15, n),
            "t": rng.integers(0, 30, n),  # many ties
            "click": rng.integers(0, 2, n),
            "like": like,
        }
    ).with_columns(pl.col("like").fill_nan(None).cast(pl.Int64))
    out = add_history_features(f, user="u", item="i", timestamp="t", labels=["click", "like"], seq_len=4, prior_strength=3.0)
    expected = _brute_force(f, ["click", "like"], 4, 3.0)
    for col, vals in expected.items():
        got = out[col].to_list()
        if col.endswith("_rate"):
            np.testing.assert_allclose(got, vals, rtol=1e-12, err_msg=col)
        else:
            assert got == vals, col


def test_statistics_do_not_depend_on_row_order() -> None:
    rng = np.random.default_rng(5)
    n = 500
    f = pl.DataFrame({"u": rng.integers(0, 20, n), "i": rng.integers(0, 30, n), "t": rng.integers(0, 50, n), "click": rng.integers(0, 2, n)})
    f = f.with_row_index("rid")
    # seq_len >= n: no truncation, so which tied events make the cut cannot depend on row order
    a = add_history_features(f, user="u", item="i", timestamp="t", labels=["click"], seq_len=n).sort("rid")
    perm = rng.permutation(n)
    b = add_history_features(f[perm], user="u", item="i", timestamp="t", labels=["click"], seq_len=n).sort("rid")
    cols = history_columns(["click"])
    assert a.select(cols["counts"] + cols["rates"]).equals(b.select(cols["counts"] + cols["rates"]))
    # sequences hold the same multiset whatever the row order (only the order of ties may differ)
    for c in cols["sequences"]:
        assert [sorted(x) for x in a[c].to_list()] == [sorted(x) for x in b[c].to_list()]


def _random_frame(seed: int, n: int = 250) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    like = rng.integers(0, 2, n).astype(float)
    like[rng.random(n) < 0.15] = np.nan
    return pl.DataFrame(
        {
            "u": rng.integers(0, 8, n),
            "i": rng.integers(0, 15, n),
            "t": rng.integers(0, 30, n),  # many ties
            "d": rng.choice(["A", "B", "C"], n),
            "click": rng.integers(0, 2, n),
            "like": like,
        }
    ).with_columns(pl.col("like").fill_nan(None).cast(pl.Int64))


@pytest.mark.parametrize("seed", [0, 1])
def test_options_match_brute_force(seed: int) -> None:
    """Constant priors, all-events denominators, per-domain counts, chosen sequences, renaming."""
    f = _random_frame(seed)
    prior = {"click": 0.3, "like": 0.05}
    rename = {"user_events": "n_user", "item_domain_events": "n_item_dom", "user_like_rate": "ul", "hist_like": "seq_like"}
    out = add_history_features(
        f, user="u", item="i", timestamp="t", labels=["click", "like"], seq_len=4, prior_strength=7.0,
        prior_rates=prior, rate_denominator="events", label_counts=False, sequence_labels=["like"],
        include_all=False, domain="d", rename=rename,
    )  # fmt: skip
    assert out.columns == [
        *f.columns, "n_user", "item_events", "user_domain_events", "n_item_dom",
        "user_click_rate", "item_click_rate", "ul", "item_like_rate", "seq_like",
    ]  # fmt: skip
    rows = f.with_row_index("row").to_dicts()
    for r in rows:
        past = [e for e in rows if e["t"] < r["t"]]
        up = [e for e in past if e["u"] == r["u"]]
        ip = [e for e in past if e["i"] == r["i"]]
        j = r["row"]
        assert out["n_user"][j] == len(up) and out["item_events"][j] == len(ip)
        assert out["user_domain_events"][j] == sum(e["d"] == r["d"] for e in up)
        assert out["n_item_dom"][j] == sum(e["d"] == r["d"] for e in ip)
        for lab, ucol, icol in (("click", "user_click_rate", "item_click_rate"), ("like", "ul", "item_like_rate")):
            # every past event is in the denominator, a null label is an event without a positive
            for col, evs in ((ucol, up), (icol, ip)):
                want = (sum(e[lab] or 0 for e in evs) + 7.0 * prior[lab]) / (len(evs) + 7.0)
                assert out[col][j] == pytest.approx(want, rel=1e-12), (col, j)
        recent = sorted(up, key=lambda e: (e["t"], e["row"]), reverse=True)
        assert out["seq_like"][j].to_list() == [e["i"] for e in recent if e["like"] == 1][:4]


def test_default_options_are_unchanged_by_the_new_keywords() -> None:
    """Passing the defaults explicitly gives the default output, and ``domain`` only adds columns."""
    f = _random_frame(3)
    kw = dict(user="u", item="i", timestamp="t", labels=["click", "like"], seq_len=5)
    base = add_history_features(f, **kw)
    same = add_history_features(
        f, **kw, prior_rates=None, rate_denominator="observed", label_counts=True, sequence_labels=None, rename={}
    )
    assert base.equals(same)
    with_dom = add_history_features(f, **kw, domain="d")
    assert with_dom.drop("user_domain_events", "item_domain_events").equals(base)
    assert with_dom.columns.index("user_domain_events") == f.width + 2  # right after the event counts


def test_history_columns_follow_the_options() -> None:
    names = history_columns(
        ["click", "like"], include_all=False, label_counts=False, sequence_labels=["click"], domain=True,
        rename={"hist_click": "seq_click", "item_like_rate": "item_like_ctr"},
    )  # fmt: skip
    assert names == {
        "counts": ["user_events", "item_events", "user_domain_events", "item_domain_events"],
        "rates": ["user_click_rate", "item_click_rate", "user_like_rate", "item_like_ctr"],
        "sequences": ["seq_click"],
    }


def test_temporal_timestamp_equals_its_integer_form() -> None:
    f = _random_frame(4)
    kw = dict(user="u", item="i", labels=["click"], seq_len=3)
    as_int = add_history_features(f, timestamp="t", **kw)
    as_dt = add_history_features(f.with_columns(pl.from_epoch("t", time_unit="s")), timestamp="t", **kw)
    cols = sum(history_columns(["click"]).values(), [])
    assert as_dt.select(cols).equals(as_int.select(cols))


def test_option_errors_are_clear() -> None:
    f = _random_frame(5, n=20)
    kw = dict(user="u", item="i", timestamp="t", labels=["click", "like"], seq_len=3)
    with pytest.raises(DataError, match="prior_rates has no rate for \\['like'\\]"):
        add_history_features(f, **kw, prior_rates={"click": 0.1})
    with pytest.raises(DataError, match="sequence_labels \\['d'\\] are not labels"):
        add_history_features(f, **kw, sequence_labels=["d"])
    with pytest.raises(DataError, match="rate_denominator"):
        add_history_features(f, **kw, rate_denominator="rows")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="rename names columns \\['user_click'\\]"):
        add_history_features(f, **kw, rename={"user_click": "x"})
    with pytest.raises(DataError, match="several columns one name"):
        add_history_features(f, **kw, rename={"user_events": "n", "item_events": "n"})
    with pytest.raises(DataError, match="'nodomain' not in frame"):
        add_history_features(f, **kw, domain="nodomain")
    with pytest.raises(DataError, match="'d'.*null.*row 4"):
        add_history_features(
            f.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(None).otherwise(pl.col("d")).alias("d")),
            **kw, domain="d",
        )  # fmt: skip
    with pytest.raises(DataError, match="already exist"):
        add_history_features(f.with_columns(pl.lit(0).alias("n")), **kw, rename={"user_events": "n"})


def test_past_sums_helper() -> None:
    key = np.array([0, 0, 1, 0, 1])
    ts = np.array([5, 5, 1, 7, 2])
    vals = np.array([1, 2, 4, 8, 16])
    assert past_sums(key, ts, vals).tolist() == [0, 0, 0, 3, 4]


def test_specs_and_related_features() -> None:
    feats, related = history_feature_specs(["click", "like"], seq_len=7, item_vocab="movie_id")
    names = [f.name for f in feats]
    assert names == sum(
        [["user_events", "item_events"]]
        + [[f"user_{l}_count", f"user_{l}_rate", f"item_{l}_count", f"item_{l}_rate"] for l in ("click", "like")]
        + [["hist_click", "hist_like", "hist_all"]],
        [],
    )
    by = {f.name: f for f in feats}
    assert by["user_click_count"].transform == "log_standard" and by["user_click_rate"].transform == "standard"
    assert by["hist_like"].kind == "sequence" and by["hist_like"].vocab == "movie_id"
    assert by["hist_like"].max_len == 7 and by["hist_like"].behaviour == "like"
    assert related["like"] == ["user_like_count", "user_like_rate", "item_like_count", "item_like_rate"]
    assert set(names) == set(sum(history_columns(["click", "like"]).values(), []))


def test_errors_are_clear() -> None:
    f = _hand_frame()
    with pytest.raises(DataError, match="'u'.*null.*row 2"):
        add_history_features(
            f.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(None).otherwise(pl.col("u")).alias("u")),
            user="u", item="i", timestamp="t", labels=["click"], seq_len=3,
        )  # fmt: skip
    with pytest.raises(DataError, match="'nope' not in frame"):
        add_history_features(f, user="u", item="i", timestamp="t", labels=["nope"], seq_len=3)
    with pytest.raises(DataError, match="already exist"):
        add_history_features(f.with_columns(pl.lit(1).alias("hist_all")), user="u", item="i", timestamp="t", labels=["click"], seq_len=3)
    with pytest.raises(DataError, match="must be numeric"):
        add_history_features(f.with_columns(pl.col("t").cast(pl.String)), user="u", item="i", timestamp="t", labels=["click"], seq_len=3)
    with pytest.raises(DataError, match="seq_len"):
        add_history_features(f, user="u", item="i", timestamp="t", labels=["click"], seq_len=0)


def test_empty_frame() -> None:
    f = _hand_frame().head(0)
    out = add_history_features(f, user="u", item="i", timestamp="t", labels=["click"], seq_len=3)
    assert out.height == 0 and "hist_click" in out.columns


def test_one_million_rows_is_fast() -> None:
    rng = np.random.default_rng(0)
    n = 1_000_000
    f = pl.DataFrame(
        {
            "u": rng.integers(0, 6000, n),
            "i": rng.integers(0, 3700, n),
            "t": rng.integers(0, 200_000, n),
            "click": rng.integers(0, 2, n),
            "like": rng.integers(0, 2, n),
        }
    )
    start = time.perf_counter()
    out = add_history_features(f, user="u", item="i", timestamp="t", labels=["click", "like"], seq_len=10)
    elapsed = time.perf_counter() - start
    assert elapsed < 30.0, f"1M rows took {elapsed:.1f}s"
    assert out["hist_all"].list.len().max() == 10
    # totals: every event is counted once as past of each later-timestamp event of its user
    assert int(out["user_events"].sum()) == int(
        f.group_by("u").agg(((pl.col("t").rank("min") - 1)).sum().alias("s"))["s"].sum()
    )
