"""ONNX export (issue 15, item 1): every registered model and every training regime's routing scores
the same with onnxruntime as with PyTorch, and ``mdmt export`` writes a self-contained folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import polars as pl
import pytest
import torch

from mdmt.cli import main
from mdmt.layers import DomainSegments, segment_linear
from mdmt.models import REGISTRY, build_model
from mdmt.serve import ServeError
from mdmt.serve.export import OPSET, ScoringModule, export_module, input_names, model_inputs
from mdmt.serve.onnx_ops import TRANSLATIONS
from mdmt.train.run import LoadedRun, regime_units

from .conftest import make_batch, make_tiny
from .shop import write_project


def _onnx_probs(path: Path, batch, fm) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v.numpy() for k, v in model_inputs(batch, fm).items()})[0]


def _with_domains(batch, domains: list[int]):
    """``batch`` with its domain column replaced (same rows)."""
    return dataclasses.replace(batch, domain=torch.tensor(domains, dtype=torch.long))


def _uneven_batches(spec, fm) -> list:
    """Batches whose domain segments are uneven: one row; a domain with no rows, the others
    interleaved with ties (a stable sort must keep their order); every row in one middle domain
    (the first and last segments empty)."""
    D = spec.num_domains
    return [
        make_batch(spec, fm, size=1, seed=8),
        _with_domains(make_batch(spec, fm, size=11, seed=9), [D - 1, 1, 1, D - 1, 1, D - 1, D - 1, 1, 1, D - 1, 1]),
        _with_domains(make_batch(spec, fm, size=6, seed=10), [1] * 6),
    ]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_model_exports_and_scores_like_torch(name, tmp_path):
    """A model that cannot be exported fails here with its name (export_module raises a ServeError naming it)."""
    spec, fm = make_tiny(per_domain=True)
    torch.manual_seed(0)
    module = ScoringModule(fm, [build_model(name, spec, fm).eval()], [None], [None])
    export_module(module, tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in graph.graph.input] == input_names(fm)
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch dimension
    assert graph.opset_import[0].version == OPSET
    assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}  # standard ONNX operators only
    batches = [make_batch(spec, fm, size=size, seed=seed) for size, seed in ((13, 5), (1, 6), (64, 7))]
    for batch in batches + _uneven_batches(spec, fm):
        size = len(batch)
        ref = module.score(batch)
        got = _onnx_probs(tmp_path / "m.onnx", batch, fm)
        assert got.shape == (size, spec.num_tasks)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0, err_msg=f"{name}, domains {batch.domain.tolist()}")
        assert ((ref > 0) & (ref < 1)).all()  # probabilities, not logits
        logits = torch.stack(list(module.units[0](batch).logits.values()), 1)
        np.testing.assert_allclose(ref, torch.sigmoid(logits).detach().numpy(), atol=1e-6)


@pytest.mark.parametrize("params", [{"fusion": "gated", "num_shared_experts": 3}, {"fusion": "concat"},
                                    {"automl": False, "task_module": False, "expert_hidden": [8, 4]}],
                         ids=["gated", "concat", "no-automl-no-task-module"])
def test_m3oe_ablations_export(params, tmp_path):
    """Every segment GEMM of M3oE's variants (the D×T gates, the domain and module gates) translates."""
    spec, fm = make_tiny(per_domain=True)
    torch.manual_seed(0)
    module = ScoringModule(fm, [build_model("m3oe", spec, fm, params).eval()], [None], [None])
    export_module(module, tmp_path / "m.onnx")
    for batch in [make_batch(spec, fm, size=9, seed=1)] + _uneven_batches(spec, fm):
        np.testing.assert_allclose(_onnx_probs(tmp_path / "m.onnx", batch, fm), module.score(batch), atol=1e-5, rtol=0)


def _export_plain(module: torch.nn.Module, args: tuple, path: Path, dynamic: tuple) -> ort.InferenceSession:
    with torch.no_grad():
        torch.onnx.export(module.eval(), args, str(path), opset_version=OPSET, dynamo=True, dynamic_shapes=dynamic,
                          custom_translation_table=TRANSLATIONS, external_data=False)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("with_bias", [True, False])
