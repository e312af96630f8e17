"""M3oE (Zhang et al., SIGIR'24): every equation recomputed row by row on tiny sizes, per-domain
routing (each row only through its own domain's weights), the Table 3 ablations, the bi-level
AutoML steps and export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mdmt.batch import Batch
from mdmt.config import TrainConfig
from mdmt.layers import DomainSegments, segment_mm
from mdmt.models import build_model
from mdmt.models.m3oe import ARCH_WEIGHTS, M3oE
from mdmt.train.trainer import Trainer

from .conftest import make_batch, make_tiny

SMALL = {"dr_dim": 12, "hidden_dim": 8, "num_shared_experts": 3, "expert_hidden": [8, 4], "tower_hidden": 4}
#: distinct arch logits, so a swapped α_d / α_t or β_d / β_t changes the outputs
LOGITS = {"alpha_d": 0.4, "alpha_t": -0.9, "beta_d": 1.3, "beta_t": -0.2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one torch thread (conftest)


def _setup(params: dict | None = None, size: int = 12, seed: int = 0, num_tasks: int = 2):
    spec, fm = make_tiny(num_tasks=num_tasks, num_domains=3)
    batch = make_batch(spec, fm, size=size, seed=seed)
    torch.manual_seed(seed)
    model = build_model("m3oe", spec, fm, {**SMALL, **(params or {})})
    assert isinstance(model, M3oE)
    with torch.no_grad():
        for name, v in LOGITS.items():
            p = getattr(model, f"arch_{name}", None)
            if p is not None:
                p.fill_(v)
        for n, p in model.named_parameters():  # move LayerNorm affines and W_d off their init
            if "ln_" in n or "domain_weight" in n or "domain_bias" in n:
                p.add_(0.3 * torch.randn_like(p))
    return spec, fm, batch, model.eval()


def _stack(model, out) -> torch.Tensor:
    return torch.stack([out.logits[t] for t in model.task_names], dim=1)


def _expert(model: M3oE, k: int, h: torch.Tensor) -> torch.Tensor:
    """Eq. 3, expert k on one row: each layer ReLU(LayerNorm(W h + b))."""
    ex = model.experts
    for i, (w, b) in enumerate(zip(ex.weights, ex.biases)):
        z = h @ w[k] + b[k]
        h = torch.relu(F.layer_norm(z, z.shape) * ex.ln_weight[i][k] + ex.ln_bias[i][k])
    return h


def _reference(model: M3oE, batch: Batch) -> torch.Tensor:
    """M3oE's equations row by row with plain loops: ``[B, T]`` logits."""
    cfg, D, T, N = model.cfg, model.num_domains, model.num_tasks, model.cfg.num_shared_experts
    x_all = model.embeddings.flat_input(batch)
    w = lambda n: torch.sigmoid(getattr(model, f"arch_{n}")) if cfg.automl else torch.tensor([cfg.fixed_weight])  # noqa: E731
    out = torch.zeros(len(batch), T)
    for r in range(len(batch)):
        x, d = x_all[r], int(batch.domain[r])
        # Eq. 1: (W_d ⊙ W_sh) x + b_d + b_sh
        f_dr = x @ (model.dr.domain_weight[d] * model.dr.weight) + model.dr.domain_bias[d] + model.dr.bias
        # Eq. 2: W_c f_DR + b_c + f_DA(x)
        h = model.w_c.weight @ f_dr + model.w_c.bias + model.f_da(x.unsqueeze(0))[0]
        shared = [_expert(model, n, h) for n in range(N)]
        k0 = N
        dom = [_expert(model, k0 + j, h) for j in range(D)] if cfg.domain_module else []
        k0 += len(dom)
        tsk = [_expert(model, k0 + j, h) for j in range(T)] if cfg.task_module else []
        for t in range(T):
            # Eq. 4: the gate of objective (d, t) over the N shared experts
            if N > 1:
                gw = model.gate_weight[d][:, t * N : (t + 1) * N]
                g = torch.softmax(h @ gw + model.gate_bias[d][t * N : (t + 1) * N], dim=0)
            else:
                g = torch.ones(1)
            s = sum(g[n] * shared[n] for n in range(N))
            mods = [s]
            if cfg.fusion == "gated":
                if dom:
                    dg = torch.softmax(h @ model.domain_gate_weight[d] + model.domain_gate_bias[d], dim=0)
                    mods.append(sum(dg[j] * dom[j] for j in range(D)))
                if tsk:
                    tg = torch.softmax(model.task_gate(h).view(T, T)[t], dim=0)
                    mods.append(sum(tg[j] * tsk[j] for j in range(T)))
                mg = (h @ model.module_gate_weight[d] + model.module_gate_bias[d]).view(T, len(mods))[t]
                mg = torch.softmax(mg, dim=0)
                h_bar = sum(mg[m] * mods[m] for m in range(len(mods)))
            else:
                if dom:  # Eq. 5
                    bd = w("beta_d")
                    dm = bd * dom[d] + (1 - bd) / (D - 1) * sum(dom[j] for j in range(D) if j != d)
                    mods.append(w("alpha_d") * dm)
                if tsk:  # Eq. 6
                    bt = w("beta_t")
                    tm = bt * tsk[t] + (1 - bt) / (T - 1) * sum(tsk[j] for j in range(T) if j != t)
                    mods.append(w("alpha_t") * tm)
                # Eq. 7 (or the concatenation ablation)
                h_bar = torch.cat(mods) if cfg.fusion == "concat" else sum(mods)
            # Eq. 8: tower (d, t)
            a = torch.relu(h_bar @ model.tower_w1[t * D + d] + model.tower_b1[t * D + d])
            out[r, t] = a @ model.tower_w2[t, d] + model.tower_b2[t, d]
    return out


