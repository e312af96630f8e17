"""The learnable ceiling of the synthetic presets: the generator's form fitted on the observable log."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import torch

from mdmt.data.ceiling import _GeneratorForm, learnable_ceiling
from mdmt.data.synthetic import SyntheticConfig, generate, prehistory_log


def test_prehistory_log_matches_the_generated_frame():
    cfg = SyntheticConfig(rows=3_000, seed=4)
    raw, log = prehistory_log(cfg)
    assert raw.frame.equals(generate(cfg).frame)  # asking for the log changes nothing
    assert log["labels"].shape == (raw.meta["prehistory"]["rows"], len(raw.spec.task_names))
    # the counts of the log are the static features of the frame
    users = raw.frame.group_by("user_id").agg(pl.col("user_pre_exposures").first().alias("e")).sort("user_id")
    counts = np.bincount(log["user"], minlength=len(log["user_gender"]))
    assert (counts[users["user_id"].to_numpy()] == users["e"].to_numpy()).all()
    k = raw.meta["prehistory"]["prior_strength"]
    prior = raw.meta["prior_rates"]["like"]
    j = raw.spec.task_names.index("like")
    pos = np.bincount(log["item"], weights=log["labels"][:, j], minlength=len(log["item_category"]))
    n = np.bincount(log["item"], minlength=len(log["item_category"]))
    row = raw.frame.row(0, named=True)
    assert math.isclose(row["item_like_pre_rate"], (pos[row["item_id"]] + k * prior) / (n[row["item_id"]] + k))


def test_generator_form_logits_and_prior_penalty():
    torch.manual_seed(0)
    m = _GeneratorForm(n_users=5, n_items=7, n_dom=2, n_task=3, n_cat=2, n_auth=3, k=4)
    x = {"user": torch.tensor([0, 4]), "item": torch.tensor([6, 1]), "domain": torch.tensor([1, 0]),
         "hour": torch.tensor([3, 23]), "gender": torch.tensor([1, 0]), "age": torch.tensor([5, 2]),
         "cat": torch.tensor([1, 0]), "author": torch.tensor([2, 0])}
    with torch.no_grad():
        m.alpha.copy_(torch.tensor([1.0, -0.5, 0.2]))
        m.beta.copy_(torch.tensor([0.3, 0.0, 1.0]))
        m.scale.copy_(torch.tensor([[1.0, 2.0, 0.5], [3.0, 1.0, 1.5]]))
    out = m(x)
    # recomputed row by row from the docstring's equations
    for b in range(2):
        g = lambda e, key: e.weight[x[key][b]]  # noqa: E731
        u = g(m.gender, "gender") + g(m.age, "age") + g(m.user_res, "user")
        w = g(m.author, "author")
        v = g(m.cat, "cat") + 0.4 * w + g(m.item_res, "item")
        d = x["domain"][b]
        ud = u @ m.dom_m[d] + m.dom_s[d]
        e = ud @ v / 2 + g(m.user_bias, "user")[0] + g(m.item_bias, "item")[0] \
            + m.dom_cat.weight[d * 2 + x["cat"][b]][0] + g(m.hour, "hour")[0]
        for t in range(3):
            want = m.scale[d, t] * (m.alpha[t] * e + m.beta[t] * (ud @ w) / 2 + m.gamma[t] * (ud @ m.proj[t] @ v) / 2
                                    + m.user_task.weight[x["user"][b], t] + m.item_task.weight[x["item"][b], t]) \
                + m.offset[d, t]
            assert torch.allclose(out[b, t], want, atol=1e-5)
    assert m.penalty() > 0


def test_learnable_ceiling_lies_between_chance_and_the_oracle():
    torch.set_num_threads(1)
    res = learnable_ceiling(SyntheticConfig(preset="douyin", rows=40_000, seed=1), epochs=3)
    assert set(res.auc) == {(d, t) for d in ("A", "B") for t in
                            ("like", "follow", "comment", "dislike", "headslideleft", "finish")}
    dense = [("A", "finish"), ("B", "finish"), ("A", "like"), ("B", "like")]
    assert all(0.6 < res.auc[c] < res.oracle[c] for c in dense)  # learns, and stays below the truth
    assert res.train_rows > 40_000 * 10 / 14  # the pre-history window and the train split
