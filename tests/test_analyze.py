"""``mdmt analyze`` on a tiny trained PMTA run: the JSON numbers recomputed from the model's own
trace, the plots written, and clear errors for runs it cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mdmt.analyze import analyze_model
from mdmt.cli import main
from mdmt.models import build_model
from mdmt.train.run import load_run

from .conftest import make_batch, make_tiny
from .shop import write_project

PARAMS = "{width: 32, num_heads: 2, tower_hidden: [8], tpe_hidden: 8, backbone_params: {hidden: [16]}}"


@pytest.fixture(scope="module")
def pmta_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pmta-run")
    write_project(root, model="pmta", epochs=1)
    exp = root / "exp.yaml"
    exp.write_text(
        exp.read_text()
        .replace("model: {name: pmta}", f"model: {{name: pmta, params: {PARAMS}}}")
        .replace("data: {source: table,", "data: {domain_specific: [user_id, item_id], source: table,")
    )
    run_dir = root / "runs" / "pmta"
    assert main(["train", str(exp), "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_report_states_that_a_task_without_related_features_sees_its_prompt_alone(pmta_run: Path):
    report = (pmta_run / "report.md").read_text()
    assert "task 'click' declares no related_features; its TPE sees the prompt p^t alone" in report
    assert "no per_domain table" not in report  # e^d is declared through data.domain_specific
    assert json.loads((pmta_run / "metrics.json").read_text())["model_notes"]


def test_analyze_writes_the_numbers_and_the_plots(pmta_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "analysis"
    assert main(["analyze", str(pmta_run), "--out", str(out), "--split", "valid"]) == 0
    assert "wrote" in capsys.readouterr().out
    for name in ("analysis.json", "attention.png", "dar_scales.png", "prompt_norms.png"):
        assert (out / name).stat().st_size > 0, name
    payload = json.loads((out / "analysis.json").read_text())
    assert payload["split"] == "valid"
    res = payload["units"]["all"]
    assert res["tasks"] == ["click", "order"] and res["domains"] == ["home", "search"]

    # recompute from the trained model's trace on the same rows
    run = load_run(pmta_run)
    model = run.models[0]
    from mdmt.data import load_prepared

    data = load_prepared(run.config.data, progress=False).splits["valid"]
    assert payload["rows"] == len(data) and sum(res["rows"].values()) == len(data)
    tr = model.trace(data)
    for d, name in enumerate(res["domains"]):
        rows = data.domain == d
        assert res["rows"][name] == int(rows.sum())
        for layer in range(2):
            expected = tr.attention[layer][rows].mean(dim=(0, 1)).numpy()  # rows and heads
            got = np.asarray(res["attention"][d][layer])
            assert np.allclose(got, expected, atol=1e-5)
            assert np.allclose(got.sum(1), 1.0, atol=1e-5)
            scales = tr.dar[layer][rows].numpy()
            stats = res["dar"][d][layer]
            assert stats["mean"] == pytest.approx(float(scales.mean()), abs=1e-5)
            assert sum(stats["histogram"]) == scales.size
            assert 0.0 < stats["quantiles"][0] <= stats["quantiles"][-1] < 2.0
            assert np.allclose(stats["per_unit_mean"], scales.mean(0), atol=1e-5)
    norms = model.prompts.detach().norm(dim=-1)
    assert res["prompt_norms"] == pytest.approx({"click": float(norms[0]), "order": float(norms[1])})
    assert res["token_norms"]["click"]["c1"] == pytest.approx(float(tr.c1[:, 0].norm(dim=-1).mean()), rel=1e-5)


def test_analyze_writes_into_the_run_directory_by_default(pmta_run: Path):
    assert main(["analyze", str(pmta_run), "--max-rows", "100"]) == 0
    payload = json.loads((pmta_run / "analysis.json").read_text())
    assert payload["rows"] == 100 and (pmta_run / "attention.png").exists()


def test_fusion_mlp_and_no_dar_models_have_no_attention_or_scales():
    spec, fm = make_tiny(per_domain=True)
    torch.manual_seed(0)
    model = build_model("pmta", spec, fm, {"width": 48, "fusion": "mlp", "dar": False, "num_heads": 2})
    res = analyze_model(model, make_batch(spec, fm, size=30), spec.domain_names)
    assert res.attention == [] and all(d == [] for d in res.dar)
    from mdmt.analyze.plots import plot_attention, plot_dar_scales

    assert plot_attention(res, "unused.png") is None and plot_dar_scales(res, "unused.png") is None


def test_analyze_refuses_another_model_and_a_missing_run(tmp_path: Path, capsys):
    write_project(tmp_path, model="sharedbottom", epochs=1)
    run_dir = tmp_path / "runs" / "sb"
    assert main(["train", str(tmp_path / "exp.yaml"), "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    assert main(["analyze", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "of model 'sharedbottom'" in err and "Traceback" not in err
    assert not (run_dir / "analysis.json").exists()
    assert main(["analyze", str(tmp_path / "runs" / "nothing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
