"""Metrics against scikit-learn / scipy and direct re-computation (DESIGN §4)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import log_loss, roc_auc_score

from mdmt.metrics import (
    CellMetrics,
    EvalResult,
    auc,
    auc_reason,
    evaluate,
    gauc,
    gauc_details,
    logloss,
    mean_std,
    paired_ttest,
    relaimpr,
    seed_table,
    significance_marker,
)


def _sk_gauc(y: np.ndarray, s: np.ndarray, g: np.ndarray) -> tuple[float, float, float]:
    """Direct per-group loop with sklearn: (weighted, unweighted, coverage); groups < 0 ignored."""
    num = den = usum = 0.0
    used = 0
    covered = 0
    for key in np.unique(g[g >= 0]):
        idx = g == key
        yy = y[idx]
        if yy.min() == yy.max():
            continue
        a = roc_auc_score(yy, s[idx])
        num += idx.sum() * a
        den += idx.sum()
        usum += a
        used += 1
        covered += idx.sum()
    if used == 0:
        return math.nan, math.nan, covered / len(y)
    return num / den, usum / used, covered / len(y)


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Brute force: share of (positive, negative) pairs ranked right, ties count one half."""
    sp, sn = s[y == 1][:, None], s[y == 0][None, :]
    return float(((sp > sn) + 0.5 * (sp == sn)).mean())


# ---------------------------------------------------------------------------------------------
# AUC
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    y = rng.random(n) < 0.3
    s_int = rng.integers(0, 15, n) + 3 * y  # heavy ties, some signal
    assert len(np.unique(s_int)) < 30
    assert abs(auc(y, s_int) - roc_auc_score(y, s_int)) < 1e-9
    s_float = np.round(rng.random(n).astype(np.float32), 2) + 0.1 * y
    assert abs(auc(y.astype(float), s_float) - roc_auc_score(y, s_float)) < 1e-9


def test_auc_matches_brute_force_and_hand_values() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 6, 200).astype(float)
    assert abs(auc(y, s) - _pairwise_auc(y, s)) < 1e-12
    assert auc([0, 1, 0, 1], [0.2, 0.2, 0.1, 0.9]) == pytest.approx(0.875)
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_single_class_empty_and_nonfinite_give_nan_with_reason() -> None:
    v, why = auc_reason(np.zeros(37), np.random.default_rng(0).random(37))
    assert math.isnan(v) and why == "single class (all 0) in 37 rows"
    v, why = auc_reason(np.ones(5), np.arange(5.0))
    assert math.isnan(v) and why == "single class (all 1) in 5 rows"
    v, why = auc_reason(np.array([]), np.array([]))
    assert math.isnan(v) and why == "no rows"
    v, why = auc_reason([0, 1, 1], [0.1, np.nan, 0.3])
    assert math.isnan(v) and why is not None and "non-finite" in why
    assert math.isnan(auc([1, 1], [0.2, 0.3]))
    assert auc_reason([0, 1], [0.2, 0.3]) == (1.0, None)


def test_auc_rejects_non_binary_labels_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"y\[2\]"):
        auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="shape"):
        auc([0, 1, 1], [0.1, 0.2])


# ---------------------------------------------------------------------------------------------
# GAUC
# ---------------------------------------------------------------------------------------------


def _gauc_data(seed: int, n: int = 6000, groups: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n) * 7 + 3  # sparse, non-contiguous ids
    rate = rng.random(groups * 7 + 10)[g] * 0.6
    y = (rng.random(n) < rate).astype(np.int64)
    y[g % 5 == 0] = 0  # whole groups with one class
    s = np.round(rng.random(n) * 10 + 2 * y) / 10  # tied scores
    return y, s, g


