"""PEPNet (Chang et al., KDD'23): every equation against a direct re-computation with the model's
own weights, the gate ranges, the stop-gradient paths, the ablations and the optimizer split."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mdmt.batch import Batch
from mdmt.config import TrainConfig
from mdmt.embeddings import DOMAIN_KEY
from mdmt.layers import GateNU
from mdmt.models import build_model
from mdmt.models.heads import PPNetHead, PPNetParams, TowerConfig, prior_width
from mdmt.models.pepnet import EPNet, PEPNet
from mdmt.schema import ConfigError, DatasetSpec
from mdmt.testing import assert_stop_gradient
from mdmt.train.trainer import Trainer

from .conftest import make_batch, make_tiny


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _schema(priors=("user_id", "item_id"), domain_features=("age", "price"), per_domain=False):
    """The tiny schema with PEPNet's groups: priors and domain-side features (one bucketised, one dense)."""
    spec, fm = make_tiny(per_domain=per_domain)
    spec = DatasetSpec.model_validate({**spec.model_dump(), "priors": list(priors),
                                       "domain_features": list(domain_features)})
    return spec, fm


def _build(params: dict | None = None, seed: int = 0, embedding: dict | None = None,
           **schema) -> tuple[PEPNet, Batch, DatasetSpec]:
    spec, fm = _schema(**schema)
    torch.manual_seed(seed)
    model = build_model("pepnet", spec, fm, {"tower_hidden": [6, 4], **(params or {})}, embedding=embedding)
    assert isinstance(model, PEPNet)
    return model, make_batch(spec, fm, size=10), spec


def _logits(model, batch) -> torch.Tensor:
    out = model(batch)
    return torch.stack([out.logits[t] for t in model.task_names], dim=1)


def _loss(model, batch) -> torch.Tensor:
    z = _logits(model, batch)
    return F.binary_cross_entropy_with_logits(z, batch.labels)


def _gate_by_hand(gate: GateNU, x: torch.Tensor) -> torch.Tensor:
    h = torch.relu(x @ gate.layer1.weight.t() + gate.layer1.bias)  # Eq. 2
    return gate.gamma * torch.sigmoid(h @ gate.layer2.weight.t() + gate.layer2.bias)  # Eq. 3


# ---------------------------------------------------------------------------------------------
# Gate NU (Eq. 2-3)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [2.0, 0.5, 3.0])
def test_gate_nu_equations_and_range(gamma):
    gate = GateNU(5, 7, hidden=3, gamma=gamma)
    x = torch.randn(8, 5, generator=_g())
    out = gate(x)
    assert out.shape == (8, 7)
    assert torch.allclose(out, _gate_by_hand(gate, x), atol=1e-6)
    assert torch.all(out > 0) and torch.all(out < gamma)
    big = gate(1e4 * torch.randn(50, 5, generator=_g(1)))  # saturated: still within [0, γ]
    assert torch.all(big >= 0) and torch.all(big <= gamma)
    assert GateNU(5, 7).layer1.out_features == 5  # hidden width defaults to the input width


def test_gate_nu_with_gamma_two_is_centred_at_one():
    gate = GateNU(3, 4)
    with torch.no_grad():
        gate.layer2.weight.zero_()
        gate.layer2.bias.zero_()
    assert torch.allclose(gate(torch.randn(2, 3)), torch.ones(2, 4))


# ---------------------------------------------------------------------------------------------
# EPNet (Eq. 5-6) and PPNet (Eq. 7-9) as modules
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gating", ["element", "field"])
def test_epnet_equations(gating):
    widths = [2, 3, 1]
    ep = EPNet(4, widths, gating=gating, extra="stop_gradient", gamma=2.0)
    side, E = torch.randn(5, 4, generator=_g()), torch.randn(5, 6, generator=_g(1))
    out = ep(side, E)
    delta = _gate_by_hand(ep.gate, torch.cat([side, E], -1))  # Eq. 5
    if gating == "field":
        assert delta.shape == (5, 3)
        delta = torch.cat([delta[:, f : f + 1].expand(-1, w) for f, w in enumerate(widths)], dim=1)
    assert torch.allclose(out, delta * E, atol=1e-6)  # Eq. 6
    none = EPNet(4, widths, gating=gating, extra="none")
    assert none.gate.in_dim == 4  # w/o the extra input the gate reads E(F_d) alone


