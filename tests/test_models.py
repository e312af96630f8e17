"""Every registered model, on the tiny schema (DESIGN §5.7). Parametrized over the registry, so a
newly registered model is tested without editing this file.

By default the domain id is an input of every model (``model.embedding.domain_input``), so every
model must give different logits when only the domain of the rows changes. With the domain input
off, a model class may say ``domain_aware = False`` (it never reads ``batch.domain`` itself); it
must then give the same logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mdmt.batch import Batch
from mdmt.featuremap import FeatureMap
from mdmt.models import REGISTRY, MDMTModel, ModelOutput, build_model, model_config
from mdmt.schema import ConfigError, DatasetSpec, DomainSpec, FeatureSpec, TableSpec, TaskSpec

from .conftest import make_batch, make_tiny

MODELS = sorted(REGISTRY)
FIXTURES = [False, True]  # per_domain tables off / on

# torch.manual_seed(0); build_model(name, spec, fm).eval(); sum of all logits on make_batch(spec, fm)
GOLDEN: dict[tuple[str, bool], float] = {
    ("compose", False): 0.8161070346832275,
    ("dcnv2", False): 2.954223394393921,
    ("dcnv2-mt", False): -0.7214128971099854,
    ("deepfm", False): -0.34281373023986816,
    ("mlp", False): 1.4357340335845947,
    ("mmoe", False): -0.22004173696041107,
    ("ple", False): -2.5541625022888184,
    ("ple-md", False): 3.3083839416503906,
    ("pmta", False): -9.990521430969238,
    ("sharedbottom", False): 0.8161070346832275,
    ("sharedtop", False): 0.17571541666984558,
    ("specificall", False): 3.020747184753418,
    ("specifictop", False): 0.5182718634605408,
    ("star", False): 4.051000595092773,
    ("compose", True): 1.4446914196014404,
    ("pepnet", False): 3.4152262210845947,
    ("dcn", False): 4.228560447692871,
    ("xdeepfm", False): 2.812190532684326,
    ("dcnv2", True): -0.21339617669582367,
    ("dcnv2-mt", True): -4.408079147338867,
    ("deepfm", True): 6.0356059074401855,
    ("mlp", True): 1.0233635902404785,
    ("mmoe", True): 3.540945291519165,
    ("ple", True): 0.8063865900039673,
    ("ple-md", True): -0.3675712049007416,
    ("pmta", True): 21.07138442993164,
    ("sharedbottom", True): 1.4446914196014404,
    ("sharedtop", True): 0.46690207719802856,
    ("specificall", True): -0.3061802089214325,
    ("specifictop", True): -0.34500569105148315,
    ("star", True): 1.7737501859664917,
    ("pepnet", True): 0.21013125777244568,
    ("dcn", True): -1.4611138105392456,
    ("xdeepfm", True): 3.0731096267700195,
    ("adatt", False): -4.855310916900635,
    ("adatt-sp", False): -4.764989852905273,
    ("aitm", False): 3.8352465629577637,
    ("m2m", False): -1.7813674211502075,
    ("m3oe", False): 1.2407816648483276,
    ("adatt", True): 4.24485969543457,
    ("adatt-sp", True): 2.8493714332580566,
    ("aitm", True): 3.0217297077178955,
    ("m2m", True): -0.29700103402137756,
    ("m3oe", True): 1.5831162929534912,
    ("dtrn", False): 5.063220977783203,
    ("dtrn", True): 0.33612409234046936,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one torch thread (conftest)


def _setup(per_domain: bool, size: int = 16, seed: int = 0):
    spec, fm = make_tiny(per_domain=per_domain)
    return spec, fm, make_batch(spec, fm, size=size, seed=seed)


def _build(
    name: str, spec: DatasetSpec, fm: FeatureMap, seed: int = 0, params: dict | None = None,
    embedding: dict | None = None,
) -> MDMTModel:
    torch.manual_seed(seed)
    return build_model(name, spec, fm, params, embedding=embedding)


def _stack(model: MDMTModel, out: ModelOutput) -> torch.Tensor:
    return torch.stack([out.logits[t] for t in model.task_names], dim=1)


def _loss(model: MDMTModel, batch: Batch) -> torch.Tensor:
    """Masked mean BCE over (row, task) plus the model's aux loss."""
    out = model(batch)
    z = _stack(model, out)
    mask = batch.label_mask.to(z.dtype)
    loss = (F.binary_cross_entropy_with_logits(z, batch.labels, reduction="none") * mask).sum() / mask.sum()
    return loss if out.aux_loss is None else loss + out.aux_loss


