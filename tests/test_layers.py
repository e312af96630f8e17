"""Formula checks of the generic layers, each against a direct re-computation on tiny sizes."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mdmt.embeddings import EmbeddingCollection
from mdmt.layers import (
    CIN,
    MLP,
    CrossNet,
    CrossNetV1,
    Gate,
    ParallelMLP,
    PartitionedNorm,
    StarLinear,
    domain_select,
    fm_bi_interaction,
    short_softmax,
)
from mdmt.models.backbones import BackboneConfig, build_backbone
from mdmt.models.ple import CGCLevel

from .conftest import make_batch, make_tiny


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# domain_select
# ---------------------------------------------------------------------------------------------
def test_domain_select_params_form_matches_loop():
    stacked = torch.randn(3, 4, 2, generator=_g())
    domain = torch.tensor([2, 0, 1, 2, 2])
    out = domain_select(stacked, domain)
    assert out.shape == (5, 4, 2)
    for b in range(5):
        assert torch.equal(out[b], stacked[domain[b]])


def test_domain_select_rows_form_matches_loop():
    stacked = torch.randn(3, 5, 4, generator=_g(1))  # [D, B, S]
    domain = torch.tensor([2, 0, 1, 2, 0])
    out = domain_select(stacked, domain, rows=True)
    assert out.shape == (5, 4)
    for b in range(5):
        assert torch.equal(out[b], stacked[domain[b], b])
    flat = torch.randn(3, 5, generator=_g(2))  # [D, B]
    assert torch.equal(domain_select(flat, domain, rows=True), torch.stack([flat[domain[b], b] for b in range(5)]))


def test_domain_select_gradient_reaches_only_selected_entries():
    stacked = torch.randn(3, 2, requires_grad=True)
    domain_select(stacked, torch.tensor([0, 0, 2])).sum().backward()
    assert stacked.grad.tolist() == [[2.0, 2.0], [0.0, 0.0], [1.0, 1.0]]


# ---------------------------------------------------------------------------------------------
# MLP, ParallelMLP, Gate
# ---------------------------------------------------------------------------------------------
def _norm(h: torch.Tensor, kind: str, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Direct re-computation: LayerNorm over features, or BatchNorm (training) over the batch."""
    if kind == "layernorm":
        mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    else:
        mu, var = h.mean(0, keepdim=True), h.var(0, unbiased=False, keepdim=True)
    return (h - mu) / torch.sqrt(var + 1e-5) * weight + bias


@pytest.mark.parametrize("kind", ["none", "layernorm", "batchnorm"])
def test_mlp_norm_sits_between_linear_and_activation(kind):
    m = MLP(6, [5, 4], out_dim=2, norm=kind).train()
    norm_type = {"none": None, "layernorm": nn.LayerNorm, "batchnorm": nn.BatchNorm1d}[kind]
    linears = [x for x in m if isinstance(x, nn.Linear)]
    norms = [x for x in m if norm_type is not None and isinstance(x, norm_type)]
    assert len(linears) == 3 and len(norms) == (0 if kind == "none" else 2) and m.out_dim == 2
    # order: Linear, norm, ReLU per hidden layer; the output Linear has neither norm nor activation
    kinds = [type(x).__name__ for x in m]
    per_layer = ["Linear"] + ([norm_type.__name__] if norm_type else []) + ["ReLU"]
    assert kinds == per_layer * 2 + ["Linear"]
    with torch.no_grad():
        for x in norms:  # non-trivial affine, so a misplaced norm shows
            x.weight.uniform_(0.5, 1.5)
            x.bias.uniform_(-0.5, 0.5)
    x = torch.randn(7, 6, generator=_g())
    h = x
    for i, lin in enumerate(linears[:2]):
        h = lin(h)
        if kind != "none":
            h = _norm(h, kind, norms[i].weight, norms[i].bias)
        h = torch.relu(h)
    assert torch.allclose(m(x), linears[2](h), atol=1e-5)


