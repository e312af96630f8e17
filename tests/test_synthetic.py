"""Synthetic MDMT generator: determinism, published statistics, leak-free history, oracle."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from mdmt.data.base import DataError, RawData
from mdmt.data.synthetic import (
    ORACLE_PREFIX,
    PRESETS,
    SyntheticConfig,
    _add_history,
    generate,
    oracle_auc,
)
from mdmt.schema import ConfigError


@pytest.fixture(scope="module")
def small() -> RawData:
    return generate(SyntheticConfig(preset="douyin", rows=3_000, seed=3))


@pytest.fixture(scope="module")
def medium_douyin() -> RawData:
    return generate(SyntheticConfig(preset="douyin", rows=100_000, seed=1))


@pytest.fixture(scope="module")
def medium_kuaishou() -> RawData:
    return generate(SyntheticConfig(preset="kuaishou", rows=100_000, seed=2))


def _rates(raw: RawData) -> dict[tuple[str, str], float]:
    g = raw.frame.group_by("domain").agg([pl.col(t).cast(pl.Float64).mean() for t in raw.spec.task_names])
    return {(r["domain"], t): r[t] for r in g.iter_rows(named=True) for t in raw.spec.task_names}


def _brute_overlap(frame: pl.DataFrame, col: str, x: str, y: str) -> float:
    sx = set(frame.filter(pl.col("domain") == x)[col].to_list())
    sy = set(frame.filter(pl.col("domain") == y)[col].to_list())
    return len(sx & sy) / len(sx)


# ---- determinism ------------------------------------------------------------------------------
def test_same_seed_gives_identical_frame_and_other_seed_differs():
    a = generate(SyntheticConfig(rows=2_000, seed=7))
    b = generate(SyntheticConfig(rows=2_000, seed=7))
    c = generate(SyntheticConfig(rows=2_000, seed=8))
    assert a.frame.equals(b.frame)
    assert a.meta == b.meta
    assert not a.frame.equals(c.frame)
    assert not np.array_equal(a.frame["__oracle_like"].to_numpy(), c.frame["__oracle_like"].to_numpy())


@pytest.mark.parametrize("preset", ["douyin", "kuaishou"])
def test_generation_is_bit_identical_across_runs(preset):
    cfg = SyntheticConfig(preset=preset, rows=3_000, num_items=400, seed=11)
    a, b = generate(cfg), generate(cfg)
    assert a.frame.columns == b.frame.columns
    for col in a.frame.columns:  # every column, the oracle and the pre-history rates included, byte for byte
        sa, sb = a.frame[col], b.frame[col]
        if sa.dtype in (pl.Float64, pl.Float32, pl.Int64, pl.Int8, pl.Int32):
            assert sa.to_numpy().tobytes() == sb.to_numpy().tobytes(), col
        else:
            assert sa.equals(sb), col
    assert a.meta == b.meta


# ---- published statistics ---------------------------------------------------------------------
def test_douyin_1m_rows_positive_rates_within_10pct_relative_of_pmta_table3():
    """At 1M rows every (domain, task) positive rate is within +-10 % (relative) of PMTA Table 3,
    and so is the mean oracle probability (the labels are draws from the oracle)."""
    raw = generate(SyntheticConfig(preset="douyin", rows=1_000_000, seed=0))
    assert raw.frame.height == 1_000_000
    rates = _rates(raw)
    expected = {
        "A": dict(like=2.30, follow=0.09, comment=0.18, dislike=0.04, headslideleft=1.35, finish=24.62),
        "B": dict(like=2.91, follow=0.11, comment=0.15, dislike=0.06, headslideleft=1.44, finish=24.17),
    }
    oracle_mean = raw.frame.group_by("domain").agg(
        [pl.col(f"{ORACLE_PREFIX}{t}").mean().alias(t) for t in raw.spec.task_names]
    )
    om = {(r["domain"], t): r[t] for r in oracle_mean.iter_rows(named=True) for t in raw.spec.task_names}
    for d, per in expected.items():
        for t, pct in per.items():
            target = pct / 100
            assert raw.meta["targets"][d][t] == pytest.approx(target)
            assert abs(rates[(d, t)] / target - 1) <= 0.10, (d, t, rates[(d, t)], target)
            assert abs(om[(d, t)] / target - 1) <= 0.10, (d, t, om[(d, t)], target)


def test_kuaishou_rates_and_instance_shares_follow_pepnet_table1(medium_kuaishou):
    raw = medium_kuaishou
    rates = _rates(raw)
    expected = {
        "A": (3.68, 0.48, 0.21, 0.20, 14.66, 45.57),
        "B": (2.91, 0.33, 0.21, 0.06, 58.38, 44.58),
        "C": (2.82, 0.35, 0.28, 0.08, 57.33, 48.48),
    }
    assert raw.spec.task_names == ["like", "follow", "forward", "hate", "click", "effview"]
    for d, vals in expected.items():
        for t, pct in zip(raw.spec.task_names, vals, strict=True):
            assert abs(rates[(d, t)] / (pct / 100) - 1) <= 0.10, (d, t)
    share = raw.frame["domain"].value_counts(normalize=True)
    share = dict(zip(share["domain"], share["proportion"], strict=True))
    total = 48_037 + 68_348 + 78_197
    for d, n in zip("ABC", (48_037, 68_348, 78_197), strict=True):
        assert share[d] == pytest.approx(n / total, abs=1e-3)


# Overlap tolerance: every member user / item of a domain appears there by construction, so the
# realised shares differ from the targets only by rounding the Venn-region sizes to integers
# (under one entity per region, i.e. < 3 / |X| for a domain X of |X| entities: about 1 point for
# the smallest domain at these sizes). +-2 points leaves room for that and nothing else.
OVERLAP_TOL = 0.02


@pytest.mark.parametrize("fixture", ["medium_douyin", "medium_kuaishou"])
def test_overlaps_match_published_tables_within_2_points(fixture, request):
    raw: RawData = request.getfixturevalue(fixture)
    preset = PRESETS[raw.meta["preset"]]
    for col, target in (("user_id", preset.user_overlap), ("item_id", preset.item_overlap)):
        for x, row in target.items():
            for y, share in row.items():
                got = _brute_overlap(raw.frame, col, x, y)
                assert abs(got - share) <= OVERLAP_TOL, (col, x, y, got, share)


def test_douyin_overlap_targets_are_pmta_numbers():
    raw_meta = generate(SyntheticConfig(rows=1_000)).meta
    assert raw_meta["user_overlap"] == {"A": {"B": 0.678}, "B": {"A": 0.872}}
    assert raw_meta["item_overlap"] == {"A": {"B": 0.232}, "B": {"A": 0.301}}


# ---- schema -----------------------------------------------------------------------------------
def test_spec_describes_frame(small):
    spec, frame = small.spec, small.frame
    for f in spec.features:
        assert f.raw_column in frame.columns, f.name
    for t in spec.tasks:
        assert frame[t.label].dtype == pl.Int8
        assert set(frame[t.label].unique().to_list()) <= {0, 1}
        assert small.oracle[t.name] == f"{ORACLE_PREFIX}{t.name}"
        assert frame[small.oracle[t.name]].dtype == pl.Float64
        assert t.related_features == [f"user_{t.name}_pre_rate", f"item_{t.name}_pre_rate",
                                      f"user_{t.name}_rate_prior", f"item_{t.name}_ctr_prior", f"seq_{t.name}"]
    feature_names = {f.name for f in spec.features}
    assert not any(n.startswith(ORACLE_PREFIX) for n in feature_names)
    assert "domain" not in feature_names and "domain" not in spec.domain_features
    assert spec.split.method == "temporal"
    assert spec.split.ratios == pytest.approx((10 / 14, 2 / 14, 2 / 14))
    assert spec.priors == ["user_id", "item_id", "author_id", "user_pre_exposures", "item_pre_exposures",
                           *[f"user_{t}_pre_rate" for t in spec.task_names],
                           *[f"item_{t}_pre_rate" for t in spec.task_names]]
    assert spec.domain_features == ["hour", "user_domain_count_prior", "item_domain_count_prior",
                                    "user_pre_domain_exposures"]
    assert spec.group == "user_id" and spec.timestamp == "timestamp"
    seqs = spec.sequence_features()
    assert [f.behaviour for f in seqs] == spec.task_names  # one behaviour sequence per action type
    assert all(f.vocab == "item_id" and f.max_len == 20 for f in seqs)
    assert frame["seq_like"].dtype == pl.List(pl.Int64)
    assert frame["timestamp"].is_sorted()
    assert frame["domain"].unique().sort().to_list() == ["A", "B"]
    k = generate(SyntheticConfig(preset="kuaishou", rows=1_000)).spec
    assert k.split.ratios == pytest.approx((10 / 12, 1 / 12, 1 / 12))
    assert k.domain_names == ["A", "B", "C"]


def test_bad_config_raises_clear_errors():
    with pytest.raises(ConfigError, match="member users"):
        generate(SyntheticConfig(rows=1_000, num_users=5_000))
    with pytest.raises(ConfigError, match="unknown task 'click'"):
        generate(SyntheticConfig(rows=1_000, sequences=["click"]))
    with pytest.raises(Exception, match="rowz"):
        SyntheticConfig.model_validate({"rowz": 10})


# ---- history features: strictly before --------------------------------------------------------
def _check_history(frame: pl.DataFrame, tasks: list[str], seqs: list[str], prior: dict[str, float],
                   seq_len: int, sample: int, seed: int) -> int:
    """Brute-force the history features of ``sample`` rows; returns how many rows had ties."""
    f = frame.with_row_index("__row")
    rows = np.random.default_rng(seed).choice(f.height, size=sample, replace=False)
    ties = 0
    for i in rows:
        r = f.row(int(i), named=True)
        same_user = f.filter(pl.col("user_id") == r["user_id"])
        past_u = same_user.filter(pl.col("timestamp") < r["timestamp"])
        ties += same_user.filter((pl.col("timestamp") == r["timestamp"]) & (pl.col("__row") != i)).height > 0
        past_i = f.filter((pl.col("item_id") == r["item_id"]) & (pl.col("timestamp") < r["timestamp"]))
        assert r["user_count_prior"] == past_u.height
        assert r["item_count_prior"] == past_i.height
        assert r["user_domain_count_prior"] == past_u.filter(pl.col("domain") == r["domain"]).height
        assert r["item_domain_count_prior"] == past_i.filter(pl.col("domain") == r["domain"]).height
        for t in tasks:
            u = (past_u[t].sum() + 20.0 * prior[t]) / (past_u.height + 20.0)
            v = (past_i[t].sum() + 20.0 * prior[t]) / (past_i.height + 20.0)
            assert r[f"user_{t}_rate_prior"] == pytest.approx(u, rel=1e-9, abs=1e-12)
            assert r[f"item_{t}_ctr_prior"] == pytest.approx(v, rel=1e-9, abs=1e-12)
        for b in seqs:
            want = (
                past_u.filter(pl.col(b) == 1)
                .sort(["timestamp", "__row"], descending=True)["item_id"]
                .head(seq_len)
                .to_list()
            )
            assert r[f"seq_{b}"] == want, (i, b)
    return ties


def test_history_features_use_only_strictly_earlier_events(small):
    tasks = small.spec.task_names
    seqs = [f.behaviour for f in small.spec.sequence_features()]
    n = _check_history(small.frame, tasks, seqs, small.meta["prior_rates"], 20, sample=150, seed=0)
    assert n >= 0
    # the first impression of each user has no history at all
    first = small.frame.group_by("user_id").agg(pl.all().sort_by("timestamp").first())
    assert (first["user_count_prior"] == 0).all()
    assert (first["seq_like"].list.len() == 0).all()
    assert small.frame["seq_finish"].list.len().max() == 20  # truncated at seq_len


def test_history_features_exclude_rows_with_equal_timestamp(small):
    """Coarsen time to the hour so many rows of a user share a timestamp: none may see another."""
    tasks = small.spec.task_names
    seqs = ["like", "finish"]
    drop = [c for c in small.frame.columns if c.endswith("_prior") or c.startswith("seq_")]
    coarse = small.frame.drop(drop).with_columns((pl.col("timestamp") // 7200 * 7200).alias("timestamp"))
    prior = small.meta["prior_rates"]
    out = _add_history(coarse, tasks=tasks, sequences=seqs, seq_len=5, prior_rates=prior)
    assert out.height == coarse.height and out["user_id"].equals(coarse["user_id"])
    ties = _check_history(out, tasks, seqs, prior, 5, sample=150, seed=1)
    assert ties > 20  # the check really exercised ties


def test_history_features_on_hand_made_frame():
    frame = pl.DataFrame(
        {
            "user_id": ["x", "x", "x", "x", "y"],
            "item_id": [10, 11, 12, 13, 10],
            "timestamp": [5, 5, 7, 9, 6],
            "domain": ["A", "B", "A", "A", "A"],
            "like": [1, 1, 0, None, 1],
        }
    )
    out = _add_history(frame, tasks=["like"], sequences=["like"], seq_len=3, prior_rates={"like": 0.25})
    assert out.columns == [
        *frame.columns, "user_count_prior", "item_count_prior", "user_domain_count_prior",
        "item_domain_count_prior", "user_like_rate_prior", "item_like_ctr_prior", "seq_like",
    ]  # fmt: skip
    assert out["seq_like"].to_list() == [[], [], [11, 10], [11, 10], []]
    assert out["user_count_prior"].to_list() == [0, 0, 2, 3, 0]
    assert out["item_count_prior"].to_list() == [0, 0, 0, 0, 1]
    assert out["user_domain_count_prior"].to_list() == [0, 0, 1, 2, 0]
    assert out["item_domain_count_prior"].to_list() == [0, 0, 0, 0, 1]
    # (positives + 20 * 0.25) / (impressions + 20); the null like of row 3 is never a positive
    assert out["user_like_rate_prior"].to_list() == pytest.approx([0.25, 0.25, 7 / 22, 7 / 23, 0.25])
    assert out["item_like_ctr_prior"].to_list() == pytest.approx([0.25, 0.25, 0.25, 0.25, 6 / 21])
    with pytest.raises(DataError, match="'domain'"):
        _add_history(frame.drop("domain"), tasks=["like"], sequences=[], seq_len=3, prior_rates={"like": 0.0})


# ---- oracle -----------------------------------------------------------------------------------
def test_oracle_probabilities_in_open_unit_interval(medium_douyin):
    for col in medium_douyin.oracle.values():
        p = medium_douyin.frame[col]
        assert p.min() > 0.0 and p.max() < 1.0


def test_oracle_auc_beats_chance_and_noisy_scores(medium_douyin):
    raw = medium_douyin
    aucs = oracle_auc(raw)
    assert set(aucs) == {(d, t) for d in raw.spec.domain_names for t in raw.spec.task_names}
    assert all(v > 0.6 for v in aucs.values()), aucs
    rng = np.random.default_rng(0)
    f = raw.frame
    noisy_cells = []
    for (d, t), oracle in aucs.items():
        part = f.filter(pl.col("domain") == d)
        y = part[t].to_numpy()
        p = part[raw.oracle[t]].to_numpy()
        assert oracle == pytest.approx(roc_auc_score(y, p), abs=1e-9)
        logit = np.log(p) - np.log1p(-p)
        noisy = logit + rng.normal(0.0, logit.std(), p.size)  # noise as large as the signal
        noisy_auc = roc_auc_score(y, noisy)
        noisy_cells.append(noisy_auc)
        if y.sum() >= 200:  # enough positives for a stable per-cell comparison
            assert oracle > noisy_auc + 0.02, (d, t, oracle, noisy_auc)
    assert np.mean(list(aucs.values())) > np.mean(noisy_cells) + 0.05


def test_tasks_are_correlated_through_shared_engagement(medium_douyin):
    f = medium_douyin.frame
    logit = {t: (np.log(p) - np.log1p(-p)) for t in ["like", "finish", "dislike"]
             for p in [f[f"{ORACLE_PREFIX}{t}"].to_numpy()]}
    assert np.corrcoef(logit["like"], logit["finish"])[0, 1] > 0.2
    assert np.corrcoef(logit["like"], logit["dislike"])[0, 1] < -0.2


def test_oracle_auc_needs_oracle(small):
    with pytest.raises(DataError, match="oracle"):
        oracle_auc(RawData(spec=small.spec, frame=small.frame, source="x.csv"))


# ---- pre-history window -----------------------------------------------------------------------
def test_prehistory_statistics_are_static_consistent_and_informative(small):
    f, tasks = small.frame, small.spec.task_names
    pre = small.meta["prehistory"]
    assert pre["days"] == 14 and pre["rows"] == small.frame.height  # as many impressions per day as the log
    by_user = f.group_by("user_id").agg(
        [pl.col(c).n_unique() for c in ["user_pre_exposures", *[f"user_{t}_pre_rate" for t in tasks]]]
    )
    assert (by_user.drop("user_id") == 1).to_numpy().all()  # one value per user: computed before the log
    by_item = f.group_by("item_id").agg([pl.col(f"item_{t}_pre_rate").n_unique() for t in tasks])
    assert (by_item.drop("item_id") == 1).to_numpy().all()
    per_dom = f.group_by("user_id", "domain").agg(pl.col("user_pre_domain_exposures").first(),
                                                  pl.col("user_pre_exposures").first())
    assert (per_dom["user_pre_domain_exposures"] <= per_dom["user_pre_exposures"]).all()
    # the smoothed rate of an entity never seen before the log is the prior
    k, prior = pre["prior_strength"], small.meta["prior_rates"]
    unseen = f.filter(pl.col("item_pre_exposures") == 0)
    for t in tasks:
        assert np.allclose(unseen[f"item_{t}_pre_rate"].to_numpy(), prior[t])
    # noisy estimates of the true propensities: per item, the pre-history rate tracks the oracle
    items = f.group_by("item_id").agg(pl.col("item_like_pre_rate").first(), pl.col("__oracle_like").mean(),
                                      pl.col("item_pre_exposures").first())
    items = items.filter(pl.col("item_pre_exposures") >= 50)
    assert np.corrcoef(items["item_like_pre_rate"], items["__oracle_like"])[0, 1] > 0.5
    users = f.group_by("user_id").agg(pl.col("user_finish_pre_rate").first(), pl.col("__oracle_finish").mean())
    assert np.corrcoef(users["user_finish_pre_rate"], users["__oracle_finish"])[0, 1] > 0.5


def test_prehistory_can_be_switched_off():
    raw = generate(SyntheticConfig(rows=2_000, prehistory_days=0, sequences=["like"]))
    assert not any("_pre_" in c for c in raw.frame.columns)
    assert not any("_pre_" in f for f in raw.spec.priors + raw.spec.domain_features)
    like = {t.name: t for t in raw.spec.tasks}["like"]
    assert like.related_features == ["user_like_rate_prior", "item_like_ctr_prior", "seq_like"]
    assert [f.name for f in raw.spec.sequence_features()] == ["seq_like"]
    with pytest.raises(ConfigError, match="prehistory_days"):
        generate(SyntheticConfig(rows=2_000, prehistory_days=-1))


# ---- domain shift -----------------------------------------------------------------------------
def _cross_domain_user_correlation(raw: RawData, task: str = "like") -> float:
    """Spearman correlation over users seen in both A and B of their mean oracle logit of ``task``
    in A against that in B: how much a user's behaviour in one domain tells about the other."""
    p = pl.col(f"{ORACLE_PREFIX}{task}")
    per = (raw.frame.filter(pl.col("domain").is_in(["A", "B"]))
           .group_by("user_id", "domain").agg((p.log() - (1 - p).log()).mean().alias("logit"), pl.len().alias("n"))
           .filter(pl.col("n") >= 5)
           .pivot(on="domain", index="user_id", values="logit").drop_nulls())
    return float(per.select(pl.corr("A", "B", method="spearman")).item())


def test_domain_shift_sets_how_much_the_domains_share():
    """With domain_shift 0 the domains share the users' preferences (a user's like propensity in A
    predicts it in B); a large shift rotates them apart. The default is the calibrated 0.4."""
    assert SyntheticConfig().domain_shift == 0.4
    kw = dict(preset="douyin", rows=40_000, num_users=400, num_items=2_000, seed=5, prehistory_days=0,
              sequences=["like"])
    corr = {lam: _cross_domain_user_correlation(generate(SyntheticConfig(**kw, domain_shift=lam)))
            for lam in (0.0, 0.4, 2.0)}
    assert corr[0.0] > 0.85
    assert corr[0.0] > corr[0.4] > corr[2.0]
    assert corr[2.0] < 0.7
    with pytest.raises(ConfigError, match="domain_shift"):
        generate(SyntheticConfig(rows=2_000, domain_shift=-0.1))
