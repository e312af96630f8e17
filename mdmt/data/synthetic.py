"""Synthetic multi-domain multi-task data with a known ground truth.

The industrial data sets of the MDMT papers (Douyin in PMTA, Kuaishou in PEPNet) are private.
This generator produces impression logs whose published statistics match those papers, while the
true probability of every label is known, so the **oracle AUC** of each (domain, task) cell, the
ceiling no model can beat, is available next to every experiment.

Presets
-------
``douyin`` (PMTA, Table 3): domains ``A`` (Douyin) and ``B`` (Douyin Lite); tasks ``like``,
``follow``, ``comment``, ``dislike``, ``headslideleft``, ``finish``; user overlap A→B 67.8 %,
B→A 87.2 %; item overlap A→B 23.2 %, B→A 30.1 %; 14 days split 10/2/2.

``kuaishou`` (PEPNet, Table 1): domains ``A`` (Discovery Tab), ``B`` (Featured-Video Tab) and
``C`` (Slide Tab); tasks ``like``, ``follow``, ``forward``, ``hate``, ``click``, ``effview``;
instances 48:68:78; 12 days split 10/1/1. The overlap block of Table 1 is read **column = the
domain the share is taken of, row = the other domain**: the entry in column X, row Y is the share
of X's users (items) also seen in Y. This is the only reading consistent with the table's user and
item counts: e.g. column A, row B gives 92.11 % of A's 76k users = 70.0k users, and column B,
row A gives 63.64 % of B's 110k users = 70.0k users, the same intersection (likewise for A∩C,
B∩C and for items). The table does not give the size of the triple intersection A∩B∩C; the
generator sets it to half of the smallest pairwise intersection.

Generative process
------------------
1. **Who is where.** Users are split into the regions of a Venn diagram over the domains (only A,
   only B, A and B, ...) with sizes solved from the published overlap shares, and likewise items.
   Each domain gets a fixed number of rows (its instance share). Every member user and member
   item of a domain is shown at least once there, so the realised overlaps equal the targets up
   to integer rounding. The other rows draw users by activity (log-normal weights) and items by
   popularity (log-normal weights).
2. **When.** Each row gets a day, an hour from a diurnal curve (evening peak) and a second;
   ``timestamp`` is integer seconds since the Unix epoch, starting at the paper's first day.
3. **Latent world.** Users have factors ``u = g[gender] + a[age] + eps`` (``factor_dim``
   wide), items ``v = c[category] + 0.4 w[author] + eta`` and authors ``w``; the own parts
   ``eps`` and ``eta`` (sd ``Preset.user_factor_sd`` / ``item_factor_sd``) are what only the ids
   reveal. Domain ``d``
   shifts preferences linearly: ``u_d = u W_d + s_d`` with ``W_d = I + lambda G_d / sqrt(k)``,
   ``s_d ~ N(0, (0.75 lambda)^2)`` (``lambda = domain_shift``, 0.4 by default).
4. **Correlated tasks.** A common engagement score
   ``E = <u_d, v> / sqrt(k) + b_user + q_item + c[d, category] + h[hour]``
   is shared by all tasks; task ``t`` adds an author affinity ``<u_d, w_author> / sqrt(k)``, a
   task-specific affinity ``<u_d P_t, v> / sqrt(k)`` and task-specific user and item biases::

       logit_t = alpha_t E + beta_t <u_d, w> / sqrt(k) + gamma_t <u_d P_t, v> / sqrt(k)
                 + bu_t[user] + bi_t[item] + offset[d, t]

   ``alpha_t`` is positive for engagement behaviours (like, finish...) and negative for
   ``dislike`` / ``hate``, so those are anti-correlated with the rest.
4b. **Signal strength.** The whole logit of cell (d, t) is multiplied by ``Preset.signal[d][t]``
   (default 1): the knob that sets how separable a cell is, so its achievable AUC.
5. **Calibration.** For each (domain, task) one uniform draw ``U`` per row decides the label:
   ``y = 1`` iff ``U < sigmoid(logit_t)``. The offset ``offset[d, t]`` is chosen (a quantile of
   ``logit(U) - logit_t`` over the domain's rows) so that exactly ``round(rate * rows)`` labels
   are positive: the realised positive rate equals the published one up to one row. The offset
   is one constant per cell, fitted on the same draws, which couples it to the noise by
   ``O(1 / sqrt(positives))`` in logit: negligible for the oracle.
5b. **Pre-history window.** Before the first logged day, ``prehistory_days`` more days of
   impressions (as many per day as the log) are simulated with the same process: domain shares,
   member users by activity, member items by popularity, the calibrated task model. Only their
   counts are kept, as static features of every row: ``user_pre_exposures``,
   ``item_pre_exposures``, ``user_pre_domain_exposures`` (the user's impressions in the row's
   domain) and, per task ``t``, the smoothed rates ``user_<t>_pre_rate`` / ``item_<t>_pre_rate``
   ``= (positives + K p_t) / (exposures + K)`` (``K = prior_strength``). They are noisy
   estimates of each entity's true propensities, the long-term statistics industrial rankers
   read: the schema declares them as ``priors`` (PEPNet's PPNet), the rates as the tasks'
   ``related_features`` (PMTA's TPE) and the per-domain exposures as a ``domain_feature``.
6. **Oracle.** ``__oracle_<task> = sigmoid(logit_t)`` is the true probability of each label
   (registered in :attr:`RawData.oracle`, never a feature).
7. **History features** (:func:`mdmt.data.history.add_history_features`): per-task user and
   item positive rates, impression counts and behaviour sequences, computed from events strictly
   **before** the row's timestamp (rows sharing a timestamp never see each other), so no label
   leaks into a feature. One behaviour sequence ``seq_<t>`` per action type by default.

Example::

    >>> from mdmt.data.synthetic import SyntheticConfig, generate, oracle_auc
    >>> raw = generate(SyntheticConfig(preset="douyin", rows=20_000, seed=0))
    >>> raw.frame.height, raw.spec.domain_names, raw.spec.task_names[:2]
    (20000, ['A', 'B'], ['like', 'follow'])
    >>> aucs = oracle_auc(raw)   # {("A", "like"): 0.8..., ...}
"""

