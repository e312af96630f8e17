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


@bad_input("config", "An unknown MLP normalisation", expect="norm")
def unknown_norm(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "model.params.norm=layer_norm"]


@bad_input("config", "Id dropout on a feature the schema lacks", expect="id_dropout_features: unknown feature 'usr'")
def id_dropout_unknown_feature(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "model.embedding.id_dropout_features=[usr]"]


@bad_input("config", "Id dropout on a sequence feature", expect="'hist' is a sequence feature")
def id_dropout_sequence_feature(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "model.embedding.id_dropout_features=[hist]"]


@bad_input("config", "A head no module registered", expect="unknown head 'towers'")
def unknown_head(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "model.params.head=towers"]