def _with_domain(batch: Batch, domain: torch.Tensor) -> Batch:
    b = batch.index(torch.arange(len(batch)))
    b.domain = domain
    return b


# ---------------------------------------------------------------------------------------------
# Contract of every registered model
# ---------------------------------------------------------------------------------------------
def test_registry_holds_the_classic_models():
    assert {"mlp", "sharedbottom", "mmoe", "ple", "star", "deepfm", "dcnv2"} <= set(REGISTRY)
    assert {"m3oe", "m2m", "adatt", "adatt-sp", "aitm"} <= set(REGISTRY)
    for name, info in REGISTRY.items():
        assert info.paper, name
        assert issubclass(info.cls, MDMTModel) and info.cls.registry_name == name
        assert model_config(name) == info.cls.config_class()  # defaults build


@pytest.mark.parametrize("per_domain", FIXTURES)
@pytest.mark.parametrize("name", MODELS)
def test_one_finite_logit_vector_per_task(name, per_domain):
    spec, fm, batch = _setup(per_domain)
    model = _build(name, spec, fm)
    for mode in (True, False):
        model.train(mode)
        out = model(batch)
        assert isinstance(out, ModelOutput)
        assert set(out.logits) == set(spec.task_names)
        for t, z in out.logits.items():
            assert z.shape == (len(batch),), (t, z.shape)
            assert torch.isfinite(z).all(), t
        if out.aux_loss is not None:
            assert out.aux_loss.dim() == 0 and torch.isfinite(out.aux_loss)


@pytest.mark.parametrize("per_domain", FIXTURES)
@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_learnable_parameter(name, per_domain):
    spec, fm, batch = _setup(per_domain)
    model = _build(name, spec, fm)
    model.train()
    _loss(model, batch).backward()
    stop = set(model.stop_gradient_params())
    names = {n for n, _ in model.named_parameters()}
    assert stop <= names, f"stop_gradient_params names unknown parameters: {sorted(stop - names)}"
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if n in stop:
            assert p.grad is None or torch.all(p.grad == 0), f"{n} is stop-gradient but got a gradient"
            continue
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{n} has a non-finite gradient"
        assert torch.any(p.grad != 0), f"{n} has an all-zero gradient"


@pytest.mark.parametrize("per_domain", FIXTURES)
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("domain_input", [True, False])
def test_outputs_depend_on_the_domain(name, per_domain, domain_input):
    spec, fm, batch = _setup(per_domain)
    model = _build(name, spec, fm, embedding={"domain_input": domain_input}).eval()
    assert (model.embeddings.domain_key is not None) == domain_input
    moved = _with_domain(batch, (batch.domain + 1) % spec.num_domains)
    with torch.no_grad():
        a, again, b = _stack(model, model(batch)), _stack(model, model(batch)), _stack(model, model(moved))
    assert torch.equal(a, again), "eval mode is not deterministic"
    if domain_input or per_domain or getattr(REGISTRY[name].cls, "domain_aware", True):
        # the domain input, per-domain tables or a domain-aware model: every row's logits move with its domain
        assert torch.all((a - b).abs().amax(dim=1) > 1e-7), "logits do not depend on batch.domain"
    else:
        assert torch.equal(a, b), "a model declared domain_aware=False reads batch.domain"