from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from ..schema import ConfigError, DatasetSpec, DomainSpec, FeatureSpec, SplitSpec, StrictModel, TaskSpec
from .base import DataError, RawData
from .history import add_history_features

__all__ = [
    "SyntheticConfig",
    "Preset",
    "TaskLoading",
    "PRESETS",
    "generate",
    "prehistory_log",
    "oracle_auc",
    "ORACLE_PREFIX",
]

ORACLE_PREFIX = "__oracle_"  #: oracle probability columns are named ``__oracle_<task>``
_SMOOTHING = 20.0  #: pseudo-impressions of the smoothed prior rates
_GENDERS = np.array(["female", "male"])
_AGE_GROUPS = np.array(["<18", "18-24", "25-30", "31-40", "41-50", "50+"])
_AGE_SHARE = np.array([0.08, 0.22, 0.24, 0.22, 0.14, 0.10])
_ACTIVITY = np.array(["low", "medium", "high", "very_high"])
# share of impressions per hour of day (UTC hour of the timestamp): low at night, evening peak
_DIURNAL = np.array(
    [3.0, 2.0, 1.2, 0.8, 0.6, 0.6, 1.0, 2.0, 3.0, 3.5, 3.8, 4.2,
     4.8, 4.6, 4.2, 4.0, 4.2, 4.6, 5.2, 6.0, 6.6, 6.8, 6.0, 4.5]
)


# --------------------------------------------------------------------------------------------
# configuration and presets
# --------------------------------------------------------------------------------------------
class SyntheticConfig(StrictModel):
    """Parameters of :func:`generate`.

    Attributes:
        preset: ``"douyin"`` (PMTA Table 3) or ``"kuaishou"`` (PEPNet Table 1).
        rows: impressions to generate.
        num_users / num_items: population sizes; ``None`` scales with ``rows`` (``rows // 100``
            users, at least 20, and ``rows // 20`` items, at least 50).
        seq_len: maximal length of each behaviour sequence.
        factor_dim: width ``k`` of the latent user / item / author factors.
        seed: all randomness derives from it: the same seed gives an identical frame.
        days: time span of the log; ``None`` is the paper's (14 for douyin, 12 for kuaishou).
        sequences: behaviours (task names) with a ``seq_<task>`` sequence feature; ``None`` is
            every task (one behaviour sequence per action type).
        prehistory_days: length of the window before the first logged day from which the static
            per-user / per-item statistics (``*_pre_*`` features) are computed; the window holds
            as many impressions per day as the log. 0 switches the pre-history off. ``None`` is
            the preset's (as long as the log: 14 days for douyin, 12 for kuaishou).
        prior_strength: pseudo-impressions ``K`` of the smoothed pre-history rates
            ``(positives + K p_t) / (exposures + K)``.
        domain_shift: how far the domains pull apart: the scale ``lambda`` of the preference
            rotation ``W_d = I + lambda G_d / sqrt(k)``, with the preference shift ``s_d`` and
            the domain-category affinity ``c[d, category]`` at sd ``0.75 lambda``. 0 makes the
            domains differ only in their members, rows, rates and signal strengths (sharing
            across domains costs nothing); larger values make a joint model's forced sharing
            across domains cost more. The default 0.4 is the one the presets are calibrated at.
    """

    preset: Literal["douyin", "kuaishou"] = "douyin"
    rows: int = 200_000
    num_users: int | None = None
    num_items: int | None = None
    seq_len: int = 20
    factor_dim: int = 8
    seed: int = 0
    days: int | None = None
    sequences: list[str] | None = None
    prehistory_days: int | None = None
    prior_strength: float = 20.0
    domain_shift: float = 0.4


@dataclass(frozen=True)
class TaskLoading:
    """How task logits load on the shared latent components (see module docstring, step 4).

    ``engage`` (alpha) on the common engagement score, ``author`` (beta) on the author affinity,
    ``specific`` (gamma) on the task's own affinity, ``user_sd`` / ``item_sd`` the spread of the
    task-specific user and item biases.
    """

    engage: float
    author: float
    specific: float
    user_sd: float
    item_sd: float


@dataclass(frozen=True)
class Preset:
    """Published statistics a preset reproduces (rates and shares are fractions, not percent).

    ``user_sizes`` / ``item_sizes`` are relative population sizes per domain and
    ``user_overlap[x][y]`` the share of domain x's users also seen in domain y. ``triple`` sets
    the A∩B∩C intersection (3 domains) as a fraction of the smallest pairwise intersection.
    ``split_days`` are the train / valid / test days of the paper's protocol.
    """

    name: str
    domains: tuple[str, ...]
    domain_titles: dict[str, str]
    tasks: tuple[str, ...]
    rates: dict[str, dict[str, float]]
    instance_share: dict[str, float]
    user_sizes: dict[str, float]
    user_overlap: dict[str, dict[str, float]]
    item_sizes: dict[str, float]
    item_overlap: dict[str, dict[str, float]]
    triple: float
    days: int
    split_days: tuple[int, int, int]
    epoch: int
    loadings: dict[str, TaskLoading]
    paper: str
    prehistory_days: int = 14
    #: a strong baseline's published test AUC per (domain, task): the calibration target
    baseline_auc: dict[str, dict[str, float]] | None = None
    baseline_source: str = ""
    #: per (domain, task) multiplier of the logit before calibration (step 4b): the signal strength
    signal: dict[str, dict[str, float]] | None = None
    #: sd of the users' own factors ``eps_u`` (step 3): the part of a user's taste only the id reveals
    user_factor_sd: float = 0.8
    #: sd of the items' own factors ``eta_i`` (step 3): the part of an item's profile only the id reveals
    item_factor_sd: float = 0.6


def _rates(tasks: tuple[str, ...], **per_domain: tuple[float, ...]) -> dict[str, dict[str, float]]:
    return {d: {t: r / 100.0 for t, r in zip(tasks, v, strict=True)} for d, v in per_domain.items()}


