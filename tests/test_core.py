"""Schema strictness, Batch helpers and EmbeddingCollection routing."""

from __future__ import annotations

import pytest
import torch

from mdmt.embeddings import EmbeddingCollection
from mdmt.schema import ConfigError, DatasetSpec, load_yaml

from .conftest import make_batch, make_tiny


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "schema.yaml"
    p.write_text(
        "name: x\nfeatures: [{name: u, kindd: sparse}]\ndomain: {column: d, names: [a]}\n"
        "tasks: [{name: y, label: y}]\n"
    )
    with pytest.raises(ConfigError) as e:
        load_yaml(p, DatasetSpec)
    assert "kindd" in str(e.value) and str(p) in str(e.value)


def test_table_with_unknown_feature_rejected():
    with pytest.raises(Exception, match="unknown feature"):
        DatasetSpec.model_validate(
            {"name": "x", "features": [{"name": "u"}], "tables": [{"name": "t", "dim": 4, "features": ["v"]}],
             "domain": {"column": "d", "names": ["a"]}, "tasks": [{"name": "y", "label": "y"}]}
        )


def test_specs_are_plain_data_and_models_do_not_share_tables():
    spec, fm = make_tiny()
    a, b = EmbeddingCollection(spec, fm), EmbeddingCollection(spec, fm)
    assert a.table("user_id").weight.data_ptr() != b.table("user_id").weight.data_ptr()


def test_sequence_shares_item_table_and_padding_is_zero():
    spec, fm = make_tiny()
    emb = EmbeddingCollection(spec, fm)
    assert "hist_item@item_id" in emb.keys and "item_id@item_id" in emb.keys
    batch = make_batch(spec, fm, size=8)
    out = emb(batch)
    pad = batch.sequences["hist_item"] == 0
    assert torch.all(out["hist_item@item_id"][pad] == 0)
    assert emb.flat_input(batch).shape == (8, emb.input_dim)


def test_per_domain_table_routes_by_domain():
    spec, fm = make_tiny(per_domain=True)
    emb = EmbeddingCollection(spec, fm)
    batch = make_batch(spec, fm, size=6)
    batch.sparse[:, fm.sparse_index("user_id")] = 5  # same user in every row
    out = emb(batch)
    shared, dom = out["user_id@user_shared"], out["user_id@user_domain"]
    assert torch.allclose(shared[0], shared[1])  # e^g identical across domains
    assert not torch.allclose(dom[0], dom[1])  # e^d differs (rows 0 and 1 are in domains 0 and 1)
    assert torch.allclose(dom[0], dom[3])  # rows 0 and 3 are both domain 0
    rows = emb._rows["user_domain"]
    w = emb.table("user_domain").weight
    assert torch.allclose(dom[1], w[1 * rows + 5])


def test_batch_slice_index_concat():
    spec, fm = make_tiny()
    b = make_batch(spec, fm, size=10)
    s = b.slice(2, 5)
    assert len(s) == 3 and torch.equal(s.sparse, b.sparse[2:5])
    i = b.index(torch.tensor([0, 9]))
    assert torch.equal(i.sequences["hist_item"][1], b.sequences["hist_item"][9])
    c = type(b).concat([s, i])
    assert len(c) == 5


def test_table_mixing_vocabularies_is_rejected():
    with pytest.raises(Exception, match="different vocabularies"):
        DatasetSpec.model_validate(
            {"name": "x", "features": [{"name": "u"}, {"name": "i"}],
             "tables": [{"name": "t", "dim": 4, "features": ["u", "i"]}],
             "domain": {"column": "d", "names": ["a"]}, "tasks": [{"name": "y", "label": "y"}]}
        )


def test_readme_schema_example_is_valid():
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n# shop.yaml: the schema\n(.*?)```", readme, re.S).group(1)
    spec = DatasetSpec.model_validate(yaml.safe_load(block))
    assert [t.per_domain for t in spec.effective_tables()] == [False, False, True]
