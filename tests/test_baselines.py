"""The multi-domain multi-task baselines of PEPNet's and PMTA's tables (§3.1.2 of both), each
re-computed by hand on the tiny schema: DCNv2-MT, PLE-MD, SharedTop, SpecificTop, SpecificAll."""

from __future__ import annotations

import importlib

import pytest
import torch

from mdmt.models import REGISTRY, build_model

from .conftest import make_batch
from .test_models import _setup


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one torch thread (conftest)


def _logits(model, batch) -> torch.Tensor:
    return torch.stack([model(batch).logits[t] for t in model.task_names], 1)


def test_baselines_are_registered_with_their_papers():
    for name in ("dcnv2-mt", "ple-md", "sharedtop", "specifictop", "specificall"):
        info = REGISTRY[name]
        assert "PEPNet" in info.paper and "PMTA" in info.paper, name
        doc = importlib.import_module(info.cls.__module__).__doc__
        assert "§3.1.2" in doc and "PEPNet" in doc and "PMTA" in doc, name


def test_dcnv2_mt_is_dcnv2_then_a_task_mixture_then_towers():
    spec, fm, batch = _setup(False, size=6)
    torch.manual_seed(0)
    model = build_model("dcnv2-mt", spec, fm, {"cross_layers": 2, "num_experts": 3, "expert_hidden": [7]}).eval()
    with torch.no_grad():
        x0 = model.embeddings.flat_input(batch)
        bb = model.backbone
        h = torch.cat([bb.cross(x0), bb.deep(x0)], dim=-1)  # parallel DCN-V2
        f = model.block.experts(h)
        w = model.block.gates.weights(h)  # [B, T, E]
        mixed = torch.einsum("bte,beh->bth", w, f)
        assert torch.allclose(_logits(model, batch), model.head(mixed), atol=1e-6)
    assert w.shape[-1] == 3 and not torch.allclose(w[:, 0], w[:, 1])  # one gate per task


def _domain_towers(head, z: torch.Tensor, domain: torch.Tensor, D: int, T: int) -> torch.Tensor:
    """Row b, task t: tower (domain[b]·T + t) on z[b, t], computed tower by tower."""
    out = torch.empty(z.shape[0], T)
    for b in range(z.shape[0]):
        for t in range(T):
            k = int(domain[b]) * T + t
            c = torch.relu(z[b, t] @ head.first_layer.weights[0][k] + head.first_layer.biases[0][k])
            out[b, t] = (c @ head.rest_layers.weights[0][k] + head.rest_layers.biases[0][k])[0]
    return out


@pytest.mark.parametrize("name", ["specifictop", "specificall", "ple-md"])
def test_one_tower_per_domain_and_task(name):
    spec, fm, batch = _setup(False, size=9)
    D, T = spec.num_domains, spec.num_tasks
    torch.manual_seed(0)
    model = build_model(name, spec, fm, {"tower_hidden": [5]}).eval()
    assert model.head.num_tasks == D * T
    with torch.no_grad():
        pooled = model.embeddings.pooled(batch)
        z = model.block(model.backbone.embed(batch, model.embeddings, pooled), batch.domain)
        if z.dim() == 2:  # the shared block hands a shared_input head one representation
            z = z.unsqueeze(1).expand(-1, T, -1)
        expect = _domain_towers(model.head, z, batch.domain, D, T)
        assert torch.allclose(_logits(model, batch), expect, atol=1e-5)


def test_sharedtop_has_one_bottom_per_domain_and_shared_towers():
    spec, fm, batch = _setup(False, size=9)
    torch.manual_seed(0)
    model = build_model("sharedtop", spec, fm, {"bottom_hidden": [6], "tower_hidden": [5]}).eval()
    assert model.head.num_tasks == spec.num_tasks and model.bottoms.num == spec.num_domains
    with torch.no_grad():
        x = model.embeddings.flat_input(batch)
        bt = model.bottoms
        h = torch.stack([torch.relu(x[b] @ bt.weights[0][int(p)] + bt.biases[0][int(p)])
                         for b, p in enumerate(batch.domain)])  # Bottom_p(x) of each row's domain
        expect = model.head(h.unsqueeze(1).expand(-1, spec.num_tasks, -1))
        assert torch.allclose(_logits(model, batch), expect, atol=1e-5)


def test_specificall_has_domain_specific_embeddings_of_every_feature():
    spec, fm, _ = _setup(False)
    torch.manual_seed(0)
    top, every = build_model("specifictop", spec, fm), build_model("specificall", spec, fm)
    assert not any(top.embeddings._per_domain.values())
    assert all(every.embeddings._per_domain.values()) and every.embeddings.cfg.per_domain
    # the same ids in two domains: SpecificTop's embeddings agree, SpecificAll's differ
    batch = make_batch(spec, fm, size=2)
    batch.sparse[1] = batch.sparse[0]
    batch.domain = torch.tensor([0, 1])
    for model, same in ((top, True), (every, False)):
        with torch.no_grad():
            out = model.embeddings(batch)
        for key in model.embeddings.sparse_keys:
            assert torch.equal(out[key][0], out[key][1]) == same, (model.registry_name, key)
    # ... and the rest of the model is SpecificTop's
    assert type(every.head) is type(top.head) and every.head.num_tasks == top.head.num_tasks