def _signal(tasks: tuple[str, ...], **per_domain: tuple[float, ...]) -> dict[str, dict[str, float]]:
    return {d: dict(zip(tasks, v, strict=True)) for d, v in per_domain.items()}


_DOUYIN_TASKS = ("like", "follow", "comment", "dislike", "headslideleft", "finish")
_KUAISHOU_TASKS = ("like", "follow", "forward", "hate", "click", "effview")

PRESETS: dict[str, Preset] = {
    "douyin": Preset(
        name="douyin",
        domains=("A", "B"),
        domain_titles={"A": "Douyin", "B": "Douyin Lite"},
        tasks=_DOUYIN_TASKS,
        rates=_rates(
            _DOUYIN_TASKS,
            A=(2.30, 0.09, 0.18, 0.04, 1.35, 24.62),
            B=(2.91, 0.11, 0.15, 0.06, 1.44, 24.17),
        ),
        # not published; proportional to the user populations implied by the overlaps
        instance_share={"A": 0.872, "B": 0.678},
        # |A| / |B| = overlap(B->A) / overlap(A->B), so these sizes reproduce both shares
        user_sizes={"A": 0.872, "B": 0.678},
        user_overlap={"A": {"B": 0.678}, "B": {"A": 0.872}},
        item_sizes={"A": 0.301, "B": 0.232},
        item_overlap={"A": {"B": 0.232}, "B": {"A": 0.301}},
        triple=0.5,
        days=14,
        split_days=(10, 2, 2),
        epoch=1727827200,  # 2024-10-02 00:00 UTC (PMTA: October 2-15, 2024)
        loadings={
            "like": TaskLoading(1.0, 0.3, 0.5, 0.5, 0.5),
            "follow": TaskLoading(0.5, 1.0, 0.4, 0.5, 0.4),
            "comment": TaskLoading(0.7, 0.3, 0.6, 0.6, 0.5),
            "dislike": TaskLoading(-0.8, -0.2, 0.6, 0.6, 0.5),
            "headslideleft": TaskLoading(0.4, 0.8, 0.5, 0.5, 0.4),
            "finish": TaskLoading(0.8, 0.0, 0.3, 0.3, 0.8),
        },
        paper="PMTA (CIKM 2025), Table 3",
        baseline_auc=_rates(
            _DOUYIN_TASKS,
            A=(96.05, 96.06, 98.13, 94.41, 90.80, 78.33),
            B=(95.65, 94.72, 98.53, 94.45, 91.12, 87.15),
        ),
        baseline_source="PMTA (CIKM 2025), Table 1, PLE",
        # set with benchmarks/calibrate_synthetic.py at the bench size (1M rows, 10,000 items): a trained
        # MMoE-MDMT near the paper's PLE, close to the learnable ceiling
        signal=_signal(
            _DOUYIN_TASKS,
            A=(4.16, 2.28, 3.3, 4.16, 2.37, 1.36),
            B=(4.51, 2.8, 4.62, 4.2, 2.54, 2.48),
        ),
        user_factor_sd=0.5,
        item_factor_sd=0.4,
    ),
    "kuaishou": Preset(
        name="kuaishou",
        domains=("A", "B", "C"),
        domain_titles={"A": "Discovery Tab", "B": "Featured-Video Tab", "C": "Slide Tab"},
        tasks=_KUAISHOU_TASKS,
        rates=_rates(
            _KUAISHOU_TASKS,
            A=(3.68, 0.48, 0.21, 0.20, 14.66, 45.57),
            B=(2.91, 0.33, 0.21, 0.06, 58.38, 44.58),
            C=(2.82, 0.35, 0.28, 0.08, 57.33, 48.48),
        ),
        instance_share={"A": 48_037.0, "B": 68_348.0, "C": 78_197.0},
        user_sizes={"A": 76.0, "B": 110.0, "C": 88.0},
        user_overlap={
            "A": {"B": 0.9211, "C": 0.0789},
            "B": {"A": 0.6364, "C": 0.0727},
            "C": {"A": 0.0682, "B": 0.0909},
        },
        item_sizes={"A": 9_474.0, "B": 5_205.0, "C": 5_588.0},
        item_overlap={
            "A": {"B": 0.2117, "C": 0.2257},
            "B": {"A": 0.3854, "C": 0.4343},
            "C": {"A": 0.3826, "B": 0.4046},
        },
        triple=0.5,
        days=12,
        split_days=(10, 1, 1),
        prehistory_days=12,
        epoch=1662854400,  # 2022-09-11 00:00 UTC (PEPNet: September 11-22, 2022)
        loadings={
            "like": TaskLoading(1.0, 0.3, 0.5, 0.5, 0.5),
            "follow": TaskLoading(0.5, 1.0, 0.4, 0.5, 0.4),
            "forward": TaskLoading(0.7, 0.2, 0.6, 0.6, 0.5),
            "hate": TaskLoading(-0.8, -0.2, 0.6, 0.6, 0.5),
            "click": TaskLoading(0.6, 0.1, 0.3, 0.4, 0.6),
            "effview": TaskLoading(0.8, 0.0, 0.3, 0.3, 0.8),
        },
        paper="PEPNet (KDD 2023), Table 1",
        # domain A's row is read from a poorly extracted table; B and C are clean
        baseline_auc=_rates(
            _KUAISHOU_TASKS,
            A=(87.36, 79.91, 77.73, 76.74, 69.31, 70.06),
            B=(89.05, 86.77, 76.25, 83.26, 71.57, 70.33),
            C=(90.18, 86.51, 77.23, 85.07, 72.46, 71.55),
        ),
        baseline_source="PEPNet (KDD 2023), Table 2, PLE",
        # set with benchmarks/calibrate_synthetic.py at the bench size (1M rows, 10,000 items)
        signal=_signal(
            _KUAISHOU_TASKS,
            A=(1.58, 1.37, 1.08, 0.95, 0.8, 0.78),
            B=(1.99, 2.04, 1.26, 1.9, 1.17, 0.85),
            C=(2.16, 1.87, 1.37, 2.06, 1.18, 0.91),
        ),
        user_factor_sd=0.4,
        item_factor_sd=0.35,
    ),
}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _rng(seed: int, name: str) -> np.random.Generator:
    """An independent stream per component, stable across code reordering."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def _round_counts(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total`` (largest remainder)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * total
    out = np.floor(exact).astype(np.int64)
    rest = total - int(out.sum())
    if rest > 0:
        order = np.argsort(-(exact - out), kind="stable")
        out[order[:rest]] += 1
    return out


def _venn_regions(
    domains: tuple[str, ...], sizes: dict[str, float], overlap: dict[str, dict[str, float]], triple: float
) -> dict[frozenset[str], float]:
    """Sizes of the exclusive Venn regions (non-empty domain subsets) implied by the overlaps.

    ``inter({x, y}) = mean(overlap[x][y] * size[x], overlap[y][x] * size[y])``; regions follow by
    Moebius inversion ``region(S) = sum_{T ⊇ S} (-1)^{|T|-|S|} inter(T)``.
    """
    if len(domains) > 3:
        raise ConfigError(f"overlap presets support at most 3 domains, got {len(domains)}")
    inter: dict[frozenset[str], float] = {frozenset([d]): float(sizes[d]) for d in domains}
    for x, y in itertools.combinations(domains, 2):
        inter[frozenset([x, y])] = 0.5 * (overlap[x][y] * sizes[x] + overlap[y][x] * sizes[y])
    if len(domains) == 3:
        inter[frozenset(domains)] = triple * min(v for s, v in inter.items() if len(s) == 2)
    regions: dict[frozenset[str], float] = {}
    for s in inter:
        val = sum((-1) ** (len(t) - len(s)) * v for t, v in inter.items() if s <= t)
        if val < -1e-9:
            raise ConfigError(f"overlap targets are inconsistent: region {sorted(s)} has size {val:.4f}")
        regions[s] = max(val, 0.0)
    return regions


def _membership(
    n: int, preset: Preset, sizes: dict[str, float], overlap: dict[str, dict[str, float]], rng: np.random.Generator
) -> np.ndarray:
    """Boolean ``[n, D]``: which domains each of ``n`` entities belongs to."""
    regions = _venn_regions(preset.domains, sizes, overlap, preset.triple)
    keys = list(regions)
    counts = _round_counts(np.array([regions[k] for k in keys]), n)
    member = np.zeros((n, len(preset.domains)), dtype=bool)
    perm = rng.permutation(n)
    start = 0
    for k, c in zip(keys, counts, strict=True):
        cols = [preset.domains.index(d) for d in k]
        rows = perm[start : start + c]
        member[np.ix_(rows, cols)] = True
        start += c
    return member


def _assign(members: np.ndarray, weight: np.ndarray, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """``n_rows`` draws from ``members``: each member once (shuffled), the rest by ``weight``."""
    p = weight[members] / weight[members].sum()
    extra = rng.choice(members, size=n_rows - members.size, p=p)
    out = np.concatenate([members, extra])
    rng.shuffle(out)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function; logits are clipped to +-30 so probabilities stay strictly in (0, 1)."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def _labelled(name: str, names: "np.ndarray | tuple[str, ...]", codes: np.ndarray) -> pl.Series:
    """A string column ``names[codes]`` built by a Polars gather (fast for millions of rows)."""
    return pl.Series(name, list(names), dtype=pl.String).gather(pl.Series(codes, dtype=pl.UInt32))


def _add_history(
    frame: pl.DataFrame, *, tasks: list[str], sequences: list[str], seq_len: int, prior_rates: dict[str, float]
) -> pl.DataFrame:
    """Append the leak-free history features of :mod:`mdmt.data.history` under this module's names.

    Added columns, in this order (``t`` in ``tasks``, ``b`` in ``sequences``):
      * ``user_count_prior`` / ``item_count_prior``: earlier impressions of the user / item;
      * ``user_domain_count_prior`` / ``item_domain_count_prior``: the same in the row's domain;
      * ``user_<t>_rate_prior`` (all tasks), then ``item_<t>_ctr_prior`` (all tasks): the smoothed
        earlier positive rate ``(positives + _SMOOTHING * prior_rates[t]) / (impressions +
        _SMOOTHING)``; a null label counts as an impression without a positive;
      * ``seq_<b>``: the user's earlier items whose ``b`` label was 1, most recent first.

    ``frame`` needs the columns ``user_id``, ``item_id``, ``timestamp``, ``domain`` and the labels.
    """
    rename = {
        "user_events": "user_count_prior",
        "item_events": "item_count_prior",
        "user_domain_events": "user_domain_count_prior",
        "item_domain_events": "item_domain_count_prior",
    }
    rename |= {f"user_{t}_rate": f"user_{t}_rate_prior" for t in tasks}
    rename |= {f"item_{t}_rate": f"item_{t}_ctr_prior" for t in tasks}
    rename |= {f"hist_{b}": f"seq_{b}" for b in sequences}
    out = add_history_features(
        frame, user="user_id", item="item_id", timestamp="timestamp", labels=tasks, seq_len=seq_len,
        prior_strength=_SMOOTHING, prior_rates=prior_rates, rate_denominator="events", label_counts=False,
        sequence_labels=sequences, include_all=False, domain="domain", rename=rename,
    )  # fmt: skip
    return out.select(*frame.columns, *rename.values())


@dataclass
class _PreHistory:
    """Counts over the pre-history window: ``[U]`` / ``[I]`` exposures, ``[U, T]`` / ``[I, T]``
    positives and ``[U, D]`` exposures per domain."""

    rows: int
    user_exposures: np.ndarray
    user_positives: np.ndarray
    item_exposures: np.ndarray
    item_positives: np.ndarray
    user_domain_exposures: np.ndarray
    log: dict[str, np.ndarray] | None = None


def _prehistory(
    *,
    n_pre: int,
    rows_per_dom: np.ndarray,
    user_member: np.ndarray,
    item_member: np.ndarray,
    activity: np.ndarray,
    popularity: np.ndarray,
    n_users: int,
    n_items: int,
    offsets: np.ndarray,
    task_logits,
    rng: np.random.Generator,
    keep: bool = False,
) -> _PreHistory:
    """Simulate ``n_pre`` impressions before the first logged day with the log's own process
    (domain shares, member users by activity, member items by popularity, the calibrated task
    model) and count exposures and positives per user and per item. Only the counts are kept."""
    n_dom, n_task = offsets.shape
    counts = _round_counts(rows_per_dom, n_pre) if n_pre > 0 else np.zeros(n_dom, dtype=np.int64)
    user = np.empty(n_pre, dtype=np.int64)
    item = np.empty(n_pre, dtype=np.int64)
    dom = np.repeat(np.arange(n_dom, dtype=np.int64), counts)
    start = 0
    for j in range(n_dom):
        c = int(counts[j])
        um, im = np.flatnonzero(user_member[:, j]), np.flatnonzero(item_member[:, j])
        user[start : start + c] = rng.choice(um, size=c, p=activity[um] / activity[um].sum())
        item[start : start + c] = rng.choice(im, size=c, p=popularity[im] / popularity[im].sum())
        start += c
    hour = rng.choice(24, size=n_pre, p=_DIURNAL / _DIURNAL.sum())
    pos_u = np.zeros((n_users, n_task))
    pos_i = np.zeros((n_items, n_task))
    kept = np.zeros((n_pre, n_task), dtype=np.int8) if keep else None
    chunk = 1 << 19  # bounded memory: the logits of half a million rows at a time
    for lo in range(0, n_pre, chunk):
        hi = min(lo + chunk, n_pre)
        p = _sigmoid(task_logits(user[lo:hi], item[lo:hi], dom[lo:hi], hour[lo:hi]) + offsets[dom[lo:hi]])
        y = rng.random(p.shape) < p
        if kept is not None:
            kept[lo:hi] = y
        for t in range(n_task):
            pos_u[:, t] += np.bincount(user[lo:hi], weights=y[:, t], minlength=n_users)
            pos_i[:, t] += np.bincount(item[lo:hi], weights=y[:, t], minlength=n_items)
    return _PreHistory(
        rows=n_pre,
        user_exposures=np.bincount(user, minlength=n_users),
        user_positives=pos_u,
        item_exposures=np.bincount(item, minlength=n_items),
        item_positives=pos_i,
        user_domain_exposures=np.bincount(user * n_dom + dom, minlength=n_users * n_dom).reshape(n_users, n_dom),
        log=None if kept is None else {"user": user, "item": item, "domain": dom, "hour": hour, "labels": kept},
    )


def _prehistory_columns(
    pre: _PreHistory,
    user: np.ndarray,
    item: np.ndarray,
    dom: np.ndarray,
    tasks: tuple[str, ...],
    prior: dict[str, float],
    strength: float,
) -> list[pl.Series]:
    """The static pre-history features of each row (rows in the frame's order).

    ``user_pre_exposures`` / ``item_pre_exposures``: impressions in the window;
    ``user_pre_domain_exposures``: the user's impressions in the row's domain;
    ``user_<t>_pre_rate`` / ``item_<t>_pre_rate``: ``(positives + K p_t) / (exposures + K)``.
    """
    cols = [
        pl.Series("user_pre_exposures", pre.user_exposures[user], dtype=pl.Int64),
        pl.Series("item_pre_exposures", pre.item_exposures[item], dtype=pl.Int64),
        pl.Series("user_pre_domain_exposures", pre.user_domain_exposures[user, dom], dtype=pl.Int64),
    ]
    for j, t in enumerate(tasks):
        ru = (pre.user_positives[:, j] + strength * prior[t]) / (pre.user_exposures + strength)
        cols.append(pl.Series(f"user_{t}_pre_rate", ru[user], dtype=pl.Float64))
    for j, t in enumerate(tasks):
        ri = (pre.item_positives[:, j] + strength * prior[t]) / (pre.item_exposures + strength)
        cols.append(pl.Series(f"item_{t}_pre_rate", ri[item], dtype=pl.Float64))
    return cols


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------
def _sizes(cfg: SyntheticConfig) -> tuple[int, int]:
    users = cfg.num_users if cfg.num_users is not None else max(20, cfg.rows // 100)
    items = cfg.num_items if cfg.num_items is not None else max(50, cfg.rows // 20)
    return users, items


def _check(cfg: SyntheticConfig, preset: Preset) -> None:
    src = f"SyntheticConfig(preset={cfg.preset!r})"
    if cfg.rows < 100:
        raise ConfigError(f"{src}: rows must be at least 100, got {cfg.rows}")
    if cfg.seq_len < 1 or cfg.factor_dim < 1:
        raise ConfigError(f"{src}: seq_len and factor_dim must be positive")
    if cfg.days is not None and cfg.days < 1:
        raise ConfigError(f"{src}: days must be positive, got {cfg.days}")
    if cfg.prehistory_days is not None and cfg.prehistory_days < 0:
        raise ConfigError(f"{src}: prehistory_days must be >= 0, got {cfg.prehistory_days}")
    if cfg.prior_strength <= 0:
        raise ConfigError(f"{src}: prior_strength must be positive, got {cfg.prior_strength}")
    if not (cfg.domain_shift >= 0 and math.isfinite(cfg.domain_shift)):
        raise ConfigError(f"{src}: domain_shift must be a finite number >= 0, got {cfg.domain_shift}")
    users, items = _sizes(cfg)
    if users < len(preset.domains) or items < len(preset.domains):
        raise ConfigError(f"{src}: num_users and num_items must be at least {len(preset.domains)}")
    for b in cfg.sequences or []:
        if b not in preset.tasks:
            raise ConfigError(f"{src}: sequences names unknown task {b!r}; tasks are {list(preset.tasks)}")


def generate(cfg: SyntheticConfig) -> RawData:
    """Generate a synthetic MDMT impression log (see the module docstring for the process).

    Deterministic: the same ``cfg`` (seed included) gives an identical frame. Rows are sorted by
    ``timestamp``. About a few seconds per million rows.

    Returns:
        :class:`RawData` with a full :class:`DatasetSpec` (temporal split mirroring the paper's
        days), oracle columns ``__oracle_<task>`` and ``meta`` holding the preset's targets:
        ``{"targets": {domain: {task: rate}}, "user_overlap": {x: {y: share}}, "item_overlap":
        ..., "instance_share": {domain: share}, ...}``.

    Raises:
        ConfigError: sizes that cannot hold the preset (e.g. more members of a domain than rows).
    """
    return _generate(cfg)[0]


def prehistory_log(cfg: SyntheticConfig) -> tuple[RawData, dict[str, np.ndarray]]:
    """:func:`generate` plus the simulated pre-history impressions and the entities' attributes.

    For references that may see every logged event (:mod:`mdmt.data.ceiling`), never for models.

    Returns:
        ``(raw, log)``: ``log`` holds ``user``, ``item``, ``domain``, ``hour`` ``[P]`` int64 and
        ``labels`` ``[P, T]`` int8 of the ``P`` pre-history impressions, plus ``item_author``,
        ``item_category`` ``[I]`` and ``user_gender``, ``user_age`` ``[U]`` codes.
    """
    raw, log = _generate(cfg, keep_prehistory=True)
    assert log is not None
    return raw, log


def _generate(cfg: SyntheticConfig, keep_prehistory: bool = False) -> tuple[RawData, dict[str, np.ndarray] | None]:
    preset = PRESETS[cfg.preset]
    _check(cfg, preset)
    n_users, n_items = _sizes(cfg)
    n_rows, k, seed = cfg.rows, cfg.factor_dim, cfg.seed
    doms, tasks = preset.domains, preset.tasks
    n_dom, n_task = len(doms), len(tasks)
    days = cfg.days if cfg.days is not None else preset.days
    seq_behaviours = list(cfg.sequences) if cfg.sequences is not None else list(tasks)
    pre_days = cfg.prehistory_days if cfg.prehistory_days is not None else preset.prehistory_days
    src = f"SyntheticConfig(preset={cfg.preset!r}, rows={n_rows})"

    # 1. who is where --------------------------------------------------------------------------
    user_member = _membership(n_users, preset, preset.user_sizes, preset.user_overlap, _rng(seed, "user_member"))
    item_member = _membership(n_items, preset, preset.item_sizes, preset.item_overlap, _rng(seed, "item_member"))
    rows_per_dom = _round_counts(np.array([preset.instance_share[d] for d in doms]), n_rows)
    for j, d in enumerate(doms):
        need = max(int(user_member[:, j].sum()), int(item_member[:, j].sum()))
        if min(int(user_member[:, j].sum()), int(item_member[:, j].sum())) == 0:
            raise ConfigError(f"{src}: domain {d!r} gets no users or no items; raise num_users / num_items")
        if rows_per_dom[j] < need:
            raise ConfigError(
                f"{src}: domain {d!r} gets {rows_per_dom[j]} rows but has {int(user_member[:, j].sum())} member "
                f"users and {int(item_member[:, j].sum())} member items; each must appear once. "
                "Raise rows or lower num_users / num_items."
            )
    r = _rng(seed, "population")
    activity = r.lognormal(0.0, 0.7, n_users)
    popularity = r.lognormal(0.0, 1.0, n_items)
    r = _rng(seed, "rows")
    user = np.empty(n_rows, dtype=np.int64)
    item = np.empty(n_rows, dtype=np.int64)
    dom = np.repeat(np.arange(n_dom, dtype=np.int64), rows_per_dom)
    bounds = np.concatenate([[0], np.cumsum(rows_per_dom)])
    for j in range(n_dom):
        lo, hi = bounds[j], bounds[j + 1]
        user[lo:hi] = _assign(np.flatnonzero(user_member[:, j]), activity, hi - lo, r)
        item[lo:hi] = _assign(np.flatnonzero(item_member[:, j]), popularity, hi - lo, r)

    # 2. when ----------------------------------------------------------------------------------
    r = _rng(seed, "time")
    day = r.integers(0, days, n_rows)
    hour = r.choice(24, size=n_rows, p=_DIURNAL / _DIURNAL.sum())
    ts = preset.epoch + day * 86_400 + hour * 3_600 + r.integers(0, 3_600, n_rows)

    # 3. latent world --------------------------------------------------------------------------
    r = _rng(seed, "users")
    gender = r.integers(0, 2, n_users)
    age = r.choice(len(_AGE_GROUPS), size=n_users, p=_AGE_SHARE)
    g_emb = r.normal(0.0, 0.5, (2, k))
    a_emb = r.normal(0.0, 0.5, (len(_AGE_GROUPS), k))
    u = g_emb[gender] + a_emb[age] + r.normal(0.0, preset.user_factor_sd, (n_users, k))
    log_act = np.log(activity)
    act_level = np.searchsorted(np.quantile(log_act, [0.25, 0.5, 0.75]), log_act, side="right")
    b_user = 0.2 * (log_act - log_act.mean()) / (log_act.std() + 1e-12) + r.normal(0.0, 0.35, n_users)

    r = _rng(seed, "items")
    n_cat = int(np.clip(n_items // 100, 5, 50))
    n_auth = max(10, n_items // 5)
    cat_share = r.dirichlet(np.full(n_cat, 2.0))
    category = r.choice(n_cat, size=n_items, p=cat_share)
    author = r.choice(n_auth, size=n_items, p=r.dirichlet(np.full(n_auth, 0.5)))
    c_emb = r.normal(0.0, 0.8, (n_cat, k))
    w_emb = r.normal(0.0, 1.0, (n_auth, k))
    v = c_emb[category] + 0.4 * w_emb[author] + r.normal(0.0, preset.item_factor_sd, (n_items, k))
    q_item = r.normal(0.0, 0.5, n_items)

    r = _rng(seed, "domains")
    lam = cfg.domain_shift  # 0.3 = 0.75 * 0.4 is written as 0.3 * (lam / 0.4): bit-identical at the default
    w_dom = np.eye(k)[None] + lam * r.normal(0.0, 1.0, (n_dom, k, k)) / math.sqrt(k)
    s_dom = r.normal(0.0, 0.3 * (lam / 0.4), (n_dom, k))
    u_dom = np.einsum("uk,dkl->dul", u, w_dom) + s_dom[:, None, :]  # [D, U, k]
    dom_cat = r.normal(0.0, 0.3 * (lam / 0.4), (n_dom, n_cat))
    hour_eff = 0.2 * np.cos(2 * np.pi * (np.arange(24) - 21) / 24)

    # 4. correlated tasks ----------------------------------------------------------------------
    r = _rng(seed, "tasks")
    proj = np.empty((k, n_task, k))
    bias_u = np.empty((n_users, n_task))
    bias_i = np.empty((n_items, n_task))
    for j, t in enumerate(tasks):
        ld = preset.loadings[t]
        proj[:, j, :] = r.normal(0.0, 1.0, (k, k)) / math.sqrt(k)
        bias_u[:, j] = r.normal(0.0, ld.user_sd, n_users)
        bias_i[:, j] = r.normal(0.0, ld.item_sd, n_items)
    load = {f: np.array([getattr(preset.loadings[t], f) for t in tasks]) for f in ("engage", "author", "specific")}
    signal = np.array([[(preset.signal or {}).get(d, {}).get(t, 1.0) for t in tasks] for d in doms])  # [D, T]
    proj_flat = proj.reshape(k, n_task * k)
    author_v = w_emb[author]  # [I, k]: each item's author factors

    def task_logits(user: np.ndarray, item: np.ndarray, dom: np.ndarray, hour: np.ndarray) -> np.ndarray:
        """``[n, T]`` logits before calibration (module docstring, step 4), all tasks at once."""
        ud = u_dom[dom, user]  # [n, k]
        vi = v[item]  # [n, k]
        engage = (
            np.einsum("nk,nk->n", ud, vi) / math.sqrt(k)
            + b_user[user] + q_item[item] + dom_cat[dom, category[item]] + hour_eff[hour]
        )  # fmt: skip
        author_aff = np.einsum("nk,nk->n", ud, author_v[item]) / math.sqrt(k)
        specific = np.einsum("ntk,nk->nt", (ud @ proj_flat).reshape(len(user), n_task, k), vi) / math.sqrt(k)
        return signal[dom] * (
            engage[:, None] * load["engage"] + author_aff[:, None] * load["author"]
            + specific * load["specific"] + bias_u[user] + bias_i[item]
        )  # fmt: skip

    logits = task_logits(user, item, dom, hour)

    # 5. calibration + labels ------------------------------------------------------------------
    r = _rng(seed, "labels")
    unif = r.random((n_rows, n_task))
    np.clip(unif, 1e-12, 1 - 1e-12, out=unif)
    resid = np.log(unif) - np.log1p(-unif) - logits  # y = 1  <=>  resid < offset
    labels = np.empty((n_rows, n_task), dtype=np.int8)
    offsets: dict[str, dict[str, float]] = {d: {} for d in doms}
    for j, d in enumerate(doms):
        lo, hi = bounds[j], bounds[j + 1]
        n = hi - lo
        for i, t in enumerate(tasks):
            rr = resid[lo:hi, i]
            kpos = int(round(preset.rates[d][t] * n))
            if kpos <= 0:
                off = float(rr.min()) - 1.0
            elif kpos >= n:
                off = float(rr.max()) + 1.0
            else:
                part = np.partition(rr, [kpos - 1, kpos])
                off = 0.5 * float(part[kpos - 1] + part[kpos])
            logits[lo:hi, i] += off
            labels[lo:hi, i] = rr < off
            offsets[d][t] = off
    oracle = _sigmoid(logits)
    del resid, unif, logits

    # 5b. pre-history window: static per-user / per-item statistics -----------------------------
    pre = _prehistory(
        n_pre=int(round(n_rows * pre_days / days)), rows_per_dom=rows_per_dom, user_member=user_member,
        item_member=item_member, activity=activity, popularity=popularity, n_users=n_users, n_items=n_items,
        offsets=np.array([[offsets[d][t] for t in tasks] for d in doms]), task_logits=task_logits,
        rng=_rng(seed, "prehistory"), keep=keep_prehistory,
    )  # fmt: skip

    # 6. frame, sorted by time -----------------------------------------------------------------
    order = np.argsort(ts, kind="stable")
    user, item, dom, ts, hour = user[order], item[order], dom[order], ts[order], hour[order]
    labels, oracle = labels[order], oracle[order]
    cols: dict[str, pl.Series] = {
        "user_id": pl.Series("user_id", user, dtype=pl.Int64),
        "item_id": pl.Series("item_id", item, dtype=pl.Int64),
        "author_id": pl.Series("author_id", author[item], dtype=pl.Int64),
        "item_category": pl.Series("item_category", category[item], dtype=pl.Int64),
        "user_gender": _labelled("user_gender", _GENDERS, gender[user]),
        "user_age_group": _labelled("user_age_group", _AGE_GROUPS, age[user]),
        "user_activity": _labelled("user_activity", _ACTIVITY, act_level[user]),
        "hour": pl.Series("hour", hour, dtype=pl.Int64),
        "domain": _labelled("domain", doms, dom),
        "timestamp": pl.Series("timestamp", ts, dtype=pl.Int64),
    }
    for i, t in enumerate(tasks):
        cols[t] = pl.Series(t, labels[:, i], dtype=pl.Int8)
    frame = pl.DataFrame(list(cols.values()))
    prior = {t: float(np.mean([preset.rates[d][t] for d in doms])) for t in tasks}
    frame = _add_history(frame, tasks=list(tasks), sequences=seq_behaviours, seq_len=cfg.seq_len, prior_rates=prior)
    if pre_days > 0:
        frame = frame.with_columns(_prehistory_columns(pre, user, item, dom, tasks, prior, cfg.prior_strength))
    frame = frame.with_columns(
        [pl.Series(f"{ORACLE_PREFIX}{t}", oracle[:, i], dtype=pl.Float64) for i, t in enumerate(tasks)]
    )

    spec = _spec(cfg, preset, seq_behaviours)
    meta = {
        "preset": preset.name,
        "paper": preset.paper,
        "domain_titles": dict(preset.domain_titles),
        "targets": {d: dict(preset.rates[d]) for d in doms},
        "user_overlap": {x: dict(v) for x, v in preset.user_overlap.items()},
        "item_overlap": {x: dict(v) for x, v in preset.item_overlap.items()},
        "overlap_reading": "overlap[x][y] = share of domain x's users (items) also seen in domain y",
        "instance_share": {d: float(s) for d, s in zip(doms, rows_per_dom / n_rows, strict=True)},
        "num_users": n_users,
        "num_items": n_items,
        "days": days,
        "split_days": list(preset.split_days),
        "calibration_offsets": offsets,
        "prior_rates": prior,
        "prehistory": {"days": pre_days, "rows": pre.rows, "prior_strength": cfg.prior_strength},
        "config": cfg.model_dump(),
    }
    raw = RawData(
        spec=spec,
        frame=frame,
        source=f"synthetic:{preset.name}(rows={n_rows}, seed={seed})",
        oracle={t: f"{ORACLE_PREFIX}{t}" for t in tasks},
        meta=meta,
    )
    log = None
    if keep_prehistory:
        log = dict(pre.log or {}, item_author=author, item_category=category, user_gender=gender, user_age=age)
    return raw, log


def _spec(cfg: SyntheticConfig, preset: Preset, seqs: list[str]) -> DatasetSpec:
    """The schema of a generated frame."""
    feats = [
        FeatureSpec(name="user_id", source="user"),
        FeatureSpec(name="item_id", source="item"),
        FeatureSpec(name="author_id", source="item"),
        FeatureSpec(name="item_category", source="item"),
        FeatureSpec(name="user_gender", source="user"),
        FeatureSpec(name="user_age_group", source="user"),
        FeatureSpec(name="user_activity", source="user"),
        FeatureSpec(name="hour", source="context"),
        FeatureSpec(name="user_count_prior", kind="dense", source="user", transform="log_standard"),
        FeatureSpec(name="item_count_prior", kind="dense", source="item", transform="log_standard"),
        FeatureSpec(name="user_domain_count_prior", kind="dense", source="context", transform="log_standard"),
        FeatureSpec(name="item_domain_count_prior", kind="dense", source="context", transform="log_standard"),
    ]
    feats += [FeatureSpec(name=f"user_{t}_rate_prior", kind="dense", source="user") for t in preset.tasks]
    feats += [FeatureSpec(name=f"item_{t}_ctr_prior", kind="dense", source="item") for t in preset.tasks]
    feats += [
        FeatureSpec(name=f"seq_{b}", kind="sequence", source="user", vocab="item_id", max_len=cfg.seq_len, behaviour=b)
        for b in seqs
    ]
    pre_on = (cfg.prehistory_days if cfg.prehistory_days is not None else preset.prehistory_days) > 0
    pre_stats: list[str] = []
    if pre_on:
        feats += [
            FeatureSpec(name="user_pre_exposures", kind="dense", source="user", transform="log_standard"),
            FeatureSpec(name="item_pre_exposures", kind="dense", source="item", transform="log_standard"),
            FeatureSpec(name="user_pre_domain_exposures", kind="dense", source="context", transform="log_standard"),
        ]
        feats += [FeatureSpec(name=f"user_{t}_pre_rate", kind="dense", source="user") for t in preset.tasks]
        feats += [FeatureSpec(name=f"item_{t}_pre_rate", kind="dense", source="item") for t in preset.tasks]
        pre_stats = ["user_pre_exposures", "item_pre_exposures"]
        pre_stats += [f"user_{t}_pre_rate" for t in preset.tasks] + [f"item_{t}_pre_rate" for t in preset.tasks]
    tasks = [
        TaskSpec(
            name=t,
            label=t,
            related_features=[
                *([f"user_{t}_pre_rate", f"item_{t}_pre_rate"] if pre_on else []),
                f"user_{t}_rate_prior",
                f"item_{t}_ctr_prior",
                *([f"seq_{t}"] if t in seqs else []),
            ],
        )
        for t in preset.tasks
    ]
    tr, va, te = preset.split_days
    total = tr + va + te
    return DatasetSpec(
        name=f"synthetic-{preset.name}",
        features=feats,
        domain=DomainSpec(column="domain", names=list(preset.domains)),
        tasks=tasks,
        group="user_id",
        timestamp="timestamp",
        split=SplitSpec(method="temporal", ratios=(tr / total, va / total, te / total)),
        priors=["user_id", "item_id", "author_id", *pre_stats],
        domain_features=[
            "hour", "user_domain_count_prior", "item_domain_count_prior", *(["user_pre_domain_exposures"] if pre_on else [])
        ],
    )


# --------------------------------------------------------------------------------------------
# oracle AUC
# --------------------------------------------------------------------------------------------
def _rank_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties at half credit; NaN for one class."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def oracle_auc(raw: RawData) -> dict[tuple[str, str], float]:
    """AUC of the true probabilities in each (domain, task) cell: the ceiling of any model.

    Computed over the rows of the domain where the task's label is observed; a cell with a single
    class is NaN.

    Raises:
        DataError: ``raw`` has no oracle columns (it is not synthetic).
    """
    if not raw.oracle:
        raise DataError(f"{raw.source}: no oracle columns; oracle AUC needs synthetic data")
    from .stats import _domain_expr  # the one place that maps raw domain values to names

    spec = raw.spec
    frame = raw.frame.with_columns(_domain_expr(spec).alias("__domain"))
    out: dict[tuple[str, str], float] = {}
    for task in spec.tasks:
        col = raw.oracle.get(task.name)
        if col is None:
            continue
        for d in spec.domain_names:
            part = frame.filter((pl.col("__domain") == d) & pl.col(task.label).is_not_null())
            out[(d, task.name)] = _rank_auc(part[task.label].to_numpy(), part[col].to_numpy())
    return out