@pytest.mark.parametrize("seed", [0, 1])
def test_gauc_matches_sklearn_loop(seed: int) -> None:
    y, s, g = _gauc_data(seed)
    w_ref, uw_ref, cov_ref = _sk_gauc(y, s, g)
    # the data really has single-class groups and mixed groups
    mixed = [k for k in np.unique(g) if 0 < y[g == k].mean() < 1]
    assert 50 < len(mixed) < len(np.unique(g))
    w, cov = gauc(y, s, g)
    uw, cov2 = gauc(y, s, g, weighted=False)
    assert abs(w - w_ref) < 1e-9
    assert abs(uw - uw_ref) < 1e-9
    assert abs(cov - cov_ref) < 1e-12 and cov == cov2
    share = np.isin(g, mixed).mean()
    assert abs(cov - share) < 1e-12
    r = gauc_details(y, s, g)
    assert r.groups == len(np.unique(g)) and r.groups_used == len(mixed) and r.reason is None


def test_gauc_ignores_rows_without_group_and_handles_degenerate_cases() -> None:
    y, s, g = _gauc_data(3, n=3000, groups=150)
    g = g.copy()
    g[::4] = -1
    w_ref, uw_ref, cov_ref = _sk_gauc(y, s, g)
    w, cov = gauc(y, s, g)
    assert abs(w - w_ref) < 1e-9 and abs(cov - cov_ref) < 1e-12
    assert cov < 0.76  # rows without group count in the denominator only

    w, cov = gauc(y, s, np.full(len(y), -1))
    assert math.isnan(w) and cov == 0.0
    assert "no group key" in gauc_details(y, s, np.full(len(y), -1)).reason

    # every group single class
    w, cov = gauc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])
    assert math.isnan(w) and cov == 0.0
    assert "no group with both classes" in gauc_details([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]).reason

    w, cov = gauc([], [], np.array([], dtype=np.int64))
    assert math.isnan(w) and cov == 0.0


