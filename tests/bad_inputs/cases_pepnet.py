"""Bad inputs in PEPNet's settings: its ablation switches and the ppnet head's own options."""

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
