"""Bad inputs in experiment configs and command-line overrides."""

from __future__ import annotations

from . import Workspace, bad_input


@bad_input("config", "A misspelt training option", expect="learning_rte")
def misspelt_train_key(ws: Workspace) -> list[str]:
    ws.project()
    ws.edit("exp.yaml", "lr: 0.01", "lr: 0.01, learning_rte: 3")
    return ["train", "exp.yaml"]


@bad_input("config", "An unknown model name", expect="unknown model")
def unknown_model(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "model.name=mmoee"]


@bad_input("data file", "A required column is missing from the data file", expect="price")
def missing_column(ws: Workspace) -> list[str]:
    ws.project()
    ws.table().drop("price").write_csv(ws.path("rows.csv"))
    return ["data", "prepare", "exp.yaml"]