@pytest.mark.parametrize("per_domain", FIXTURES)
@pytest.mark.parametrize("name", MODELS)
def test_seeded_golden_value(name, per_domain):
    spec, fm, batch = _setup(per_domain)
    with torch.no_grad():
        m1 = _build(name, spec, fm).eval()
        total = float(_stack(m1, m1(batch)).sum())
        m2 = _build(name, spec, fm).eval()
        assert float(_stack(m2, m2(batch)).sum()) == total, "same seed, different model"
    key = (name, per_domain)
    assert key in GOLDEN, f"no golden value stored for the newly registered {key}; add {key!r}: {total!r} to GOLDEN"
    assert total == pytest.approx(GOLDEN[key], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_two_builds_from_one_schema_are_independent(name):
    spec, fm, batch = _setup(True)
    a, b = _build(name, spec, fm, seed=0), _build(name, spec, fm, seed=0)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for n in pa:
        assert pa[n].data_ptr() != pb[n].data_ptr(), f"{n} is shared between two builds"
    b.eval()
    with torch.no_grad():
        before = _stack(b, b(batch))
        for p in a.parameters():
            p.add_(1.0)
        assert torch.equal(_stack(b, b(batch)), before)


@pytest.mark.parametrize("per_domain", FIXTURES)
@pytest.mark.parametrize("name", MODELS)
def test_eval_row_alone_equals_row_in_batch(name, per_domain):
    spec, fm, batch = _setup(per_domain, size=12)
    model = _build(name, spec, fm)
    model.train()
    with torch.no_grad():  # a few training passes, so running statistics are not at their init
        for seed in range(3):
            model(make_batch(spec, fm, size=12, seed=seed + 1))
    model.eval()
    with torch.no_grad():
        full = _stack(model, model(batch))
        for r in (0, 1, 5, 11):
            alone = _stack(model, model(batch.slice(r, r + 1)))
            assert torch.allclose(alone[0], full[r], atol=1e-5, rtol=1e-5), f"row {r} depends on its batch"


@pytest.mark.parametrize("name", MODELS)
def test_model_trains(name):
    spec, fm, batch = _setup(True)
    model = _build(name, spec, fm)
    model.train()
    # each optimizer group at its own learning rate (default 1e-2), as the trainer steps them
    opt = torch.optim.Adam([{"params": g.params, "lr": g.lr or 1e-2} for g in model.optim_groups()])
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = _loss(model, batch)
        first = float(loss.detach()) if first is None else first
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = float(_loss(model, batch))
    assert final < 0.5 * first, f"loss {first:.4f} -> {final:.4f}"


@pytest.mark.parametrize("name", MODELS)
def test_forward_exports_with_a_dynamic_batch(name):
    """DESIGN §7: forward is tensor ops only (no loops over rows, no .item(), no data-dependent
    branches), so it exports with a symbolic batch size and scores another batch size the same."""
    spec, fm, batch = _setup(True, size=8)
    assert_exports(_build(name, spec, fm).eval(), spec, fm, batch)


def assert_exports(model: MDMTModel, spec: DatasetSpec, fm: FeatureMap, batch: Batch) -> None:
    """``torch.export`` of ``model`` with a dynamic batch dimension scores another batch size as
    the eager model does."""

    class Scorer(nn.Module):
        def __init__(self, m: MDMTModel) -> None:
            super().__init__()
            self.m = m

        def forward(self, sparse, dense, domain, sequences, seq_lengths):
            size = sparse.shape[0]
            b = Batch(
                sparse=sparse, dense=dense, domain=domain,
                labels=torch.zeros(size, spec.num_tasks),
                label_mask=torch.ones(size, spec.num_tasks, dtype=torch.bool),
                group=torch.zeros(size, dtype=torch.long),
                sequences=sequences, seq_lengths=seq_lengths,
            )
            return _stack(self.m, self.m(b))

    def args(b: Batch):
        return (b.sparse, b.dense, b.domain, dict(b.sequences), dict(b.seq_lengths))

    B = torch.export.Dim("B", min=2)
    rows = {0: B}
    dynamic = (rows, rows, rows, {k: rows for k in batch.sequences}, {k: rows for k in batch.seq_lengths})
    exported = torch.export.export(Scorer(model), args(batch), dynamic_shapes=dynamic)
    other = make_batch(spec, fm, size=5, seed=7)
    with torch.no_grad():
        assert torch.allclose(exported.module()(*args(other)), Scorer(model)(*args(other)), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Configurations: backbones, variants, errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["none", "mlp", "dcnv2", "deepfm", "dcn", "xdeepfm"])
@pytest.mark.parametrize("name", ["sharedbottom", "mmoe", "ple", "ple-md", "specifictop", "specificall",
                                  "adatt", "adatt-sp", "aitm", "m2m"])
def test_multitask_models_on_every_backbone(name, backbone):
    spec, fm, batch = _setup(False, size=8)
    params = {"backbone": backbone, "backbone_params": {"hidden": [16], "cross_layers": 1, "cin_layers": [3, 2]}}
    model = _build(name, spec, fm, params=params)
    assert type(model.backbone).__name__.lower().startswith({"none": "identity"}.get(backbone, backbone))
    _loss(model, batch).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and torch.any(p.grad != 0), n


@pytest.mark.parametrize(
    "params",
    [
        {"structure": "stacked"},
        {"low_rank": 4},
        {"low_rank": 4, "cross_experts": 3, "structure": "stacked"},
        {"deep_hidden": []},
    ],
)
def test_dcnv2_variants(params):
    spec, fm, batch = _setup(False, size=8)
    model = _build("dcnv2", spec, fm, params=params)
    _loss(model, batch).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and torch.any(p.grad != 0), n


@pytest.mark.parametrize("params", [{"num_levels": 1}, {"num_levels": 3, "specific_experts": 2, "shared_experts": 2},
                                    {"specific_experts": 0, "shared_experts": 2}])
def test_ple_variants(params):
    spec, fm, batch = _setup(False, size=8)
    model = _build("ple", spec, fm, params=params)
    assert len(model.block.levels) == params.get("num_levels", 2)
    _loss(model, batch).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and torch.any(p.grad != 0), n


def test_mmoe_mixture_is_gate_weighted_sum_of_experts():
    spec, fm, batch = _setup(False, size=6)
    model = _build("mmoe", spec, fm).eval()
    with torch.no_grad():
        x = model.embeddings.flat_input(batch)
        f = model.block.experts(x)  # [B, E, H]
        w = model.block.gates.weights(x)  # [B, T, E]
        E, T = f.shape[1], spec.num_tasks
        mixed = torch.stack([sum(w[:, t, e : e + 1] * f[:, e] for e in range(E)) for t in range(T)], dim=1)
        z = model.head(mixed)
        assert torch.allclose(_stack(model, model(batch)), z, atol=1e-6)


def test_dcn_and_xdeepfm_compose_their_parts():
    spec, fm, batch = _setup(False, size=6)
    dcn = _build("dcn", spec, fm, params={"tower_hidden": []}).eval()
    xdf = _build("xdeepfm", spec, fm).eval()
    with torch.no_grad():
        x0 = dcn.embeddings.flat_input(batch)
        h = torch.cat([dcn.backbone.cross(x0), dcn.backbone.deep(x0)], dim=1)  # [x_L, h_L]
        r = dcn.head.rest_layers  # Eq. 5: one combination layer per task (no hidden tower layer)
        expect = torch.einsum("bi,tio->bt", h, r.weights[0]) + r.biases[0][:, 0]
        assert torch.allclose(_stack(dcn, dcn(batch)), expect, atol=1e-5)
        a, v = xdf.embeddings.flat_input(batch), xdf.embeddings.stacked(batch)
        h = torch.cat([xdf.backbone.deep(a), xdf.backbone.cin(v)], dim=1)  # x_dnn ⊕ p^+
        assert torch.allclose(_stack(xdf, xdf(batch)), xdf.linear(a) + xdf.head(h), atol=1e-5)


def test_star_partitioned_norm_updates_running_stats_only_in_training():
    spec, fm, batch = _setup(False)
    model = _build("star", spec, fm)
    model.eval()
    model(batch)
    assert torch.equal(model.pn.running_mean, torch.zeros_like(model.pn.running_mean))
    model.train()
    model(batch)
    rm = model.pn.running_mean
    assert torch.all(rm.abs().sum(1) > 0)  # every domain of the batch moved
    assert not torch.allclose(rm[0], rm[1])  # ... with its own rows' statistics


def test_star_train_mode_uses_per_domain_batch_statistics():
    spec, fm, batch = _setup(False)
    model = _build("star", spec, fm).train()
    with torch.no_grad():
        full = _stack(model, model(batch))
        dom0 = (batch.domain == 0).nonzero().flatten()
        sub = _stack(model, model(batch.index(dom0)))  # same domain-0 rows, other domains removed
    assert torch.allclose(full[dom0], sub, atol=1e-5)


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="hiden"):
        model_config("mmoe", {"hiden": [3]})
    with pytest.raises(ConfigError, match="low_rank"):
        model_config("dcnv2", {"cross_experts": 2})
    with pytest.raises(ConfigError, match="backbone"):
        model_config("sharedbottom", {"backbone": "transformer"})
    spec = DatasetSpec(
        name="mixed", features=[FeatureSpec(name="u"), FeatureSpec(name="i")],
        tables=[TableSpec(name="u", dim=4, features=["u"]), TableSpec(name="i", dim=6, features=["i"])],
        domain=DomainSpec(column="d", names=["a"]), tasks=[TaskSpec(name="y", label="y")],
    )
    fm = FeatureMap.layout_of(spec, vocabs={"u": ["1"], "i": ["1"]})
    with pytest.raises(ConfigError, match="one embedding dim"):
        build_model("deepfm", spec, fm)
    with pytest.raises(ConfigError, match="one embedding dim"):
        build_model("mmoe", spec, fm, {"backbone": "deepfm"})
    with pytest.raises(ConfigError, match="one embedding dim"):
        build_model("xdeepfm", spec, fm)
    with pytest.raises(ConfigError, match="one embedding dim"):
        build_model("sharedbottom", spec, fm, {"backbone": "xdeepfm"})


