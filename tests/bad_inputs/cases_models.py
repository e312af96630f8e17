"""Bad inputs in the model section: model params and the embedding settings every model shares."""

from __future__ import annotations

from . import Workspace, bad_input


@bad_input("config", "A misspelt embedding setting", expect="dimm")
def misspelt_embedding_key(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "model.embedding.dimm=32"]


@bad_input("config", "An id dropout share of 1 (every id would be OOV)", expect="id_dropout")
def id_dropout_of_one(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "model.embedding.id_dropout=1"]
