"""PMTA (CIKM 2025) equation by equation, on tiny sizes with fixed weights and hand-built batches.

Every check recomputes a formula of the paper directly from the model's weights (plain tensor
algebra, not the model's own sub-modules) and compares it with the model's intermediate tensors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mdmt.batch import Batch
from mdmt.embeddings import _module_key
from mdmt.featuremap import DenseStats, FeatureMap
from mdmt.models import build_model, model_config
from mdmt.models.pmta import DAR, PMTA, attention_weights
from mdmt.schema import ConfigError, DatasetSpec, DomainSpec, FeatureSpec, TableSpec, TaskSpec

from .conftest import make_batch

SMALL = {"width": 16, "tower_hidden": [8, 4], "num_heads": 2, "prompt_dim": 3, "tpe_hidden": 5,
         "backbone_params": {"hidden": [12]}, "tpe_init_scale": 1.0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one torch thread (conftest)


def make_spec(per_domain: bool = True, related: bool = True) -> tuple[DatasetSpec, FeatureMap]:
    """Users, items, a behaviour sequence and per-task statistics; 2 domains; ``like`` has related
    features (its sequence and both statistics, plus the item id), ``finish`` has none."""
    features = [
        FeatureSpec(name="user_id", source="user"),
        FeatureSpec(name="item_id", source="item"),
        FeatureSpec(name="hour", source="context"),
        FeatureSpec(name="item_like_rate", kind="dense", source="item"),
        FeatureSpec(name="user_like_rate", kind="dense", source="user"),
        FeatureSpec(name="hist_like", kind="sequence", source="user", vocab="item_id", max_len=4, behaviour="like"),
    ]
    tables = [TableSpec(name="user_g", dim=4, features=["user_id"]),
              TableSpec(name="item_g", dim=4, features=["item_id", "hist_like"])]
    if per_domain:
        tables += [TableSpec(name="user_d", dim=3, features=["user_id"], per_domain=True),
                   TableSpec(name="item_d", dim=2, features=["item_id"], per_domain=True)]
    rel = ["item_like_rate", "item_id", "hist_like", "user_like_rate"] if related else []
    spec = DatasetSpec(
        name="pmta-tiny", features=features, tables=tables, default_dim=4,
        domain=DomainSpec(column="dom", names=["A", "B"]),
        tasks=[TaskSpec(name="like", label="like", related_features=rel), TaskSpec(name="finish", label="finish")],
        group="user_id",
    )
    fm = FeatureMap.layout_of(spec, vocabs={"user_id": list("abcde"), "item_id": list("abcdefg"), "hour": ["1", "2"]},
                              dense_stats={"item_like_rate": DenseStats(), "user_like_rate": DenseStats()})
    return spec, fm


def hand_batch() -> Batch:
    """Four hand-written rows: (user, item, hour), two statistics, a sequence of past likes."""
    return Batch(
        sparse=torch.tensor([[2, 3, 2], [3, 5, 3], [2, 8, 2], [6, 4, 1]]),  # user_id, item_id, hour
        dense=torch.tensor([[0.5, -1.0], [2.0, 0.0], [-0.5, 1.5], [0.0, 0.3]]),  # item_like_rate, user_like_rate
        domain=torch.tensor([0, 1, 1, 0]),
        labels=torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]),
        label_mask=torch.ones(4, 2, dtype=torch.bool),
        group=torch.tensor([0, 1, 0, 4]),
        sequences={"hist_like": torch.tensor([[3, 4, 0, 0], [0, 0, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]])},
        seq_lengths={"hist_like": torch.tensor([2, 0, 4, 1])},
    )


def build(params: dict | None = None, per_domain: bool = True, related: bool = True, seed: int = 0,
          domain_input: bool = True) -> PMTA:
    spec, fm = make_spec(per_domain, related)
    torch.manual_seed(seed)
    model = build_model("pmta", spec, fm, {**SMALL, **(params or {})}, embedding={"domain_input": domain_input})
    with torch.no_grad():  # embeddings at a visible scale (padding rows stay 0), so every term matters
        for table in model.embeddings.tables.values():
            table.weight.mul_(100.0)
    return model.eval()


def emb_row(model: PMTA, table: str, ids: torch.Tensor, domain: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of a table by hand; a per-domain table stacks one block of ``rows`` per domain."""
    weight = model.embeddings.table(table).weight
    if domain is not None:
        ids = ids + domain * (weight.shape[0] // 2)
    return weight[ids]


def lin(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


# ---------------------------------------------------------------------------------------------
# Equations
# ---------------------------------------------------------------------------------------------
def test_eq1_eq2_task_prompt_encoding():
    model, b = build(), hand_batch()
    tr = model.trace(b)
    hist = model.embeddings.table("item_g").weight[b.sequences["hist_like"]]  # padding row 0 is zero
    hist = hist.sum(1) / b.seq_lengths["hist_like"].clamp(min=1).unsqueeze(1)  # pooled sequence of likes
    proj = model.embeddings.dense_projections  # dense statistics through their learned projection
    e_u = torch.cat([hist, lin(b.dense[:, 1:2], proj[_module_key("user_like_rate")])], dim=1)  # user side: sequence, statistic
    e_v = torch.cat([lin(b.dense[:, 0:1], proj[_module_key("item_like_rate")]), emb_row(model, "item_g", b.sparse[:, 1]),
                     emb_row(model, "item_d", b.sparse[:, 1], b.domain)], dim=1)  # item side
    net = model.tpe[0]
    z = torch.cat([model.prompts[0].expand(4, -1), e_u, e_v], dim=1)  # Concat(p^t, e_u^t, e_v^t)
    x = torch.relu(lin(z, net[0]))  # Eq. 1
    expected = lin(x, net[2])  # Eq. 2
    assert torch.allclose(tr.tpe[:, 0], expected, atol=1e-6)
    # a task declaring no related features: TPE sees p^t alone, the same vector for every row
    net = model.tpe[1]
    alone = lin(torch.relu(lin(model.prompts[1], net[0])), net[2])
    assert torch.allclose(tr.tpe[:, 1], alone.expand(4, -1), atol=1e-6)
    assert any("'finish' declares no related_features" in n for n in model.report_notes())


def test_eq3_task_tokens_join_prompt_and_first_classifier_layer():
    model, b = build(), hand_batch()
    tr = model.trace(b)
    h = model.backbone.embed(b, model.embeddings)  # H(x)
    W, c = model.head.first_layer.weights[0], model.head.first_layer.biases[0]
    c1 = torch.stack([torch.relu(h @ W[t] + c[t]) for t in range(2)], dim=1)  # C_1^t(H(x))
    assert torch.allclose(tr.c1, c1, atol=1e-6)
    assert torch.equal(tr.tokens, torch.cat([tr.tpe, tr.c1], dim=-1))  # m^t = [TPE^t ; C_1^t]
    assert tr.tokens.shape == (4, 2, 16)


def _layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _ctt(layer, X: torch.Tensor) -> torch.Tensor:
    """Eq. 4-7 by hand for ``X`` ``[B, T, w]``."""
    a = layer.attn
    h, dk = a.num_heads, a.head_dim
    heads = []
    for i in range(h):  # Eq. 4b: head_i = Attention(X W_i^Q, X W_i^K, X W_i^V)
        sl = slice(i * dk, (i + 1) * dk)
        Q = X @ a.q_proj.weight[sl].T + a.q_proj.bias[sl]
        K = X @ a.k_proj.weight[sl].T + a.k_proj.bias[sl]
        V = X @ a.v_proj.weight[sl].T + a.v_proj.bias[sl]
        heads.append(torch.softmax(Q @ K.transpose(1, 2) / math.sqrt(dk), dim=-1) @ V)  # Eq. 5
    mha = lin(torch.cat(heads, dim=-1), a.out_proj)  # Eq. 4a: Concat(head_1..head_h) W^O
    sa = _layer_norm(mha + X, layer.norm1)  # Eq. 7a
    ffn = lin(torch.relu(lin(sa, layer.linear1)), layer.linear2)  # Eq. 6
    return _layer_norm(ffn + sa, layer.norm2)  # Eq. 7b


def test_eq4_to_eq7_and_eq9_cross_task_transformer_with_rescaling():
    model, b = build(), hand_batch()
    tr = model.trace(b)
    X = _layer_norm(tr.tokens, model.norm_in)  # X_1 = LN(M)
    assert len(model.layers) == 2
    for i, layer in enumerate(model.layers):
        assert torch.allclose(tr.layer_inputs[i], X, atol=1e-5)
        X = _ctt(layer, X) * tr.dar[i].unsqueeze(1)  # Eq. 9: CTT_i(X_i) ⊙ DAR
        assert torch.allclose(tr.layer_outputs[i], X, atol=1e-5)
    # output: the C_1 slot of each final token through the rest of its classifier
    W, c = model.head.rest_layers.weights, model.head.rest_layers.biases
    logits = torch.stack(
        [(torch.relu(X[:, t, -8:] @ W[0][t] + c[0][t]) @ W[1][t] + c[1][t])[:, 0] for t in range(2)], dim=1
    )
    assert torch.allclose(tr.logits, logits, atol=1e-5)
    out = model(b).logits
    assert torch.allclose(torch.stack([out["like"], out["finish"]], 1), logits, atol=1e-5)


def test_attention_weights_are_the_softmax_of_eq5():
    model, b = build(), hand_batch()
    tr = model.trace(b)
    layer, X = model.layers[0], tr.layer_inputs[0]
    w = attention_weights(layer, X)  # [B, h, T, T]
    assert w.shape == (4, 2, 2, 2) and torch.allclose(w.sum(-1), torch.ones(4, 2, 2))
    a = layer.attn
    V = a._heads(a.v_proj(X))
    mha = a.out_proj((w @ V).transpose(1, 2).reshape(4, 2, 16))
    assert torch.allclose(mha, a(X), atol=1e-6)
    assert all(torch.equal(x, y) for x, y in zip(tr.attention, [attention_weights(l, i) for l, i in zip(model.layers, tr.layer_inputs)]))


def test_eq8_domain_aware_rescaling_reads_the_domain_specific_embeddings():
    model, b = build(), hand_batch()
    tr = model.trace(b)
    e_u = emb_row(model, "user_d", b.sparse[:, 0], b.domain)  # e_u^d: the user's row in its domain's block
    e_v = emb_row(model, "item_d", b.sparse[:, 1], b.domain)  # e_v^d
    z = torch.cat([e_u, e_v], dim=1)  # n = 3 + 2
    for i, dar in enumerate(model.dar):
        assert dar.down.weight.shape == (2, 5) and dar.up.weight.shape == (16, 2)  # k = min(n, m) // 2 = 2
        expected = 2 * torch.sigmoid(lin(torch.relu(lin(z, dar.down)), dar.up))  # Eq. 8a-b
        assert torch.allclose(tr.dar[i], expected, atol=1e-6)
    assert not torch.allclose(model.dar[0].up.weight, model.dar[1].up.weight)  # one DAR per layer


def test_dar_output_lies_in_0_2_and_is_1_at_zero_output_weights():
    torch.manual_seed(0)
    dar = DAR(6, 3, 10)
    s = dar(torch.randn(1000, 6) * 3)
    assert torch.all(s > 0) and torch.all(s < 2)
    assert s.min() < 0.5 and s.max() > 1.5  # the range is used, not a constant
    with torch.no_grad():
        dar.up.weight.zero_()
        dar.up.bias.zero_()
    assert torch.equal(dar(torch.randn(5, 6)), torch.ones(5, 10))


def test_dar_without_per_domain_tables_reads_the_domain_ids_embedding():
    b = hand_batch()
    for domain_input in (True, False):
        model = build(per_domain=False, domain_input=domain_input)
        tr = model.trace(b)
        table = model.embeddings.domain_table if domain_input else model.domain_embedding
        z = table.weight[b.domain]
        dar = model.dar[0]
        assert torch.allclose(tr.dar[0], 2 * torch.sigmoid(lin(torch.relu(lin(z, dar.down)), dar.up)), atol=1e-6)
        assert any("no user- or item-side per_domain table" in n for n in model.report_notes())
        assert hasattr(model, "domain_embedding") != domain_input  # its own table only without the input


# ---------------------------------------------------------------------------------------------
# The domain: through e^d and DAR, and through nothing else
# ---------------------------------------------------------------------------------------------
def _logits(model: PMTA, b: Batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(b).logits
    return torch.stack([out[t] for t in model.task_names], 1)


def _flip(b: Batch) -> Batch:
    moved = b.index(torch.arange(len(b)))
    moved.domain = 1 - b.domain
    return moved


@pytest.mark.parametrize(
    "per_domain, dar, domain_input, moves",
    [(True, True, True, True), (True, False, False, True), (False, True, False, True), (False, False, True, True),
     (False, False, False, False)],
    ids=["e^d+DAR+domain-id", "e^d only", "DAR only", "domain-id input only", "none"],
)
def test_changing_only_the_domain_acts_through_ed_and_dar_only(per_domain, dar, domain_input, moves):
    model, b = build({"dar": dar}, per_domain=per_domain, domain_input=domain_input), hand_batch()
    a, c = _logits(model, b), _logits(model, _flip(b))
    if moves:
        assert torch.all((a - c).abs().amax(1) > 1e-6)
    else:
        assert torch.equal(a, c)


def test_domain_moves_the_dar_scales_only_through_its_input():
    model, b = build(), hand_batch()
    t1, t2 = model.trace(b), model.trace(_flip(b))
    assert not torch.allclose(t1.c1, t2.c1)  # e^d is an input of H
    assert not torch.allclose(t1.dar[0], t2.dar[0])
    # with DAR alone (no e^d, no domain-id input), the tokens are the same in both domains; only the scales move
    model = build(per_domain=False, domain_input=False)
    t1, t2 = model.trace(b), model.trace(_flip(b))
    assert torch.equal(t1.tokens, t2.tokens) and torch.equal(t1.layer_inputs[0], t2.layer_inputs[0])
    assert not torch.allclose(t1.dar[0], t2.dar[0])


# ---------------------------------------------------------------------------------------------
# Table 2 ablations: each switch removes exactly its component
# ---------------------------------------------------------------------------------------------
def _names(model: PMTA) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def test_without_dar_removes_exactly_dar():
    full, ablated = build(), build({"dar": False})
    f, a = _names(full), _names(ablated)
    assert set(f) - set(a) == {n for n in f if n.startswith("dar.")} and set(a) <= set(f)
    assert all(f[n] == a[n] for n in a)
    # same other weights, DAR forced to 1 (zero output layer: 2·sigmoid(0) = 1) -> the same logits
    ablated.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("dar.")})
    with torch.no_grad():
        for d in full.dar:
            d.up.weight.zero_()
            d.up.bias.zero_()
    b = hand_batch()
    assert torch.allclose(_logits(full, b), _logits(ablated, b), atol=1e-6)
    assert ablated.trace(b).dar == []


def test_without_tpe_removes_exactly_tpe():
    full, ablated = build(), build({"tpe": False})
    f, a = _names(full), _names(ablated)
    # TPE's networks, prompts and the projections of the dense statistics it reads
    assert {n for n in set(f) - set(a)} == {n for n in f if n.startswith(("tpe.", "prompts", "embeddings.dense_projections."))}
    assert set(a) <= set(f)
    for n in a:  # everything else is kept; the token is C_1^t alone, so the TMPN and DAR are h1 = 8 wide
        if n.startswith(("layers.", "norm_in.", "dar.")):
            assert 16 not in a[n], n
        else:
            assert f[n] == a[n], n
    tr = ablated.trace(hand_batch())
    assert tr.tpe is None and torch.equal(tr.tokens, tr.c1)
    assert ablated.prompt_norms() == {} and not ablated.report_notes()


def test_task_fusion_mlp_replaces_exactly_the_transformer():
    full, ablated = build(), build({"fusion": "mlp"})
    f, a = _names(full), _names(ablated)
    assert set(f) - set(a) == {n for n in f if n.startswith("layers.")}  # the L Transformer layers
    assert set(a) - set(f) == {n for n in a if n.startswith(("fusion.", "dar.2."))}  # 3 MLP layers, one DAR each
    assert all(f[n] == a[n] for n in set(f) & set(a))
    assert len(ablated.fusion) == 3 and len(ablated.dar) == 3
    b = hand_batch()
    tr = ablated.trace(b)
    assert tr.attention == []
    x = _layer_norm(tr.tokens, ablated.norm_in).reshape(4, 32)  # the T tokens, concatenated
    for i, layer in enumerate(ablated.fusion):
        x = lin(x, layer)
        if i < 2:
            x = torch.relu(x)
        x = (x.view(4, 2, 16) * tr.dar[i].unsqueeze(1)).reshape(4, 32)
    assert torch.allclose(tr.layer_outputs[-1], x.view(4, 2, 16), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Gradients, backbones, blocks, configuration
# ---------------------------------------------------------------------------------------------
def _loss(model: PMTA, b: Batch) -> torch.Tensor:
    out = model(b).logits
    z = torch.stack([out[t] for t in model.task_names], 1)
    return F.binary_cross_entropy_with_logits(z, b.labels)


@pytest.mark.parametrize("params", [{}, {"tpe": False}, {"fusion": "mlp"}, {"dar": False},
                                    {"block": "mmoe", "block_params": {"num_experts": 2, "expert_hidden": [6]}}])
@pytest.mark.parametrize("backbone", ["none", "mlp", "dcnv2", "deepfm"])
def test_every_parameter_that_should_learn_gets_a_gradient(backbone, params):
    spec, fm = make_spec()
    if backbone == "deepfm":  # FM needs one embedding dim
        spec = spec.model_copy(update={"tables": [t.model_copy(update={"dim": 4}) for t in spec.tables]})
        fm = fm.model_copy(update={"spec": spec})
    torch.manual_seed(0)
    model = build_model("pmta", spec, fm, {**SMALL, "backbone": backbone, "backbone_params": {"hidden": [12], "cross_layers": 1}, **params}).train()
    b = make_batch(spec, fm, size=12, seed=3)
    _loss(model, b).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and torch.any(p.grad != 0), n
    groups = model.optim_groups()
    assert sum(len(g.params) for g in groups) == len(list(model.parameters()))
    head = {n for n, _ in model.pmta_parameters()}
    assert head and all(not n.startswith(("embeddings.", "backbone.", "block.", "head.")) for n in head)


def test_defaults_follow_the_paper():
    cfg = model_config("pmta")
    assert (cfg.num_layers, cfg.num_heads, cfg.width) == (2, 4, 256)  # §2.4 L = 2; §3.1.3 4 heads, 256
    assert cfg.tpe and cfg.dar and cfg.fusion == "transformer"


@pytest.mark.parametrize(
    "params, match",
    [({"width": 8, "tower_hidden": [8]}, "must exceed"), ({"width": 18, "num_heads": 4}, "multiple of num_heads"),
     ({"tpe": False, "tower_hidden": [6], "num_heads": 4}, "tower_hidden"), ({"dar_bottleneck": 5}, "dar_bottleneck")],
)
def test_config_errors_name_the_option(params, match):
    spec, fm = make_spec()
    with pytest.raises(ConfigError, match=match):
        build_model("pmta", spec, fm, {**SMALL, **params})


def test_prompt_norms_and_related_inputs_by_meaning():
    model = build()
    norms = model.prompt_norms()
    assert set(norms) == {"like", "finish"}
    assert norms["like"] == pytest.approx(float(model.prompts[0].detach().norm()))
    # the like task's TPE input: p (3) + sequence (4) + user stat (4) + item stat (4) + item ids (4 + 2)
    assert model.tpe[0][0].in_features == 3 + 4 + 4 + 4 + 4 + 2
    assert model.tpe[1][0].in_features == 3


# ---------------------------------------------------------------------------------------------
# e^g and e^d as configuration
# ---------------------------------------------------------------------------------------------
def test_domain_specific_tables_join_the_shared_ones():
    from .conftest import make_tiny

    spec, _ = make_tiny()
    out = spec.with_domain_tables(["user_id", "item_id"])
    tables = {t.name: t for t in out.effective_tables()}
    assert tables["user_id"].features == ["user_id"] and not tables["user_id"].per_domain  # e^g kept
    assert tables["item_id"].features == ["item_id", "hist_item"]  # the sequence keeps sharing item rows
    assert tables["user_id_domain"].per_domain and tables["user_id_domain"].features == ["user_id"]  # e^d
    assert tables["item_id_domain"].dim == tables["item_id"].dim
    assert out.with_domain_tables(["user_id"]) == out  # already domain-specific: unchanged
    for bad, match in (("nope", "unknown feature"), ("price", "dense")):
        with pytest.raises(ValueError, match=match):
            spec.with_domain_tables([bad])


def test_the_trainer_steps_pmtas_own_parameters_at_head_lr():
    from mdmt.config import TrainConfig
    from mdmt.train.trainer import Trainer

    model = build({"head_lr": 1e-3})
    trainer = Trainer(model, TrainConfig(lr=0.01, device="cpu"), score_fn=lambda p: 0.0)
    lrs = {}
    for opt in trainer.optimizers:
        for g in opt.param_groups:
            for p in g["params"]:
                lrs[id(p)] = g["lr"]
    own = {id(p) for _, p in model.pmta_parameters()}
    for n, p in model.named_parameters():
        assert lrs[id(p)] == (1e-3 if id(p) in own else 0.01), n
    assert {n.split(".")[0] for n, _ in model.pmta_parameters()} == {"prompts", "tpe", "norm_in", "layers", "dar"}