def test_gauc_hand_value() -> None:
    # group 7: AUC 1 (2 rows), group 8: AUC 0 (2 rows), group 9: one class (1 row)
    y, s, g = [0, 1, 0, 1, 1], [0.1, 0.9, 0.8, 0.3, 0.5], [7, 7, 8, 8, 9]
    assert gauc(y, s, g) == (0.5, 0.8)
    y2, s2, g2 = [0, 1, 0, 0, 1], [0.1, 0.9, 0.2, 0.5, 0.4], [1, 1, 2, 2, 2]
    # group 1 AUC 1 (2 rows), group 2 AUC 0.5 (3 rows): weighted (2 + 1.5) / 5, unweighted 0.75
    assert gauc(y2, s2, g2)[0] == pytest.approx(3.5 / 5, abs=1e-12)
    assert gauc(y2, s2, g2, weighted=False)[0] == pytest.approx(0.75, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# LogLoss, RelaImpr, seeds
# ---------------------------------------------------------------------------------------------


def test_logloss_matches_sklearn_and_clips() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    p = rng.uniform(0.01, 0.99, 1000)
    assert abs(logloss(y, p) - log_loss(y, p, labels=[0, 1])) < 1e-12
    p_ext = p.copy()
    p_ext[:10], p_ext[10:20] = 0.0, 1.0
    eps = 1e-7
    clipped = np.clip(p_ext, eps, 1 - eps)
    assert abs(logloss(y, p_ext, eps=eps) - log_loss(y, clipped, labels=[0, 1])) < 1e-12
    assert math.isfinite(logloss(y, p_ext))
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert math.isnan(logloss([], []))


def test_relaimpr_hand_values() -> None:
    assert relaimpr(0.76, 0.75) == pytest.approx(4.0)
    assert relaimpr(0.75, 0.75) == 0.0
    assert relaimpr(0.70, 0.75) == pytest.approx(-20.0)
    assert relaimpr(0.8, 0.6) == pytest.approx(200.0)
    assert math.isnan(relaimpr(0.8, 0.5))
    assert math.isnan(relaimpr(math.nan, 0.7))


def test_paired_ttest_matches_scipy_and_degenerate_cases() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = 0.75 + rng.normal(0, 0.01, 5)
        b = a - 0.005 + rng.normal(0, 0.004, 5)
        assert abs(paired_ttest(a, b) - stats.ttest_rel(a, b).pvalue) < 1e-12
    assert math.isnan(paired_ttest([0.7], [0.6]))
    assert math.isnan(paired_ttest([], []))
    assert paired_ttest([0.7, 0.71, 0.72], [0.7, 0.71, 0.72]) == 1.0
    assert paired_ttest([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]) == 0.0
    # NaN pairs are dropped
    a, b = [0.70, 0.72, math.nan, 0.74], [0.69, 0.70, 0.5, 0.735]
    assert paired_ttest(a, b) == pytest.approx(stats.ttest_rel([0.70, 0.72, 0.74], [0.69, 0.70, 0.735]).pvalue)
    with pytest.raises(ValueError, match="equal length"):
        paired_ttest([1.0, 2.0], [1.0])
    assert significance_marker(0.01) == "*" and significance_marker(0.2) == "" and significance_marker(math.nan) == ""


def test_mean_std() -> None:
    assert mean_std([1.0, 2.0, 3.0, math.nan]) == (2.0, 1.0)
    m, s = mean_std([0.7])
    assert m == 0.7 and math.isnan(s)
    m, s = mean_std([])
    assert math.isnan(m) and math.isnan(s)
    v = np.random.default_rng(0).random(7)
    assert mean_std(v) == pytest.approx((v.mean(), v.std(ddof=1)))


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------

TASKS = ["click", "like", "follow"]
DOMAINS = ["young", "mid", "old"]


def _eval_data(seed: int = 0, n: int = 4000):
    rng = np.random.default_rng(seed)
    T, D = len(TASKS), len(DOMAINS)
    domain = rng.integers(0, D, n)
    group = rng.integers(0, 150, n)
    oracle = rng.uniform(0.05, 0.6, (n, T))
    labels = (rng.random((n, T)) < oracle).astype(np.float32)
    probs = np.clip(np.round(oracle + rng.normal(0, 0.15, (n, T)), 2), 0.0, 1.0).astype(np.float32)
    mask = rng.random((n, T)) < 0.8
    labels[~mask] = 7.0  # unobserved labels are never read
    # domain "old" sees only negatives for "follow"
    labels[(domain == 2) & mask[:, 2], 2] = 0.0
    return probs, labels, mask, domain, group, oracle


def test_evaluate_matches_sklearn_per_cell_and_pooled() -> None:
    probs, labels, mask, domain, group, oracle = _eval_data()
    r = evaluate(probs, labels, mask, domain, group, TASKS, DOMAINS, oracle=oracle)
    assert [(c.domain, c.task) for c in r.cells] == [(d, t) for d in DOMAINS for t in TASKS]
    for di, dname in enumerate(DOMAINS):
        for ti, tname in enumerate(TASKS):
            c = r.cell(dname, tname)
            rows = (domain == di) & mask[:, ti]
            y, p, g = labels[rows, ti], probs[rows, ti], group[rows]
            assert c.n == rows.sum() and c.positives == y.sum()
            assert abs(c.logloss - log_loss(y, np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7), labels=[0, 1])) < 1e-9
            if (dname, tname) == ("old", "follow"):
                continue
            assert c.reason is None and c.gauc_reason is None
            assert abs(c.auc - roc_auc_score(y, p)) < 1e-9
            assert abs(c.oracle_auc - roc_auc_score(y, oracle[rows, ti])) < 1e-9
            w, uw, cov = _sk_gauc(y, p, g)
            assert abs(c.gauc - w) < 1e-9 and abs(c.gauc_unweighted - uw) < 1e-9
            assert abs(c.gauc_coverage - cov) < 1e-12
    for ti, tname in enumerate(TASKS):
        rows = mask[:, ti]
        assert abs(r.task_auc[tname] - roc_auc_score(labels[rows, ti], probs[rows, ti])) < 1e-9
    aucs = [c.auc for c in r.cells]
    assert sum(math.isnan(a) for a in aucs) == 1
    assert r.avg_auc == pytest.approx(np.nanmean(aucs), abs=1e-12)
    assert r.avg_gauc == pytest.approx(np.nanmean([c.gauc for c in r.cells]), abs=1e-12)
    assert r.avg_logloss == pytest.approx(np.mean([c.logloss for c in r.cells]), abs=1e-12)
    assert r.macro_task_auc == pytest.approx(np.mean(list(r.task_auc.values())), abs=1e-12)
    assert r.avg_oracle_auc == pytest.approx(np.nanmean([c.oracle_auc for c in r.cells]), abs=1e-12)


