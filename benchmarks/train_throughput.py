"""Training throughput of every registered model, and how close it runs to the machine's limit.

For each model (default: all of ``mdmt.models.REGISTRY``), on ``--rows`` synthetic rows of the
``douyin`` preset (1,000,000 by default; generated and prepared once), batch ``--batch-size``:

1. **End to end**: the real training path — :class:`mdmt.data.loader.BatchIterator` over the
   prepared train split (shuffled), ``Batch.to(device)``, then :meth:`mdmt.train.trainer.Trainer.train_step`
   (model → masked multi-task BCE → backward → optimizer step; plus, for models with
   ``step_on="valid"`` groups such as M3oE's α and β, the architecture step on a batch of the
   held-out training rows after every main step, as in ``Trainer.fit`` with ``train.arch_every: 1``;
   its share of the step time is reported). The epoch's shuffle (one
   ``randperm`` and one gather of the split) is timed once and amortised over the epoch's steps.
2. **Model only**: the same ``train_step`` on one batch already in memory, reused.
3. **FLOPs per step**: forward + backward of one batch, counted with
   ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and similar; element-wise ops are
   not counted, so utilisation is a lower bound in that respect).
4. **Peak**: ``torch.mm`` on 2048×2048 float32, best of ``--mm-repeats``, in the same run
   (before and after the models; the higher is used).

Reported per model: samples/s end to end and model only, the ratio of end-to-end to model-only
step time (target ≤ 1.10), FLOPs per step, achieved FLOP/s and utilisation = achieved / peak, end
to end and model only.

**Comparisons measured in the same run** (the rows of one comparison are timed together, see below):

* **Composition overhead**: ``mmoe`` and ``sharedbottom`` beside a hand-written reference each
  (:class:`HandWrittenMMoE`, :class:`HandWrittenSharedBottom` below): plain torch modules with
  the registered model's parameter shapes and FLOPs on the same schema (the same embedding
  lookups, id dropout and input), trained by the same ``train_step``. Reported: registered ÷
  hand-written step time; target ≤ 1.05.
* **PMTA's cost** (``pmta``): PMTA with its default backbone, its base model alone (the same
  embeddings, ``H`` and classifiers ``C^t`` without the PMTA head: ``sharedbottom``, whose runs
  warm-start PMTA, §2.4), and a warm-started PMTA whose loaded parameters are frozen exactly as
  ``mdmt train --warm-start RUN --freeze-loaded`` does (:func:`mdmt.train.warmstart.apply_warm_start`:
  no gradient, no optimizer). Reported: PMTA's extra FLOPs per sample over its base model and
  the step-time ratios.
* **M3oE's AutoML step**: the architecture step's share of the end-to-end step time.

Timing: the rows of one comparison (or a model alone) are timed round by round, each round one
end-to-end and one model-only step of every row, the order rotated from round to round (``--steps``
rounds after ``--warmup``), so all paths see the same machine load. Step times are the medians over
the rounds; every ratio of two paths (end to end ÷ model only, registered ÷ hand-written, PMTA ÷
its base model) is the median over the rounds of the two paths' ratio in that round.
The machine is printed and saved with the results in ``benchmarks/results/train_throughput.json``.

With ``--dataset ml100k`` each model gets the settings of its ``mdmt`` row in ``--bench-config``
(default ``configs/bench/ml100k_m3oe_table2.yaml``: the official M3oE configuration, embedding 16,
batch 40960 with ``--batch-size 40960``, M3oE with 4 shared experts, no domain-id input, no id
dropout): model params, embedding settings, weight decay and the held-out share of the
architecture steps.

Run (from the repository root)::

    python benchmarks/train_throughput.py                      # all models, 1M rows
    python benchmarks/train_throughput.py --rows 100000 --models mlp,mmoe --steps 10
    MDMT_DATA_DIR=... python benchmarks/train_throughput.py --dataset ml100k --batch-size 40960 --models m3oe
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
try:
    import mdmt  # noqa: F401
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(ROOT))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, describe_line, mm_peak, synchronize  # noqa: E402
from mdmt.batch import Batch  # noqa: E402
from mdmt.embeddings import _WeightedBag  # noqa: E402
from mdmt.models.base import ModelOutput, OptimGroup  # noqa: E402

TARGET_RATIO = 1.10  #: end-to-end step time ÷ model-only step time should not exceed this
TARGET_HAND_RATIO = 1.05  #: registered ÷ hand-written step time (same run) should not exceed this
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "train_throughput.json"
ML100K_BENCH = ROOT / "configs" / "bench" / "ml100k_m3oe_table2.yaml"

#: registered models with a hand-written reference in this file
HAND_WRITTEN = ("mmoe", "sharedbottom")
#: the base model PMTA plugs into with its default backbone (the same embeddings, H and C^t)
PMTA_BASE = "sharedbottom"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows generated (train split ≈ 71%%)")
    p.add_argument("--preset", default="douyin", choices=["douyin", "kuaishou"])
    p.add_argument("--dataset", default="synthetic", choices=["synthetic", "ml100k"],
                   help="ml100k: MovieLens-100K, M3oE protocol, from MDMT_DATA_DIR, with --bench-config's settings")
    p.add_argument("--bench-config", default=None,
                   help="bench YAML whose mdmt rows give each model's params, embedding settings, weight decay "
                        "and architecture hold-out (default with --dataset ml100k: configs/bench/ml100k_m3oe_table2.yaml)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=50, help="timed rounds (each: every path of every row once; medians kept)")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds before timing")
    p.add_argument("--models", default=None, help="comma-separated registered names (default: all)")
    p.add_argument("--no-compare", action="store_true",
                   help="skip the comparison rows (hand-written references, PMTA's base model and warm start)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: os.cpu_count())")
    p.add_argument("--mm-repeats", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Hand-written references: plain torch, the registered models' shapes and FLOPs
# ---------------------------------------------------------------------------------------------
@dataclass
class EmbeddingLayout:
    """The input side of a registered model, as plain numbers: what a hand-written model on the
    same schema looks up. Built by :func:`embedding_layout`.

    Attributes:
        tables: ``(rows, dim)`` of every embedding table, in the registered model's order.
        per_domain_rows: per table, the rows of one domain's block (per-domain tables), else 0.
        sparse: ``(table, column of Batch.sparse)`` of each one-id lookup, in input order.
        domain_dim: width of the domain-id embedding (0: the domain is no input).
        sequences: ``(table, sequence name)`` of each sequence lookup (mean-pooled), in input order.
        num_dense: dense features appended last.
        num_domains: ``D``.
        id_dropout: probability that an id of an id column becomes OOV in training.
        dropout_columns: the id columns of ``Batch.sparse`` (bools).
    """

    tables: list[tuple[int, int]]
    per_domain_rows: list[int]
    sparse: list[tuple[int, int]]
    domain_dim: int
    sequences: list[tuple[int, str]]
    num_dense: int
    num_domains: int
    id_dropout: float
    dropout_columns: list[bool]

    @property
    def input_dim(self) -> int:
        return (sum(self.tables[t][1] for t, _ in self.sparse) + self.domain_dim
                + sum(self.tables[t][1] for t, _ in self.sequences) + self.num_dense)


def embedding_layout(model: nn.Module, spec: Any, feature_map: Any) -> EmbeddingLayout:
    """The :class:`EmbeddingLayout` of a registered model (its ``embeddings``, read through their public API)."""
    emb = model.embeddings
    tables = spec.effective_tables()
    names = [t.name for t in tables]
    D = spec.num_domains
    per_domain = [t.per_domain or emb.cfg.per_domain for t in tables]
    shapes = [tuple(emb.table(n).weight.shape) for n in names]

    def where(key: str) -> tuple[int, str]:
        feat, table = key.split("@", 1)
        return names.index(table), feat

    return EmbeddingLayout(
        tables=[(r, d) for r, d in shapes],
        per_domain_rows=[r // D if pd else 0 for (r, _), pd in zip(shapes, per_domain)],
        sparse=[(where(k)[0], feature_map.sparse.index(where(k)[1])) for k in emb.sparse_keys],
        domain_dim=emb.dims[emb.domain_key] if emb.domain_key is not None else 0,
        sequences=[where(k) for k in emb.sequence_keys],
        num_dense=emb.num_dense,
        num_domains=D,
        id_dropout=float(emb.id_dropout),
        dropout_columns=[bool(c) for c in emb.dropout_columns.tolist()],
    )


def _uniform_(t: Tensor, fan_in: int) -> Tensor:
    """``nn.Linear``'s default initialisation, U(±1/sqrt(fan_in))."""
    b = 1.0 / fan_in**0.5
    return nn.init.uniform_(t, -b, b)