VARIANTS = [
    {},
    {"automl": False},
    {"fusion": "concat"},
    {"fusion": "gated"},
    {"domain_module": False},
    {"task_module": False},
    {"domain_module": False, "task_module": False},
    {"num_shared_experts": 1},
]


@pytest.mark.parametrize("params", VARIANTS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "full")
def test_equations_recomputed_row_by_row(params):
    _, _, batch, model = _setup(params)
    with torch.no_grad():
        got = _stack(model, model(batch))
        assert torch.allclose(got, _reference(model, batch), atol=1e-5), params


@pytest.mark.parametrize("params", [{}, {"num_shared_experts": 1}, {"domain_module": False}, {"task_module": False}],
                         ids=["full", "one-shared-expert", "no-domain-module", "no-task-module"])
def test_gradients_match_row_by_row(params):
    """The batched fusion (one weighted sum over the expert stack) gives every parameter, α and β
    included, the gradient of the equations computed row by row."""
    _, _, batch, model = _setup(params, size=10)
    weights = torch.randn(len(batch), model.num_tasks)
    grads = []
    for fn in (lambda: _stack(model, model(batch)), lambda: _reference(model, batch)):
        model.zero_grad(set_to_none=True)
        (fn() * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert {n for n in grads[0] if n.startswith("arch_")} == {f"arch_{w}" for w in model.report_values()}
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4), n


def test_three_tasks_fusion():
    _, _, batch, model = _setup(num_tasks=3)
    with torch.no_grad():
        assert torch.allclose(_stack(model, model(batch)), _reference(model, batch), atol=1e-5)


def test_one_task_or_one_domain_has_no_beta_to_learn():
    spec, fm = make_tiny(num_tasks=1, num_domains=3)
    model = build_model("m3oe", spec, fm, SMALL)
    assert sorted(model.report_values()) == ["alpha_d", "alpha_t", "beta_d"]
    batch = make_batch(spec, fm, size=9)
    model(batch).logits["t0"].sum().backward()
    assert all(p.grad is not None for p in model.arch_parameters())


def test_alpha_and_beta_are_sigmoids_of_their_logits():
    _, _, _, model = _setup()
    vals = model.report_values()
    assert set(vals) == set(ARCH_WEIGHTS)
    for n, v in LOGITS.items():
        assert vals[n] == pytest.approx(torch.sigmoid(torch.tensor(v)).item(), rel=1e-6)  # Eq. 10


def test_outputs_differ_between_domains():
    _, _, batch, model = _setup()
    moved = batch.index(torch.arange(len(batch)))
    moved.domain = (batch.domain + 1) % 3
    with torch.no_grad():
        a, b = _stack(model, model(batch)), _stack(model, model(moved))
    assert torch.all((a - b).abs().amax(1) > 1e-6)


# per-domain parameters: (name, index of the domain axis, task-major (t·D + d) flattening)
_DOMAIN_PARAMS = [("dr.domain_weight", 0), ("dr.domain_bias", 0), ("gate_weight", 0), ("gate_bias", 0),
                  ("tower_w1", None), ("tower_b1", None), ("tower_w2", 1), ("tower_b2", 1)]