def test_evaluate_single_class_cell_reports_reason() -> None:
    probs, labels, mask, domain, group, _ = _eval_data(1)
    r = evaluate(probs, labels, mask, domain, group, TASKS, DOMAINS)
    c = r.cell("old", "follow")
    assert math.isnan(c.auc) and math.isnan(c.gauc) and math.isnan(c.oracle_auc)
    assert c.reason == f"single class (all 0) in {c.n} rows" and c.positives == 0
    assert c.gauc_reason == c.reason and c.gauc_coverage == 0.0
    assert math.isfinite(c.logloss)
    assert math.isfinite(r.avg_auc) and math.isnan(r.avg_oracle_auc)
    assert all(math.isnan(x.oracle_auc) for x in r.cells)


def test_evaluate_empty_cell_no_group_and_nonfinite() -> None:
    probs, labels, mask, domain, group, _ = _eval_data(2, n=1500)
    mask[domain == 1, 1] = False  # "like" never observed in "mid"
    probs[np.flatnonzero((domain == 0) & mask[:, 0])[:3], 0] = np.nan
    r = evaluate(probs, labels, mask, domain, np.full_like(group, -1), TASKS, DOMAINS)
    empty = r.cell("mid", "like")
    assert empty.n == 0 and empty.reason == "no rows" and math.isnan(empty.auc) and math.isnan(empty.logloss)
    bad = r.cell("young", "click")
    assert math.isnan(bad.auc) and "non-finite scores in 3 of" in bad.reason and math.isnan(bad.logloss)
    assert math.isnan(r.task_auc["click"])
    ok = r.cell("mid", "click")
    assert math.isfinite(ok.auc) and math.isnan(ok.gauc) and "no group key" in ok.gauc_reason
    assert ok.gauc_coverage == 0.0
    assert math.isnan(r.avg_gauc)


def test_evaluate_gauc_agrees_with_gauc_function() -> None:
    probs, labels, mask, domain, group, _ = _eval_data(3)
    group[::3] = -1
    r = evaluate(probs, labels, mask, domain, group, TASKS, DOMAINS)
    rows = (domain == 1) & mask[:, 0]
    w, cov = gauc(labels[rows, 0], probs[rows, 0], group[rows])
    uw, _ = gauc(labels[rows, 0], probs[rows, 0], group[rows], weighted=False)
    c = r.cell("mid", "click")
    assert (c.gauc, c.gauc_unweighted, c.gauc_coverage) == pytest.approx((w, uw, cov), abs=1e-12)


def test_evaluate_huge_group_ids_and_no_rows() -> None:
    probs, labels, mask, domain, group, _ = _eval_data(7, n=1500)
    huge = (group.astype(np.int64) * 7919 + 2**62) | (1 << 62)  # hashed ids near the int64 limit
    huge[::5] = -1
    r = evaluate(probs, labels, mask, domain, huge, TASKS, DOMAINS)
    rows = (domain == 0) & mask[:, 0]
    w, uw, cov = _sk_gauc(labels[rows, 0], probs[rows, 0], np.where(huge[rows] < 0, -1, group[rows]))
    c = r.cell("young", "click")
    assert abs(c.gauc - w) < 1e-9 and abs(c.gauc_unweighted - uw) < 1e-9 and abs(c.gauc_coverage - cov) < 1e-12

    z = np.zeros((0, 3))
    r0 = evaluate(z, z, z.astype(bool), np.zeros(0, np.int64), np.zeros(0, np.int64), TASKS, DOMAINS)
    assert len(r0.cells) == 9 and all(c.reason == "no rows" for c in r0.cells)
    assert math.isnan(r0.avg_auc) and math.isnan(r0.macro_task_auc)