def test_ppnet_head_equations_and_head_contract():
    B, T, d, g_dim, hidden = 4, 3, 5, 6, [4, 3]
    head = PPNetHead(d, T, TowerConfig(hidden=hidden), PPNetParams(gamma=2.0), gate_dim=g_dim)
    x, g = torch.randn(B, T, d, generator=_g()), torch.randn(B, g_dim, generator=_g(1))
    out = head(x, g)
    assert out.shape == (B, T)
    dims = [d, *hidden, 1]
    for t in range(T):
        h = x[:, t]
        for l in range(len(dims) - 1):
            delta = _gate_by_hand(head.gates[l], g)  # δ_task^(l): [B, T·h_l]
            assert delta.shape == (B, T * dims[l])
            o = delta[:, t * dims[l] : (t + 1) * dims[l]] * h  # Eq. 8: task t's block
            h = o @ head.weights[l][t] + head.biases[l][t]  # Eq. 9
            if l < len(hidden):
                h = torch.relu(h)
        assert torch.allclose(out[:, t], h[:, 0], atol=1e-5)
    c1 = head.first(x, g)
    assert c1.shape == (B, T, hidden[0])
    assert torch.allclose(head.rest(c1, g), out, atol=1e-6)  # forward = rest ∘ first
    assert torch.allclose(head(x[:, 0], g), head(x[:, :1].expand(B, T, d), g))  # one input for every tower
    with pytest.raises(ValueError, match="gate input"):
        head(x)
    with pytest.raises(ConfigError, match="gate input"):
        PPNetHead(d, T, TowerConfig(hidden=hidden), PPNetParams(), gate_dim=0)


def test_ppnet_head_without_hidden_layers_gates_the_logit_layer():
    B, T, d, g_dim = 3, 2, 4, 5
    head = PPNetHead(d, T, TowerConfig(hidden=[]), PPNetParams(), gate_dim=g_dim)
    x, g = torch.randn(B, T, d, generator=_g()), torch.randn(B, g_dim, generator=_g(1))
    assert torch.equal(head.first(x, g), x) and head.first_dim == d  # C_1 is the input itself
    delta = _gate_by_hand(head.gates[0], g).view(B, T, d)
    expect = torch.einsum("btd,tdo->bto", delta * x, head.weights[0])[..., 0] + head.biases[0][:, 0]
    assert torch.allclose(head(x, g), expect, atol=1e-6)