@pytest.mark.parametrize("other", [0, 1, 2])
def test_each_row_uses_only_its_own_domains_weights(other):
    spec, _, batch, model = _setup()
    D, T = 3, spec.num_tasks
    with torch.no_grad():
        before = _stack(model, model(batch))
        params = dict(model.named_parameters())
        for name, axis in _DOMAIN_PARAMS:
            p = params[name]
            if axis is None:  # [T·D, ...]: segments t·D + other
                for t in range(T):
                    p[t * D + other].add_(torch.randn_like(p[t * D + other]))
            else:
                p.select(axis, other).add_(torch.randn_like(p.select(axis, other)))
        after = _stack(model, model(batch))
    mine = batch.domain == other
    assert mine.any() and (~mine).any()
    assert torch.equal(after[~mine], before[~mine]), "a row read another domain's weights"
    assert torch.all((after[mine] - before[mine]).abs().amax(1) > 1e-6), "a row ignored its own domain's weights"


def test_no_flops_on_other_domains_parameters():
    """Eq. 1 and the towers cost as much as one domain's weights per row, not D times that."""
    spec, fm, batch, model = _setup(size=30)
    cfg, in_dim, D, T = model.cfg, model.embeddings.input_dim, 3, spec.num_tasks
    B, H, N, E = len(batch), cfg.hidden_dim, cfg.num_shared_experts, cfg.expert_hidden[-1]
    with FlopCounterMode(display=False) as counter:
        model(batch)
    expect = 2 * B * (
        in_dim * cfg.dr_dim  # Eq. 1, own domain only
        + cfg.dr_dim * H + in_dim * H  # Eq. 2: W_c and f_DA
        + (N + D + T) * (H * cfg.expert_hidden[0] + cfg.expert_hidden[0] * E)  # Eq. 3, every expert
        + H * T * N  # Eq. 4, own domain's T gates
        + T * (N + D + T) * E  # Eq. 4-7: h̄_{d,t}, the weighted sum over the shared, domain and task experts
        + T * E * cfg.tower_hidden + T * cfg.tower_hidden  # Eq. 8, own domain's T towers
    )
    assert counter.get_total_flops() == expect


def test_segment_mm_matches_per_row_weights_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(20, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 8, 4, dtype=torch.float64, requires_grad=True)
    domain = torch.tensor([2, 0] * 10)  # domain 1 absent: an empty segment
    seg = DomainSegments(domain, 3)

    def f(x, w):
        return seg.unsort(segment_mm(seg.sort(x), w, seg.offsets))

    assert torch.allclose(f(x, w), torch.einsum("bi,bio->bo", x, w[domain]))
    assert torch.autograd.gradcheck(f, (x, w))
    for dtype in (torch.float32,):  # the grouped-GEMM kernel path
        xf, wf = x.detach().to(dtype), w.detach().to(dtype)
        assert torch.allclose(f(xf, wf), torch.einsum("bi,bio->bo", xf, wf[domain]), atol=1e-5)


# ---- Table 3 ablations: each switch removes exactly its component --------------------------------
def test_without_automl_equals_full_model_with_weights_at_one_half():
    _, _, batch, full = _setup()
    _, _, _, fixed = _setup({"automl": False})
    assert fixed.arch_parameters() == [] and len(fixed.optim_groups()) == 1
    assert fixed.report_values() == {n: 0.5 for n in ARCH_WEIGHTS}
    with torch.no_grad():
        for p in full.arch_parameters():
            p.zero_()  # sigmoid(0) = 0.5
        assert torch.allclose(_stack(full, full(batch)), _stack(fixed, fixed(batch)), atol=1e-6)
    full_names = {n for n, _ in full.named_parameters() if not n.startswith("arch_")}
    assert {n for n, _ in fixed.named_parameters()} == full_names


@pytest.mark.parametrize("params, experts, weights", [
    ({"domain_module": False}, 3 + 2, ["alpha_t", "beta_t"]),
    ({"task_module": False}, 3 + 3, ["alpha_d", "beta_d"]),
    ({"domain_module": False, "task_module": False}, 3, []),
])
def test_module_ablations_drop_their_experts_and_weights(params, experts, weights):
    _, _, _, model = _setup(params)
    assert model.experts.num == experts  # N shared (+ D domain) (+ T task)
    assert sorted(model.report_values()) == sorted(weights)
    assert len(model.optim_groups()) == (2 if weights else 1)


