"""DTRN (CIKM'23): the equations of §3.3-3.5 re-computed on tiny inputs, task-specific interests,
padding, ablation switches, clear config errors, and training end to end on MovieLens-100K."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mdmt.featuremap import FeatureMap
from mdmt.models import build_model
from mdmt.models.dtrn import ConditionalLayerNorm, ConditionalTransformer
from mdmt.schema import ConfigError, DatasetSpec, DomainSpec, FeatureSpec, TableSpec, TaskSpec

from .conftest import make_batch, make_tiny

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one torch thread (conftest)


def _model(params: dict | None = None, per_domain: bool = False, seed: int = 0):
    spec, fm = make_tiny(per_domain=per_domain)
    torch.manual_seed(seed)
    model = build_model("dtrn", spec, fm, params).eval()
    return spec, fm, model, make_batch(spec, fm, size=10, seed=seed)


def _mha(attn, q, k, mask):
    """Eq. 3-4 by hand: heads of width d / h, softmax over the real keys only, W^O."""
    h, dh = attn.num_heads, attn.head_dim
    Q = attn.q_proj(q).view(*q.shape[:-1], h, dh).transpose(-3, -2)
    K = attn.k_proj(k).view(*k.shape[:-1], h, dh).transpose(-3, -2)
    V = attn.v_proj(k).view(*k.shape[:-1], h, dh).transpose(-3, -2)
    s = Q @ K.transpose(-1, -2) / math.sqrt(dh)
    s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    w = torch.nan_to_num(torch.softmax(s, -1))  # all keys masked: zero weights
    out = (w @ V).transpose(-3, -2).reshape(*q.shape[:-1], h * dh)
    return attn.out_proj(out)


def test_conditional_layer_norm_is_eq6():
    torch.manual_seed(0)
    cln = ConditionalLayerNorm(5)
    with torch.no_grad():
        cln.weight.uniform_(0.5, 1.5), cln.bias.normal_()
    x = torch.randn(3, 2, 4, 5)  # [B, T, L, d]
    gamma, beta = torch.randn(2, 5), torch.randn(2, 5)  # [T, d]
    got = cln(x, gamma, beta)
    mu = x.mean(-1, keepdim=True)
    sd = (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    want = gamma[None, :, None] * cln.weight * (x - mu) / sd + beta[None, :, None] + cln.bias  # Eq. 6
    assert torch.allclose(got, want, atol=1e-5)
    # one input broadcast to the T tasks
    assert torch.allclose(cln(x[:, :1], gamma, beta), cln(x[:, :1].expand(-1, 2, -1, -1), gamma, beta), atol=1e-6)


def test_conditional_transformer_is_eq7():
    torch.manual_seed(1)
    B, L, d, T = 4, 6, 8, 3
    net = ConditionalTransformer(d, num_heads=2, ffn_dim=16).eval()
    x, target = torch.randn(B, L, d), torch.randn(B, d)
    mask = torch.arange(L) < torch.tensor([6, 3, 1, 0]).unsqueeze(1)  # the last row: an empty sequence
    gamma, beta = 1 + 0.3 * torch.randn(4, T, d), 0.3 * torch.randn(4, T, d)
    got = net(x, mask, target, gamma, beta)
    assert got.shape == (B, T, d) and torch.isfinite(got).all()

    def cln(i, t, v):
        n = net.norms[i]
        return gamma[i, t] * n.weight * F.layer_norm(v, (d,), eps=1e-5) + beta[i, t] + n.bias

    for t in range(T):
        out0 = cln(0, t, x + _mha(net.self_attn, x, x, mask))  # out^0
        enc = cln(1, t, out0 + net.enc_ffn[2](torch.relu(net.enc_ffn[0](out0))))  # out^enc
        ctx = _mha(net.cross_attn, target.unsqueeze(1), enc, mask).squeeze(1)
        ctx[~mask.any(1)] = net.cross_attn.out_proj.bias  # an empty sequence: zero context
        out3 = cln(2, t, target + ctx)  # out^3
        dec = cln(3, t, out3 + net.dec_ffn[2](torch.relu(net.dec_ffn[0](out3))))  # out^dec
        assert torch.allclose(got[:, t], dec, atol=1e-5), t


def test_padded_positions_are_never_read():
    torch.manual_seed(2)
    net = ConditionalTransformer(8, num_heads=2, ffn_dim=16).eval()
    x, target = torch.randn(3, 5, 8), torch.randn(3, 8)
    mask = torch.arange(5) < torch.tensor([5, 2, 4]).unsqueeze(1)
    g, b = torch.ones(4, 2, 8), torch.zeros(4, 2, 8)
    other = torch.where(mask.unsqueeze(-1), x, torch.randn_like(x) * 10)
    assert torch.allclose(net(x, mask, target, g, b), net(other, mask, target, g, b), atol=1e-5)


def test_hypernetworks_start_at_the_plain_layer_norm_and_condition_on_task_and_sequence():
    _, _, model, _ = _model()
    gamma, beta = model.conditions()  # [4, T, M, d]
    assert gamma.shape == (4, 3, 1, model.seq_dim)
    assert torch.allclose(gamma, torch.ones_like(gamma), atol=0.05) and beta.abs().max() < 0.05
    # Eq. 2 by hand for one (l, t, b): MLP_{θ^l}([T_t ; BS_b])
    l, t, b = 2, 1, 0
    pair = torch.cat([model.task_types[t], model.seq_types[b]])
    net = model.hyper_gamma
    hidden = torch.relu(pair @ net.weights[0][l] + net.biases[0][l])
    assert torch.allclose(gamma[l, t, b], hidden @ net.weights[1][l] + net.biases[1][l], atol=1e-6)
    assert not torch.allclose(gamma[:, 0], gamma[:, 1])  # each task its own conditions


def test_interests_are_task_specific_only_with_conditional_layer_norms():
    spec, fm, model, batch = _model({"hyper_init_scale": 1.0})
    emb = model.embeddings(batch)
    with torch.no_grad():
        interests = model.interests(batch, emb)  # [B, T, M·d]
    assert interests.shape == (10, 3, model.seq_dim)
    assert (interests[:, 0] - interests[:, 1]).abs().max() > 1e-3
    _, _, plain, _ = _model({"conditional": False})
    with torch.no_grad():
        same = plain.interests(batch, plain.embeddings(batch))
    assert torch.allclose(same[:, 0], same[:, 1]) and torch.allclose(same[:, 0], same[:, 2])


def test_trm_is_eq9_and_can_be_switched_off():
    spec, fm, model, batch = _model()
    with torch.no_grad():
        emb = model.embeddings(batch)
        ctx = torch.cat([emb[k] for k in model._context_keys] + [batch.dense], dim=-1)
        raw = torch.cat([ctx.unsqueeze(1).expand(-1, 3, -1), model.interests(batch, emb)], dim=-1)  # raw_t
        r = model.representations(batch, emb)
        for t in range(3):  # r_t = raw_t ⊙ sigmoid(MLP_t(raw_t)), MLP_t two layers with ReLU
            net = model.refine
            h = torch.relu(raw[:, t] @ net.weights[0][t] + net.biases[0][t])
            refine = torch.sigmoid(h @ net.weights[1][t] + net.biases[1][t])
            assert torch.allclose(r[:, t], raw[:, t] * refine, atol=1e-6)
    _, _, off, _ = _model({"trm": False})
    assert not hasattr(off, "refine")
    with torch.no_grad():
        emb = off.embeddings(batch)
        r = off.representations(batch, emb)
        ctx = torch.cat([emb[k] for k in off._context_keys] + [batch.dense], dim=-1)
        assert torch.equal(r[:, 1, : ctx.shape[1]], ctx)  # r_t = raw_t


def test_mmoe_gate_of_each_task_mixes_the_experts_of_its_own_representation():
    spec, fm, model, batch = _model({"num_experts": 3, "expert_hidden": [6], "tower_hidden": []})
    with torch.no_grad():
        r = model.representations(batch)
        logits = model(batch).logits
        for t, name in enumerate(model.task_names):
            f = torch.stack([torch.relu(r[:, t] @ model.block.experts.weights[0][e] + model.block.experts.biases[0][e])
                             for e in range(3)], dim=1)  # f_i(r_t): [B, E, He]
            g = torch.softmax(r[:, t] @ model.block.gates.weight[t] + model.block.gates.bias[t], -1)  # [B, E]
            z = (g.unsqueeze(-1) * f).sum(1)
            tower = model.head.rest_layers  # tower_hidden [] : one affine layer to the logit
            want = z @ tower.weights[0][t] + tower.biases[0][t]
            assert torch.allclose(logits[name], want.squeeze(-1), atol=1e-5)


def test_sequences_change_the_prediction_and_without_tim_they_do_not():
    spec, fm, model, batch = _model()
    other = batch.index(torch.arange(len(batch)))
    seq = other.sequences["hist_item"]
    other.sequences["hist_item"] = torch.where(seq > 0, (seq % 3) + 2, seq)  # other items, same lengths
    with torch.no_grad():
        a, b = model(batch).logits["t0"], model(other).logits["t0"]
    assert (a - b).abs().max() > 1e-4
    _, _, off, _ = _model({"tim": False})
    with torch.no_grad():
        assert torch.equal(off(batch).logits["t0"], off(other).logits["t0"])


def test_config_errors_are_clear():
    # a sequence with its own vocabulary has no target item to query with
    feats = [FeatureSpec(name="user_id", source="user"), FeatureSpec(name="item_id", source="item"),
             FeatureSpec(name="hist", kind="sequence", max_len=4)]
    spec = DatasetSpec(name="s", features=feats, domain=DomainSpec(column="d", names=["a", "b"]),
                       tasks=[TaskSpec(name="y", label="y")], default_dim=4)
    fm = FeatureMap.layout_of(spec, vocabs={f.name: ["1", "2", "3"] for f in feats})
    with pytest.raises(ConfigError, match="target item"):
        build_model("dtrn", spec, fm)
    build_model("dtrn", spec, fm, {"tim": False})  # without TIM the sequence is not needed
    spec, fm = make_tiny()
    with pytest.raises(ConfigError, match="num_heads"):
        build_model("dtrn", spec, fm, {"num_heads": 3})
    with pytest.raises(Exception, match="mtl"):
        build_model("dtrn", spec, fm, {"mtl": "ple"})


def test_sequences_of_different_widths_are_refused():
    feats = [FeatureSpec(name="item_id", source="item"), FeatureSpec(name="cat", source="item"),
             FeatureSpec(name="h1", kind="sequence", vocab="item_id", max_len=3),
             FeatureSpec(name="h2", kind="sequence", vocab="cat", max_len=3)]
    spec = DatasetSpec(name="w", features=feats, domain=DomainSpec(column="d", names=["a", "b"]),
                       tasks=[TaskSpec(name="y", label="y")], default_dim=4,
                       tables=[TableSpec(name="items", dim=4, features=["item_id", "h1"]),
                               TableSpec(name="cats", dim=6, features=["cat", "h2"])])
    fm = FeatureMap.layout_of(spec, vocabs={"item_id": ["1", "2"], "cat": ["1", "2"], "h1": ["1"], "h2": ["1"]})
    with pytest.raises(ConfigError, match="one width"):
        build_model("dtrn", spec, fm)


def test_a_schema_without_sequences_runs_without_tim_and_says_so():
    spec, fm = make_tiny(with_sequence=False)
    torch.manual_seed(0)
    model = build_model("dtrn", spec, fm)
    assert any("no behaviour sequence" in n for n in model.report_notes())
    out = model(make_batch(spec, fm, size=4))
    assert all(torch.isfinite(v).all() for v in out.logits.values())


def test_dtrn_trains_on_movielens_temporal_and_clears_an_auc_floor(data_dir, tmp_path):
    """configs/ml100k_dtrn.yaml end to end on real MovieLens-100K (temporal protocol, its behaviour
    sequences through TIM). It reaches about 0.75 average test AUC, beside the 0.75-0.76 of the
    baselines in BENCHMARKS.md (ml100k_temporal); a model that learns nothing scores 0.5 and one
    that learns only per-domain base rates well below 0.65, so the floor of 0.72 fails on a broken
    model while leaving room for seed noise."""
    from mdmt.config import load_experiment
    from mdmt.train.run import run_experiment

    cfg = load_experiment(ROOT / "configs" / "ml100k_dtrn.yaml",
                          {"train": {"progress": False}, "output_dir": str(tmp_path)})
    res = run_experiment(cfg, data_dir=str(data_dir), quiet=True)
    assert res.test.avg_auc >= 0.72, res.test.markdown()
    assert all(c.auc > 0.65 for c in res.test.cells), res.test.markdown()
    scores = [h["valid_score"] for h in res.history]
    assert res.history[res.best_epoch - 1]["valid_score"] == max(scores)  # selected on validation



def test_shared_mtl_gives_each_tower_its_own_representation():
    spec, fm, model, batch = _model({"mtl": "shared", "tower_hidden": []})
    with torch.no_grad():
        r = model.representations(batch)
        logits = model(batch).logits
        tower = model.head.rest_layers
        for t, name in enumerate(model.task_names):
            assert torch.allclose(logits[name], (r[:, t] @ tower.weights[0][t] + tower.biases[0][t]).squeeze(-1), atol=1e-5)