def test_ppnet_head_norm_sits_between_the_affine_layer_and_the_activation():
    B, T, d, g_dim = 5, 2, 4, 3
    head = PPNetHead(d, T, TowerConfig(hidden=[3], norm="layernorm"), PPNetParams(), gate_dim=g_dim)
    with torch.no_grad():
        head.norms[0].weight.normal_()
        head.norms[0].bias.normal_()
    x, g = torch.randn(B, T, d, generator=_g()), torch.randn(B, g_dim, generator=_g(1))
    for t in range(T):
        h = _gate_by_hand(head.gates[0], g)[:, t * d : (t + 1) * d] * x[:, t] @ head.weights[0][t] + head.biases[0][t]
        h = torch.relu(F.layer_norm(h, (3,)) * head.norms[0].weight[t] + head.norms[0].bias[t])
        h = (_gate_by_hand(head.gates[1], g)[:, t * 3 : (t + 1) * 3] * h) @ head.weights[1][t] + head.biases[1][t]
        assert torch.allclose(head(x, g)[:, t], h[:, 0], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The whole model, Eq. 4-9, recomputed by hand
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gating", ["element", "field"])
def test_pepnet_forward_equals_equations_4_to_9(gating):
    model, batch, spec = _build({"epnet_gating": gating})
    model.eval()
    emb = model.embeddings
    with torch.no_grad():
        out = _logits(model, batch)
        pooled = emb.pooled(batch)
        E = torch.cat([pooled[k] for k in emb.keys] + [batch.dense], dim=1)  # Eq. 4
        dense_names = [f.name for f in spec.dense_features()]
        # E(F_d): the domain id embedding, the bucketised age's embedding, the dense price's projection
        proj = emb.dense_projections["t_price"]
        price = batch.dense[:, [dense_names.index("price")]] @ proj.weight.t() + proj.bias
        side = torch.cat([emb.domain_table.weight[batch.domain], pooled["age@age"], price], dim=1)
        delta = _gate_by_hand(model.epnet.gate, torch.cat([side, E], 1))  # Eq. 5
        if gating == "field":
            widths = [emb.dims[k] for k in emb.keys] + [1] * emb.num_dense
            delta = torch.cat([delta[:, f : f + 1].expand(-1, w) for f, w in enumerate(widths)], dim=1)
        o_ep = delta * E  # Eq. 6
        prior = torch.cat([pooled["user_id@user_id"], pooled["item_id@item_id"]], dim=1)  # Eq. 7: O_prior
        g = torch.cat([prior, o_ep], 1)  # Eq. 7: O_prior ⊕ ⊘(O_ep)
        head = model.head
        for t in range(spec.num_tasks):
            h = o_ep  # the towers read O_ep (backbone: none, block: shared)
            for l in range(len(head.weights)):
                n = h.shape[1]
                h = _gate_by_hand(head.gates[l], g)[:, t * n : (t + 1) * n] * h  # Eq. 8
                h = h @ head.weights[l][t] + head.biases[l][t]  # Eq. 9
                h = torch.relu(h) if l < len(head.weights) - 1 else h
            assert torch.allclose(out[:, t], h[:, 0], atol=1e-5)


def test_every_gate_of_the_model_is_in_range():
    model, batch, _ = _build({"gamma": 2.0})
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: seen.append(o)) for m in model.modules() if isinstance(m, GateNU)]
    model(batch)
    for h in hooks:
        h.remove()
    assert len(seen) == 1 + 3  # EPNet's gate and one per tower layer (input, 6, 4)
    for delta in seen:
        assert torch.all(delta > 0) and torch.all(delta < 2.0)