# The sequence pooling kernel of the library itself (``embedding_bag`` forward, one ``index_add_``
# backward): the hand-written references use the same kernels, so the comparison measures the
# composition, not a different pooling.
_Bag = _WeightedBag


class _HandWritten(nn.Module):
    """Base of the references: the embedding input, written out with plain tensor ops.

    ``x = [E[ids] per id column ; E_domain[domain] ; mean-pooled sequences ; dense]``, with id
    dropout in training (an id of an id column becomes OOV = 1 with probability ``p``; padding = 0
    stays), as :class:`mdmt.embeddings.EmbeddingCollection` computes it, with the same kernels.
    """

    def __init__(self, layout: EmbeddingLayout, task_names: list[str]) -> None:
        super().__init__()
        self.layout = layout
        self.task_names = list(task_names)
        self.tables = nn.ParameterList()
        for (rows, dim), block in zip(layout.tables, layout.per_domain_rows):
            w = torch.randn(rows, dim) * 0.01
            w[:: block or rows] = 0.0  # the padding row (of every domain block) is zero
            self.tables.append(nn.Parameter(w))
        self.domain_table = nn.Parameter(torch.randn(layout.num_domains, layout.domain_dim) * 0.01) \
            if layout.domain_dim else None
        self.register_buffer("id_columns", torch.tensor(layout.dropout_columns, dtype=torch.bool), persistent=False)

    def optim_groups(self) -> list[OptimGroup]:
        return [OptimGroup("main", [p for p in self.parameters() if p.requires_grad])]

    def report_values(self) -> dict[str, float]:
        return {}

    def _rows(self, t: int, ids: Tensor, domain: Tensor) -> Tensor:
        block = self.layout.per_domain_rows[t]
        if block:
            ids = ids + (domain * block).view(-1, *([1] * (ids.dim() - 1)))
        w = self.tables[t]
        return w.index_select(0, ids.reshape(-1)).view(*ids.shape, w.shape[1])

    def inputs(self, batch: Batch) -> Tensor:
        """The flat input ``[B, input_dim]``."""
        lay, sparse, domain = self.layout, batch.sparse, batch.domain
        if self.training and lay.id_dropout > 0:
            drop = (torch.rand(sparse.shape, device=sparse.device) < lay.id_dropout) & self.id_columns & (sparse != 0)
            sparse = torch.where(drop, torch.ones_like(sparse), sparse)
        parts = [self._rows(t, sparse[:, col], domain) for t, col in lay.sparse]
        if self.domain_table is not None:
            parts.append(self.domain_table.index_select(0, domain))
        for t, name in lay.sequences:  # the mean over the true length: weights 1/len, 0 at padding
            ids, table = batch.sequences[name], self.tables[t]
            w = (ids != 0).to(table.dtype) / batch.seq_lengths[name].clamp(min=1).to(table.dtype).unsqueeze(-1)
            if lay.per_domain_rows[t]:
                ids = ids + (domain * lay.per_domain_rows[t]).unsqueeze(-1)
            parts.append(_Bag.apply(table, ids, w))
        if lay.num_dense:
            parts.append(batch.dense)
        return torch.cat(parts, dim=-1)

    def output(self, z: Tensor) -> ModelOutput:
        return ModelOutput({t: z[:, i] for i, t in enumerate(self.task_names)})