# ---------------------------------------------------------------------------------------------
# M3oE's Table 2 baselines: the papers' key equations recomputed
# ---------------------------------------------------------------------------------------------
def test_adatt_level_is_gated_fusion_of_all_experts_plus_own_residual():
    spec, fm, batch = _setup(False, size=6)
    for name, shared in (("adatt", 1), ("adatt-sp", 0)):
        model = _build(name, spec, fm, params={"num_levels": 1, "specific_experts": 2}).eval()
        level = model.levels[0]
        T = spec.num_tasks
        with torch.no_grad():
            x = model.embeddings.flat_input(batch)
            e = level.experts(x)  # [B, T·2 + shared, H]
            assert e.shape[1] == 2 * T + shared
            w = level.task_gates.weights(x)  # softmax(W_t x): [B, T, E]
            expect = torch.stack([
                sum(w[:, t, j : j + 1] * e[:, j] for j in range(e.shape[1]))  # w_tᵀ E
                + level.residual[t, 0] * e[:, 2 * t] + level.residual[t, 1] * e[:, 2 * t + 1]  # v_tᵀ E_t
                for t in range(T)], dim=1)
            z = model.towers(expect)[..., 0]
            assert torch.allclose(_stack(model, model(batch)), z, atol=1e-5), name


def test_aitm_transfer_attention_and_calibrator():
    spec, fm, batch = _setup(False, size=6)
    model = _build("aitm", spec, fm).eval()
    with torch.no_grad():
        x = model.embeddings.flat_input(batch)
        q = model.towers(x)
        z = [q[:, 0]]
        for t in range(1, spec.num_tasks):
            p = model.transfer[t - 1](z[-1])
            us = [p, q[:, t]]
            score = torch.stack([(model.h1[t - 1](u) * model.h2[t - 1](u)).sum(-1) for u in us], 1) / model.k ** 0.5
            w = torch.softmax(score, dim=1)
            z.append(w[:, :1] * model.h3[t - 1](p) + w[:, 1:] * model.h3[t - 1](q[:, t]))
        logits = model.heads(torch.stack(z, 1))[..., 0]
        out = model(batch)
        assert torch.allclose(_stack(model, out), logits, atol=1e-5)
        prob = torch.sigmoid(logits)
        calib = sum(torch.clamp(prob[:, t] - prob[:, t - 1], min=0).mean() for t in range(1, spec.num_tasks))
        assert float(out.aux_loss) == pytest.approx(0.6 * float(calib), rel=1e-5)


