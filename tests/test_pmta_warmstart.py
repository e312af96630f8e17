"""PMTA's parameter warm-up (§2.4): a finished base multi-task run gives PMTA exactly its backbone
H, its classifiers C^t and its embeddings (same names and shapes), PMTA's own parts start fresh,
and with the loaded parameters frozen they leave training bit-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mdmt.cli import main
from mdmt.config import WarmStartConfig
from mdmt.models import build_model
from mdmt.train.run import load_run
from mdmt.train.warmstart import apply_warm_start, load_source

from .shop import write_project

BASE = "backbone: mlp, backbone_params: {hidden: [16]}, tower_hidden: [8, 4]"
PMTA = BASE + ", width: 32, num_heads: 2, tpe_hidden: 8"
BASES = {"sharedbottom": BASE, "mmoe": BASE + ", num_experts: 2, expert_hidden: [12]"}
BLOCK = {"sharedbottom": "", "mmoe": ", block: mmoe, block_params: {num_experts: 2, expert_hidden: [12]}"}


def _project(root: Path, model: str, params: str) -> Path:
    write_project(root, model=model, epochs=1)
    exp = root / "exp.yaml"
    exp.write_text(exp.read_text()
                   .replace(f"model: {{name: {model}}}", f"model: {{name: {model}, params: {{{params}}}}}")
                   .replace("data: {source: table,", "data: {domain_specific: [user_id, item_id], source: table,"))
    return exp


@pytest.fixture(scope="module", params=["sharedbottom", "mmoe"])
def base_run(request, tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp(f"base-{request.param}")
    exp = _project(root, request.param, BASES[request.param])
    run = root / "runs" / "base"
    assert main(["train", str(exp), "--run-dir", str(run)]) == 0
    return request.param, run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "all-best.pt", weights_only=True)


def test_warm_start_loads_exactly_the_base_models_weights(base_run):
    name, run = base_run
    src = load_run(run)
    fm = src.feature_map
    torch.manual_seed(0)
    params = {"backbone": "mlp", "backbone_params": {"hidden": [16]}, "tower_hidden": [8, 4], "width": 32,
              "num_heads": 2, "tpe_hidden": 8}
    if name == "mmoe":
        params.update(block="mmoe", block_params={"num_experts": 2, "expert_hidden": [12]})
    model = build_model("pmta", fm.spec, fm, params)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, summary = apply_warm_start(model, load_source(run, fm), "all", WarmStartConfig(run_dir=str(run)), quiet=True)
    ref = _weights(run)
    state = model.state_dict()
    # exactly the base model's tensors: its embeddings, H, block and classifiers C^t
    assert set(summary.loaded) == set(ref) and not summary.unused
    own = {n for n, _ in model.pmta_parameters()}
    assert own and not own & set(summary.loaded)
    assert {k.split(".")[0] for k in summary.loaded} == {"embeddings", "backbone", "head"} | ({"block"} if name == "mmoe" else set())
    for k in summary.loaded:
        assert torch.equal(state[k], ref[k]), k
    # PMTA's own parts start fresh
    assert own <= set(summary.fresh)
    for k in summary.fresh:
        assert torch.equal(state[k], before[k]), k


def test_frozen_warm_start_leaves_the_loaded_weights_bit_identical(base_run, tmp_path: Path):
    name, run = base_run
    exp = _project(tmp_path, "pmta", PMTA + BLOCK[name])
    out = tmp_path / "runs" / "pmta"
    assert main(["train", str(exp), "--run-dir", str(out), "--warm-start", str(run), "--freeze-loaded",
                 "--set", "train.epochs=2", "--set", "train.patience=0"]) == 0
    summary = json.loads((out / "warm_start.json").read_text())["models"][0]
    assert summary["frozen"]
    ref, trained = _weights(run), _weights(out)
    for k in summary["loaded"]:
        assert torch.equal(trained[k], ref[k]), f"{k} moved although frozen"
    own = [k for k in summary["fresh"] if k.startswith(("prompts", "tpe.", "layers.", "dar."))]
    assert own
    from mdmt.train.trainer import seed_everything

    cfg = load_run(out).config  # the run's fresh initialisation, rebuilt with its seed
    seed_everything(cfg.train.seed * 1000)
    init = build_model("pmta", load_run(out).feature_map.spec, load_run(out).feature_map, cfg.model.params,
                       embedding_init_std=cfg.train.embedding_init_std).state_dict()
    assert all(not torch.equal(trained[k], init[k]) for k in own), "PMTA's own parameters did not train"
