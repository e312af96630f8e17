"""The learnable ceiling of a synthetic preset: the generator's own functional form, fitted.

The oracle (:func:`mdmt.data.synthetic.oracle_auc`) scores with the TRUE parameters of the
generator; no learner can reach it, because the per-user and per-item random terms are only seen
through a finite log. The learnable ceiling is the reference between the two: a learner that
knows the generator's exact functional form (module docstring of :mod:`mdmt.data.synthetic`,
steps 3 to 5) but fits every value (factors, biases, domain transforms, task loadings, offsets)
by maximum a posteriori on the events a model may learn from: the pre-history window (whose
counts the models see as ``*_pre_*`` features) and the train split. Its test AUC per
(domain, task) cell is what is learnable; a model's gap to it is the model's own shortfall, and
the gap between the ceiling and the oracle is the part no model can close.

The fitted model, per row of user ``u``, item ``i``, domain ``d``, hour ``h`` and task ``t``::

    U_u   = G[gender_u] + A[age_u] + R_u                     (user factors)
    V_i   = C[cat_i] + 0.4 W[author_i] + Q_i                 (item factors)
    u_d   = U_u M_d + s_d                                    (domain shift)
    E     = <u_d, V_i> / sqrt(k) + b_u + q_i + c[d, cat_i] + e[h]
    logit = s[d, t] (alpha_t E + beta_t <u_d, W[author_i]> / sqrt(k)
                     + gamma_t <u_d P_t, V_i> / sqrt(k) + bu[u, t] + bi[i, t]) + o[d, t]

with Gaussian priors (L2 penalties) at the generator's scales on the random terms.

Example::

    >>> from mdmt.data.synthetic import SyntheticConfig
    >>> res = learnable_ceiling(SyntheticConfig(preset="douyin", rows=20_000), epochs=2)  # doctest: +SKIP
    >>> res.auc[("A", "like")]  # doctest: +SKIP
    0.7...
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torch import nn

from ..metrics import auc
from .base import RawData
from .preprocess import split_frame
from .synthetic import PRESETS, SyntheticConfig, prehistory_log

__all__ = ["CeilingResult", "learnable_ceiling"]


@dataclass
class CeilingResult:
    """Test AUC per (domain, task) of the fitted generator form, and of the oracle on the same rows.

    Attributes:
        auc: ``{(domain, task): AUC}`` of the fitted model on the test split.
        oracle: ``{(domain, task): AUC}`` of the true probabilities on the same rows.
        train_rows: rows fitted on (pre-history + train split).
        epochs: passes over them.
    """

    auc: dict[tuple[str, str], float]
    oracle: dict[tuple[str, str], float]
    train_rows: int
    epochs: int


class _GeneratorForm(nn.Module):
    """The generator's logit (module docstring) with learnable values. Inputs are ``[B]`` codes."""

    def __init__(self, n_users: int, n_items: int, n_dom: int, n_task: int, n_cat: int, n_auth: int, k: int,
                 user_sd: float = 0.8, item_sd: float = 0.6, dom_cat_sd: float = 0.3) -> None:
        super().__init__()
        self.k = k

        def emb(n: int, dim: int, sd: float) -> nn.Embedding:
            e = nn.Embedding(n, dim)
            nn.init.normal_(e.weight, 0.0, sd)
            return e

        self.gender, self.age, self.user_res = emb(2, k, 0.1), emb(6, k, 0.1), emb(n_users, k, 0.1)
        self.cat, self.author, self.item_res = emb(n_cat, k, 0.1), emb(n_auth, k, 0.1), emb(n_items, k, 0.1)
        self.user_bias, self.item_bias = emb(n_users, 1, 0.0), emb(n_items, 1, 0.0)
        self.user_task, self.item_task = emb(n_users, n_task, 0.0), emb(n_items, n_task, 0.0)
        self.dom_cat, self.hour = emb(n_dom * n_cat, 1, 0.0), emb(24, 1, 0.0)
        self.n_cat = n_cat
        self.dom_m = nn.Parameter(torch.eye(k).repeat(n_dom, 1, 1))
        self.dom_s = nn.Parameter(torch.zeros(n_dom, k))
        self.proj = nn.Parameter(torch.randn(n_task, k, k) * 0.1 / math.sqrt(k))
        self.alpha = nn.Parameter(torch.zeros(n_task))  # the sign (dislike against the rest) is learnt
        self.beta = nn.Parameter(torch.zeros(n_task))
        self.gamma = nn.Parameter(torch.full((n_task,), 0.5))
        self.scale = nn.Parameter(torch.ones(n_dom, n_task))  # the per-cell signal strength
        self.offset = nn.Parameter(torch.zeros(n_dom, n_task))
        #: (module, prior sd): the L2 penalty of each random term, at the generator's scales
        self.priors = [
            (self.user_res, user_sd), (self.item_res, item_sd), (self.user_bias, 0.35), (self.item_bias, 0.5),
            (self.user_task, 0.5), (self.item_task, 0.5), (self.dom_cat, max(dom_cat_sd, 1e-3)),
            (self.gender, 0.5), (self.age, 0.5), (self.cat, 0.8), (self.author, 1.0),
        ]  # fmt: skip

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """``x``: ``user, item, domain, hour, gender, age, cat, author`` ``[B]`` -> logits ``[B, T]``."""
        sk = math.sqrt(self.k)
        u = self.gender(x["gender"]) + self.age(x["age"]) + self.user_res(x["user"])  # [B, k]
        w = self.author(x["author"])
        v = self.cat(x["cat"]) + 0.4 * w + self.item_res(x["item"])
        rows = torch.arange(len(u))
        ud = torch.matmul(u, self.dom_m)[x["domain"], rows] + self.dom_s[x["domain"]]  # [D, B, k] -> [B, k]
        engage = (
            (ud * v).sum(-1) / sk + self.user_bias(x["user"])[:, 0] + self.item_bias(x["item"])[:, 0]
            + self.dom_cat(x["domain"] * self.n_cat + x["cat"])[:, 0] + self.hour(x["hour"])[:, 0]
        )  # fmt: skip
        author_aff = (ud * w).sum(-1) / sk
        n_task = self.proj.shape[0]
        flat = self.proj.permute(1, 0, 2).reshape(self.k, n_task * self.k)  # [k, T*k]
        specific = ((ud @ flat).view(len(u), n_task, self.k) * v[:, None, :]).sum(-1) / sk
        return self.scale[x["domain"]] * (
            self.alpha * engage[:, None] + self.beta * author_aff[:, None] + self.gamma * specific
            + self.user_task(x["user"]) + self.item_task(x["item"])
        ) + self.offset[x["domain"]]  # fmt: skip

    def penalty(self) -> torch.Tensor:
        return sum(0.5 * (m.weight**2).sum() / sd**2 for m, sd in self.priors)