def test_m2m_meta_units_recomputed_row_by_row():
    spec, fm, batch = _setup(False, size=6)
    model = _build("m2m", spec, fm, params={"num_experts": 2, "expert_hidden": [8], "tower_layers": 1}).eval()
    T, d = spec.num_tasks, 8

    def meta(m, s, g, h):  # σ-free affine part: Reshape(V S + b_V) h + U S + b_U
        W = (s @ m.V[g] + m.bV[g]).view(m.in_dim, m.out_dim)
        return h @ W + s @ m.U[g] + m.bU[g]

    with torch.no_grad():
        x = model.embeddings.flat_input(batch)
        e = model.experts(x)
        out = torch.zeros(len(batch), T)
        for r in range(len(batch)):
            s = model.scenario.weight[int(batch.domain[r])]
            for t in range(T):
                a = torch.stack([
                    torch.relu(meta(model.att_expert, s, 0, e[r, k]) + meta(model.att_task, s, 0, model.task_embedding[t]))
                    @ model.att_v for k in range(2)])
                att = torch.softmax(a, 0)
                L = att[0] * e[r, 0] + att[1] * e[r, 1]  # R_t
                L = torch.relu(meta(model.tower[0], s, t, L)) + L  # residual meta tower
                out[r, t] = L @ model.out.weights[0][t, :, 0] + model.out.biases[0][t, 0]
        assert torch.allclose(_stack(model, model(batch)), out, atol=1e-5)