class HandWrittenMMoE(_HandWritten):
    """MMoE written by hand (Ma et al., KDD'18) with the registered ``mmoe``'s shapes and defaults.

    ``E`` ReLU experts on the flat input ``x``, one softmax gate per task, one ReLU tower per task::

        f_i   = ReLU(x W_i + b_i)                      # experts, stacked [E, in, He]
        g^k   = softmax(x G_k + c_k)                   # gates, stacked [T, in, E]
        y_k   = ReLU(Σ_i g^k_i f_i U_k + u_k) V_k + v_k  # towers, stacked [T, He, h] and [T, h, 1]

    Shapes: ``batch`` -> ``x`` ``[B, in]`` -> experts ``[B, E, He]`` -> mixtures ``[B, T, He]`` -> logits ``[B, T]``.
    """

    def __init__(self, layout: EmbeddingLayout, task_names: list[str], num_experts: int, expert_hidden: list[int],
                 tower_hidden: list[int]) -> None:
        super().__init__(layout, task_names)
        T, E = len(task_names), num_experts
        dims = [layout.input_dim, *expert_hidden]
        self.expert_w = nn.ParameterList([nn.Parameter(_uniform_(torch.empty(E, a, b), a)) for a, b in zip(dims, dims[1:])])
        self.expert_b = nn.ParameterList([nn.Parameter(_uniform_(torch.empty(E, b), a)) for a, b in zip(dims, dims[1:])])
        self.gate_w = nn.Parameter(_uniform_(torch.empty(T, layout.input_dim, E), layout.input_dim))
        self.gate_b = nn.Parameter(_uniform_(torch.empty(T, E), layout.input_dim))
        tdims = [dims[-1], *tower_hidden, 1]
        self.tower_w = nn.ParameterList([nn.Parameter(_uniform_(torch.empty(T, a, b), a)) for a, b in zip(tdims, tdims[1:])])
        self.tower_b = nn.ParameterList([nn.Parameter(_uniform_(torch.empty(T, b), a)) for a, b in zip(tdims, tdims[1:])])

    def forward(self, batch: Batch) -> ModelOutput:
        x = self.inputs(batch)  # [B, in]
        f = torch.relu(torch.einsum("bi,eih->beh", x, self.expert_w[0]) + self.expert_b[0])  # [B, E, He]
        for w, b in zip(self.expert_w[1:], self.expert_b[1:]):
            f = torch.relu(torch.einsum("beh,ehk->bek", f, w) + b)
        g = torch.softmax(torch.einsum("bi,tie->bte", x, self.gate_w) + self.gate_b, dim=-1)  # [B, T, E]
        z = torch.bmm(g, f)  # mixtures [B, T, He]
        for i, (w, b) in enumerate(zip(self.tower_w, self.tower_b)):
            z = torch.einsum("bth,thk->btk", z, w) + b
            if i < len(self.tower_w) - 1:
                z = torch.relu(z)
        return self.output(z[..., 0])