@pytest.mark.parametrize("per_input", [False, True])
@pytest.mark.parametrize("kind", ["layernorm", "batchnorm"])
def test_parallel_mlp_norm_is_per_mlp_between_affine_and_activation(kind, per_input):
    K, B = 3, 6
    pm = ParallelMLP(5, [6, 4], num=K, out_dim=2, norm=kind).train()
    assert len(pm.norms) == 2
    with torch.no_grad():
        for p in pm.norms.parameters():
            p.uniform_(0.5, 1.5)
    x = torch.randn(B, K, 5, generator=_g()) if per_input else torch.randn(B, 5, generator=_g())
    out = pm(x)
    for k in range(K):
        a = x[:, k] if per_input else x
        for layer in range(2):
            n = pm.norms[layer]
            w, b = (n.weight[k], n.bias[k]) if kind == "layernorm" else (
                n.bn.weight.view(K, -1)[k], n.bn.bias.view(K, -1)[k])
            a = torch.relu(_norm(a @ pm.weights[layer][k] + pm.biases[layer][k], kind, w, b))
        a = a @ pm.weights[2][k] + pm.biases[2][k]
        assert torch.allclose(out[:, k], a, atol=1e-5)
    # batchnorm in eval mode uses running statistics: a row's output does not depend on its batch
    if kind == "batchnorm":
        pm.eval()
        assert torch.allclose(pm(x[:1]), pm(x)[:1], atol=1e-6)


@pytest.mark.parametrize("per_input", [False, True])
def test_parallel_mlp_matches_independent_mlps(per_input):
    K, B = 3, 4
    pm = ParallelMLP(5, [6, 4], num=K, out_dim=2)
    x = torch.randn(B, K, 5, generator=_g()) if per_input else torch.randn(B, 5, generator=_g())
    out = pm(x)
    assert out.shape == (B, K, 2)
    for k in range(K):
        a = x[:, k] if per_input else x
        a = torch.relu(a @ pm.weights[0][k] + pm.biases[0][k])
        a = torch.relu(a @ pm.weights[1][k] + pm.biases[1][k])
        a = a @ pm.weights[2][k] + pm.biases[2][k]
        assert torch.allclose(out[:, k], a, atol=1e-6)


def test_gate_is_softmax_weighted_sum_of_experts():
    B, E, G, H = 4, 3, 2, 5
    gate = Gate(6, E, num_gates=G)
    x = torch.randn(B, 6, generator=_g())
    experts = torch.randn(B, E, H, generator=_g(1))
    out = gate(x, experts)
    w = gate.weights(x)
    assert torch.allclose(w.sum(-1), torch.ones(B, G), atol=1e-6)
    for g in range(G):
        logits = x @ gate.weight[g] + gate.bias[g]
        p = torch.softmax(logits, dim=-1)
        for b in range(B):
            expect = sum(p[b, e] * experts[b, e] for e in range(E))
            assert torch.allclose(out[b, g], expect, atol=1e-6)
    # per-gate inputs and per-gate expert sets
    xg = torch.randn(B, G, 6, generator=_g(2))
    eg = torch.randn(B, G, E, H, generator=_g(3))
    out = gate(xg, eg)
    for g in range(G):
        p = torch.softmax(xg[:, g] @ gate.weight[g] + gate.bias[g], dim=-1)
        assert torch.allclose(out[:, g], torch.einsum("be,beh->bh", p, eg[:, g]), atol=1e-6)


def test_short_softmax_equals_softmax_and_its_gradient():
    z = torch.randn(5, 3, 4, generator=_g()) * 30 + torch.tensor([0.0, 500.0, -500.0, 88.0])  # exp would overflow
    z.requires_grad_(True)
    got = short_softmax(z)
    want = torch.softmax(z.detach(), dim=-1)
    assert torch.isfinite(got).all() and torch.allclose(got, want, atol=1e-6)
    r = torch.randn(5, 3, 4, generator=_g(1))
    (got * r).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (torch.softmax(z2, dim=-1) * r).sum().backward()
    assert torch.allclose(z.grad, z2.grad, atol=1e-6)