def test_concat_and_gated_ablations():
    spec, _, _, concat = _setup({"fusion": "concat"})
    assert concat.tower_w1.shape[1] == 3 * SMALL["expert_hidden"][-1]  # [S; α_d D; α_t T]
    _, _, _, gated = _setup({"fusion": "gated"})
    assert gated.arch_parameters() == [] and gated.report_values() == {}
    _, _, _, full = _setup()
    assert full.tower_w1.shape[1] == SMALL["expert_hidden"][-1]


# ---- bi-level AutoML (Eq. 11) ------------------------------------------------------------------
def test_main_step_never_changes_arch_weights_and_arch_step_never_changes_model_weights():
    spec, fm, batch, model = _setup(size=32)
    model.train()
    tr = Trainer(model, TrainConfig(epochs=1, batch_size=32, lr=0.05, progress=False), lambda p: 0.0)
    groups = model.optim_groups()
    assert [g.step_on for g in groups] == ["train", "valid"] and groups[1].lr == model.cfg.arch_lr
    arch = {id(p) for p in model.arch_parameters()}

    def snapshot():
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    s0 = snapshot()
    tr.train_step(batch)
    s1 = snapshot()
    for n, p in model.named_parameters():
        if id(p) in arch:
            assert torch.equal(s1[n], s0[n]), f"the main step changed {n}"
    assert any(not torch.equal(s1[n], s0[n]) for n in s0 if not n.startswith("arch_"))
    tr.arch_step(make_batch(spec, fm, size=32, seed=9))
    s2 = snapshot()
    for n, p in model.named_parameters():
        if id(p) in arch:
            assert not torch.equal(s2[n], s1[n]), f"the architecture step left {n} unchanged"
        else:
            assert torch.equal(s2[n], s1[n]), f"the architecture step changed model weight {n}"


def test_fit_learns_alpha_beta_on_held_out_rows_and_reports_them():
    spec, fm, _, model = _setup(size=8)
    model.train()
    train = make_batch(spec, fm, size=96, seed=3)
    valid = make_batch(spec, fm, size=24, seed=4)
    before = model.report_values()
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.01, progress=False, patience=0, arch_every="epoch")
    res = Trainer(model, cfg, lambda p: 0.0).fit(train, valid)
    assert all("model_values" in h and set(h["model_values"]) == set(ARCH_WEIGHTS) for h in res.history)
    assert model.report_values() != before


def test_export_with_dynamic_batch_on_sorted_segments():
    spec, fm, batch, model = _setup({"fusion": "gated"}, size=8)

    class Scorer(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sparse, dense, domain, sequences, seq_lengths):
            n = sparse.shape[0]
            b = Batch(sparse=sparse, dense=dense, domain=domain, labels=torch.zeros(n, spec.num_tasks),
                      label_mask=torch.ones(n, spec.num_tasks, dtype=torch.bool), group=torch.zeros(n, dtype=torch.long),
                      sequences=sequences, seq_lengths=seq_lengths)
            return _stack(self.m, self.m(b))

    def args(b):
        return (b.sparse, b.dense, b.domain, dict(b.sequences), dict(b.seq_lengths))

    rows = {0: torch.export.Dim("B", min=2)}
    dyn = (rows, rows, rows, {k: rows for k in batch.sequences}, {k: rows for k in batch.seq_lengths})
    ep = torch.export.export(Scorer(model), args(batch), dynamic_shapes=dyn)
    other = make_batch(spec, fm, size=13, seed=5)
    with torch.no_grad():
        assert torch.allclose(ep.module()(*args(other)), Scorer(model)(*args(other)), atol=1e-5)


def test_learned_alpha_beta_reach_metrics_json_and_report(tmp_path):
    import json

    from mdmt.cli import main

    from .shop import write_project

    project = write_project(tmp_path, model="m3oe", epochs=1)
    run_dir = project / "runs" / "r"
    assert main(["train", str(project / "exp.yaml"), "--run-dir", str(run_dir),
                 "--set", "model.params.dr_dim=16", "--set", "model.params.hidden_dim=8"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    values = metrics["model_values"]["all"]
    assert set(values) == set(ARCH_WEIGHTS) and all(0.0 < v < 1.0 for v in values.values())
    report = (run_dir / "report.md").read_text()
    assert "Model values" in report and "alpha_d" in report