class HandWrittenSharedBottom(_HandWritten):
    """Shared-Bottom written by hand (Caruana 1997) with the registered ``sharedbottom``'s shapes and defaults.

    ``h = ReLU-MLP(x)`` (weights as ``nn.Linear``'s ``[out, in]``), then one ReLU tower per task on
    ``h`` (stacked ``[T, H, h]`` and ``[T, h, 1]``).

    Shapes: ``batch`` -> ``x`` ``[B, in]`` -> ``h`` ``[B, H]`` -> logits ``[B, T]``.
    """

    def __init__(self, layout: EmbeddingLayout, task_names: list[str], bottom_hidden: list[int],
                 tower_hidden: list[int]) -> None:
        super().__init__(layout, task_names)
        T = len(task_names)
        dims = [layout.input_dim, *bottom_hidden]
        self.bottom_w = nn.ParameterList([nn.Parameter(_uniform_(torch.empty(b, a), a)) for a, b in zip(dims, dims[1:])])
        self.bottom_b = nn.ParameterList([nn.Parameter(_uniform_(torch.empty(b), a)) for a, b in zip(dims, dims[1:])])
        tdims = [dims[-1], *tower_hidden, 1]
        self.tower_w = nn.ParameterList([nn.Parameter(_uniform_(torch.empty(T, a, b), a)) for a, b in zip(tdims, tdims[1:])])
        self.tower_b = nn.ParameterList([nn.Parameter(_uniform_(torch.empty(T, b), a)) for a, b in zip(tdims, tdims[1:])])

    def forward(self, batch: Batch) -> ModelOutput:
        h = self.inputs(batch)  # [B, in]
        for w, b in zip(self.bottom_w, self.bottom_b):
            h = torch.relu(F.linear(h, w, b))  # [B, H]
        z = torch.relu(torch.einsum("bh,thk->btk", h, self.tower_w[0]) + self.tower_b[0])  # [B, T, h1]
        for i, (w, b) in enumerate(zip(self.tower_w[1:], self.tower_b[1:]), start=1):
            z = torch.einsum("bth,thk->btk", z, w) + b
            if i < len(self.tower_w) - 1:
                z = torch.relu(z)
        return self.output(z[..., 0])


def hand_written(name: str, registered: nn.Module, spec: Any, feature_map: Any) -> _HandWritten:
    """The hand-written reference of registered model ``registered`` (``name`` in :data:`HAND_WRITTEN`),
    fresh weights, the same shapes. Only the registered model's default structure (no norm, no
    dropout, ReLU, plain towers, and for ``mmoe`` no backbone) is written out."""
    cfg = registered.cfg
    if cfg.norm != "none" or cfg.dropout > 0 or cfg.act != "relu" or cfg.head != "plain":
        raise ValueError(f"the hand-written {name} covers norm none, dropout 0, ReLU and plain towers only")
    layout = embedding_layout(registered, spec, feature_map)
    if name == "mmoe":
        if cfg.backbone != "none":
            raise ValueError("the hand-written mmoe reads the flat input (backbone none)")
        return HandWrittenMMoE(layout, registered.task_names, cfg.num_experts, cfg.expert_hidden, cfg.tower_hidden)
    if name == "sharedbottom":
        if cfg.backbone != "mlp" or cfg.backbone_params.dropout > 0 or cfg.backbone_params.act != "relu":
            raise ValueError("the hand-written sharedbottom has an MLP bottom (ReLU, no dropout)")
        return HandWrittenSharedBottom(layout, registered.task_names, cfg.backbone_params.hidden, cfg.tower_hidden)
    raise ValueError(f"no hand-written reference of {name!r}; there are: {', '.join(HAND_WRITTEN)}")