def test_cgc_level_task_gates_fuse_own_and_shared_experts():
    T, m, s, B, H = 2, 2, 1, 3, 4
    level = CGCLevel(5, T, m, s, [H], last=False, dropout=0.0, act="relu")
    g = torch.randn(B, T + 1, 5, generator=_g())  # upper-level input: task outputs, then the shared one
    out = level(g)
    assert out.shape == (B, T + 1, H)
    pm = level.experts

    def expert(i, inp):
        return torch.relu(inp @ pm.weights[0][i] + pm.biases[0][i])

    experts = [expert(i, g[:, min(i // m, T)] if i < T * m else g[:, T]) for i in range(T * m + s)]
    for k in range(T):
        sel = [experts[k * m + j] for j in range(m)] + [experts[T * m + j] for j in range(s)]
        w = torch.softmax(g[:, k] @ level.task_gates.weight[k] + level.task_gates.bias[k], dim=-1)
        expect = sum(w[:, i : i + 1] * sel[i] for i in range(m + s))
        assert torch.allclose(out[:, k], expect, atol=1e-6)
    w = torch.softmax(g[:, T] @ level.shared_gate.weight[0] + level.shared_gate.bias[0], dim=-1)
    expect = sum(w[:, i : i + 1] * experts[i] for i in range(T * m + s))
    assert torch.allclose(out[:, T], expect, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Cross network and FM
# ---------------------------------------------------------------------------------------------
def test_cross_layer_full_rank_equation():
    d, L, B = 4, 2, 3
    net = CrossNet(d, L)
    with torch.no_grad():
        net.bias.normal_()
    x0 = torch.randn(B, d, generator=_g())
    out = net(x0)
    for b in range(B):
        x = x0[b]
        for l in range(L):
            W = net.W[l].t()  # x @ W[l] stores (W_l x)ᵀ
            x = x0[b] * (W @ x + net.bias[l]) + x  # x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l
        assert torch.allclose(out[b], x, atol=1e-5)


def test_cross_layer_low_rank_equals_full_rank_with_w_uvt():
    d, r, L, B = 5, 2, 3, 4
    low = CrossNet(d, L, low_rank=r)
    full = CrossNet(d, L)
    with torch.no_grad():
        low.bias.normal_()
        full.bias.copy_(low.bias)
        for l in range(L):
            full.W[l].copy_(low.V[l, 0] @ low.U[l, 0])  # W_l = U_l V_lᵀ in x @ W form
    x0 = torch.randn(B, d, generator=_g())
    assert torch.allclose(low(x0), full(x0), atol=1e-5)
    assert torch.linalg.matrix_rank(low.V[0, 0] @ low.U[0, 0]) <= r


def test_cross_mixture_of_low_rank_experts_equation():
    d, r, L, K, B = 4, 2, 2, 3, 2
    net = CrossNet(d, L, low_rank=r, num_experts=K)
    x0 = torch.randn(B, d, generator=_g())
    out = net(x0)
    for b in range(B):
        x = x0[b]
        for l in range(L):
            g = torch.softmax(x @ net.gate[l], dim=-1)
            mix = torch.zeros(d)
            for i in range(K):
                z = torch.tanh(net.C[l, i].t() @ torch.tanh(net.V[l, i].t() @ x))
                mix = mix + g[i] * (x0[b] * (net.U[l, i].t() @ z + net.bias[l]))
            x = mix + x
        assert torch.allclose(out[b], x, atol=1e-5)
    with pytest.raises(ValueError, match="low_rank"):
        CrossNet(d, 1, num_experts=2)


def test_cross_network_v1_equation():
    d, L, B = 4, 3, 3
    net = CrossNetV1(d, L)
    with torch.no_grad():
        net.bias.normal_()
    x0 = torch.randn(B, d, generator=_g())
    out = net(x0)
    for b in range(B):
        x = x0[b]
        for l in range(L):
            x = torch.outer(x0[b], x) @ net.weight[l] + net.bias[l] + x  # x_{l+1} = x_0 x_lᵀ w_l + b_l + x_l
        assert torch.allclose(out[b], x, atol=1e-5)


def test_cin_equations_6_and_7():
    B, m, D, layers = 2, 3, 4, [2, 3]
    cin = CIN(m, layers)
    x0 = torch.randn(B, m, D, generator=_g())
    out = cin(x0)
    assert out.shape == (B, sum(layers)) and cin.out_dim == 5
    for b in range(B):
        X, pooled = x0[b], []
        for k, H in enumerate(layers):
            W = cin.weights[k].view(H, X.shape[0], m)  # W^{k,h}_{ij}
            nxt = torch.zeros(H, D)
            for h in range(H):
                for i in range(X.shape[0]):
                    for j in range(m):
                        nxt[h] += W[h, i, j] * (X[i] * x0[b, j])  # Eq. 6
            X = nxt
            pooled.append(X.sum(-1))  # Eq. 7
        assert torch.allclose(out[b], torch.cat(pooled), atol=1e-5)


def test_fm_bi_interaction_equals_pairwise_sum():
    v = torch.randn(3, 5, 4, generator=_g())
    out = fm_bi_interaction(v)
    assert out.shape == (3, 4)
    for b in range(3):
        pair = sum(v[b, i] * v[b, j] for i, j in itertools.combinations(range(5), 2))
        assert torch.allclose(out[b], pair, atol=1e-5)
        dots = sum(torch.dot(v[b, i], v[b, j]) for i, j in itertools.combinations(range(5), 2))
        assert torch.allclose(out[b].sum(), dots, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# STAR: partitioned normalization and star linear
# ---------------------------------------------------------------------------------------------
def _randomise(module: nn.Module, seed: int = 5) -> None:
    g = _g(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def test_partitioned_norm_train_matches_per_domain_loop():
    D, dim, eps, mom = 3, 4, 1e-5, 0.1
    pn = PartitionedNorm(dim, D, eps=eps, momentum=mom)
    _randomise(pn)
    x = torch.randn(9, dim, generator=_g()) * 3 + 1
    domain = torch.tensor([0, 0, 0, 1, 1, 0, 1, 0, 0])  # domain 2 absent, domain 1 has 3 rows
    pn.train()
    out = pn(x, domain)
    for p in range(D):
        rows = (domain == p).nonzero().flatten().tolist()
        if not rows:
            assert torch.equal(pn.running_mean[p], torch.zeros(dim))  # absent: running stats kept
            assert torch.equal(pn.running_var[p], torch.ones(dim))
            continue
        xs = x[rows]
        mu, var = xs.mean(0), xs.var(0, unbiased=False)
        expect = (pn.gamma * pn.domain_gamma[p]) * (xs - mu) / torch.sqrt(var + eps) + (pn.beta + pn.domain_beta[p])
        assert torch.allclose(out[rows], expect, atol=1e-5)
        assert torch.allclose(pn.running_mean[p], mom * mu, atol=1e-6)
        assert torch.allclose(pn.running_var[p], (1 - mom) + mom * xs.var(0, unbiased=True), atol=1e-5)


def test_partitioned_norm_eval_uses_running_stats_per_row():
    D, dim, eps = 2, 3, 1e-5
    pn = PartitionedNorm(dim, D, eps=eps)
    _randomise(pn)
    with torch.no_grad():
        pn.running_mean.copy_(torch.randn(D, dim, generator=_g(1)))
        pn.running_var.copy_(torch.rand(D, dim, generator=_g(2)) + 0.5)
    pn.eval()
    x = torch.randn(5, dim, generator=_g(3))
    domain = torch.tensor([1, 0, 1, 1, 0])
    before = pn.running_mean.clone()
    out = pn(x, domain)
    assert torch.equal(pn.running_mean, before)  # eval never updates the statistics
    for b in range(5):
        p = int(domain[b])
        expect = (pn.gamma * pn.domain_gamma[p]) * (x[b] - pn.running_mean[p]) / torch.sqrt(pn.running_var[p] + eps)
        expect = expect + pn.beta + pn.domain_beta[p]
        assert torch.allclose(out[b], expect, atol=1e-5)
        assert torch.allclose(pn(x[b : b + 1], domain[b : b + 1])[0], out[b], atol=1e-6)


def test_star_linear_weight_is_shared_times_domain_weight():
    D, i, o = 3, 4, 2
    layer = StarLinear(i, o, D)
    _randomise(layer)
    w, b = layer.domain_weights()
    for p in range(D):
        assert torch.allclose(w[p], layer.weight * layer.domain_weight[p])
        assert torch.allclose(b[p], layer.bias + layer.domain_bias[p])
    x = torch.randn(6, i, generator=_g())
    domain = torch.tensor([0, 2, 1, 1, 0, 2])
    out = layer(x, domain)
    for r in range(6):
        p = int(domain[r])
        expect = x[r] @ (layer.weight * layer.domain_weight[p]) + layer.bias + layer.domain_bias[p]
        assert torch.allclose(out[r], expect, atol=1e-5)


def test_star_linear_starts_as_the_shared_layer():
    layer = StarLinear(4, 3, num_domains=2)
    x = torch.randn(4, 4, generator=_g())
    out = layer(x, torch.tensor([0, 1, 0, 1]))
    assert torch.allclose(out, x @ layer.weight + layer.bias, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------
def test_backbones_shapes_and_deepfm_representation():
    spec, fm = make_tiny()
    emb = EmbeddingCollection(spec, fm)
    batch = make_batch(spec, fm, size=5)
    cfg = BackboneConfig(hidden=[7], cross_layers=2)
    x = emb.flat_input(batch)
    none = build_backbone("none", emb, cfg)
    assert torch.equal(none.embed(batch, emb), x) and none.out_dim == emb.input_dim
    assert build_backbone("mlp", emb, cfg).embed(batch, emb).shape == (5, 7)
    par = build_backbone("dcnv2", emb, cfg)
    assert par.out_dim == emb.input_dim + 7 and par.embed(batch, emb).shape == (5, par.out_dim)
    stk = build_backbone("dcnv2", emb, cfg.model_copy(update={"structure": "stacked"}))
    assert stk.out_dim == 7 and torch.allclose(stk(x), stk.deep(stk.cross(x)))
    dfm = build_backbone("deepfm", emb, cfg)
    h = dfm.embed(batch, emb)
    assert h.shape == (5, 7 + 8) and dfm.out_dim == 15
    v = emb.stacked(batch)
    pair = sum(v[:, i] * v[:, j] for i, j in itertools.combinations(range(v.shape[1]), 2))
    assert torch.allclose(h[:, 7:], pair, atol=1e-6)
    assert torch.allclose(h[:, :7], dfm.deep(x))


def test_parallel_mlp_reads_an_expanded_input_as_one_shared_input():
    """An input expanded over the K MLPs (a stride-0 view) runs as one GEMM; same result, exports."""
    pm = ParallelMLP(5, [4], num=3, out_dim=1)
    h = torch.randn(6, 5, generator=_g())
    copied = pm(h.unsqueeze(1).repeat(1, 3, 1))
    assert torch.allclose(pm(h.unsqueeze(1).expand(-1, 3, -1)), copied, atol=1e-6)
    assert torch.allclose(pm(h), copied, atol=1e-6)

    class Expanded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pm = pm

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pm(x.unsqueeze(1).expand(-1, 3, -1))

    exported = torch.export.export(Expanded(), (h,), dynamic_shapes=({0: torch.export.Dim("B", min=2)},))
    other = torch.randn(4, 5, generator=_g(1))
    assert torch.allclose(exported.module()(other), pm(other), atol=1e-6)