def _rows(frame: pl.DataFrame, raw: RawData, log: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    doms = raw.spec.domain_names
    user = frame["user_id"].to_numpy().astype(np.int64)
    item = frame["item_id"].to_numpy().astype(np.int64)
    x = {
        "user": user,
        "item": item,
        "domain": frame["domain"].replace_strict(doms, list(range(len(doms))), return_dtype=pl.Int64).to_numpy(),
        "hour": frame["hour"].to_numpy().astype(np.int64),
    }
    y = np.stack([frame[t].to_numpy() for t in raw.spec.task_names], axis=1).astype(np.float32)
    return x, y


def _attributes(x: dict[str, np.ndarray], log: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(
        x,
        gender=log["user_gender"][x["user"]],
        age=log["user_age"][x["user"]],
        cat=log["item_category"][x["item"]],
        author=log["item_author"][x["item"]],
    )


def learnable_ceiling(
    cfg: SyntheticConfig,
    *,
    epochs: int = 8,
    batch_size: int = 4096,
    lr: float = 0.05,
    seed: int = 0,
) -> CeilingResult:
    """Fit the generator's functional form on the pre-history window and the train split of ``cfg``'s
    data; return the test AUC per (domain, task) cell next to the oracle's (module docstring)."""
    raw, log = prehistory_log(cfg)
    parts = split_frame(raw)
    xt, yt = _rows(parts["train"], raw, log)
    pre = {k: log[k].astype(np.int64) for k in ("user", "item", "domain", "hour")}
    x_fit = _attributes({k: np.concatenate([pre[k], xt[k]]) for k in pre}, log)
    y_fit = np.concatenate([log["labels"].astype(np.float32), yt])
    xs, ys = _rows(parts["test"], raw, log)
    x_test = _attributes(xs, log)

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    k = cfg.factor_dim
    model = _GeneratorForm(
        n_users=len(log["user_gender"]), n_items=len(log["item_category"]), n_dom=len(raw.spec.domain_names),
        n_task=len(raw.spec.task_names), n_cat=int(log["item_category"].max()) + 1,
        n_auth=int(log["item_author"].max()) + 1, k=k,
        user_sd=PRESETS[cfg.preset].user_factor_sd, item_sd=PRESETS[cfg.preset].item_factor_sd,
        dom_cat_sd=0.3 * (cfg.domain_shift / 0.4),  # the generator's sd of c[d, category]
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    tx = {k_: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for k_, v in x_fit.items()}
    ty = torch.from_numpy(y_fit)
    n = len(ty)
    bce = nn.BCEWithLogitsLoss(reduction="sum")
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for lo in range(0, n, batch_size):
            idx = perm[lo : lo + batch_size]
            logits = model({k_: v[idx] for k_, v in tx.items()})
            # MAP: the batch's share of the log-likelihood plus its share of the prior
            loss = (bce(logits, ty[idx]) + model.penalty() * len(idx) / n) / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        scores = torch.cat(
            [model({k_: torch.from_numpy(np.array(v[lo : lo + 65536], dtype=np.int64)) for k_, v in x_test.items()})
             for lo in range(0, len(ys), 65536)]
        ).numpy()  # fmt: skip
    test = parts["test"]
    out, orc = {}, {}
    for di, d in enumerate(raw.spec.domain_names):
        m = xs["domain"] == di
        for j, t in enumerate(raw.spec.task_names):
            out[(d, t)] = auc(ys[m, j], scores[m, j])
            orc[(d, t)] = auc(ys[m, j], test[raw.oracle[t]].to_numpy()[m])
    return CeilingResult(auc=out, oracle=orc, train_rows=n, epochs=epochs)