# ---------------------------------------------------------------------------------------------
# Rows and comparisons
# ---------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One row of the table: a model trained by ``Trainer.train_step``.

    ``kind``: ``registered``; ``hand-written`` (a reference of ``model``); ``base model`` (what
    ``model`` plugs into); ``warm start`` (``model`` warm-started, loaded parameters frozen).
    """

    label: str
    model: str
    kind: str = "registered"


def comparison_groups(names: list[str], compare: bool) -> list[list[Row]]:
    """The rows timed together: each model alone, or with its comparison rows."""
    groups = []
    for name in names:
        group = [Row(name, name)]
        if compare and name in HAND_WRITTEN:
            group.append(Row(f"{name} (hand-written)", name, "hand-written"))
        if compare and name == "pmta":
            group += [Row(f"pmta: base model alone ({PMTA_BASE})", name, "base model"),
                      Row("pmta, warm start (loaded parameters frozen)", name, "warm start")]
        groups.append(group)
    return groups


@dataclass
class Settings:
    """What a model is built and trained with (the bench config's row, or the defaults)."""

    params: dict[str, Any] = field(default_factory=dict)
    embedding: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


def bench_settings(path: str | Path | None, name: str) -> Settings:
    """Model params, embedding settings and training settings of ``name``'s first ``mdmt`` row in the
    bench config ``path`` (the bench's embedding and training settings when it has no such row)."""
    if path is None:
        return Settings()
    from mdmt.bench.harness import entry_embedding, entry_params, load_bench_config
    from mdmt.config import deep_merge

    cfg = load_bench_config(path)
    entry = next((e for e in cfg.entries if e.model == name and e.regime == "mdmt"), None)
    train = cfg.train.model_dump()
    keep = ("weight_decay", "optimizer", "arch_holdout", "grad_clip")
    if entry is None:
        return Settings({}, cfg.embedding.model_dump(), {k: train[k] for k in keep})
    train = deep_merge(train, entry.train)
    return Settings(entry_params(cfg, entry), entry_embedding(cfg, entry).model_dump(), {k: train[k] for k in keep})


def _build(row: Row, prepared: Any, args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, Any]:
    """The row's model and its trainer (seeded by ``--seed``)."""
    from mdmt.config import TrainConfig, WarmStartConfig
    from mdmt.models import build_model
    from mdmt.train.trainer import Trainer, seed_everything

    spec, fm = prepared.feature_map.spec, prepared.feature_map
    seed_everything(args.seed)
    base_name = PMTA_BASE if row.kind in ("base model", "warm start") else row.model
    s = bench_settings(args.bench_config, row.model)
    sb = bench_settings(args.bench_config, base_name) if base_name != row.model else s
    cfg = TrainConfig(batch_size=args.batch_size, lr=args.lr, device=str(device), progress=False, seed=args.seed,
                      **s.train)
    groups = None
    if row.kind == "registered":
        model = build_model(row.model, spec, fm, s.params, embedding=s.embedding)
    elif row.kind == "hand-written":
        registered = build_model(row.model, spec, fm, s.params, embedding=s.embedding)
        model = hand_written(row.model, registered, spec, fm)
    elif row.kind == "base model":
        model = build_model(base_name, spec, fm, sb.params, embedding=sb.embedding)
    elif row.kind == "warm start":
        from mdmt.train.warmstart import WarmSource, apply_warm_start

        base = build_model(base_name, spec, fm, sb.params, embedding=sb.embedding)
        model = build_model(row.model, spec, fm, s.params, embedding=s.embedding)
        source = WarmSource(Path("base-run"), {"all": base.state_dict()})
        groups, _ = apply_warm_start(model, source, "all", WarmStartConfig(run_dir="base-run", freeze=True), quiet=True)
    else:  # pragma: no cover - the kinds above are all comparison_groups makes
        raise ValueError(row.kind)
    return model, Trainer(model, cfg, score_fn=lambda p: 0.0, run_dir=None, tag=row.label, groups=groups)


def _cycle(it: Any):
    """Endless batches from a BatchIterator; each new epoch reshuffles. Yields (batch, epoch_start_seconds)."""
    while True:
        gen = iter(it)
        t0 = time.perf_counter()
        first = next(gen, None)
        if first is None:
            return
        yield first, time.perf_counter() - t0
        for b in gen:
            yield b, 0.0


def _flops_per_step(model: Any, batch: Any, task_names: list[str]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from mdmt.train.loss import multitask_loss

    model.zero_grad(set_to_none=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    with FlopCounterMode(display=False) as counter:
        loss, _ = multitask_loss(model(batch), batch, task_names)
        loss.backward(inputs=trainable)  # what train_step differentiates: the trained parameters only
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


class _Timed:
    """One row's two paths (see the module docstring) and their step times."""

    def __init__(self, row: Row, prepared: Any, args: argparse.Namespace, device: torch.device) -> None:
        from mdmt.data.loader import BatchIterator
        from mdmt.train.arch import holdout_rows

        self.row, self.device = row, device
        self.model, self.trainer = _build(row, prepared, args, device)
        train, valid = prepared.splits["train"], prepared.splits["valid"]
        self.has_valid_step = bool(self.trainer.valid_groups)
        if self.has_valid_step:  # architecture steps on held-out training rows, never on the main rows
            main_rows, arch_rows = holdout_rows(len(train), self.trainer.cfg.arch_holdout, args.seed)
            train, valid = train.index(main_rows), train.index(arch_rows)
        self.it = BatchIterator(train, args.batch_size, shuffle=True, seed=args.seed, drop_last=True)
        if len(self.it) == 0:
            raise ValueError(f"--rows too small: the train split has {len(train)} rows < batch size {args.batch_size}")
        valid_it = BatchIterator(valid, args.batch_size, shuffle=True, seed=args.seed + 1, drop_last=False)
        self.stream = _cycle(self.it)
        self.valid_stream = (b for b, _ in _cycle(valid_it))
        self.fixed_valid = next(iter(valid_it)).to(device) if self.has_valid_step else None
        self.arch_times: list[float] = []
        self.e2e_times: list[float] = []
        self.model_times: list[float] = []
        # one epoch start: the shuffle gather, amortised over the epoch's steps
        self.gather_seconds = self._e2e()
        g = torch.Generator().manual_seed(args.seed + 99)
        self.fixed = _contiguous(train.index(torch.randperm(len(train), generator=g)[: args.batch_size])).to(device)

    def _e2e(self) -> float:
        batch, epoch_start = next(self.stream)
        batch = batch.to(self.device, non_blocking=True)
        self.trainer.train_step(batch)
        if self.has_valid_step:
            synchronize(self.device)
            t = time.perf_counter()
            self.trainer.arch_step(next(self.valid_stream).to(self.device, non_blocking=True))
            synchronize(self.device)
            self.arch_times.append(time.perf_counter() - t)
        return epoch_start

    def _model(self) -> None:
        self.trainer.train_step(self.fixed)
        if self.has_valid_step:
            self.trainer.arch_step(self.fixed_valid)

    def step(self, path: str, timed: bool) -> None:
        """One step of ``path`` (``e2e`` or ``model``), its time kept when ``timed``."""
        synchronize(self.device)
        t0 = time.perf_counter()
        if path == "e2e":
            epoch_start = self._e2e()  # an epoch boundary's shuffle is subtracted here, amortised below
            synchronize(self.device)
            if timed:
                self.e2e_times.append(time.perf_counter() - t0 - epoch_start)
        else:
            self._model()
            synchronize(self.device)
            if timed:
                self.model_times.append(time.perf_counter() - t0)

    def e2e_rounds(self) -> list[float]:
        """End-to-end step time of every timed round, the epoch start amortised."""
        return [t + self.gather_seconds / len(self.it) for t in self.e2e_times]

    def result(self, steps: int) -> dict[str, Any]:
        model, bs = self.model, len(self.fixed)
        e2e_step_s = statistics.median(self.e2e_rounds())
        arch_step_s = statistics.median(self.arch_times[-steps:]) if self.arch_times else 0.0
        model_step_s = statistics.median(self.model_times)
        flops = _flops_per_step(model, self.fixed, model.task_names)
        if self.has_valid_step:
            flops += _flops_per_step(model, self.fixed_valid, model.task_names)
        params = list(model.parameters())
        return {
            "model": self.row.model,
            "label": self.row.label,
            "kind": self.row.kind,
            "batch_size": bs,
            "params": int(sum(p.numel() for p in params)),
            "trainable_params": int(sum(p.numel() for p in params if p.requires_grad)),
            "has_valid_step": self.has_valid_step,
            "arch_step_seconds": arch_step_s,
            "arch_share_of_e2e": arch_step_s / e2e_step_s,
            "e2e_step_seconds": e2e_step_s,
            "e2e_step_seconds_quartiles": _quartiles(self.e2e_times),
            "model_step_seconds_quartiles": _quartiles(self.model_times),
            "model_step_seconds": model_step_s,
            "epoch_shuffle_seconds": self.gather_seconds,
            "steps_per_epoch": len(self.it),
            "e2e_samples_per_sec": bs / e2e_step_s,
            "model_samples_per_sec": bs / model_step_s,
            "ratio": _paired(self.e2e_rounds(), self.model_times),
            "e2e_step_seconds_rounds": self.e2e_rounds(),
            "model_step_seconds_rounds": list(self.model_times),
            "flops_per_step": flops,
            "flops_per_sample": flops / bs,
            "e2e_flops_per_sec": flops / e2e_step_s,
            "model_flops_per_sec": flops / model_step_s,
        }


def measure_group(rows: list[Row], prepared: Any, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Time ``rows`` together: every round runs one end-to-end and one model-only step of every row,
    in an order rotated from round to round (row order and which path goes first), so every path
    sees the same machine load and no path always follows the same one. Returns one result per row."""
    timed = [_Timed(r, prepared, args, device) for r in rows]
    paths = [(t, p) for t in timed for p in ("e2e", "model")]
    for r in range(args.warmup + args.steps):
        k = r % len(paths)
        order = paths[k:] + paths[:k]
        if (r // len(paths)) % 2:
            order = order[::-1]
        for t, p in order:
            t.step(p, timed=r >= args.warmup)
    return [t.result(args.steps) for t in timed]


def comparisons(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The same-run comparisons from the measured rows: registered ÷ hand-written, PMTA over its
    base model, warm-started PMTA, and the AutoML step's share (models with an architecture step)."""
    ok = [r for r in rows if "error" not in r]
    by = {(r["model"], r["kind"]): r for r in ok}
    out: dict[str, Any] = {"hand_written": [], "pmta": None, "automl": []}
    for name in HAND_WRITTEN:
        reg, hand = by.get((name, "registered")), by.get((name, "hand-written"))
        if reg and hand:
            e2e = _paired(reg["e2e_step_seconds_rounds"], hand["e2e_step_seconds_rounds"])
            out["hand_written"].append({
                "model": name,
                "e2e_ratio": e2e,
                "model_ratio": _paired(reg["model_step_seconds_rounds"], hand["model_step_seconds_rounds"]),
                "same_params": reg["params"] == hand["params"],
                "same_flops": reg["flops_per_step"] == hand["flops_per_step"],
                "within_target": e2e <= TARGET_HAND_RATIO,
            })
    pm, base, warm = by.get(("pmta", "registered")), by.get(("pmta", "base model")), by.get(("pmta", "warm start"))
    if pm and base:
        out["pmta"] = {
            "base_model": PMTA_BASE,
            "flops_per_sample": pm["flops_per_sample"],
            "base_flops_per_sample": base["flops_per_sample"],
            "extra_flops_per_sample": pm["flops_per_sample"] - base["flops_per_sample"],
            "flops_ratio": pm["flops_per_sample"] / base["flops_per_sample"],
            "e2e_time_ratio": _paired(pm["e2e_step_seconds_rounds"], base["e2e_step_seconds_rounds"]),
            "model_time_ratio": _paired(pm["model_step_seconds_rounds"], base["model_step_seconds_rounds"]),
        }
        if warm:
            out["pmta"].update({
                "warm_flops_per_sample": warm["flops_per_sample"],
                "warm_trainable_params": warm["trainable_params"],
                "warm_e2e_time_ratio": _paired(warm["e2e_step_seconds_rounds"], base["e2e_step_seconds_rounds"]),
                "warm_vs_cold_e2e_time_ratio": _paired(warm["e2e_step_seconds_rounds"], pm["e2e_step_seconds_rounds"]),
            })
    for r in ok:
        if r["has_valid_step"]:
            out["automl"].append({"label": r["label"], "arch_step_seconds": r["arch_step_seconds"],
                                  "arch_share_of_e2e": r["arch_share_of_e2e"]})
    return out


def _paired(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a[i] / b[i]``: two paths timed in the same round ran under the same
    machine load, so their ratio is steadier than the ratio of the two medians on a shared machine."""
    return statistics.median(x / y for x, y in zip(a, b))


def _load_average() -> float | None:
    """1-minute load average (other work on the machine slows every figure), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _quartiles(x: list[float]) -> list[float]:
    q = statistics.quantiles(x, n=4) if len(x) > 1 else [x[0]] * 3
    return [float(v) for v in q]


def _contiguous(batch: Any) -> Any:
    return batch._map(lambda t: t.contiguous().clone())


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    peak = result["peak_flops"]
    st0 = result["settings"]
    data = "MovieLens-100K" if st0.get("dataset") == "ml100k" else f"{st0['rows']:,} {st0['preset']} rows"
    table = Table(title=f"Training throughput · batch {st0['batch_size']} · {data}")
    for col in ("model", "samples/s e2e", "samples/s model", "e2e/model", "MFLOP/sample", "GFLOP/s e2e",
                "util e2e", "util model", "arch share"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in result["models"]:
        label = r.get("label", r["model"])
        if "error" in r:
            table.add_row(label, f"[red]error: {r['error'][:60]}", *[""] * 7)
            continue
        ratio = f"{r['ratio']:.3f}"
        if r["ratio"] > TARGET_RATIO:
            ratio = f"[yellow]{ratio} ⚠"
        table.add_row(
            label,
            f"{r['e2e_samples_per_sec']:,.0f}",
            f"{r['model_samples_per_sec']:,.0f}",
            ratio,
            f"{r['flops_per_step'] / r['batch_size'] / 1e6:.2f}",
            f"{r['e2e_flops_per_sec'] / 1e9:.2f}",
            f"{100 * r['e2e_utilisation']:.1f}%",
            f"{100 * r['model_utilisation']:.1f}%",
            f"{100 * r['arch_share_of_e2e']:.1f}%" if r["has_valid_step"] else "",
        )
    con = Console(width=160)
    con.print(f"Machine: {describe_line(result['machine'])}")
    st = result["settings"]
    con.print(f"Load average (1 min) before / after: {st['load_average_1min_before']} / {st['load_average_1min_after']} "
              f"on {result['machine']['logical_cores']} logical cores")
    con.print(f"Peak: torch.mm 2048×2048 float32 = {peak / 1e9:,.1f} GFLOP/s (best of {result['settings']['mm_repeats']}, measured in this run)")
    con.print(table)
    con.print(f"e2e/model = end-to-end step time ÷ model-only step time; target ≤ {TARGET_RATIO} (⚠ marks a miss).")
    cmp = result["comparisons"]
    for h in cmp["hand_written"]:
        mark = "" if h["within_target"] else " ⚠"
        con.print(f"{h['model']}: registered ÷ hand-written step time {h['e2e_ratio']:.3f} end to end, "
                  f"{h['model_ratio']:.3f} model only (target ≤ {TARGET_HAND_RATIO}){mark}; same parameters "
                  f"{h['same_params']}, same FLOPs {h['same_flops']}")
    p = cmp["pmta"]
    if p:
        con.print(f"pmta over its base model ({p['base_model']}): +{p['extra_flops_per_sample'] / 1e6:.2f} MFLOP/sample "
                  f"({p['flops_ratio']:.2f}× the FLOPs), {p['e2e_time_ratio']:.2f}× the step time end to end"
                  + (f"; warm start, loaded parameters frozen: {p['warm_vs_cold_e2e_time_ratio']:.2f}× PMTA's step time"
                     if "warm_vs_cold_e2e_time_ratio" in p else ""))
    for a in cmp["automl"]:
        con.print(f"{a['label']}: the AutoML (architecture) step takes {100 * a['arch_share_of_e2e']:.1f}% of the "
                  "end-to-end step time")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table; write and return the JSON result."""
    args = parse_args(argv)
    argv_used = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device(args.device)
    if args.bench_config is None and args.dataset == "ml100k":
        args.bench_config = str(ML100K_BENCH)

    from mdmt.bench.harness import write_json_atomic
    from mdmt.data.preprocess import prepare
    from mdmt.data.synthetic import SyntheticConfig, generate
    from mdmt.models import REGISTRY

    names = sorted(REGISTRY)
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in REGISTRY]
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown}; registered: {', '.join(names)}")
        names = wanted
    if args.bench_config is not None:
        bench_settings(args.bench_config, names[0])  # a bad bench config fails before any data is read

    machine = describe()
    load_before = _load_average()
    peak_before = mm_peak(repeats=args.mm_repeats, device=args.device)
    t0 = time.perf_counter()
    if args.dataset == "ml100k":
        from mdmt.config import DataConfig
        from mdmt.data import load_prepared

        prepared = load_prepared(DataConfig(source="movielens", params={"variant": "ml-100k", "protocol": "m3oe"}),
                                 progress=False)
        data_name = "MovieLens-100K (M3oE protocol)"
    else:
        raw = generate(SyntheticConfig(preset=args.preset, rows=args.rows, seed=args.seed))
        prepared = prepare(raw, cache_dir=None, progress=False)
        data_name = f"{args.rows:,} {args.preset} rows"
    data_seconds = time.perf_counter() - t0
    if not args.quiet:
        print(f"data: {data_name} prepared in {data_seconds:.1f} s; "
              f"train split {len(prepared.splits['train']):,} rows")

    rows: list[dict[str, Any]] = []
    for group in comparison_groups(names, compare=not args.no_compare):
        t1 = time.perf_counter()
        try:
            results = measure_group(group, prepared, args, device)
        except Exception as err:  # one broken model must not hide the others' figures
            results = [{"model": r.model, "label": r.label, "kind": r.kind, "error": f"{type(err).__name__}: {err}"}
                       for r in group]
        wall = time.perf_counter() - t1
        for r in results:
            r["wall_seconds"] = wall
            rows.append(r)
            if not args.quiet:
                if "error" in r:
                    print(f"  {r['label']}: ERROR {r['error']}")
                else:
                    print(f"  {r['label']}: {r['e2e_samples_per_sec']:,.0f} samples/s end to end, ratio {r['ratio']:.3f} "
                          f"({wall:.1f} s for {len(group)} row(s))")
    peak_after = mm_peak(repeats=args.mm_repeats, device=args.device)
    peak = max(peak_before["flops_per_sec"], peak_after["flops_per_sec"])
    load_after = _load_average()
    for r in rows:
        if "error" not in r:
            r["e2e_utilisation"] = r["e2e_flops_per_sec"] / peak
            r["model_utilisation"] = r["model_flops_per_sec"] / peak
    ok = [r for r in rows if "error" not in r]
    cmp = comparisons(rows)
    result = {
        "command": "python benchmarks/train_throughput.py" + ("".join(f" {a}" for a in argv_used)),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            "rows": args.rows,
            "preset": args.preset,
            "dataset": args.dataset,
            "bench_config": (Path(args.bench_config).resolve().relative_to(ROOT).as_posix()
                             if args.bench_config and Path(args.bench_config).resolve().is_relative_to(ROOT)
                             else args.bench_config),
            "train_rows": len(prepared.splits["train"]),
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "lr": args.lr,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "mm_repeats": args.mm_repeats,
            "data_seconds": data_seconds,
            "load_average_1min_before": load_before,
            "load_average_1min_after": load_after,
        },
        "peak_flops": peak,
        "peak": {"before": peak_before, "after": peak_after},
        "target_ratio": TARGET_RATIO,
        "target_hand_ratio": TARGET_HAND_RATIO,
        "all_within_target": bool(ok) and all(r["ratio"] <= TARGET_RATIO for r in ok),
        "models": rows,
        "comparisons": cmp,
    }
    out = Path(args.out)
    write_json_atomic(out, result)
    if not args.quiet:
        _print_table(result)
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    res = main()
    sys.exit(1 if any("error" in r for r in res["models"]) else 0)
