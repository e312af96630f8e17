"""The attention layers against direct re-computations on tiny sizes (loops over rows, heads and
positions with the layers' own weights), and against ``torch.nn`` with copied weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mdmt.layers import (
    DINAttention,
    DotTargetAttention,
    MultiHeadAttention,
    MultiHeadSelfAttention,
    TransformerLayer,
    masked_softmax,
)


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(module: nn.Module, seed: int = 3) -> None:
    """Random values in every parameter (biases and LayerNorm affines included)."""
    g = _g(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _mask(lengths: list[int], L: int) -> torch.Tensor:
    return torch.arange(L).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def _lin(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.t() + layer.bias


def _attention_loop(mha: MultiHeadAttention, query, key, mask) -> torch.Tensor:
    """Eq. 4–5 row by row, head by head, key by key: the reference."""
    B, Lq, _ = query.shape
    Lk = key.shape[1]
    h, dh = mha.num_heads, mha.head_dim
    out = torch.zeros(B, Lq, mha.dim)
    for b in range(B):
        Q, K, V = _lin(mha.q_proj, query[b]), _lin(mha.k_proj, key[b]), _lin(mha.v_proj, key[b])
        for i in range(Lq):
            heads = []
            for head in range(h):
                sl = slice(head * dh, (head + 1) * dh)
                real = [j for j in range(Lk) if mask is None or mask[b, j]]
                ctx = torch.zeros(dh)
                if real:
                    s = torch.stack([torch.dot(Q[i, sl], K[j, sl]) / math.sqrt(dh) for j in real])
                    p = torch.exp(s - s.max())
                    p = p / p.sum()
                    ctx = sum(p[n] * V[j, sl] for n, j in enumerate(real))
                heads.append(ctx)
            out[b, i] = _lin(mha.out_proj, torch.cat(heads))
    return out


# ---------------------------------------------------------------------------------------------
# masked softmax
# ---------------------------------------------------------------------------------------------
def test_masked_softmax_zero_on_masked_and_empty_rows():
    s = torch.randn(3, 4, generator=_g())
    m = _mask([4, 2, 0], 4)
    w = masked_softmax(s, m)
    assert torch.allclose(w[0], torch.softmax(s[0], -1))
    assert torch.allclose(w[1, :2], torch.softmax(s[1, :2], -1)) and torch.all(w[1, 2:] == 0)
    assert torch.all(w[2] == 0) and torch.isfinite(w).all()
    assert torch.equal(masked_softmax(s, None), torch.softmax(s, -1))


# ---------------------------------------------------------------------------------------------
# multi-head attention and self-attention
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("heads", [1, 2])
def test_multi_head_attention_equals_loop_with_masks(heads):
    B, Lq, Lk, d, dk = 3, 2, 4, 4, 6
    mha = MultiHeadAttention(d, num_heads=heads, kdim=dk)
    _randomise(mha)
    q = torch.randn(B, Lq, d, generator=_g(1))
    k = torch.randn(B, Lk, dk, generator=_g(2))
    mask = _mask([4, 1, 0], Lk)  # full, one real key, no real key
    out = mha(q, k, key_mask=mask)
    assert out.shape == (B, Lq, d)
    assert torch.allclose(out, _attention_loop(mha, q, k, mask), atol=1e-5)
    assert torch.allclose(out[2], mha.out_proj.bias.expand(Lq, d))  # nothing to attend to: zero context
    assert torch.allclose(mha(q, k), _attention_loop(mha, q, k, None), atol=1e-5)


def test_padded_keys_do_not_change_the_output():
    mha = MultiHeadSelfAttention(4, num_heads=2)
    x = torch.randn(2, 5, 4, generator=_g())
    mask = _mask([3, 5], 5)
    y = x.clone()
    y[0, 3:] = torch.randn(2, 4, generator=_g(9)) * 100  # garbage at padded positions
    assert torch.allclose(mha(x, mask)[0, :3], mha(y, mask)[0, :3], atol=1e-5)
    assert torch.allclose(mha(x, mask)[0, :3], mha(x[:1, :3], None)[0], atol=1e-5)  # = the unpadded sequence


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_self_attention_matches_torch_multihead_attention(heads):
    B, L, d = 4, 5, 8
    ours = MultiHeadSelfAttention(d, num_heads=heads)
    ref = nn.MultiheadAttention(d, heads, batch_first=True)
    _randomise(ref)
    with torch.no_grad():
        wq, wk, wv = ref.in_proj_weight.chunk(3)
        bq, bk, bv = ref.in_proj_bias.chunk(3)
        for lin, w, b in ((ours.q_proj, wq, bq), (ours.k_proj, wk, bk), (ours.v_proj, wv, bv)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        ours.out_proj.bias.copy_(ref.out_proj.bias)
    x = torch.randn(B, L, d, generator=_g())
    mask = _mask([5, 3, 1, 4], L)
    expect, _ = ref(x, x, x, key_padding_mask=~mask, need_weights=False)
    assert torch.allclose(ours(x, mask), expect, atol=1e-5)
    assert torch.allclose(ours(x), ref(x, x, x, need_weights=False)[0], atol=1e-5)


def test_attention_width_must_divide_into_heads():
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttention(6, num_heads=4)


# ---------------------------------------------------------------------------------------------
# post-LN Transformer layer
# ---------------------------------------------------------------------------------------------
def _layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def test_transformer_layer_equations_7a_7b():
    B, L, d = 3, 4, 4
    layer = TransformerLayer(d, num_heads=2, ffn_dim=6)
    _randomise(layer)
    x = torch.randn(B, L, d, generator=_g())
    mask = _mask([4, 2, 3], L)
    out = layer(x, mask)
    sa = _layer_norm(_attention_loop(layer.attn, x, x, mask) + x, layer.norm1)  # Eq. 7a
    ffn = _lin(layer.linear2, torch.relu(_lin(layer.linear1, sa)))  # Eq. 6
    assert torch.allclose(out, _layer_norm(ffn + sa, layer.norm2), atol=1e-5)  # Eq. 7b


def test_transformer_layer_matches_torch_post_ln_encoder_layer():
    B, L, d, heads, ffn = 3, 5, 8, 2, 12
    ours = TransformerLayer(d, num_heads=heads, ffn_dim=ffn)
    ref = nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, batch_first=True, norm_first=False)
    _randomise(ref)
    with torch.no_grad():
        wq, wk, wv = ref.self_attn.in_proj_weight.chunk(3)
        bq, bk, bv = ref.self_attn.in_proj_bias.chunk(3)
        for lin, w, b in ((ours.attn.q_proj, wq, bq), (ours.attn.k_proj, wk, bk), (ours.attn.v_proj, wv, bv)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        for a, b in ((ours.attn.out_proj, ref.self_attn.out_proj), (ours.linear1, ref.linear1), (ours.linear2, ref.linear2),
                     (ours.norm1, ref.norm1), (ours.norm2, ref.norm2)):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
    x = torch.randn(B, L, d, generator=_g())
    mask = _mask([5, 2, 4], L)
    ref.train()  # the reference's slow (exact) path; dropout is 0
    expect = ref(x, src_key_padding_mask=~mask)
    got = ours(x, mask)
    assert torch.allclose(got[mask], expect[mask], atol=1e-5)  # real positions (padded ones are to be ignored)


# ---------------------------------------------------------------------------------------------
# target attention: DIN and scaled dot product
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("per_position", [False, True])
def test_din_attention_equals_activation_unit_loop(normalize, per_position):
    B, L, d = 3, 4, 3
    att = DINAttention(d, hidden=[5], act="relu", normalize=normalize)
    _randomise(att)
    keys = torch.randn(B, L, d, generator=_g(1))
    query = torch.randn(B, L, d, generator=_g(2)) if per_position else torch.randn(B, d, generator=_g(2))
    mask = _mask([4, 2, 0], L)
    out = att(query, keys, mask)
    lin1, lin2 = att.unit[0], att.unit[2]
    for b in range(B):
        a = []
        for j in range(L):
            q = query[b, j] if per_position else query[b]
            e = keys[b, j]
            a.append(_lin(lin2, torch.relu(_lin(lin1, torch.cat([e, q, e - q, e * q])))).squeeze())
        a = torch.stack(a)
        real = mask[b]
        if normalize:
            w = torch.zeros(L)
            if real.any():
                w[real] = torch.softmax(a[real], 0)
        else:
            w = a * real
        assert torch.allclose(out[b], (w.unsqueeze(1) * keys[b]).sum(0), atol=1e-5)
    assert torch.all(out[2] == 0)  # an empty sequence gives a zero interest vector


def test_din_attention_ignores_padded_items():
    att = DINAttention(3, hidden=[4])
    keys = torch.randn(2, 4, 3, generator=_g())
    noisy = keys.clone()
    noisy[:, 2:] += 50.0
    mask = _mask([2, 2], 4)
    q = torch.randn(2, 3, generator=_g(1))
    assert torch.allclose(att(q, keys, mask), att(q, noisy, mask))


@pytest.mark.parametrize("heads", [1, 2])
def test_dot_target_attention_equals_loop_and_torch_mha(heads):
    B, L, d, dk = 3, 5, 4, 6
    att = DotTargetAttention(d, num_heads=heads, kdim=dk)
    _randomise(att)
    q = torch.randn(B, d, generator=_g(1))
    keys = torch.randn(B, L, dk, generator=_g(2))
    mask = _mask([5, 2, 0], L)
    out = att(q, keys, mask)
    assert out.shape == (B, d)
    assert torch.allclose(out, _attention_loop(att, q.unsqueeze(1), keys, mask)[:, 0], atol=1e-5)
    # torch's MHA with kdim = vdim and the same (separate) projections, on rows with a real key
    ref = nn.MultiheadAttention(d, heads, kdim=dk, vdim=dk, batch_first=True)
    with torch.no_grad():
        ref.q_proj_weight.copy_(att.q_proj.weight)
        ref.k_proj_weight.copy_(att.k_proj.weight)
        ref.v_proj_weight.copy_(att.v_proj.weight)
        ref.in_proj_bias.copy_(torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]))
        ref.out_proj.weight.copy_(att.out_proj.weight)
        ref.out_proj.bias.copy_(att.out_proj.bias)
    expect, _ = ref(q[:2, None], keys[:2], keys[:2], key_padding_mask=~mask[:2], need_weights=False)
    assert torch.allclose(out[:2], expect[:, 0], atol=1e-5)


def test_dot_target_attention_one_query_per_position():
    B, L, d = 2, 3, 4
    att = DotTargetAttention(d, num_heads=2)
    _randomise(att)
    qs = torch.randn(B, L, d, generator=_g(1))
    keys = torch.randn(B, L, d, generator=_g(2))
    mask = _mask([3, 2], L)
    out = att(qs, keys, mask)
    h, dh = att.num_heads, att.head_dim
    for b in range(B):
        Q, K, V = _lin(att.q_proj, qs[b]), _lin(att.k_proj, keys[b]), _lin(att.v_proj, keys[b])
        heads = []
        for i in range(h):
            sl = slice(i * dh, (i + 1) * dh)
            real = [j for j in range(L) if mask[b, j]]
            s = torch.stack([torch.dot(Q[j, sl], K[j, sl]) / math.sqrt(dh) for j in real])  # position j: its own q_j
            p = torch.softmax(s, 0)
            heads.append(sum(p[n] * V[j, sl] for n, j in enumerate(real)))
        assert torch.allclose(out[b], _lin(att.out_proj, torch.cat(heads)), atol=1e-5)
    # the same query at every position is the one-query form
    same = qs[:, :1].expand(B, L, d)
    assert torch.allclose(att(same, keys, mask), att(qs[:, 0], keys, mask), atol=1e-6)


def test_attention_layers_give_gradients_and_export_with_dynamic_batch():
    from torch.export import Dim, export

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.tr = TransformerLayer(4, num_heads=2, ffn_dim=8)
            self.din = DINAttention(4, hidden=[4])
            self.dot = DotTargetAttention(4, num_heads=2)

        def forward(self, q, seq, mask):
            h = self.tr(seq, mask)
            return self.din(q, h, mask) + self.dot(q, h, mask)

    net = Net()
    q, seq, mask = torch.randn(3, 4), torch.randn(3, 5, 4), _mask([5, 1, 3], 5)
    net(q, seq, mask).sum().backward()
    for n, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    batch = Dim("batch", min=2)
    ep = export(net.eval(), (q, seq, mask), dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    q7, s7, m7 = torch.randn(7, 4), torch.randn(7, 5, 4), _mask([5, 4, 3, 2, 1, 0, 5], 5)
    assert torch.allclose(ep.module()(q7, s7, m7), net(q7, s7, m7), atol=1e-5)