def test_evaluate_rejects_bad_input() -> None:
    probs, labels, mask, domain, group, _ = _eval_data(4, n=200)
    bad = labels.copy()
    r0 = int(np.flatnonzero(mask[:, 1])[5])
    bad[r0, 1] = 2.0
    with pytest.raises(ValueError, match=rf"labels\[{r0}, 1\] \(task 'like'\)"):
        evaluate(probs, bad, mask, domain, group, TASKS, DOMAINS)
    d = domain.copy()
    d[11] = 3
    with pytest.raises(ValueError, match=r"domain\[11\] = 3"):
        evaluate(probs, labels, mask, d, group, TASKS, DOMAINS)
    with pytest.raises(ValueError, match="shape"):
        evaluate(probs[:, :2], labels, mask, domain, group, TASKS, DOMAINS)
    with pytest.raises(ValueError, match="task names"):
        evaluate(probs, labels, mask, domain, group, TASKS[:2], DOMAINS)


# ---------------------------------------------------------------------------------------------
# Serialisation and reports
# ---------------------------------------------------------------------------------------------


def test_to_dict_from_dict_round_trip() -> None:
    probs, labels, mask, domain, group, oracle = _eval_data(5, n=1500)
    r = evaluate(probs, labels, mask, domain, group, TASKS, DOMAINS, oracle=oracle)
    text = json.dumps(r.to_dict(), allow_nan=False)  # NaN became None
    back = EvalResult.from_dict(json.loads(text))
    assert back.to_dict() == r.to_dict()
    assert math.isnan(back.cell("old", "follow").auc)
    assert back.cell("mid", "like").auc == r.cell("mid", "like").auc
    assert isinstance(back.cells[0], CellMetrics)
    with pytest.raises(KeyError, match="no cell"):
        back.cell("nowhere", "click")


def test_markdown_and_rich_table() -> None:
    probs, labels, mask, domain, group, oracle = _eval_data(6, n=1500)
    r = evaluate(probs, labels, mask, domain, group, TASKS, DOMAINS, oracle=oracle)
    md = r.markdown()
    for name in TASKS + DOMAINS:
        assert name in md
    assert "**AUC**" in md and "**GAUC**" in md and "**LogLoss**" in md and "Oracle AUC" in md
    assert "single class (all 0)" in md and "pooled" in md
    assert f"{r.cell('young', 'click').auc:.4f}" in md
    assert "Oracle AUC" not in r.markdown(oracle=False)
    with pytest.raises(ValueError, match="unknown metric"):
        r.markdown(metrics=("recall",))

    from rich.console import Console

    console = Console(record=True, width=220)
    console.print(r.rich_table("test run"))
    text = console.export_text()
    for name in TASKS + DOMAINS:
        assert name in text
    assert "test run" in text and "oracle" in text and "single class (all 0)" in text
    c = r.cell("mid", "like")
    assert f"{c.auc:.4f} / {c.gauc:.4f} / {c.logloss:.4f}" in text


def test_seed_table() -> None:
    def result(value: float) -> EvalResult:
        cell = CellMetrics("a", "t", 10, 3, value, value, value, 1.0, 0.5, math.nan, None)
        return EvalResult([cell], value, value, 0.5, {"t": value}, value, math.nan)

    base = [0.750, 0.752, 0.749, 0.751]
    model = [0.760, 0.763, 0.758, 0.762]
    table = seed_table({"mlp": [result(v) for v in base], "pmta": [result(v) for v in model]}, baseline="mlp")
    base_row, row = table.rows
    assert base_row.model == "mlp" and math.isnan(base_row.p_value)
    assert row.mean == pytest.approx(np.mean(model)) and row.std == pytest.approx(np.std(model, ddof=1))
    assert row.relaimpr == pytest.approx(relaimpr(np.mean(model), np.mean(base)))
    assert row.p_value == pytest.approx(stats.ttest_rel(model, base).pvalue)
    assert row.significant
    md = table.markdown()
    assert "pmta" in md and "*" in md and "RelaImpr" in md
    cell_table = seed_table({"mlp": [result(v) for v in base]}, "mlp", metric="auc:a/t")
    assert cell_table.rows[0].mean == pytest.approx(np.mean(base))
    with pytest.raises(ValueError, match="seeds"):
        seed_table({"mlp": [result(v) for v in base], "x": [result(0.7)]}, "mlp")