# ---------------------------------------------------------------------------------------------
# Stop-gradient (⊘) on the gate paths; the embeddings still learn through the main path
# ---------------------------------------------------------------------------------------------
def _gate_outputs(model: PEPNet, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward once; return δ_domain and every δ_task^(l), still attached to the graph."""
    ep, pp = [], []
    hooks = [model.epnet.gate.register_forward_hook(lambda _m, _i, o: ep.append(o))]
    hooks += [g.register_forward_hook(lambda _m, _i, o: pp.append(o)) for g in model.head.gates]
    model(batch)
    for h in hooks:
        h.remove()
    return ep[0], pp


def _grads(out: torch.Tensor, params: dict[str, nn.Parameter]) -> dict[str, float]:
    """``|∂ out.sum() / ∂ p|`` summed, per parameter (0 where the path does not exist)."""
    grads = torch.autograd.grad(out.sum(), list(params.values()), retain_graph=True, allow_unused=True)
    return {n: 0.0 if g is None else float(g.abs().sum()) for n, g in zip(params, grads)}


def _tables(model: PEPNet, spec: DatasetSpec) -> dict[str, nn.Parameter]:
    """Every embedding table by name, the domain id's as ``DOMAIN_KEY``."""
    emb = model.embeddings
    return {**{t.name: emb.table(t.name).weight for t in spec.effective_tables()}, DOMAIN_KEY: emb.domain_table.weight}


def test_gate_paths_stop_the_gradient_into_the_embeddings():
    model, batch, spec = _build()
    tables = _tables(model, spec)
    epnet = dict(model.epnet.named_parameters())
    d_domain, d_task = _gate_outputs(model, batch)
    # EPNet's gate reads E(F_d) ⊕ ⊘(E): gradient into the domain-side tables (domain id, age) only
    g = _grads(d_domain, tables)
    assert g[DOMAIN_KEY] > 0 and g["age"] > 0
    assert all(v == 0 for n, v in g.items() if n not in (DOMAIN_KEY, "age")), g
    # PPNet's gates read O_prior ⊕ ⊘(O_ep): gradient into the prior tables only, none into EPNet
    for delta in d_task:
        g = _grads(delta, tables)
        assert g["user_id"] > 0 and g["item_id"] > 0
        assert all(v == 0 for n, v in g.items() if n not in ("user_id", "item_id")), g
        assert all(v == 0 for v in _grads(delta, epnet).values())
    # the main path: every table and EPNet still learn from the loss
    _loss(model, batch).backward()
    for n, p in [*tables.items(), *model.epnet.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_named_stop_gradient_paths():
    model, batch, _ = _build()
    assert_stop_gradient(model, batch, source="E", target="epnet.gate")  # Eq. 5: ⊘(E)
    for l in range(3):
        assert_stop_gradient(model, batch, source="O_ep", target=f"head.gates.{l}")  # Eq. 7: ⊘(O_ep)
    backprop, _, _ = _build({"extra_input": "backprop"})
    with pytest.raises(AssertionError, match="gradient flows"):
        assert_stop_gradient(backprop, batch, source="E", target="epnet.gate")
    with pytest.raises(AssertionError, match="gradient flows"):
        assert_stop_gradient(backprop, batch, source="O_ep", target="head.gates.1")


def test_backprop_variant_lets_the_gradient_through_the_gate_paths():
    model, batch, spec = _build({"extra_input": "backprop"})
    tables = _tables(model, spec)
    d_domain, d_task = _gate_outputs(model, batch)
    assert all(v > 0 for v in _grads(d_domain, tables).values())  # through E
    for delta in d_task:
        assert all(v > 0 for n, v in _grads(delta, dict(model.epnet.named_parameters())).items())  # through O_ep


def test_stop_gradient_and_backprop_variants_compute_the_same_forward():
    sg, batch, _ = _build({"extra_input": "stop_gradient"})
    bp, _, _ = _build({"extra_input": "backprop"})
    bp.load_state_dict(sg.state_dict())
    with torch.no_grad():
        assert torch.equal(_logits(sg.eval(), batch), _logits(bp.eval(), batch))


# ---------------------------------------------------------------------------------------------
# Ablations: each removes exactly its component
# ---------------------------------------------------------------------------------------------
def _shapes(model: nn.Module) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def test_without_epnet_removes_exactly_epnet():
    full, batch, _ = _build()
    wo, _, _ = _build({"epnet": False})
    a, b = _shapes(full), _shapes(wo)
    # EPNet's gate, and the projection of the dense domain-side feature (price) that only EPNet reads
    assert {n for n in a if n not in b} == {n for n in a if n.startswith(("epnet.", "embeddings.dense_projections."))}
    assert all(a[n] == s for n, s in b.items()) and set(b) <= set(a)
    wo.load_state_dict({k: v for k, v in full.state_dict().items() if k in wo.state_dict()})
    # the full model with δ_domain ≡ 1 is the model without EPNet
    full.epnet.gate.forward = lambda x: torch.ones(x.shape[0], full.epnet.gate.out_dim)
    with torch.no_grad():
        assert torch.allclose(_logits(full.eval(), batch), _logits(wo.eval(), batch), atol=1e-6)


def test_without_ppnet_removes_exactly_ppnet():
    full, batch, _ = _build()
    wo, _, _ = _build({"head": "plain"})
    a, b = _shapes(full), _shapes(wo)
    assert {n: s for n, s in a.items() if not n.startswith("head.")} == {
        n: s for n, s in b.items() if not n.startswith("head.")}  # same EPNet, embeddings, backbone
    towers = [s for n, s in a.items() if n.startswith(("head.weights.", "head.biases."))]
    assert sorted(towers) == sorted(s for n, s in b.items() if n.startswith("head."))  # same towers, no gates
    state = {k: v for k, v in full.state_dict().items() if not k.startswith("head.")}
    hw, hb = full.head.weights, full.head.biases  # plain head: first layer, then the rest
    state.update({"head.first_layer.weights.0": hw[0], "head.first_layer.biases.0": hb[0],
                  "head.rest_layers.weights.0": hw[1], "head.rest_layers.biases.0": hb[1],
                  "head.rest_layers.weights.1": hw[2], "head.rest_layers.biases.1": hb[2]})
    wo.load_state_dict(state)
    for gate in full.head.gates:  # the full model with every δ_task ≡ 1 is the model without PPNet
        gate.forward = (lambda n: lambda x: torch.ones(x.shape[0], n))(gate.out_dim)
    with torch.no_grad():
        assert torch.allclose(_logits(full.eval(), batch), _logits(wo.eval(), batch), atol=1e-6)


def test_without_both_is_plain_towers_on_the_embedding():
    model, batch, spec = _build({"epnet": False, "head": "plain"})
    assert not any(isinstance(m, GateNU) for m in model.modules())
    with torch.no_grad():
        x = model.embeddings.flat_input(batch)
        assert torch.allclose(_logits(model.eval(), batch), model.head(x), atol=1e-6)


def test_without_extra_input_the_gates_read_only_their_priors():
    model, batch, _ = _build({"extra_input": "none"})
    e = model.embeddings.input_dim
    assert model.epnet.gate.in_dim == 8 + 8 + 8  # domain id, age embedding, price projection (all 8 wide)
    assert all(g.in_dim == 16 for g in model.head.gates)  # user_id ⊕ item_id
    full, _, _ = _build()
    assert full.epnet.gate.in_dim == 24 + e and all(g.in_dim == 16 + e for g in full.head.gates)
    _loss(model, batch).backward()  # trains


# ---------------------------------------------------------------------------------------------
# Domains, fallbacks, backbones, optimizers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [{}, {"head": "plain"}, {"epnet_gating": "field"}, {"block": "mmoe"}])
def test_outputs_change_with_the_domain(params):
    model, batch, spec = _build(params, domain_features=())
    moved = batch.index(torch.arange(len(batch)))
    moved.domain = (batch.domain + 1) % spec.num_domains
    with torch.no_grad():
        a, b = _logits(model.eval(), batch), _logits(model, moved)
    assert torch.all((a - b).abs().amax(1) > 1e-7)


def test_own_domain_embedding_when_the_domain_is_not_an_input():
    model, batch, spec = _build(domain_features=(), embedding={"domain_input": False})
    assert DOMAIN_KEY not in model.embeddings.keys
    assert model.epnet.gate.in_dim == 8 + model.embeddings.input_dim  # PEPNet's own domain id embedding
    moved = batch.index(torch.arange(len(batch)))
    moved.domain = (batch.domain + 1) % spec.num_domains
    with torch.no_grad():
        assert torch.all((_logits(model.eval(), batch) - _logits(model, moved)).abs().amax(1) > 1e-7)
    groups = {g.name: g for g in model.optim_groups()}
    assert any(p is model.domain_embedding.weight for p in groups["embeddings"].params)
    wide, _, _ = _build({"domain_dim": 3}, domain_features=(), embedding={"domain_input": False})
    assert wide.domain_embedding.embedding_dim == 3


def test_fallbacks_without_priors_or_domain_features():
    model, batch, _ = _build(priors=(), domain_features=())
    # priors: the user- and item-side id features (user_id, item_id, category, bucketised age)
    assert prior_width(model.embeddings) == 4 * 8 and model.head.gates[0].in_dim == 32 + model.embeddings.input_dim
    assert model.epnet.gate.in_dim == 8 + model.embeddings.input_dim  # domain side: the domain id alone
    _loss(model, batch).backward()
    seq, _, _ = _build(priors=("user_id", "hist_item"))  # a sequence prior enters mean-pooled
    assert prior_width(seq.embeddings) == 16


@pytest.mark.parametrize("backbone, block", [("mlp", "shared"), ("dcnv2", "shared"), ("deepfm", "shared"),
                                             ("dcn", "mmoe"), ("xdeepfm", "ple"), ("none", "mmoe")])
def test_pepnet_on_other_backbones_and_blocks(backbone, block):
    model, batch, _ = _build({"backbone": backbone, "block": block, "block_params": {"num_experts": 2, "expert_hidden": [6]},
                              "backbone_params": {"hidden": [8], "cross_layers": 1, "cin_layers": [3]}})
    _loss(model, batch).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


def test_optimizer_groups_adagrad_embeddings_adam_dense():
    model, _, _ = _build()
    groups = {g.name: g for g in model.optim_groups()}
    emb = groups["embeddings"]
    assert (emb.optimizer, emb.lr) == ("adagrad", 0.05)
    assert (groups["dense"].optimizer, groups["dense"].lr) == ("adam", None)
    ids = [id(p) for g in groups.values() for p in g.params]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    assert {id(p) for p in emb.params} == {id(p) for p in model.embeddings.tables.parameters()} | {
        id(model.embeddings.domain_table.weight)}
    projections = {id(p) for p in model.embeddings.dense_projections.parameters()}
    assert projections and projections <= {id(p) for p in groups["dense"].params}  # price's projection
    trainer = Trainer(model, TrainConfig(lr=1e-3), score_fn=lambda p: 0.0)
    kinds = {type(o).__name__: o.param_groups[0]["lr"] for o in trainer.optimizers}
    assert kinds == {"Adam": 1e-3, "Adagrad": 0.05}
    custom, _, _ = _build({"embedding_optimizer": "adam", "embedding_lr": 0.01, "dense_optimizer": "sgd",
                           "dense_lr": 0.1})
    groups = {g.name: (g.optimizer, g.lr) for g in custom.optim_groups()}
    assert groups == {"embeddings": ("adam", 0.01), "dense": ("sgd", 0.1)}
    inherit, _, _ = _build({"embedding_optimizer": None, "embedding_lr": None, "dense_optimizer": None})
    trainer = Trainer(inherit, TrainConfig(lr=2e-3, optimizer="adamw"), score_fn=lambda p: 0.0)
    assert [(type(o).__name__, o.param_groups[0]["lr"]) for o in trainer.optimizers] == [("AdamW", 2e-3)] * 2


def test_config_is_strict():
    with pytest.raises(ConfigError, match="extra_input"):
        _build({"extra_input": "sometimes"})
    with pytest.raises(ConfigError, match="epnet_gate"):
        _build({"epnet_gate": "field"})
    with pytest.raises(ConfigError, match="head_params"):
        _build({"head_params": {"gama": 3}})
    own, _, _ = _build({"gamma": 3.0, "head_params": {"gamma": 1.5}})  # the PPNet gates' own γ
    assert own.epnet.gate.gamma == 3.0 and all(g.gamma == 1.5 for g in own.head.gates)


@pytest.mark.parametrize("params", [{"epnet": False}, {"head": "plain"}, {"epnet_gating": "field", "extra_input": "none"},
                                    {"backbone": "deepfm", "backbone_params": {"hidden": [8]}}])
def test_variants_export_with_a_dynamic_batch(params):
    model, batch, spec = _build(params)
    model.eval()

    class Scorer(nn.Module):
        def __init__(self, m: PEPNet) -> None:
            super().__init__()
            self.m = m

        def forward(self, sparse, dense, domain, sequences, seq_lengths):
            n = sparse.shape[0]
            b = Batch(sparse=sparse, dense=dense, domain=domain, labels=torch.zeros(n, spec.num_tasks),
                      label_mask=torch.ones(n, spec.num_tasks, dtype=torch.bool), group=torch.zeros(n, dtype=torch.long),
                      sequences=sequences, seq_lengths=seq_lengths)
            return _logits(self.m, b)

    def args(b: Batch):
        return (b.sparse, b.dense, b.domain, dict(b.sequences), dict(b.seq_lengths))

    rows = {0: torch.export.Dim("B", min=2)}
    dynamic = (rows, rows, rows, {k: rows for k in batch.sequences}, {k: rows for k in batch.seq_lengths})
    exported = torch.export.export(Scorer(model), args(batch), dynamic_shapes=dynamic)
    spec_, fm = _schema()
    other = make_batch(spec_, fm, size=5, seed=7)
    with torch.no_grad():
        assert torch.allclose(exported.module()(*args(other)), Scorer(model)(*args(other)), atol=1e-5)
