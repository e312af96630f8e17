"""Bad inputs for the models of issue 11: PEPNet's ablation switch, the ppnet head's options, xDeepFM's dims."""

from __future__ import annotations

from . import Workspace, bad_input


@bad_input("config", "A PEPNet extra-input ablation with an unknown value", expect="extra_input")
def pepnet_unknown_extra_input(ws: Workspace) -> list[str]:
    ws.project(model="pepnet")
    return ["train", "exp.yaml", "--set", "model.params.extra_input=sometimes"]


@bad_input("config", "A misspelt option of the ppnet head", expect="gama")
def ppnet_misspelt_head_param(ws: Workspace) -> list[str]:
    ws.project(model="mmoe")
    return ["train", "exp.yaml", "--set", "model.params.head=ppnet", "--set", "model.params.head_params.gama=3"]


@bad_input("schema", "xDeepFM on tables of different embedding dims", expect="one embedding dim")
def xdeepfm_mixed_dims(ws: Workspace) -> list[str]:
    ws.project(model="xdeepfm")
    ws.edit("schema.yaml", "domain:", "tables:\n  - {name: users, dim: 4, features: [user_id]}\ndomain:")
    return ["train", "exp.yaml"]
