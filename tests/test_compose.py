"""The plug-in parts: heads (their contract, the plain towers, per-(domain, task) towers),
multi-task blocks, and every backbone × block × head composition the registry offers."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest
import torch

from mdmt.embeddings import EmbeddingCollection
from mdmt.models import build_model
from mdmt.models.backbones import BackboneKind
from mdmt.models.blocks import BLOCKS, BlockConfig, build_block
from mdmt.models.heads import HEADS, TowerConfig, build_head, domain_task_logits
from mdmt.schema import ConfigError

from .conftest import make_batch, make_tiny
from .test_models import _loss, _setup, assert_exports

BACKBONES = list(get_args(BackboneKind))
SMALL = {"backbone_params": {"hidden": [12], "cross_layers": 1, "cin_layers": [3, 2]}, "block_params": {"num_experts": 2, "expert_hidden": [10]},
         "tower_hidden": [8, 4]}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one torch thread (conftest)


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("hidden", [[6, 5], [6], []])
def test_head_contract_forward_is_rest_of_first(kind, hidden):
    spec, fm = make_tiny()
    emb = EmbeddingCollection(spec, fm)
    batch = make_batch(spec, fm, size=7)
    T, d = 3, 9
    torch.manual_seed(0)
    head = build_head(kind, d, T, TowerConfig(hidden=hidden, norm="layernorm"), {}, emb)
    pooled = emb.pooled(batch)
    gate = head.gate_input(emb, batch, pooled)
    x = torch.randn(7, T, d, generator=_g())
    c1 = head.first(x, gate)
    assert c1.shape == (7, T, head.first_dim) and head.first_dim == (hidden[0] if hidden else d)
    out = head(x, gate)
    assert out.shape == (7, T) and torch.equal(out, head.rest(c1, gate))


def test_plain_head_is_one_tower_per_task():
    head = build_head("plain", 5, 3, TowerConfig(hidden=[6, 4]))
    x = torch.randn(4, 3, 5, generator=_g())
    out = head(x)
    f, r = head.first_layer, head.rest_layers
    for t in range(3):
        c1 = torch.relu(x[:, t] @ f.weights[0][t] + f.biases[0][t])  # C_1^t
        a = torch.relu(c1 @ r.weights[0][t] + r.biases[0][t])
        assert torch.allclose(head.first(x)[:, t], c1, atol=1e-6)
        assert torch.allclose(out[:, t], (a @ r.weights[1][t] + r.biases[1][t])[:, 0], atol=1e-6)
    # one input for every tower: as [B, d] (shared_input), expanded, or copied, the same logits
    h = torch.randn(4, 5, generator=_g(1))
    assert head.shared_input
    copied = head(h.unsqueeze(1).repeat(1, 3, 1))
    assert torch.allclose(head(h.unsqueeze(1).expand(-1, 3, -1)), copied, atol=1e-6)
    assert torch.allclose(head(h), copied, atol=1e-6)
    towers, domain = build_head("plain", 5, 2 * 3, TowerConfig(hidden=[4])), torch.tensor([0, 1, 1, 0])
    expanded = domain_task_logits(towers, h.unsqueeze(1).expand(-1, 3, -1), domain, 2)
    assert torch.allclose(domain_task_logits(towers, h, domain, 2), expanded, atol=1e-6)


def test_domain_task_logits_pick_each_rows_domain_towers():
    D, T, d = 3, 2, 5
    head = build_head("plain", d, D * T, TowerConfig(hidden=[4]))
    x = torch.randn(6, T, d, generator=_g())
    domain = torch.tensor([2, 0, 1, 1, 0, 2])
    out = domain_task_logits(head, x, domain, D)
    every = head(x.repeat(1, D, 1)).view(6, D, T)
    for b in range(6):
        p = int(domain[b])
        assert torch.equal(out[b], every[b, p])
        for t in range(T):  # tower p·T + t on task t's representation
            alone = head(x[b : b + 1, t : t + 1].expand(1, D * T, d))[0, p * T + t]
            assert torch.allclose(out[b, t], alone, atol=1e-6)


def test_head_errors_are_clear():
    with pytest.raises(ConfigError, match="unknown head 'towers'"):
        build_model("mmoe", *make_tiny(), {"head": "towers"})
    with pytest.raises(ConfigError, match="head_params.*gamma"):
        build_model("mmoe", *make_tiny(), {"head": "plain", "head_params": {"gamma": 2}})
    with pytest.raises(ConfigError, match="block"):
        build_model("compose", *make_tiny(), {"block": "moe"})


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", BLOCKS)
def test_block_shapes(kind):
    block = build_block(kind, 7, 3, BlockConfig(num_experts=2, expert_hidden=[5], num_levels=2))
    x = torch.randn(4, 7, generator=_g())
    z = block(x, torch.zeros(4, dtype=torch.long))
    assert z.shape == (4, 3, block.out_dim)
    if kind == "shared":
        assert block.out_dim == 7 and all(torch.equal(z[:, t], x) for t in range(3))


# ---------------------------------------------------------------------------------------------
# Every composition
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone, block, head", list(itertools.product(BACKBONES, BLOCKS, sorted(HEADS))))
def test_every_backbone_block_head_composition(backbone, block, head):
    spec, fm, batch = _setup(True, size=8)
    torch.manual_seed(0)
    model = build_model("compose", spec, fm, {**SMALL, "backbone": backbone, "block": block, "head": head})
    prefix = {"none": "identity"}.get(backbone, backbone)
    assert type(model.backbone).__name__.lower().startswith(prefix)
    model.train()
    _loss(model, batch).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and torch.any(p.grad != 0), n
    assert_exports(model.eval(), spec, fm, batch)


@pytest.mark.parametrize("name, block", [("sharedbottom", "shared"), ("mmoe", "mmoe"), ("ple", "ple")])
def test_registered_models_equal_their_composition(name, block):
    """``sharedbottom``, ``mmoe`` and ``ple`` are named compositions: the same seed gives the same model."""
    spec, fm, batch = _setup(True, size=8)
    params = {"backbone": "mlp", "backbone_params": {"hidden": [12]}, "tower_hidden": [8]}
    own = {"mmoe": {"num_experts": 3, "expert_hidden": [10]}, "ple": {"num_levels": 2, "expert_hidden": [10]}}.get(name, {})
    torch.manual_seed(0)
    model = build_model(name, spec, fm, {**params, **own}).eval()
    torch.manual_seed(0)
    composed = build_model("compose", spec, fm, {**params, "block": block, "block_params": own}).eval()
    with torch.no_grad():
        a, b = model(batch).logits, composed(batch).logits
    assert all(torch.equal(a[t], b[t]) for t in a)


def test_backbone_block_head_by_hand():
    """The composition is H, then the block, then the head, on the flat input."""
    spec, fm, batch = _setup(False, size=6)
    torch.manual_seed(0)
    model = build_model("compose", spec, fm, {**SMALL, "backbone": "mlp", "block": "mmoe"}).eval()
    with torch.no_grad():
        x = model.embeddings.flat_input(batch)
        h = model.backbone.mlp(x)
        f = model.block.experts(h)
        w = model.block.gates.weights(h)
        z = torch.einsum("bte,beh->bth", w, f)
        expect = model.head(z)
        got = torch.stack([model(batch).logits[t] for t in spec.task_names], 1)
    assert torch.allclose(got, expect, atol=1e-6)


@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
@pytest.mark.parametrize("block", BLOCKS)
def test_one_norm_reaches_every_mlp_of_a_composition(norm, block):
    spec, fm, batch = _setup(False, size=8)
    torch.manual_seed(0)
    model = build_model("compose", spec, fm, {**SMALL, "backbone": "mlp", "block": block, "norm": norm})
    kind = torch.nn.LayerNorm if norm == "layernorm" else torch.nn.BatchNorm1d
    assert sum(isinstance(m, kind) for m in model.backbone.modules()) == 1  # the backbone's hidden layer
    stacked = [m for m in model.modules() if type(m).__name__ == "StackedNorm"]
    assert stacked and all(m.kind == norm for m in stacked)  # experts and towers
    assert len([m for m in model.head.modules() if type(m).__name__ == "StackedNorm"]) == 2  # towers [8, 4]
    model.train()
    _loss(model, batch).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert_exports(model.eval(), spec, fm, batch)