def test_segment_linear_translation_handles_empty_segments(with_bias, tmp_path):
    """The ONNX segment GEMM equals the custom op for every layout of offsets, empty segments included
    (first, middle, last, all but one), and for one row."""

    class Seg(torch.nn.Module):
        def forward(self, x, w, b, offsets):
            return segment_linear(x, w, b if with_bias else None, offsets)

    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(4, 3, 5, generator=g), torch.randn(4, 5, generator=g)
    n = torch.export.Dim("n", min=1)
    sess = _export_plain(Seg(), (torch.randn(7, 3, generator=g), w, b, torch.tensor([2, 3, 5, 7])),
                         tmp_path / "seg.onnx", ({0: n}, None, None, None))
    for offsets in ([2, 3, 5, 7], [0, 3, 3, 7], [0, 0, 0, 7], [7, 7, 7, 7], [0, 4, 7, 7], [0, 0, 1, 1], [1, 1, 1, 1]):
        x = torch.randn(offsets[-1], 3, generator=g)
        ref = segment_linear(x, w, b if with_bias else None, torch.tensor(offsets))
        feed = {"x": x.numpy(), "w": w.numpy(), "b": b.numpy(), "offsets": np.array(offsets)}
        got = sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})[0]
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-5, rtol=0, err_msg=str(offsets))
        # and what the op means: each row times its own segment's matrix
        seg = torch.bucketize(torch.arange(offsets[-1]), torch.tensor(offsets), right=True)
        own = torch.einsum("ni,nio->no", x, w[seg]) + (b[seg] if with_bias else 0)
        np.testing.assert_allclose(got, own.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("descending", [False, True])
def test_stable_sort_translation_keeps_tied_rows_in_order(descending, tmp_path):
    """Rows sorted by domain (DomainSegments) must keep their order within a domain in ONNX too."""

    class Order(torch.nn.Module):
        def forward(self, domain):
            return torch.argsort(domain, stable=True, descending=descending)

    sess = _export_plain(Order(), (torch.tensor([2, 0, 1, 0, 2]),), tmp_path / "sort.onnx",
                         ({0: torch.export.Dim("n", min=1)},))
    g = torch.Generator().manual_seed(1)
    for domain in (torch.randint(0, 3, (50,), generator=g), torch.zeros(9, dtype=torch.long), torch.tensor([1])):
        got = sess.run(None, {"domain": domain.numpy()})[0]
        np.testing.assert_array_equal(got, torch.argsort(domain, stable=True, descending=descending).numpy())
    assert DomainSegments(torch.tensor([1, 0, 1, 0]), 2).order.tolist() == [1, 3, 0, 2]


@pytest.mark.parametrize("model", ["plain", "m3oe", "m2m"])
@pytest.mark.parametrize("regime", ["mtl", "mdl", "cell"])
def test_multi_unit_regimes_export_with_their_routing(regime, model, tmp_path):
    """One graph for all unit models: each cell comes from the unit owning the row's domain and the
    task, as LoadedRun.predict routes it; a skipped unit's cells are NaN in both engines."""
    spec, fm = make_tiny(per_domain=True, num_tasks=2, num_domains=2)
    units = regime_units(regime, spec)
    models = []
    for k, unit in enumerate(units):
        torch.manual_seed(k)
        uspec = spec if unit.tasks is None else spec.restrict(tasks=[spec.task_names[t] for t in unit.tasks])
        plain = "mmoe" if regime == "mtl" else "mlp"
        models.append(build_model(plain if model == "plain" else model, uspec, fm).eval())
    units[-1].skipped, models[-1] = True, None
    run = LoadedRun(tmp_path, None, fm, units, models)  # type: ignore[arg-type]
    module = ScoringModule(fm, models, [u.domains for u in units], [u.tasks for u in units])
    batch = make_batch(spec, fm, size=30, seed=3)
    ref = run.predict(batch)
    torch_probs = module.score(batch)
    np.testing.assert_allclose(torch_probs, ref, atol=1e-6)
    export_module(module, tmp_path / "m.onnx")
    got = _onnx_probs(tmp_path / "m.onnx", batch, fm)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    assert np.isnan(ref).any()  # the skipped unit's cells
    np.testing.assert_allclose(got[~np.isnan(ref)], ref[~np.isnan(ref)], atol=1e-5)
    # the routing is by domain: in mtl the last domain's unit is skipped, so exactly its rows are NaN
    if regime == "mtl":
        last = (batch.domain == spec.num_domains - 1).numpy()
        assert np.isnan(got[last]).all() and not np.isnan(got[~last]).any()


@pytest.fixture(scope="module")
def shop_run(tmp_path_factory) -> Path:
    root = write_project(tmp_path_factory.mktemp("shop"), model="mmoe", epochs=1)
    assert main(["train", str(root / "exp.yaml"), "--run-dir", str(root / "runs" / "r")]) == 0
    return root / "runs" / "r"


def test_mdmt_export_writes_a_self_contained_folder(shop_run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(shop_run), "--format", "onnx", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["feature_map.json", "manifest.json", "model.onnx"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["tasks"] == ["click", "order"] and m["domains"] == ["home", "search"]
    assert m["model"] == "mmoe" and m["regime"] == "mdmt" and m["opset"] == OPSET
    assert [i["name"] for i in m["inputs"]] == ["sparse", "dense", "domain", "seq__hist", "len__hist"]
    assert m["outputs"][0]["name"] == "probs" and "probability" in m["outputs"][0]["meaning"]
    assert m["metrics"]["test"]["cells"] and m["versions"]["mdmt"]
    assert m["max_abs_diff_vs_torch"] <= 1e-5
    # the folder scores on its own: the run directory is not needed any more
    moved = tmp_path / "elsewhere"
    out.rename(moved)
    rows = shop_run.parent.parent / "rows.csv"
    assert main(["predict", str(moved), str(rows), "--out", str(tmp_path / "o.parquet")]) == 0
    assert main(["predict", str(shop_run), str(rows), "--out", str(tmp_path / "t.parquet"), "--engine", "torch"]) == 0
    a, b = pl.read_parquet(tmp_path / "o.parquet"), pl.read_parquet(tmp_path / "t.parquet")
    assert a.columns == ["row", "click", "order"] and a.height == 3000
    np.testing.assert_allclose(a["click"].to_numpy(), b["click"].to_numpy(), atol=1e-5)


def test_an_unexportable_model_fails_with_its_name(tmp_path):
    class Branchy(torch.nn.Module):  # a data-dependent Python branch: what DESIGN §7 forbids
        task_names = ["t0", "t1", "t2"]

        def forward(self, batch):
            z = batch.dense.sum(1)
            if float(z.sum()) > 0:
                z = z * 2
            return type("O", (), {"logits": {t: z for t in self.task_names}})()

    spec, fm = make_tiny()
    module = ScoringModule(fm, [Branchy()], [None], [None])  # type: ignore[list-item]
    with pytest.raises(ServeError, match="Branchy"):
        export_module(module, tmp_path / "m.onnx")
