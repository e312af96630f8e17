"""Bad checkpoints and run directories given to evaluate, predict, resume and warm start."""

from __future__ import annotations

import torch

from . import Workspace, bad_input


def _best(ws: Workspace):
    return ws.trained_run() / "checkpoints" / "all-best.pt"


@bad_input("checkpoint", "evaluate with a truncated checkpoint", expect="not a readable checkpoint")
def truncated_checkpoint(ws: Workspace) -> list[str]:
    p = _best(ws)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return ["evaluate", "runs/done"]


@bad_input("checkpoint", "evaluate with an empty checkpoint", expect="empty")
def empty_checkpoint(ws: Workspace) -> list[str]:
    _best(ws).write_bytes(b"")
    return ["evaluate", "runs/done"]


@bad_input("checkpoint", "predict with a file that is not a checkpoint", expect="not a readable checkpoint")
def garbage_checkpoint(ws: Workspace) -> list[str]:
    _best(ws).write_bytes(b"these are not weights\n" * 10)
    return ["predict", "runs/done", "rows.csv", "--out", "scores.parquet"]


@bad_input("checkpoint", "evaluate with the weights of another model", expect="are not those of")
def foreign_model_checkpoint(ws: Workspace) -> list[str]:
    torch.save({"tower.0.weight": torch.zeros(4, 4), "tower.0.bias": torch.zeros(4)}, _best(ws))
    return ["evaluate", "runs/done"]


@bad_input("checkpoint", "evaluate a run whose best weights are missing", expect="is missing")
def missing_checkpoint(ws: Workspace) -> list[str]:
    _best(ws).unlink()
    return ["evaluate", "runs/done"]


@bad_input("checkpoint", "resume from a truncated training checkpoint", expect="all-last.pt")
def truncated_resume_checkpoint(ws: Workspace) -> list[str]:
    p = ws.trained_run() / "checkpoints" / "all-last.pt"
    p.write_bytes(p.read_bytes()[:1000])
    return ["train", "exp.yaml", "--run-dir", "runs/done", "--resume", "--set", "train.epochs=2"]


@bad_input("checkpoint", "evaluate a run whose feature_map.json is corrupt", expect="not a valid feature map")
def corrupt_run_feature_map(ws: Workspace) -> list[str]:
    ws.trained_run()
    ws.write("runs/done/feature_map.json", '{"spec": {"name": "shop"')
    return ["evaluate", "runs/done"]


@bad_input("checkpoint", "evaluate a directory that does not exist", expect="no such run directory")
def missing_run_dir(ws: Workspace) -> list[str]:
    ws.project()
    return ["evaluate", "runs/nothing"]


@bad_input("checkpoint", "warm start from a directory that is not a finished run", expect="not a finished run")
def warm_start_not_a_run(ws: Workspace) -> list[str]:
    ws.project()
    ws.write("runs/half/config.yaml", "name: x\n")
    return ["train", "exp.yaml", "--warm-start", "runs/half"]


@bad_input("checkpoint", "warm start from a run with another feature map", expect="feature maps must be identical")
def warm_start_other_feature_map(ws: Workspace) -> list[str]:
    ws.trained_run()
    ws.table(seed=3).write_csv(ws.path("rows.csv"))  # other rows: other vocabularies and statistics
    return ["train", "exp.yaml", "--warm-start", "runs/done"]
