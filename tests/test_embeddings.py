"""EmbeddingCollection settings shared by every model: table names, the domain input, the
embedding size and id dropout (the trained OOV row)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mdmt.config import ExperimentConfig
from mdmt.embeddings import DOMAIN_KEY, EmbeddingCollection, EmbeddingConfig
from mdmt.featuremap import OOV, PAD, FeatureMap
from mdmt.models import REGISTRY, build_model
from mdmt.schema import ConfigError, DatasetSpec, DomainSpec, FeatureSpec, TableSpec, TaskSpec, parse_config

from .conftest import make_batch, make_tiny


def _spec_with_tables(names: list[str]) -> tuple[DatasetSpec, FeatureMap]:
    feats = [FeatureSpec(name=f"f{i}", source="item") for i in range(len(names))]
    spec = DatasetSpec(
        name="names", features=feats,
        tables=[TableSpec(name=n, dim=4, features=[f.name], per_domain=i == 0) for i, (n, f) in enumerate(zip(names, feats))],
        domain=DomainSpec(column="d", names=["a", "b"]), tasks=[TaskSpec(name="y", label="y")], default_dim=4,
    )
    return spec, FeatureMap.layout_of(spec, vocabs={f.name: ["1", "2", "3"] for f in feats})


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_any_table_name_works(name):
    """Names that are ModuleDict attributes or hold a dot used to crash the collection."""
    names = ["items", "keys", "values", "update", "shop.items", "shop%2Eitems", "pop", "t_items"]
    spec, fm = _spec_with_tables(names)
    torch.manual_seed(0)
    model = build_model(name, spec, fm)
    emb = model.embeddings
    assert emb.keys[: len(names)] == [f"f{i}@{n}" for i, n in enumerate(names)]
    assert len({id(emb.table(n)) for n in names}) == len(names)  # escaping is one-to-one
    batch = make_batch(spec, fm, size=6)
    out = model(batch)
    assert torch.isfinite(out.logits["y"]).all()
    # the weights round-trip through a state dict
    again = build_model(name, spec, fm)
    again.load_state_dict(model.state_dict())
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(model(batch).logits["y"], again(batch).logits["y"])


def test_domain_input_is_its_own_key_and_cannot_collide():
    """A feature (and a table) named like the domain column, or like the domain key, stays apart."""
    feats = [FeatureSpec(name="domain"), FeatureSpec(name=DOMAIN_KEY)]
    spec = DatasetSpec(
        name="clash", features=feats, tables=[TableSpec(name="domain", dim=4, features=["domain"])],
        domain=DomainSpec(column="domain", names=["a", "b", "c"]), tasks=[TaskSpec(name="y", label="y")],
        default_dim=4,
    )
    fm = FeatureMap.layout_of(spec, vocabs={"domain": ["a", "b", "c"], DOMAIN_KEY: ["x"]})
    emb = EmbeddingCollection(spec, fm)
    assert emb.domain_key == DOMAIN_KEY and len(set(emb.keys)) == len(emb.keys) == 3
    assert all("@" in k for k in emb.keys if k != DOMAIN_KEY)
    batch = make_batch(spec, fm, size=6)
    out = emb(batch)
    assert torch.equal(out[DOMAIN_KEY], emb.domain_table.weight[batch.domain])
    assert emb.input_dim == 3 * 4
    off = EmbeddingCollection(spec, fm, cfg=EmbeddingConfig(domain_input=False))
    assert off.domain_key is None and DOMAIN_KEY not in off(batch) and off.input_dim == 2 * 4


def test_embedding_dim_sets_every_table_and_comes_from_the_experiment_config():
    spec, fm = make_tiny(per_domain=True)
    cfg = parse_config({"model": {"name": "mmoe", "embedding": {"dim": 5}}}, ExperimentConfig)
    model = build_model(cfg.model.name, spec, fm, cfg.model.params, embedding=cfg.model.embedding)
    assert set(model.embeddings.dims.values()) == {5}
    assert model.embeddings.table("user_domain").weight.shape[1] == 5
    with pytest.raises(ConfigError, match="dimm"):
        parse_config({"model": {"embedding": {"dimm": 5}}}, ExperimentConfig)
    with pytest.raises(ConfigError, match="id_dropout"):
        parse_config({"model": {"embedding": {"id_dropout": 1.0}}}, ExperimentConfig)


def test_id_dropout_feature_rule():
    spec, fm = make_tiny()  # user_id: 20 ids, item_id: 30, category: 5 (item side), age: bucketised
    assert EmbeddingCollection(spec, fm).dropout_features == []  # below the default 100 ids
    rule = EmbeddingConfig(id_dropout_min_vocab=20)
    assert EmbeddingCollection(spec, fm, cfg=rule).dropout_features == ["user_id", "item_id"]
    listed = EmbeddingConfig(id_dropout_features=["category"])
    assert EmbeddingCollection(spec, fm, cfg=listed).dropout_features == ["category"]
    for bad, why in (("nope", "unknown feature"), ("hist_item", "sequence"), ("age", "dense")):
        with pytest.raises(ConfigError, match=why):
            EmbeddingCollection(spec, fm, cfg=EmbeddingConfig(id_dropout_features=[bad]))


@pytest.mark.parametrize("per_domain", [False, True])
def test_id_dropout_trains_the_oov_row_and_leaves_eval_alone(per_domain):
    spec, fm = make_tiny(per_domain=per_domain)
    cfg = EmbeddingConfig(id_dropout=0.5, id_dropout_features=["user_id", "item_id"])
    torch.manual_seed(0)
    model = build_model("sharedbottom", spec, fm, embedding=cfg)
    emb = model.embeddings
    batch = make_batch(spec, fm, size=64)
    for c in ("user_id", "item_id"):  # no OOV id in the batch itself
        col = fm.sparse_index(c)
        batch.sparse[:, col] = batch.sparse[:, col].clamp(min=OOV + 1)
    # training: about half the ids become OOV, only in the id feature columns, padding never
    model.train()
    dropped = emb.drop_ids(batch.sparse)
    cols = [fm.sparse_index("user_id"), fm.sparse_index("item_id")]
    other = [i for i in range(len(fm.sparse)) if i not in cols]
    assert torch.equal(dropped[:, other], batch.sparse[:, other])
    share = (dropped[:, cols] == OOV).float().mean()
    assert 0.3 < share < 0.7
    assert torch.all((dropped[:, cols] == OOV) | (dropped[:, cols] == batch.sparse[:, cols]))
    padded = batch.sparse.clone()
    padded[:, cols[0]] = PAD
    assert torch.all(emb.drop_ids(padded)[:, cols[0]] == PAD)
    # the OOV rows receive gradient in training (of every table the features sit in)
    out = model(batch)
    torch.stack(list(out.logits.values()), 1).sum().backward()
    for t in ["item_id"] + (["user_shared", "user_domain"] if per_domain else ["user_id"]):
        w = emb.table(t).weight
        rows = emb._rows[t]
        oov_rows = torch.arange(OOV, w.shape[0], rows)  # the OOV row of every domain block
        assert w.grad is not None and w.grad[oov_rows].abs().sum() > 0, t
    # eval: no id is dropped, outputs are deterministic and equal those without id dropout
    model.eval()
    assert torch.equal(emb.drop_ids(batch.sparse), batch.sparse)
    plain = build_model("sharedbottom", spec, fm, embedding=cfg.model_copy(update={"id_dropout": 0.0}))
    plain.load_state_dict(model.state_dict())
    plain.eval()
    model.zero_grad()
    with torch.no_grad():
        a, b = model(batch).logits, plain(batch).logits
    assert all(torch.equal(a[t], b[t]) for t in a)
    # without id dropout no training row reaches the OOV rows
    plain.train()
    torch.stack(list(plain(batch).logits.values()), 1).sum().backward()
    w = plain.embeddings.table("item_id").weight
    assert w.grad[OOV].abs().sum() == 0


def test_id_dropout_draws_once_per_lookup_for_every_table_of_a_feature():
    """A feature in a shared and a per-domain table is dropped in both or in neither."""
    spec, fm = make_tiny(per_domain=True)
    emb = EmbeddingCollection(spec, fm, cfg=EmbeddingConfig(id_dropout=0.5, id_dropout_features=["user_id"])).train()
    batch = make_batch(spec, fm, size=64)
    col = fm.sparse_index("user_id")
    batch.sparse[:, col] = batch.sparse[:, col].clamp(min=OOV + 1)
    torch.manual_seed(3)
    out = emb(batch)
    g = emb.table("user_shared").weight[OOV]
    rows = emb._rows["user_domain"]
    d = emb.table("user_domain").weight[batch.domain * rows + OOV]
    shared_oov = (out["user_id@user_shared"] == g).all(1)
    domain_oov = (out["user_id@user_domain"] == d).all(1)
    assert shared_oov.any() and torch.equal(shared_oov, domain_oov)


def test_embedding_size_from_the_command_line(tmp_path):
    from mdmt.cli import _overrides
    from mdmt.config import load_experiment

    p = tmp_path / "exp.yaml"
    p.write_text("model: {name: mmoe}\n")
    cfg = load_experiment(p, _overrides(["model.embedding.dim=32", "model.embedding.id_dropout=0"]))
    assert cfg.model.embedding.dim == 32 and cfg.model.embedding.id_dropout == 0.0
    assert cfg.model.embedding.domain_input is True  # the other fields keep their defaults


# ---------------------------------------------------------------------------------------------
# Access by meaning
# ---------------------------------------------------------------------------------------------
def test_groups_by_source_and_per_domain_tables():
    spec, fm = make_tiny(per_domain=True)  # user_id in a shared and a per-domain table
    emb = EmbeddingCollection(spec, fm)
    assert emb.group_keys("user", per_domain=False) == ["user_id@user_shared", "age@age"]  # e_u^g
    assert emb.group_keys("user", per_domain=True) == ["user_id@user_domain"]  # e_u^d
    assert emb.group_keys("item") == ["item_id@item_id", "category@category"]
    assert emb.group_keys("context", kind="sequence") == ["hist_item@item_id"]
    assert emb.feature_keys("user_id") == ["user_id@user_shared", "user_id@user_domain"]
    assert emb.feature_keys("price") == []
    assert emb.related_features == {"t0": ["item_id"], "t1": ["item_id"], "t2": ["item_id"]}
    batch = make_batch(spec, fm, size=5)
    pooled = emb.pooled(batch)
    e_u_d = emb.group(batch, "user", per_domain=True, pooled=pooled)
    rows = emb._rows["user_domain"]
    ids = batch.sparse[:, fm.sparse_index("user_id")]
    assert torch.equal(e_u_d, emb.table("user_domain").weight[batch.domain * rows + ids])  # routed by domain
    item = emb.group(batch, "item", pooled=pooled)
    assert torch.equal(item, torch.cat([pooled["item_id@item_id"], pooled["category@category"]], -1))
    with pytest.raises(ValueError, match="no embedding"):
        emb.group(batch, "item", per_domain=True)


def test_named_features_with_a_learned_dense_projection():
    spec, fm = make_tiny(per_domain=True)
    emb = EmbeddingCollection(spec, fm)
    assert len(emb.dense_projections) == 0  # no parameters until a model names a dense feature
    names = ["item_id", "price", "user_id", "hist_item"]
    width = emb.use(names)
    assert width == 8 + emb.dense_dim + 16 + 8 and len(emb.dense_projections) == 1
    batch = make_batch(spec, fm, size=4)
    out = emb.features(batch, names)
    assert out.shape == (4, width)
    pooled = emb.pooled(batch)
    proj = next(iter(emb.dense_projections.values()))
    price = batch.dense[:, fm.dense.index("price")].unsqueeze(1) * proj.weight[:, 0] + proj.bias  # x_f · w_f + b_f
    expect = torch.cat([pooled["item_id@item_id"], price, pooled["user_id@user_shared"], pooled["user_id@user_domain"],
                        pooled["hist_item@item_id"]], -1)
    assert torch.allclose(out, expect, atol=1e-6)
    out.sum().backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0  # the projection learns
    with pytest.raises(KeyError, match="use"):
        EmbeddingCollection(spec, fm).features(batch, ["price"])
    with pytest.raises(KeyError, match="no feature named 'nope'"):
        emb.use(["nope"])


# ---- sequence pooling (EmbeddingCollection.pool) ------------------------------------------------
def _pooling_batch(per_domain: bool):
    """A tiny collection and a batch whose sequences hold empty rows, OOV ids and full rows."""
    spec, fm = make_tiny()
    torch.manual_seed(0)
    emb = EmbeddingCollection(spec, fm, cfg=EmbeddingConfig(per_domain=per_domain))
    batch = make_batch(spec, fm, size=9, seed=3)
    ids, ln = batch.sequences["hist_item"], batch.seq_lengths["hist_item"]
    L = ids.shape[1]
    ln[:3] = torch.tensor([0, L, 2])
    ids[:3] = 0
    ids[1] = torch.tensor([OOV, 2, OOV, 5, 7])  # a full row with unseen ids
    ids[2, :2] = torch.tensor([OOV, 4])
    return emb, batch


def _direct_masked_mean(emb: EmbeddingCollection, batch) -> Tensor:
    """The pooled sequence recomputed row by row: Σ_{l: id_l ≠ PAD} W[id_l (+ domain block)] / max(len, 1)."""
    table = emb.table("item_id").weight
    rows = table.shape[0] // (emb.num_domains if emb._per_domain["item_id"] else 1)
    ids, ln = batch.sequences["hist_item"], batch.seq_lengths["hist_item"]
    out = []
    for b in range(ids.shape[0]):
        offset = int(batch.domain[b]) * rows if emb._per_domain["item_id"] else 0
        acc = torch.zeros(table.shape[1])
        for i in ids[b].tolist():
            if i != PAD:
                acc = acc + table[i + offset]
        out.append(acc / max(int(ln[b]), 1))
    return torch.stack(out)


@pytest.mark.parametrize("per_domain", [False, True])
def test_sequence_pooling_is_the_masked_mean(per_domain):
    emb, batch = _pooling_batch(per_domain)
    key = emb.feature_keys("hist_item")[0]
    pooled = emb.pooled(batch)[key]
    want = _direct_masked_mean(emb, batch)
    assert torch.allclose(pooled, want, atol=1e-7)
    assert torch.equal(pooled[0], torch.zeros_like(pooled[0]))  # an empty sequence pools to zero
    # the same as pooling forward()'s per-position embeddings
    assert torch.allclose(pooled, emb.pooled(batch, emb(batch))[key], atol=1e-7)
    # the other keys are forward()'s
    full = emb(batch)
    for k in emb.keys:
        if k != key:
            assert torch.equal(emb.pooled(batch)[k], full[k])


@pytest.mark.parametrize("per_domain", [False, True])
def test_sequence_pooling_gradients_equal_the_direct_formula(per_domain):
    emb, batch = _pooling_batch(per_domain)
    key = emb.feature_keys("hist_item")[0]
    table = emb.table("item_id").weight
    r = torch.randn(len(batch), table.shape[1])
    (emb.pooled(batch)[key] * r).sum().backward()
    got = table.grad.clone()
    table.grad = None
    (_direct_masked_mean(emb, batch) * r).sum().backward()
    assert torch.allclose(got, table.grad, atol=1e-7)
    rows = table.shape[0] // (emb.num_domains if per_domain else 1)
    assert torch.equal(got[PAD::rows], torch.zeros_like(got[PAD::rows]))  # padding rows get no gradient
    for b in (1, 2):  # the OOV row of the row's domain block does
        block = int(batch.domain[b]) if per_domain else 0
        assert got[block * rows + OOV].abs().sum() > 0


def test_sequence_pooling_exports_without_embedding_bag():
    """torch.export (and so the ONNX export) takes the gather-and-product form, with equal values."""
    emb, batch = _pooling_batch(per_domain=True)
    emb.eval()

    class Pool(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = emb

        def forward(self, ids: Tensor, lengths: Tensor, domain: Tensor) -> Tensor:
            return self.emb.pool("item_id", ids, lengths, domain)

    args = (batch.sequences["hist_item"], batch.seq_lengths["hist_item"], batch.domain)
    dim = torch.export.Dim("batch", min=1)
    program = torch.export.export(Pool(), args, dynamic_shapes=({0: dim}, {0: dim}, {0: dim}))
    assert "embedding_bag" not in str(program.graph)
    with torch.no_grad():
        assert torch.allclose(program.module()(*args), Pool()(*args), atol=1e-6)
        three = tuple(a[:3] for a in args)
        assert torch.allclose(program.module()(*three), _direct_masked_mean(emb, batch.slice(0, 3)), atol=1e-6)
